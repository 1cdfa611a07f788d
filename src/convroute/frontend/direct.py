"""A shortcut past `run_decompositions`: torch.export's graph of a typical CNN uses a few dozen ATen ops,
which map one to one onto what the lowering reads (conv2d -> convolution, eval batch_norm ->
batch_norm_eval, relu_ -> relu, ...). Re-tracing the whole graph to decompose it costs about twice the
export itself; this translation costs nothing.

It applies only when it is exact: every op is in KNOWN (else None: the caller decomposes), and each
in-place op writes a fresh value (made by a non-aliasing op) that nothing reads afterwards, so dropping the
mutation changes no result.
"""

from __future__ import annotations

import torch

from convroute.frontend.graph import Graph, Node, Ref, batch_norm_eval, from_exported, layer_norm

aten = torch.ops.aten

FUNCTIONAL = {aten.relu_.default: aten.relu.default, aten.hardswish_.default: aten.hardswish.default,
              aten.hardtanh_.default: aten.hardtanh.default, aten.silu_.default: aten.silu.default,
              aten.sigmoid_.default: aten.sigmoid.default, aten.hardsigmoid_.default: aten.hardsigmoid.default,
              aten.add_.Tensor: aten.add.Tensor, aten.mul_.Tensor: aten.mul.Tensor,
              aten.dropout_.default: aten.dropout.default}
KEPT = {aten.adaptive_avg_pool2d.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor,
        aten.avg_pool2d.default, aten.max_pool2d.default, aten.cat.default, aten.chunk.default,
        aten.split.Tensor, aten.contiguous.default, aten.dropout.default, aten.flatten.using_ints,
        aten.gelu.default, aten.hardsigmoid.default, aten.hardswish.default, aten.hardtanh.default,
        aten.linear.default, aten.mean.dim, aten.relu.default, aten.sigmoid.default, aten.silu.default,
        aten.tanh.default, aten.upsample_bilinear2d.vec, aten.upsample_nearest2d.vec, aten.view.default,
        aten.reshape.default, aten.permute.default, aten.transpose.int, aten.unsqueeze.default,
        aten.squeeze.dim, aten.slice.Tensor, aten.select.int, aten.expand.default,
        aten.conv2d.default, aten.batch_norm.default, aten.layer_norm.default}
# Activations of the epilogue's table and elementwise math (ops-elem), with their in-place forms.
FUNCTIONAL.update({aten.leaky_relu_.default: aten.leaky_relu.default, aten.elu_.default: aten.elu.default,
                   aten.celu_.default: aten.celu.default, aten.selu_.default: aten.selu.default,
                   aten.mish_.default: aten.mish.default, aten.tanh_.default: aten.tanh.default,
                   aten.gelu_.default: aten.gelu.default, aten.sub_.Tensor: aten.sub.Tensor,
                   aten.div_.Tensor: aten.div.Tensor})
KEPT |= {aten.leaky_relu.default, aten.elu.default, aten.celu.default, aten.selu.default, aten.mish.default,
         aten.softplus.default, aten.log_sigmoid.default, aten.relu6.default, aten.sqrt.default,
         aten.rsqrt.default, aten.exp.default, aten.log.default, aten.neg.default, aten.abs.default,
         aten.reciprocal.default, aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar,
         aten.maximum.default, aten.minimum.default, aten.where.self, aten.add.Scalar, aten.sub.Scalar,
         aten.mul.Scalar, aten.div.Scalar, aten.conv1d.default, aten.clamp_min.default,
         aten.clamp_max.default}
KEPT |= {aten.softmax.int, aten.log_softmax.int, aten.sum.dim_IntList, aten.amax.default, aten.amin.default,
         aten.max.dim, aten.min.dim, aten.sum.default, aten.mean.default,  # lower_reduce, lower_softmax
         aten.group_norm.default, aten.instance_norm.default,  # lower_group_norm
         aten.index.Tensor, aten.index_select.default, aten.gather.default, aten.flip.default, aten.roll.default,
         aten.repeat.default, aten.pad.default, aten.pixel_shuffle.default, aten.pixel_unshuffle.default,
         aten.lift_fresh_copy.default,  # lower_gather
         aten.adaptive_max_pool2d.default}  # lower_adaptive_max_pool
ALIASING = {aten.contiguous.default, aten.dropout.default, aten.flatten.using_ints, aten.chunk.default,
            aten.split.Tensor, aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int,
            aten.unsqueeze.default, aten.squeeze.dim, aten.slice.Tensor, aten.select.int, aten.expand.default}


def translate(ep) -> Graph | None:
    """The exported program as a Graph of the ops the lowering reads, or None when that is not exact."""
    import operator

    if ep.graph_signature.buffers_to_mutate or getattr(ep.graph_signature, "user_inputs_to_mutate", None):
        return None
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    if not targets <= KEPT | set(FUNCTIONAL) | {operator.getitem}:
        return None
    g = from_exported(ep)
    if not _mutations_are_private(g):
        return None
    nodes = []
    for node in g.nodes:
        new = _rewrite(node)
        if new is None:
            return None
        nodes.append(new)
    g.nodes = nodes
    return g


def _mutations_are_private(g: Graph) -> bool:
    """Each in-place op writes a value made by a non-aliasing op (or an earlier checked in-place op) and
    read by nobody after it (an eval-mode dropout_ writes nothing)."""
    made = {n.name: n for n in g.nodes}
    outputs = g.output_names()
    last_read: dict[str, int] = {}
    for i, node in enumerate(g.nodes):
        for ref in node.refs():
            last_read[ref.name] = i
    for i, node in enumerate(g.nodes):
        inert = node.target is aten.dropout_.default and not node.arg(2, "train", False)  # writes nothing
        if node.target not in FUNCTIONAL or inert:
            continue
        target = node.args[0]
        producer = made.get(target.name) if isinstance(target, Ref) else None
        if producer is None or producer.target in ALIASING or target.name in outputs or \
                last_read.get(target.name, -1) > i:
            return False
    return True


def _rewrite(node: Node) -> Node | None:
    target = FUNCTIONAL.get(node.target, node.target)
    args = node.args
    if target is aten.conv2d.default:
        def pair(index, default):
            value = node.arg(index, ("stride", "padding", "dilation")[index - 3], default)
            if isinstance(value, str):
                return None
            value = [value] if isinstance(value, int) else list(value)
            return [int(v) for v in (value * 2 if len(value) == 1 else value)]
        stride, padding, dilation = pair(3, [1]), pair(4, [0]), pair(5, [1])
        if padding is None:  # padding="same" / "valid": leave it to the decomposition
            return None
        target = aten.convolution.default
        args = (args[0], args[1], node.arg(2, "bias"), stride, padding, dilation, False, [0, 0],
                node.arg(6, "groups", 1))
    elif target is aten.conv1d.default:
        target, args = _conv1d(node)
        if args is None:
            return None
    elif target is aten.batch_norm.default:
        x, weight, bias, mean, var, training, momentum, eps = args[:8]
        if training:
            return None
        target, args = batch_norm_eval, (x, weight, bias, mean, var, momentum, eps)
    elif target is aten.layer_norm.default:
        target = layer_norm
        args = (args[0], args[1], node.arg(2, "weight"), node.arg(3, "bias"), node.arg(4, "eps", 1e-5))
    kwargs = dict(node.kwargs) if target is node.target or node.target in FUNCTIONAL else {}
    return Node(node.name, target, args, kwargs, node.act, node.notes, node.module, node.meta)


def _conv1d(node: Node):
    """(convolution, its arguments) of a conv1d call, (None, None) for padding='same'/'valid'."""
    def one(index, default):
        value = node.arg(index, ("stride", "padding", "dilation")[index - 3], default)
        if isinstance(value, str):
            return None
        return [int(value)] if isinstance(value, int) else [int(v) for v in value]
    stride, padding, dilation = one(3, 1), one(4, 0), one(5, 1)
    if padding is None:
        return None, None
    return aten.convolution.default, (node.args[0], node.args[1], node.arg(2, "bias"), stride, padding, dilation,
                                      False, [0], node.arg(6, "groups", 1))

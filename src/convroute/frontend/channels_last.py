"""Channels-last islands taken back to NCHW (a graph pass build_plan runs first; $CONVROUTE_CHANNELS_LAST, on).

x.permute(0, 2, 3, 1) -> ops over the last dim -> .permute(0, 3, 1, 2), the shape of timm's LayerNorm2d and of
ConvNeXt's blocks, becomes the same ops on the NCHW tensor: a layer norm over the last dim -> `channel_norm`
(kernels/channel_norm.py), a linear -> a 1x1 conv (routed like any conv), an elementwise activation as it is.
The two permutes (each a copy of the tensor and a dispatch) go. Only where every value of the island has one
reader and is not a graph output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convroute.frontend.export import is_const
from convroute.frontend.graph import Graph, Node, Ref
from convroute.frontend.lower import Context, GpuOp, Unsupported, out_meta
from convroute.kernels.channel_norm import ChannelNorm

TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
ELEMENTWISE = {"gelu", "relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
               "mish", "softplus"}  # ops of one tensor whose every element maps on its own


def channel_norm(x, weight, bias, eps):
    """torch's form: layer norm over the channels at every pixel of an NCHW tensor."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)


def sink_permutes(g: Graph) -> None:
    """Rewrite every channels-last island of `g` (see the module's docstring) in place."""
    users = g.users()
    outputs = g.output_names()

    def reader(node: Node) -> Node | None:
        """The one node reading `node`'s result through its first argument, else None."""
        readers = users.get(node.name, [])
        if len(readers) != 1 or node.name in outputs:
            return None
        after = readers[0]
        first = after.args[0] if after.args else None
        others = [r for r in after.refs()[1:] if r.name == node.name]
        return after if first == Ref(node.name) and not others and after.residual is None else None

    gone: set[str] = set()
    for start in g.nodes:
        if not _permute(start, TO_LAST) or start.name in gone:
            continue
        island, node = [], reader(start)
        while node is not None and _per_pixel(g, node):
            island.append(node)
            node = reader(node)
        if not island or node is None or not _permute(node, TO_FIRST):
            continue
        source = start.args[0]
        for op in island:
            _to_nchw(g, op, source)
            source = Ref(op.name)
        g.replace_uses(node.name, source)
        gone |= {start.name, node.name}
    g.nodes = [n for n in g.nodes if n.name not in gone]


def _permute(node: Node, dims: list[int]) -> bool:
    return node.op == "permute" and list(node.args[1]) == dims and isinstance(node.meta, torch.Tensor) \
        and isinstance(node.args[0], Ref) and node.act is None and node.residual is None


def _per_pixel(g: Graph, node: Node) -> bool:
    """Whether `node` works on each pixel's last-dim vector alone, with compile-time parameters."""
    if node.op == "layer_norm":
        return len(node.args[1]) == 1 and is_const(g, node.args[2:4])
    if node.op == "linear":
        weight = node.args[1]
        return is_const(g, node.args[1:3]) and isinstance(weight, Ref) and g.constants[weight.name].ndim == 2
    return node.op in ELEMENTWISE and len(node.refs()) == 1


def _to_nchw(g: Graph, node: Node, source: Ref) -> None:
    """`node` (of a channels-last island) as the same op on the NCHW value `source`."""
    n, h, w, c = node.meta.shape
    node.meta = torch.empty((n, c, h, w), dtype=node.meta.dtype, device="meta")
    if node.op == "layer_norm":
        _, _, weight, bias, eps = node.args
        node.target, node.args = channel_norm, (source, weight, bias, eps)
        node.notes.append("layer norm over channels-last pixels run on NCHW (its permutes dropped)")
    elif node.op == "linear":
        weight = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        name = f"{weight.name}_as_1x1"
        g.constants[name] = g.constants[weight.name].reshape(*g.constants[weight.name].shape, 1, 1)
        node.target = torch.ops.aten.convolution.default
        node.args = (source, Ref(name), bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
        node.notes.append("linear over channels-last pixels run as a 1x1 conv on NCHW (its permutes dropped)")
    else:
        node.args = (source, *node.args[1:])


def lower_channel_norm(ctx: Context, node: Node) -> GpuOp:
    x, weight, bias, eps = node.args
    meta, out = ctx.tensor(x), out_meta(node)
    if meta.ndim != 4:
        raise Unsupported(f"channel norm of a {meta.ndim}-D tensor")
    w, b = ctx.const(weight, "weight"), ctx.const(bias, "bias")
    kernel = ChannelNorm(ctx.gpu, tuple(meta.shape), None if w is None else w.reshape(-1).numpy(),
                         None if b is None else b.reshape(-1).numpy(), float(eps), node.act, ctx.precision)
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), 8 * out.numel())

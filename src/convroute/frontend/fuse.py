"""Graph passes that take dispatches away at planning time (build_plan runs them after the residual and
depthwise fusions): a batch norm after a channel concat of convs folded into those convs."""

from __future__ import annotations

import torch

from convroute.frontend.export import is_const
from convroute.frontend.graph import Graph, Node, Ref, batch_norm_eval


def fold_batch_norm_through_concat(g: Graph) -> None:
    """cat([conv_1, ..., conv_k], dim=1) -> eval batch norm [-> its fused activation]  ==>  each conv scaled and
    shifted by its channels' slice of the batch norm and taking the activation; the batch norm goes (MixNet's
    mixed convs). Only where every concat input is a conv that the concat alone reads, with constant weights,
    no activation or residual of its own, and not transposed."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    outputs = g.output_names()
    drop = set()
    for bn in g.nodes:
        cat = producers.get(bn.args[0].name) if bn.target is batch_norm_eval and isinstance(bn.args[0], Ref) \
            else None
        if cat is None or cat.op != "cat" or len(users.get(cat.name, [])) != 1 or cat.name in outputs \
                or not isinstance(cat.meta, torch.Tensor) or cat.meta.ndim != 4 \
                or cat.arg(1, "dim", 0) % 4 != 1 or not is_const(g, bn.args[1:5]):
            continue
        convs = [producers.get(t.name) if isinstance(t, Ref) else None for t in cat.args[0]]
        if not all(_plain_conv(g, c, users, outputs) for c in convs) or len({c.name for c in convs}) != len(convs):
            continue
        scale, shift = _affine(g, bn)
        start = 0
        for conv in convs:
            width = conv.meta.shape[1]
            _scale_conv(g, conv, scale[start:start + width], shift[start:start + width])
            conv.act = bn.act
            conv.notes.append(f"batch norm {bn.module or bn.name} after the concat folded")
            start += width
        cat.meta = bn.meta
        g.replace_uses(bn.name, Ref(cat.name))
        drop.add(bn.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


def _plain_conv(g: Graph, conv: Node | None, users: dict, outputs: set) -> bool:
    return conv is not None and conv.op == "convolution" and conv.act is None and conv.residual is None \
        and conv.depthwise is None and not conv.args[6] and is_const(g, conv.args[1:3]) \
        and len(users.get(conv.name, [])) == 1 and conv.name not in outputs


def _affine(g: Graph, bn: Node):
    """The batch norm as y = x * scale + shift per channel, in float64."""
    _x, weight, bias, mean, var, _momentum, eps = bn.args
    scale = 1.0 / torch.sqrt(g.constants[var.name].double() + eps)
    if weight is not None:
        scale = scale * g.constants[weight.name].double()
    shift = -g.constants[mean.name].double() * scale
    if bias is not None:
        shift = shift + g.constants[bias.name].double()
    return scale, shift


def _scale_conv(g: Graph, conv: Node, scale, shift) -> None:
    w = g.constants[conv.args[1].name]
    b = conv.arg(2, "bias")
    bias = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else g.constants[b.name].double()
    g.constants[f"{conv.name}_cat_weight"] = (w.double() * scale.reshape(-1, 1, 1, 1)).to(w.dtype)
    g.constants[f"{conv.name}_cat_bias"] = (bias * scale + shift).to(w.dtype)
    args = list(conv.args)
    args[1], args[2] = Ref(f"{conv.name}_cat_weight"), Ref(f"{conv.name}_cat_bias")
    conv.args = tuple(args)

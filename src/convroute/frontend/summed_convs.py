"""Convs of one input whose results are added, run as one conv (a graph pass build_plan runs): the training form
of RepVGG's and MobileOne's blocks (a kxk conv + a 1x1 conv + an identity batch norm, summed, then an
activation) becomes the one kxk conv those papers re-parameterise it into by hand for deployment. The smaller
kernels add into the taps of the larger one they line up with, an identity batch norm into the centre tap of
each channel's own input: no multiply-adds are added (unlike concat siblings, siblings.py), and the sum's
adds, batch norm and second conv go.

Merged pairwise, in graph order, so a sum of three terms merges its inner add first: an add or a sub (alpha 1,
no fused residual; FastViT's RepMixer subtracts a batch norm from a depthwise conv) of two terms read by it
alone, each a conv (not transposed, constant weights, no activation, residual or fused depthwise; both with the
same groups, stride and dilation where their kernels are wider than 1), an eval batch norm with constant
statistics, or the value the other term reads itself (x + conv(x)); stride 1 with either of the last two; every
term reading the same value, with the add's shape. The add's activation goes to the merged conv.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from convroute.frontend.export import is_const, set_weights
from convroute.frontend.fuse import batch_norm_affine, plain_conv
from convroute.frontend.graph import Graph, Node, Ref, batch_norm_eval, conv_pair, read_once, tap_window, value_meta
from convroute.params import ConvParams, make_params

SIGNS = {"add.Tensor": 1.0, "sub.Tensor": -1.0}  # the second term's sign


def merge_summed_convs(g: Graph, routable: Callable[[ConvParams], bool] | None = None) -> int:
    """Merge every add of two mergeable terms (see the module); returns how many adds went. `routable`: whether
    the merged conv would have an algorithm (siblings.merge_sibling_convs's)."""
    made, producers = 0, None
    for add in list(g.nodes):
        if add.op not in SIGNS or len(add.args) != 2 or add.kwargs.get("alpha", 1) != 1 \
                or add.residual is not None or not all(isinstance(a, Ref) for a in add.args):
            continue
        if producers is None:  # the graph's maps, made again after each merge
            producers = {n.name: n for n in g.nodes}
            users, outputs, once = g.users(), g.output_names(), read_once(g)
        terms = [producers.get(a.name) for a in add.args]
        for i in (0, 1):  # x + conv(x): x itself is a term, an identity kernel
            conv = terms[1 - i]
            if isinstance(conv, Node) and conv.op == "convolution" and conv.args[0] == add.args[i]:
                terms[i] = add.args[i]
        if None in terms:  # a term that is a graph input or a constant, and no conv reads it
            continue
        nodes = [t for t in terms if isinstance(t, Node)]
        shapes = [t.meta if isinstance(t, Node) else value_meta(g, t.name, producers) for t in terms]
        if any(not _same_shape(m, add.meta) for m in shapes) or not all(once(t) for t in nodes) \
                or terms[0] is terms[1]:
            continue
        convs = [t for t in nodes if plain_conv(g, t, users, outputs)]
        norms = [t for t in nodes if _identity_norm(g, t)]
        if not convs or len(convs) + len(norms) != len(nodes) or len({_input(t) for t in terms}) != 1:
            continue
        merged = _merge(g, terms, convs, add, producers, routable)
        if merged is None:
            continue
        gone = {t.name for t in nodes} | {add.name}
        at = next(i for i, n in enumerate(g.nodes) if n.name in gone)
        g.nodes = g.nodes[:at] + [merged] + [n for n in g.nodes[at:] if n.name not in gone]
        g.replace_uses(add.name, Ref(merged.name))
        made, producers = made + 1, None
    return made


def _same_shape(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.ndim == 4


def _input(term: Node | Ref) -> Ref:
    return term if isinstance(term, Ref) else term.args[0]


def _identity_norm(g: Graph, node: Node) -> bool:
    return node.target is batch_norm_eval and node.act is None and isinstance(node.args[0], Ref) \
        and is_const(g, node.args[1:5])


def _merge(g: Graph, pair: list[Node | Ref], convs: list[Node], add: Node, producers: dict,
           routable) -> Node | None:
    """The first conv rewritten as the sum (or difference) of the two terms, or None where they do not line up
    (strides, dilations, groups, taps) or the merged conv would have no algorithm."""
    first = convs[0]
    diagonals = [t for t in pair if t not in convs]  # identity batch norms, and the input itself
    groups = {_arg(c, 8, "groups", 1) for c in convs}
    strides = {conv_pair(_arg(c, 3, "stride", 1)) for c in convs}
    wide = [c for c in convs if tuple(g.constants[c.args[1].name].shape[2:]) != (1, 1)]
    dilations = {conv_pair(_arg(c, 5, "dilation", 1)) for c in wide}
    if len(groups) != 1 or len(strides) != 1 or len(dilations) > 1 or (diagonals and strides != {(1, 1)}):
        return None
    dilation = dilations.pop() if dilations else (1, 1)
    group = groups.pop()
    terms = [_as_conv(g, t, group, producers) if t in diagonals else
             (g.constants[t.args[1].name].double(), conv_pair(_arg(t, 4, "padding", 0)), _bias(g, t)) for t in pair]
    sign = SIGNS[add.op]
    terms[1] = (sign * terms[1][0], terms[1][1], sign * terms[1][2])
    window = tap_window([t[1] for t in terms], [tuple(t[0].shape[2:]) for t in terms], dilation)
    if window is None:
        return None
    padding, size, offsets = window
    weight = terms[0][0].new_zeros((*terms[0][0].shape[:2], *size))
    for (w, _, _), (oh, ow) in zip(terms, offsets, strict=True):
        weight[:, :, oh:oh + w.shape[2], ow:ow + w.shape[3]] += w
    stride = strides.pop()
    x_shape = tuple(value_meta(g, first.args[0].name, producers).shape)
    params = make_params(x_shape, tuple(weight.shape), stride, padding, dilation, group)
    if params.output_shape != tuple(add.meta.shape) or (routable is not None and not routable(params)):
        return None
    dtype = g.constants[first.args[1].name].dtype
    set_weights(g, first, weight.to(dtype), sum(t[2] for t in terms).to(dtype))
    first.args = (first.args[0], first.args[1], first.args[2], list(stride), list(padding), list(dilation), False,
                  [0, 0], group)
    first.kwargs, first.act, first.meta = {}, add.act, add.meta
    verb = "summed with" if sign > 0 else "less"
    first.notes += [f"{verb} {_described(t)} into one conv" for t in pair if t is not first]
    first.notes += add.notes
    return first


def _described(term: Node | Ref) -> str:
    return f"its input {term.name}" if isinstance(term, Ref) else f"{term.module or term.name} ({term.op})"


def _as_conv(g: Graph, term: Node | Ref, groups: int, producers: dict):
    """An identity batch norm, or the input itself, as a 1x1 conv's (weight, padding, bias) with `groups`: each
    channel's scale on its own input channel."""
    if isinstance(term, Ref):
        channels = value_meta(g, term.name, producers).shape[1]
        scale, shift = torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    else:
        scale, shift = batch_norm_affine(g, term)
        channels = scale.numel()
    per_group = channels // groups
    weight = torch.zeros((channels, per_group, 1, 1), dtype=torch.float64)
    weight[torch.arange(channels), torch.arange(channels) % per_group, 0, 0] = scale
    return weight, (0, 0), shift


def _bias(g: Graph, conv: Node) -> torch.Tensor:
    b = conv.arg(2, "bias")
    channels = g.constants[conv.args[1].name].shape[0]
    return torch.zeros(channels, dtype=torch.float64) if b is None else g.constants[b.name].double()


def _arg(node: Node, index: int, name: str, default):
    value = node.arg(index, name, default)
    return default if value is None else value



"""Sibling convs that a channel concat joins, run as one conv (a graph pass build_plan runs): fewer dispatches
where a model is bound by them rather than by arithmetic.

Two shapes of siblings:
- convs of one input (e.g. two 3x3s of the same tensor): one conv whose kernel is the largest, the smaller
  kernels zero-padded into it;
- grouped or depthwise convs of consecutive channel slices of one tensor (MixNet's mixed kernels): one grouped
  conv over the slices' whole range, every group keeping its own (zero-padded) kernel.

Merged only where every conv's result goes to the concat alone, with constant weights, the same stride,
dilation and activation, no residual of its own, and where the padded kernels cost at most MAX_GROWTH times
the convs' own multiply-adds (grouped and depthwise runs, bound by memory and dispatches) or MAX_DENSE_GROWTH
times (convs of one input, groups 1, bound by arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from convroute.frontend.export import is_const
from convroute.frontend.graph import Graph, Node, Ref, aten, conv_pair, tap_window, value_meta
from convroute.params import ConvParams, make_params

MAX_GROWTH = 2.5  # merged multiply-adds over the siblings' own
# Dense convs pay for every zero tap: on the H100 SqueezeNet's fire expand (1x1 + 3x3 -> one 3x3, 1.8x the
# multiply-adds) made the GPU pass 0.311 vs 0.275 ms for 6 fewer dispatches (NOTES, session 21).
MAX_DENSE_GROWTH = 1.0


@dataclass
class Sibling:
    conv: Node
    weight: torch.Tensor
    source: str  # the tensor it reads, through a channel slice when `piece` is set
    piece: Node | None = None  # the channel slice (step 1, read by this conv alone) it reads
    begin: int = 0  # the slice's channels in `source`
    end: int = 0

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])

    def key(self) -> tuple:
        """What every conv of a merged run must share."""
        c = self.conv
        return (conv_pair(c.arg(3, "stride", 1)), conv_pair(c.arg(5, "dilation", 1)), c.act, self.source,
                self.piece is not None)


def merge_sibling_convs(g: Graph, routable: Callable[[ConvParams], bool] | None = None) -> int:
    """Merge every run of two or more mergeable convs among a channel concat's inputs; returns how many merged
    convs were made. `routable`: whether a merged conv would have an algorithm (a browser export that leaves
    direct out has none for grouped convs, so their siblings stay apart)."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    outputs = g.output_names()
    made = 0
    for cat in list(g.nodes):
        if cat.op != "cat" or not isinstance(cat.meta, torch.Tensor) or cat.meta.ndim != 4 \
                or cat.arg(1, "dim", 0) % 4 != 1:
            continue
        parts = list(cat.args[0])
        siblings = [_sibling(g, producers.get(r.name) if isinstance(r, Ref) else None, producers, users, outputs)
                    for r in parts]
        merged_parts, i = [], 0
        while i < len(parts):
            run = _run_from(siblings, i)
            window = _window(run) if len(run) > 1 else None
            limit = MAX_GROWTH if run and run[0].piece is not None else MAX_DENSE_GROWTH
            merged = _merge(g, run, window, producers, routable) if window and _growth(run, window) <= limit \
                else None
            if merged is None:
                merged_parts.append(parts[i])
                i += 1
                continue
            merged_parts.append(Ref(merged.name))
            producers[merged.name] = merged
            made += 1
            i += len(run)
        if len(merged_parts) == len(parts):
            continue
        if len(merged_parts) == 1:
            g.replace_uses(cat.name, merged_parts[0])
            g.nodes = [n for n in g.nodes if n is not cat]
        else:
            cat.args = (merged_parts, *cat.args[1:])
    return made


def _sibling(g: Graph, node: Node | None, producers: dict, users: dict, outputs: set) -> Sibling | None:
    """The conv as a merge candidate: a conv whose result only the concat reads, with constant weights."""
    if node is None or node.op != "convolution" or node.residual is not None or node.depthwise is not None \
            or node.arg(6, "transposed", False) or not is_const(g, node.args[1:3]) or node.name in outputs \
            or len(users.get(node.name, [])) != 1 or not isinstance(node.args[0], Ref):
        return None
    weight = g.constants[node.args[1].name]
    piece = producers.get(node.args[0].name)
    if piece is not None and piece.target is aten.slice.Tensor and isinstance(piece.args[0], Ref) \
            and len(users.get(piece.name, [])) == 1 and piece.name not in outputs \
            and isinstance(piece.meta, torch.Tensor) and piece.meta.ndim == 4 \
            and piece.arg(1, "dim", 0) % 4 == 1 and piece.arg(4, "step", 1) == 1:
        begin = piece.arg(2, "start", 0) or 0
        if begin >= 0:  # a slice counted from the end (x[:, -8:]) is left alone
            return Sibling(node, weight, piece.args[0].name, piece, begin, begin + piece.meta.shape[1])
        return None
    if _groups(node) != 1:
        return None
    return Sibling(node, weight, node.args[0].name)


def _run_from(siblings: list[Sibling | None], i: int) -> list[Sibling]:
    """The longest run of consecutive siblings from i that one conv can replace."""
    first = siblings[i]
    if first is None:
        return []
    run = [first]
    for s in siblings[i + 1:]:
        if s is None or s.key() != first.key():
            break
        if first.piece is not None and (s.begin != run[-1].end or _per_group(s) != _per_group(first)):
            break
        run.append(s)
    return run


def _per_group(s: Sibling) -> tuple[int, int]:
    """(input, output) channels per group."""
    return s.weight.shape[1], s.weight.shape[0] // _groups(s.conv)


def _window(run: list[Sibling]):
    """(padding, kernel size, per-conv tap offsets) of the merged conv, or None (graph.tap_window)."""
    dilation = conv_pair(run[0].conv.arg(5, "dilation", 1))
    return tap_window([conv_pair(s.conv.arg(4, "padding", 0)) for s in run], [s.kernel for s in run], dilation)


def _growth(run: list[Sibling], window) -> float:
    area = window[1][0] * window[1][1]
    own = sum(s.weight.shape[0] * s.kernel[0] * s.kernel[1] for s in run)
    return sum(s.weight.shape[0] * area for s in run) / own


def _merge(g: Graph, run: list[Sibling], window, producers: dict, routable) -> Node | None:
    """The one conv replacing `run` with `window` (_window's), placed in the graph (with the channel slice it
    reads, if one is needed), or None where the merged window would change the output size or `routable` says
    no algorithm would take it."""
    padding, size, offsets = window
    first = run[0].conv
    stride, dilation = conv_pair(first.arg(3, "stride", 1)), conv_pair(first.arg(5, "dilation", 1))
    sliced = run[0].piece is not None
    source_meta = value_meta(g, run[0].source, producers)
    groups = sum(_groups(s.conv) for s in run) if sliced else 1
    channels = run[-1].end - run[0].begin if sliced else source_meta.shape[1]
    merged_params = make_params((source_meta.shape[0], channels, *source_meta.shape[2:]),
                                (sum(s.weight.shape[0] for s in run), run[0].weight.shape[1], *size),
                                stride, padding, dilation, groups)
    if merged_params.output_shape[2:] != tuple(first.meta.shape[2:]) \
            or (routable is not None and not routable(merged_params)):
        return None
    name = f"{first.name}_siblings"
    new_nodes, source = [], Ref(run[0].source)
    if sliced and (run[0].begin, run[-1].end) != (0, source_meta.shape[1]):
        meta = source_meta.new_empty((source_meta.shape[0], channels, *source_meta.shape[2:]))
        piece = Node(f"{name}_input", aten.slice.Tensor, (source, 1, run[0].begin, run[-1].end),
                     module=run[0].piece.module, meta=meta)
        new_nodes.append(piece)
        source = Ref(piece.name)
    weights, biases = [], []
    for s, (oh, ow) in zip(run, offsets, strict=True):
        padded = s.weight.new_zeros((*s.weight.shape[:2], *size))
        padded[:, :, oh:oh + s.kernel[0], ow:ow + s.kernel[1]] = s.weight
        weights.append(padded)
        bias = s.conv.arg(2, "bias")
        biases.append(s.weight.new_zeros(s.weight.shape[0]) if bias is None else g.constants[bias.name])
    g.constants[f"{name}_weight"] = torch.cat(weights)
    g.constants[f"{name}_bias"] = torch.cat(biases)
    meta = first.meta.new_empty(merged_params.output_shape)
    merged = Node(name, aten.convolution.default,
                  (source, Ref(f"{name}_weight"), Ref(f"{name}_bias"), list(stride), list(padding),
                   list(dilation), False, [0, 0], groups),
                  act=first.act, module=first.module, meta=meta,
                  notes=[f"{len(run)} sibling convs joined by a concat run as one: "
                         + ", ".join(s.conv.module or s.conv.name for s in run)])
    new_nodes.append(merged)
    gone = {s.conv.name for s in run} | {s.piece.name for s in run if s.piece is not None}
    at = next(i for i, n in enumerate(g.nodes) if n.name in gone)
    g.nodes = g.nodes[:at] + new_nodes + [n for n in g.nodes[at:] if n.name not in gone]
    return merged


def _groups(conv: Node) -> int:
    return conv.arg(8, "groups", 1)

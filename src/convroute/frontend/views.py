"""Values planned inside another value's buffer, bound at a byte offset (device.gpu.BufferView): fewer dispatches.

- Concat slabs: a `cat` along a dimension with only size-1 dimensions before it (NCHW channels at batch 1) is
  one contiguous slab per input. An input that a GPU kernel computes and the concat alone reads is written
  straight into its slab, and the concat copies only the other inputs (none: the concat is free).
- Slice views: a slice / select / narrow whose result is dense from an offset (a channel split at batch 1) is
  read in place instead of copied (lower.is_alias shares the whole buffer only when no element is left out).

A view's byte offset must be a multiple of the device's min-storage-buffer-offset-alignment (a binding's rule);
an f16 view of an odd length is bound a word long (Plan.buffer), the last two bytes its home's, which no kernel
of the view touches (they index by shape, and the home's other values are never written while it is read:
_clashes); the host (CPU steps, uploads, outputs) never touches a view, as it reads and
writes whole buffers. A kernel never reads and writes one buffer in one dispatch: a concat's slab inputs have
no other reader, and a buffer is never given to a value while a value in it is still read.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from convroute.frontend.graph import Graph, Ref
from convroute.frontend.lower import ALIASES, Context, is_view_op, view_layout


def plan_views(ctx: Context, graph: Graph, steps: list, root: dict, aliases: list, concat: bool,
               slices: bool) -> dict[str, tuple[str, int]]:
    """value -> (the value whose buffer holds it, byte offset in that buffer). Steps that become free move
    from `steps` to `aliases`; a concat with some inputs in place keeps a step copying the rest."""
    within: dict[str, tuple[str, int]] = {}
    if not (concat or slices):
        return within
    align = int(ctx.gpu.device.limits["min-storage-buffer-offset-alignment"])
    host = _host_touched(graph, steps, root)
    if slices:
        _slice_views(ctx, steps, aliases, within, host, align)
    if concat:
        _concat_slabs(ctx, graph, steps, aliases, root, within, host, align)
    return within


def locate(name: str, root: dict, within: dict) -> tuple[str, int]:
    """(the value that owns the buffer `name` lives in, byte offset there)."""
    offset = 0
    while True:
        name = root.get(name, name)
        if name not in within:
            return name, offset
        name, more = within[name]
        offset += more


def _host_touched(graph: Graph, steps: list, root: dict) -> set[str]:
    """Buffer owners whose whole buffer the host reads or writes: outputs, CPU steps' downloads and uploads."""
    names = graph.output_names() | set(graph.inputs)
    for step in steps:
        if step.where == "cpu":
            names |= {r.name for r in step.node.refs()} | {step.node.name}
    return {root.get(n, n) for n in names} | names


def _fits(ctx: Context, offset_elems: int, count: int, align: int) -> bool:
    return count > 0 and (offset_elems * ctx.precision.itemsize) % align == 0


def _slice_views(ctx: Context, steps: list, aliases: list, within: dict, host: set, align: int) -> None:
    for step in list(steps):
        node = step.node
        if step.where != "gpu" or node.op in ALIASES or not is_view_op(node.target) or node.name in host:
            continue
        src, out = ctx.metas.get(node.args[0].name), node.meta
        if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor) or src.dtype != out.dtype:
            continue
        _, offset, dense = view_layout(ctx, node)  # offset 0 with fewer elements: lower.is_alias takes only all
        if dense and _fits(ctx, offset, out.numel(), align):
            within[node.name] = (node.args[0].name, offset * ctx.precision.itemsize)
            node.notes.append("read in place (a view at an offset)")
            steps.remove(step)
            aliases.append(node)


def _concat_slabs(ctx: Context, graph: Graph, steps: list, aliases: list, root: dict, within: dict, host: set,
                  align: int) -> None:
    """Inputs with other readers go into a concat too (DenseNet's features, each read by every later concat, all
    in the last one's buffer, the earlier concats then ranges of it), except in the buffers where that would have
    some kernel read and write one buffer (GhostNet's cheap conv reading the primary conv's half): there, only
    inputs the concat alone reads."""
    strict: set[str] = set()  # homes whose concats take only inputs they alone read
    while True:
        views, placed, notes = _propose(ctx, graph, steps, root, within, host, align, strict)
        clashes = _clashes(steps, root, {**within, **views}, placed)
        if not clashes:
            break
        if clashes <= strict:
            return
        strict |= clashes
    within.update(views)
    for step in [s for s in steps if s.node.name in placed]:
        if placed[step.node.name] is None:
            steps.remove(step)
            aliases.append(step.node)
        else:
            step.op = replace(step.op, bind=_skipping(step.op, placed[step.node.name]))
    for node, note in notes:
        node.notes.append(note)


def _propose(ctx: Context, graph: Graph, steps: list, root: dict, within: dict, host: set, align: int,
             strict: set):
    """(new views, concat -> the inputs it no longer copies or None when it copies nothing, notes). Concats from
    the last: an outer concat takes its inputs first, so an inner one (or one over a range of its inputs) sits
    inside it."""
    users = graph.users()
    made = {s.node.name for s in steps if s.where == "gpu"}
    views, placed, notes = {}, {}, []
    itemsize = ctx.precision.itemsize
    for step in reversed([s for s in steps if s.where == "gpu" and s.node.op == "cat"]):
        node = step.node
        tensors, out = node.args[0], node.meta
        dim = node.arg(1, "dim", 0) % out.ndim
        names = [t.name for t in tensors if isinstance(t, Ref) and t.name not in graph.constants]
        if math.prod(out.shape[:dim]) != 1 or len(names) != len(tensors):
            continue  # constants (uploaded by the concat's own op) stay where they are
        inner = math.prod(out.shape[dim + 1:])
        every = {**within, **views}
        if node.name not in every and node.name not in host and all(n in every for n in names):
            spots = [locate(n, root, every) for n in names]
            ends = [off + itemsize * ctx.metas[n].numel() for n, (_, off) in zip(names, spots, strict=True)]
            if len({home for home, _ in spots}) == 1 \
                    and all(a == b[1] for a, b in zip(ends[:-1], spots[1:], strict=True)):
                views[node.name] = spots[0]
                placed[node.name] = None
                notes.append((node, f"a range of {spots[0][0]}: no copy"))
                continue
        mine, start = set(), 0
        shared = locate(node.name, root, every)[0] not in strict
        for name in names:
            size = ctx.metas[name].shape[dim]
            alone = [u.name for u in users.get(name, [])] == [node.name]
            if names.count(name) == 1 and name in made and root.get(name, name) == name and name not in every \
                    and name not in host and (shared or alone) and _fits(ctx, start * inner, size * inner, align):
                views[name] = (node.name, start * inner * itemsize)
                notes.append((graph_node(steps, name), f"written into its slice of {node.name}"))
                mine.add(name)
            start += size
        if mine == set(names):
            placed[node.name] = None
            notes.append((node, "every input written in place: no copy"))
        elif mine:
            placed[node.name] = mine
    return views, placed, notes


def graph_node(steps: list, name: str):
    return next(s.node for s in steps if s.node.name == name)


def _clashes(steps: list, root: dict, within: dict, placed: dict) -> set[str]:
    """The buffers (by owning value) some kernel would read and write at once: WebGPU forbids a buffer bound
    read-only and writable in one dispatch."""
    found = set()
    for step in steps:
        if step.where != "gpu" or placed.get(step.node.name, ()) is None:
            continue
        ins = [n for n in step.op.inputs if n not in placed.get(step.node.name, ())]
        home = locate(step.node.name, root, within)[0]
        if any(locate(n, root, within)[0] == home for n in ins):
            found.add(home)
    return found


def _skipping(op, placed: set):
    """The concat's bind with the inputs already in place left out (kernels.concat takes None for them)."""
    names = list(op.inputs)

    def bind(ins, out):
        return op.bind([None if n in placed else b for n, b in zip(names, ins, strict=True)], out)
    return bind


"""Values planned inside another value's buffer, bound at a byte offset (device.gpu.BufferView): fewer dispatches.

- Concat slabs: a `cat` along a dimension with only size-1 dimensions before it (NCHW channels at batch 1) is
  one contiguous slab per input. An input that a GPU kernel computes and the concat alone reads is written
  straight into its slab, and the concat copies only the other inputs (none: the concat is free).
- Slice views: a slice / select / narrow whose result is dense from an offset (a channel split at batch 1) is
  read in place instead of copied (lower.is_alias shares the whole buffer only when no element is left out).

A view's byte offset must be a multiple of the device's min-storage-buffer-offset-alignment and its size of 4
bytes (a binding's rules); the host (CPU steps, uploads, outputs) never touches a view, as it reads and
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
    itemsize = ctx.precision.itemsize
    return count > 0 and (offset_elems * itemsize) % align == 0 and (count * itemsize) % 4 == 0


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
    users = graph.users()
    made = {s.node.name: s for s in steps if s.where == "gpu"}
    free: set[str] = set()  # concats whose every input is in place
    for step in [s for s in steps if s.where == "gpu" and s.node.op == "cat"]:
        node = step.node
        tensors, out = node.args[0], node.meta
        dim = node.arg(1, "dim", 0) % out.ndim
        if math.prod(out.shape[:dim]) != 1:
            continue
        inner = math.prod(out.shape[dim + 1:])
        names = [t.name for t in tensors if isinstance(t, Ref)]
        placed, start = set(), 0
        for t in tensors:
            size = ctx.metas[t.name].shape[dim]
            if names.count(t.name) == 1 and (t.name in made or t.name in free) and root.get(t.name, t.name) == t.name \
                    and t.name not in within and t.name not in host and [u.name for u in users.get(t.name, [])] == \
                    [node.name] and _fits(ctx, start * inner, size * inner, align):
                within[t.name] = (node.name, start * inner * ctx.precision.itemsize)
                if t.name in made:
                    made[t.name].node.notes.append(f"written into its slice of {node.name}")
                placed.add(t.name)
            start += size
        if not placed:
            continue
        if placed == set(names):
            free.add(node.name)
            node.notes.append("every input written in place: no copy")
            steps.remove(step)
            aliases.append(node)
        else:
            step.op = replace(step.op, bind=_skipping(step.op, placed))


def _skipping(op, placed: set):
    """The concat's bind with the inputs already in place left out (kernels.concat takes None for them)."""
    names = list(op.inputs)

    def bind(ins, out):
        return op.bind([None if n in placed else b for n, b in zip(names, ins, strict=True)], out)
    return bind


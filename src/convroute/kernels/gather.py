"""Gathers whose indices are known at compile time (index.Tensor, index_select, gather, flip, roll, repeat,
reflect / replicate / circular pads): y[t] = x[source(t)], or a fill value, from a table of source offsets
that the caller computes once (the front end runs the op on an arange).

The table is factored so it stays small: y is `outer` blocks of `per` elements, block o reading from
o * ostride; within a block, runs of `inner` consecutive elements start at table[k] (NONE: the run is fill).
`factor` finds the largest outer and inner a full offset table allows: a reflect pad along H of N*C planes
gets outer N*C, inner W and a table of H + 2p starts; one along H and W outer N*C and a start per output
element of a plane.
"""

from __future__ import annotations

import math

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, storage
from convroute.kernels.flat import f32_bits, flat_shader, launch

NONE = 0xFFFFFFFF  # a table entry whose run is fill
PARAMS = ["total", "per", "inner", "ostride", "fill"]
BODY = """  let o = t / P.per;
  let rest = t % P.per;
  let start = table[rest / P.inner];
  if (start == 0xFFFFFFFFu) {
    y[t] = ST(bitcast<f32>(P.fill));
  } else {
    y[t] = x[o * P.ostride + start + rest % P.inner];
  }"""


def _runs(flat: np.ndarray, inner: int) -> bool:
    rows = flat.reshape(-1, inner)
    valid = rows[:, 0] >= 0
    step = np.arange(inner)
    return bool(np.all(rows[valid] == rows[valid, :1] + step) and np.all(rows[~valid] == -1))


def _blocks(starts: np.ndarray, outer: int) -> int | None:
    """The source stride between `outer` blocks of run starts that repeat shifted by it, None if they do not."""
    blocks = starts.reshape(outer, -1)
    valid = blocks[0] >= 0
    if not np.all((blocks >= 0) == valid):
        return None
    if outer == 1 or not valid.any():
        return 0
    first = int(np.argmax(valid))
    stride = int(blocks[1, first] - blocks[0, first])
    want = blocks[0] + np.arange(outer)[:, None] * stride
    return stride if stride >= 0 and np.all(blocks[:, valid] == want[:, valid]) else None


def factor(offsets: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """(outer, ostride, inner, table) of a full table of source offsets (y's shape, -1 for fill)."""
    shape, flat = offsets.shape, offsets.reshape(-1).astype(np.int64)
    inner = next(math.prod(shape[i:]) for i in range(len(shape) + 1) if _runs(flat, math.prod(shape[i:])))
    starts = flat[::inner]
    outer, ostride = 1, 0
    for i in range(len(shape), 0, -1):
        count = math.prod(shape[:i])
        if count and (flat.size // count) % inner == 0:
            stride = _blocks(starts, count)
            if stride is not None:
                outer, ostride = count, stride
                break
    table = starts[: starts.size // outer]
    return outer, ostride, inner, np.where(table < 0, NONE, table).astype(np.uint32)


class Gather:
    """y (`offsets`' shape) = x at `offsets` (a full table in elements of dense x; -1: `fill`)."""

    def __init__(self, gpu: Gpu, offsets: np.ndarray, fill: float = 0.0, precision: Precision = FP32):
        total = int(offsets.size)
        if total and int(offsets.max()) >= NONE:
            raise ValueError(f"a gather from {int(offsets.max()) + 1} elements exceeds u32 indexing")
        self.gpu = gpu
        outer, ostride, inner, table = factor(offsets) if total else (1, 0, 1, np.zeros(1, np.uint32))
        self.values = dict(total=total, per=max(total // outer, 1), inner=inner, ostride=ostride,
                           fill=f32_bits(fill))
        self.table = gpu.upload(table if table.size else np.zeros(1, np.uint32), "gather table", np.uint32)
        self.source = flat_shader(PARAMS, storage("x", "table:u32", "y!"), BODY, precision=precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if not self.values["total"]:
            return []
        return [launch(self.gpu, self.source, PARAMS, self.values, [x, self.table, y])]


class ScatterAdd:
    """y = base with y[d] += v[s] for every (d, s) pair known at compile time (index_put with accumulate: torch's
    fold), or y[d] = v[s] where each d is written at most once (`replace`). As a gather: `offsets` (u32, y's
    size + 1) delimits each output element's run in `sources` (flat indices into v, in the pairs' order), so
    every output sums its own run in a fixed order (no atomics). `has_base`: `bind` gets the base after v;
    without it the base is zeros."""

    def __init__(self, gpu: Gpu, offsets: np.ndarray, sources: np.ndarray, replace: bool = False,
                 has_base: bool = False, precision: Precision = FP32):
        total = int(offsets.size) - 1
        if int(offsets[-1]) >= NONE or total >= NONE:
            raise ValueError(f"a scatter of {int(offsets[-1])} elements into {total} exceeds u32 indexing")
        self.gpu, self.total = gpu, total
        self.offsets = gpu.upload(offsets.astype(np.uint32), "scatter offsets", np.uint32)
        self.sources = gpu.upload(sources.astype(np.uint32) if sources.size else np.zeros(1, np.uint32),
                                  "scatter sources", np.uint32)
        start = "f32(base[t])" if has_base else "0.0"
        step = "acc = f32(v[sources[k]]);" if replace else "acc += f32(v[sources[k]]);"
        body = (f"  var acc = {start};\n  for (var k = offsets[t]; k < offsets[t + 1u]; k++) {{ {step} }}\n"
                "  y[t] = ST(acc);")
        buffers = ["v", *(["base"] if has_base else []), "offsets:u32", "sources:u32", "y!"]
        self.source = flat_shader(["total"], storage(*buffers), body, precision=precision)
        gpu.pipeline(self.source)

    def bind(self, inputs: list, y) -> list[Dispatch]:
        """`inputs`: [v] or, with has_base, [v, base]."""
        if not self.total:
            return []
        return [launch(self.gpu, self.source, ["total"], {"total": self.total},
                       [*inputs, self.offsets, self.sources, y])]

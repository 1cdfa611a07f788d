"""`cat` of dense tensors along any dimension: one copy dispatch per input into its slice of the output.

Seen as [outer, size_along_dim * inner], input i fills columns [offset_i * inner, (offset_i + d_i) * inner)
of every output row. A plain copy of stored elements (float32 or float16, `precision`).
"""

from __future__ import annotations

import math

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, storage
from convroute.kernels.flat import flat_shader, launch

PARAMS = ["total", "row_in", "row_out", "offset"]
BODY = "  y[(t / P.row_in) * P.row_out + P.offset + t % P.row_in] = x[t];"


class Concat:
    def __init__(self, gpu: Gpu, shapes: list, dim: int, precision: Precision = FP32):
        rank = len(shapes[0])
        dim = dim % rank
        self.gpu = gpu
        outer, inner = math.prod(shapes[0][:dim]), math.prod(shapes[0][dim + 1:])
        total_along = sum(s[dim] for s in shapes)
        self.parts = []
        offset = 0
        for s in shapes:
            self.parts.append(dict(total=outer * s[dim] * inner, row_in=s[dim] * inner, row_out=total_along * inner,
                                   offset=offset * inner))
            offset += s[dim]
        self.source = flat_shader(PARAMS, storage("x", "y!"), BODY, precision=precision)
        gpu.pipeline(self.source)

    def bind(self, xs: list, y) -> list[Dispatch]:
        """One copy per input; None for an input already in its slice of `y` (its producer wrote it there)."""
        return [launch(self.gpu, self.source, PARAMS, values, [x, y])
                for x, values in zip(xs, self.parts, strict=True) if values["total"] and x is not None]


MAX_VIEW_INPUTS = 6  # with y, within WebGPU's guaranteed 8 storage buffers a stage


class ConcatView:
    """y (dense, `out_shape`) = a view (`strides` in elements, offset 0) of the concat of dense tensors of
    `shapes` along `dim`, in one dispatch that reads every input where the concat sits in the view's index
    space: a concat followed by a permute (ShuffleNet's channel shuffle) without the concat's copies. Shapes,
    strides and slab bounds are WGSL constants: one pipeline per layer shape, and no branch on a uniform
    (which lavapipe would inline by recompiling, see common.storage_frame)."""

    def __init__(self, gpu: Gpu, shapes: list, dim: int, out_shape, strides, precision: Precision = FP32):
        if not 1 <= len(shapes) <= MAX_VIEW_INPUTS:
            raise ValueError(f"a concat view reads 1 to {MAX_VIEW_INPUTS} tensors, got {len(shapes)}")
        if len(strides) != len(out_shape) or any(s < 0 for s in strides):
            raise ValueError(f"a concat view needs a non-negative stride per output dim, got {tuple(strides)} for "
                             f"shape {tuple(out_shape)}")
        self.gpu, self.total = gpu, math.prod(out_shape)
        if self.total >= 2**32:
            raise ValueError(f"a concat view of {self.total} elements exceeds u32 indexing")
        dim %= len(shapes[0])
        inner = math.prod(shapes[0][dim + 1:])
        row = sum(s[dim] for s in shapes) * inner
        lines = ["  var rest = t;", "  var j = 0u;"]
        for size, stride in reversed([(int(n), int(s)) for n, s in zip(out_shape, strides, strict=True) if n > 1]):
            lines += [f"  j += (rest % {size}u) * {stride}u;", f"  rest = rest / {size}u;"]
        lines += [f"  let o = j / {row}u;", f"  let col = j % {row}u;"]
        start = 0
        for i, s in enumerate(shapes):
            width = s[dim] * inner
            test = f"if (col < {start + width}u) " if i < len(shapes) - 1 else ""
            lines.append(f"  {'else ' if i else ''}{test}{{ y[t] = x{i}[o * {width}u + col - {start}u]; }}")
            start += width
        self.source = flat_shader(["total"], storage(*[f"x{i}" for i in range(len(shapes))], "y!"),
                                  "\n".join(lines), precision=precision)
        gpu.pipeline(self.source)

    def bind(self, xs: list, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, ["total"], {"total": self.total}, [*xs, y])] if self.total else []

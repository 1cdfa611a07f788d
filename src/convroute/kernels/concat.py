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

"""`cat` of dense tensors along any dimension: one copy dispatch per input into its slice of the output.

Seen as [outer, size_along_dim * inner], input i fills columns [offset_i * inner, (offset_i + d_i) * inner)
of every output row.
"""

from __future__ import annotations

import math

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ENTRY_ARGS, FLAT_INDEX, pack, uniform_block

WG = 64
PARAMS = ["total", "row_in", "row_out", "offset"]

SHADER = """
const WG: u32 = {wg}u;
{params}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size({wg})
fn main({args}) {{
  let t = {flat};
  if (t >= P.total) {{ return; }}
  let row = t / P.row_in;
  y[row * P.row_out + P.offset + t % P.row_in] = x[t];
}}
"""


class Concat:
    def __init__(self, gpu: Gpu, shapes: list, dim: int):
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
        self.source = SHADER.format(wg=WG, params=uniform_block(PARAMS), args=ENTRY_ARGS, flat=FLAT_INDEX)
        gpu.pipeline(self.source)

    def bind(self, xs: list, y) -> list[Dispatch]:
        out = []
        for x, values in zip(xs, self.parts, strict=True):
            if values["total"]:
                u = self.gpu.uniform(pack(PARAMS, values))
                out.append(self.gpu.dispatch(self.source, [u, x, y], values["total"], WG))
        return out

"""Batched GEMM for CPU adapters (lavapipe/llvmpipe): register tiles, no workgroup memory, no barriers.

llvmpipe runs an invocation as one lane of a 256-bit SIMD vector (8 lanes). In Mesa 22.3 every storage-buffer
and workgroup-memory access is a loop over the lanes with a scalar, bounds-checked load or store per component,
and a workgroup barrier is a coroutine switch: staging tiles through workgroup memory, as gemm_tiles does for GPUs,
costs more memory operations than it saves. Here each invocation keeps a tm x tn tile of sums in registers and
reads its A and B vec4s straight from the storage buffers (the CPU caches do the staging): per K step tm/4 + tn/4
vec4 loads feed tm * tn FMAs, and that ratio sets the speed.

Same contract as gemm.BatchedGemm (Winograd's transform positions): Out[b] = A[b] x B[b] + bias[b] for b < batches,
Out a plain f32 [batches, M, cols] buffer; B is a [batches, K, cs4] array of vec4 columns bound at binding 4. No
split-K (a CPU runs only as many workgroups at once as it has cores, and every launch here has plenty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, ceil_div, pack, uniform_block

WG = 8  # one SIMD vector of llvmpipe: workgroups are the unit of its thread pool, so many small ones balance best
PARAMS = ["m", "k", "m4", "cols", "cs4", "tiles_m", "tiles_n", "total", "batches", "a_stride"]


@dataclass(frozen=True)
class CpuTile:
    tm: int  # rows (output channels) per invocation, a multiple of 4
    tn: int  # columns per invocation, a multiple of 4

    def __str__(self) -> str:
        return f"{self.tm}x{self.tn}"


TILES = (CpuTile(16, 16), CpuTile(16, 8), CpuTile(16, 4), CpuTile(8, 4))


def choose_tile(m: int, cols: int, batches: int) -> CpuTile:
    """The largest tile that does not waste most of itself on padding and leaves >= 64 invocations."""
    for tile in TILES:
        waste = (ceil_div(cols, tile.tn) * tile.tn - cols) / cols
        if waste <= 0.25 and batches * ceil_div(m, tile.tm) * ceil_div(cols, tile.tn) >= 64:
            return tile
    return TILES[-1]


def generate(tile: CpuTile, precision: Precision = FP32) -> str:
    rg, cg = tile.tm // 4, tile.tn // 4
    out = [f"""{precision.wgsl()}
{uniform_block(PARAMS)}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> wa: array<vec4<ST>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<vec4<ST>>;
@compute @workgroup_size({WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let g = (wid.x + wid.y * nwg.x) * {WG}u + lid;
  if (g >= P.total) {{ return; }}
  let tni = g % P.tiles_n;
  let rest = g / P.tiles_n;
  let tmi = rest % P.tiles_m;
  let batch = rest / P.tiles_m;
  let abase = batch * P.a_stride + tmi * {rg}u;
  let bbase = batch * P.k * P.cs4;"""]
    emit = out.append
    for c in range(cg):  # columns past cs are never stored: clamp their loads into the row
        emit(f"  let bc{c} = bbase + min(tni * {cg}u + {c}u, P.cs4 - 1u);")
    # s{j}_{r}: rows (tmi * rg + r) * 4 .. +3 of the invocation's column j
    sums = [(j, r) for j in range(tile.tn) for r in range(rg)]
    out += [f"  var s{j}_{r} = vec4<f32>(0.0);" for j, r in sums]
    emit("  for (var k = 0u; k < P.k; k++) {")
    out += [f"    let a{r} = vec4<f32>(wa[abase + k * P.m4 + {r}u]);" for r in range(rg)]
    out += [f"    let b{c} = vec4<f32>(b[bc{c} + k * P.cs4]);" for c in range(cg)]
    out += [f"    s{j}_{r} = fma(a{r}, vec4<f32>(b{j // 4}.{'xyzw'[j % 4]}), s{j}_{r});" for j, r in sums]
    emit("  }")
    emit(f"  let m0 = tmi * {tile.tm}u;")
    emit("  let obase = batch * P.m;")
    for j in range(tile.tn):
        emit(f"  {{ let j = tni * {tile.tn}u + {j}u; if (j < P.cols) {{")
        for r in range(rg):
            emit(f"    for (var e = 0u; e < 4u; e++) {{ let m = m0 + {4 * r}u + e; if (m < P.m) {{ "
                 f"y[(obase + m) * P.cols + j] = s{j}_{r}[e] + bias[obase + m]; }} }}")
        emit("  } }")
    emit("}")
    return "\n".join(out)


class BatchedGemm:
    """gemm.BatchedGemm's interface (plan / out_bytes / dispatch) with CPU register tiles."""

    def __init__(self, gpu: Gpu, weights: np.ndarray, bias: np.ndarray | None, precision: Precision = FP32):
        """weights: [batches, M, K] (stored as `precision`'s dtype); bias: [batches, M] or None."""
        self.gpu, self.precision = gpu, precision
        self.batches, self.m, self.k = weights.shape
        m_pad = ceil_div(self.m, max(t.tm for t in TILES)) * max(t.tm for t in TILES)
        a = np.zeros((self.batches, self.k, m_pad), np.float32)
        a[:, :, :self.m] = np.transpose(weights, (0, 2, 1))  # K-major: one vec4 holds 4 rows at one k
        self.m4 = m_pad // 4
        self.a_stride = self.k * self.m4
        self.w_buf = gpu.upload(a, "packed weight matrices", precision.numpy)
        bias = np.zeros((self.batches, self.m), np.float32) if bias is None else bias
        self.b_buf = gpu.upload(np.asarray(bias, np.float32).reshape(self.batches, self.m), "bias")

    def plan(self, cols: int, max_out_bytes: int) -> tuple[CpuTile, int]:
        return choose_tile(self.m, cols, self.batches), 1

    def out_bytes(self, cols: int, splits: int) -> int:
        return 4 * splits * self.batches * self.m * cols

    def dispatch(self, out, b_buffers: list, cols: int, plan: tuple[CpuTile, int], extra: dict) -> Dispatch:
        tile = plan[0]
        tiles_m, tiles_n = ceil_div(self.m, tile.tm), ceil_div(cols, tile.tn)
        total = self.batches * tiles_m * tiles_n
        values = dict(m=self.m, k=self.k, m4=self.m4, cols=cols, cs4=extra["cs4"], tiles_m=tiles_m, tiles_n=tiles_n,
                      total=total, batches=self.batches, a_stride=self.a_stride)
        u = self.gpu.uniform(pack(PARAMS, values))
        return self.gpu.dispatch(generate(tile, self.precision), [u, self.w_buf, self.b_buf, out, *b_buffers],
                                 total, WG)

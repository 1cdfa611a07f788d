"""Register-tiled GEMM shared by `im2col` and `pointwise`: Out[C_out, cols] = W[C_out, K] x B[K, cols].

Column j of a launch is output pixel `col0 + j` of the batch: image (col0 + j) // P, pixel (col0 + j) % P,
so the result lands in NCHW directly. A workgroup of 16x16 invocations computes a 64x64 output tile, each
invocation a 4 (channels) x 4 (pixels) block; K advances 16 at a time through workgroup-memory tiles, each
invocation loading one vec4 of weights and one vec4 of B per step.

The B operand is a template: a caller supplies its bindings, per-invocation setup (run once, for the four
columns starting at `bcol` that this invocation loads) and a vec4 load expression for row `k`. Weights are
prepacked K-major, [K_pad, M_pad] with zeros past C_out and K, so weight loads need no bounds checks; B rows
past K must read as zero (0 * NaN would poison the sum).
"""

from __future__ import annotations

import numpy as np

from convroute.kernels.common import ceil_div

TILE = 64  # output tile is TILE x TILE
BK = 16  # K step
THREADS = 256
GEMM_PARAMS = ["m", "k", "k_pad", "m4", "tiles_m", "tiles", "cols", "col0", "p"]

SHADER = """
const BK: u32 = {bk}u;
{params}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> wa: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{b_decl}
var<workgroup> As: array<vec4<f32>, {threads}>;
var<workgroup> Bs: array<vec4<f32>, {threads}>;
{act}
@compute @workgroup_size({threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let g = wid.x + wid.y * nwg.x;
  if (g >= P.tiles) {{ return; }}
  let tm = g % P.tiles_m;
  let tn = g / P.tiles_m;
  let tx = lid % 16u;
  let ty = lid / 16u;
  let bcol = tn * {tile}u + tx * 4u;
  {b_setup}
  var acc: array<vec4<f32>, 4>;
  var k = ty;
  var a_next = wa[k * P.m4 + tm * 16u + tx];
  var b_next = {b_load};
  for (var k0 = 0u; k0 < P.k_pad; k0 += BK) {{
    As[lid] = a_next;
    Bs[lid] = b_next;
    workgroupBarrier();
    k = k0 + BK + ty;
    if (k < P.k_pad) {{  // the next step's loads are in flight while this step multiplies
      a_next = wa[k * P.m4 + tm * 16u + tx];
      b_next = {b_load};
    }}
    for (var kk = 0u; kk < BK; kk++) {{
      let a = As[kk * 16u + ty];
      let b = Bs[kk * 16u + tx];
      acc[0] += a * b.x;
      acc[1] += a * b.y;
      acc[2] += a * b.z;
      acc[3] += a * b.w;
    }}
    workgroupBarrier();
  }}
  let m0 = tm * {tile}u + ty * 4u;
  for (var q = 0u; q < 4u; q++) {{
    let j = tn * {tile}u + tx * 4u + q;
    if (j >= P.cols) {{ break; }}
    let gj = P.col0 + j;
    let base = (gj / P.p) * P.m * P.p + gj % P.p;
    for (var i = 0u; i < 4u; i++) {{
      let m = m0 + i;
      if (m < P.m) {{ y[base + m * P.p] = act(acc[q][i] + bias[m]); }}
    }}
  }}
}}
"""


def shader(b_decl: str, b_setup: str, b_load: str, params: str, act: str) -> str:
    """WGSL of the tiled GEMM; B bindings start at binding 4 (after uniform, weights, bias, output)."""
    return SHADER.format(bk=BK, params=params, b_decl=b_decl, threads=THREADS, act=act, tile=TILE,
                         b_setup=b_setup, b_load=b_load)


def pack_weights(weight_oc_first: np.ndarray) -> tuple[np.ndarray, int, int]:
    """[C_out, ...] -> K-major [K_pad, M_pad] float32 with zero padding; returns (matrix, K, K_pad)."""
    m = weight_oc_first.shape[0]
    a = weight_oc_first.reshape(m, -1)
    k = a.shape[1]
    k_pad, m_pad = ceil_div(k, BK) * BK, ceil_div(m, TILE) * TILE
    packed = np.zeros((k_pad, m_pad), np.float32)
    packed[:k, :m] = a.T
    return packed, k, k_pad


def launch_values(m: int, k: int, k_pad: int, cols: int, col0: int, p: int) -> dict:
    """Uniform values of one GEMM launch over `cols` columns starting at batch column `col0`."""
    tiles_m = ceil_div(m, TILE)
    tiles = tiles_m * ceil_div(cols, TILE)
    return dict(m=m, k=k, k_pad=k_pad, m4=ceil_div(m, TILE) * TILE // 4, tiles_m=tiles_m, tiles=tiles,
                cols=cols, col0=col0, p=p)


def launch_threads(values: dict) -> int:
    """Invocations of a launch (whole workgroups), for Gpu.dispatch's folded grid."""
    return values["tiles"] * THREADS

"""`linear`: y[m, :] = act(x[m, :] @ W^T + b) for x [M, K] and W [O, K] (also addmm / mm with a
constant matrix). Four kernels: `Linear`, where each invocation computes R rows (R = min(M, 4), unrolled) x
4 output features (CPU adapters' few rows; weights past one binding); `RegisterLinear`, the register-tile GEMM
of CPU adapters (>= 4 rows: ConvNeXt's token MLPs ran 2-4x faster than on `Linear` on lavapipe);
`GemmLinear`, the tiled GEMM (GPUs, many rows);
`Gemv` (GPUs, at most 4 rows: a classifier at batch 1), a workgroup per 4 output features whose invocations
split K (four loads in flight each: one at a time left the H100 waiting on memory) and add their sums in
workgroup memory, so one dispatch does what the GEMM needs a K split and a reduce dispatch for.

The weight is prepacked once in fours of output features: on GPUs as [K, ceil(O/4)] vec4, so that
neighbouring invocations read neighbouring vec4s; on CPU adapters (lavapipe) as [ceil(O/4), K] vec4,
so that each invocation streams contiguous memory (5-7x faster there). When the weight exceeds the
device's largest storage binding (VGG's 25088 x 4096 classifier is 411 MB) it is split into column
chunks, each its own buffer. K is walked in slices of at most K_SLICE per dispatch (later slices add
to y; the last applies the activation), so no invocation loops more than lavapipe allows (65535
iterations). With a float16 `precision`, x, y and the weight are stored as f16 and the sums are f32
(between K slices the running sums pass through y, so they are rounded to f16 there).
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels import gemm, gemm_cpu
from convroute.kernels.base import CPU_LOOP_LIMIT
from convroute.kernels.common import (
    ENTRY_ARGS,
    FLAT_INDEX,
    FP32,
    Precision,
    ceil_div,
    constants,
    pack,
    storage,
    uniform_block,
)
from convroute.kernels.direct_cpu import FORMATS, ROW_BITS, TEX_DIM, TEX_LAYERS, TextureLayout, read_texture
from convroute.kernels.elementwise import act_source
from convroute.kernels.flat import WG, flat_shader, launch

K_SLICE = 16384
PARAMS = ["m", "k", "o", "ob", "ob0", "k0", "kn", "first", "last", "total"]

BODY = """  let jb = t % P.ob;
  let m0 = (t / P.ob) * R;
  let col = (P.ob0 + jb) * 4u;
  var acc: array<vec4<f32>, R>;
  for (var r = 0u; r < R; r++) {
    let row = min(m0 + r, P.m - 1u) * P.o;
    if (P.first == 1u) {
      acc[r] = bias[P.ob0 + jb];
    } else {
      for (var i = 0u; i < 4u; i++) { if (col + i < P.o) { acc[r][i] = f32(y[row + col + i]); } }
    }
  }
ROW_OFFSETS
  for (var k = P.k0; k < P.k0 + P.kn; k++) {
    let wv = vec4<f32>(wt[W_INDEX]);
FMAS
  }
  for (var r = 0u; r < R; r++) {
    if (m0 + r >= P.m) { break; }
    for (var i = 0u; i < 4u; i++) {
      if (col + i < P.o) {
        let v = acc[r][i];
        y[(m0 + r) * P.o + col + i] = ST(select(v, act(v), P.last == 1u));
      }
    }
  }"""


def pack_fours(weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """[O, K] weight -> [ceil(O/4), K, 4] float32 (fours of output features, zeros past O) and the bias padded
    to as many features (zeros without one)."""
    weight = np.asarray(weight, np.float32)
    if weight.ndim != 2:
        raise ValueError(f"linear weight must be 2-D [out, in], got shape {weight.shape}")
    o, k = weight.shape
    blocks = ceil_div(o, 4)
    padded = np.zeros((blocks * 4, k), np.float32)
    padded[:o] = weight
    b = np.zeros(blocks * 4, np.float32)
    if bias is not None:
        b[:o] = np.asarray(bias, np.float32).reshape(o)
    return padded.reshape(blocks, 4, k).transpose(0, 2, 1), b


class Linear:
    def __init__(self, gpu: Gpu, weight: np.ndarray, bias: np.ndarray | None, act=None, k_inner=None,
                 precision: Precision = FP32):
        self.gpu, self.act, self.precision = gpu, act, precision
        packed, b = pack_fours(weight, bias)
        blocks, self.k = packed.shape[:2]
        self.o = np.asarray(weight).shape[0]
        self.k_inner = gpu.profile.family == "cpu" if k_inner is None else k_inner
        if not self.k_inner:
            packed = packed.transpose(1, 0, 2)  # [K, blocks, 4]
        per_block = self.k * 4 * precision.itemsize
        if per_block > gpu.profile.max_binding_bytes:
            raise ValueError(f"linear layer with {self.k} input features needs {per_block} bytes per 4 outputs, "
                             f"more than the device's largest storage binding")
        chunk = max(1, min(blocks, gpu.profile.max_binding_bytes // per_block))
        self.chunks = []  # (first block, blocks, weight buffer)
        for b0 in range(0, blocks, chunk):
            nb = min(chunk, blocks - b0)
            part = np.ascontiguousarray(packed[b0:b0 + nb] if self.k_inner else packed[:, b0:b0 + nb])
            self.chunks.append((b0, nb, gpu.upload(part, "linear weight", precision.numpy)))
        self.bias = gpu.upload(b, "linear bias")

    @property
    def flops_per_row(self) -> int:
        return 2 * self.k * self.o

    def source(self, rows: int) -> str:
        """The shader for R = `rows` rows per invocation, its loads unrolled."""
        offsets = "\n".join(f"  let x{r} = min(m0 + {r}u, P.m - 1u) * P.k;" for r in range(rows))
        fmas = "\n".join(f"    acc[{r}] += wv * f32(x[x{r} + k]);" for r in range(rows))
        body = BODY.replace("ROW_OFFSETS", offsets).replace("FMAS", fmas).replace(
            "W_INDEX", "jb * P.k + k" if self.k_inner else "k * P.ob + jb")
        helpers = f"const R: u32 = {rows}u;\n" + act_source(self.act)
        return flat_shader(PARAMS, storage("x", "wt:vec4<ST>", "bias:vec4<f32>", "y!"), body, helpers, self.precision)

    def bind(self, x, y, m: int) -> list[Dispatch]:
        rows = min(4, m)
        source = self.source(rows)
        out = []
        for b0, nb, w in self.chunks:
            for k0 in range(0, self.k, K_SLICE):
                kn = min(K_SLICE, self.k - k0)
                values = dict(m=m, k=self.k, o=self.o, ob=nb, ob0=b0, k0=k0, kn=kn, first=int(k0 == 0),
                              last=int(k0 + kn == self.k), total=ceil_div(m, rows) * nb)
                out.append(launch(self.gpu, source, PARAMS, values, [x, w, self.bias, y]))
        return out


GEMM_B_DECL = """
@group(0) @binding(4) var<storage, read> x: array<ST>;
var<private> b_off: array<u32, 4>;
var<private> b_ok: array<bool, 4>;
fn load_b(k: u32) -> vec4<AT> {
  var v = vec4<AT>(0.0);
  if (k >= P.k) { return v; }
  for (var q = 0u; q < 4u; q++) { if (b_ok[q]) { v[q] = AT(x[b_off[q] + k]); } }
  return v;
}
"""
GEMM_B_SETUP = """
  for (var q = 0u; q < 4u; q++) {
    b_ok[q] = bcol + q < P.cols;
    b_off[q] = select(0u, (bcol + q) * P.k, b_ok[q]);
  }
"""


class GemmLinear:
    """Linear as the tiled GEMM: Out[O, rows] = W[O, K] x X^T, written row-major [rows, O] (the GEMM's
    NCHW store with one pixel per image). Few rows (batch 1) get K split across workgroups, which the
    one-invocation-per-four-features kernel above cannot do. For GPUs whose binding holds the weight."""

    def __init__(self, gpu: Gpu, weight: np.ndarray, bias: np.ndarray | None, act=None, precision: Precision = FP32):
        weight = np.asarray(weight, np.float32)
        self.o, self.k = weight.shape
        bias = np.zeros(self.o, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(self.o)
        self.gemm = gemm.Gemm(gpu, weight, bias, act_source(act), GEMM_B_DECL, GEMM_B_SETUP, "load_b(k)", [],
                              precision)

    @staticmethod
    def fits(gpu: Gpu, weight_shape, precision: Precision = FP32) -> bool:
        o, k = weight_shape
        padded = ceil_div(k, gemm.K_ALIGN) * gemm.K_ALIGN * ceil_div(o, gemm.M_ALIGN) * gemm.M_ALIGN
        padded *= precision.itemsize
        return gpu.profile.gemm_style == "workgroup" and padded <= gpu.profile.max_binding_bytes

    @property
    def flops_per_row(self) -> int:
        return 2 * self.k * self.o

    def bind(self, x, y, m: int) -> list[Dispatch]:
        return self.gemm.dispatches(y, [x], m, 0, 1, {})


class RegisterLinear:
    """Linear as gemm_cpu's register tiles: Out[O, rows] = W[O, K] x X^T with B gathered from the rows of x
    (gemm_cpu.Rows) and stored transposed, so y is [rows, O] as written. For CPU adapters and >= REGISTER_ROWS
    rows (fewer leave most of a tile's columns idle: `Linear` is faster there)."""

    def __init__(self, gpu: Gpu, weight: np.ndarray, bias: np.ndarray | None, act=None, precision: Precision = FP32):
        weight = np.asarray(weight, np.float32)
        self.o, self.k = weight.shape
        bias = None if bias is None else np.asarray(bias, np.float32).reshape(1, self.o)
        self.gemm = gemm_cpu.RegisterGemm(gpu, weight[None], bias, precision, act_source(act))

    @staticmethod
    def fits(gpu: Gpu, weight_shape, rows: int, precision: Precision = FP32) -> bool:
        o, k = weight_shape
        padded = k * gemm_cpu.padded_rows(o) * precision.itemsize
        return rows >= REGISTER_ROWS and gemm_cpu.wanted(gpu, k) and padded <= gpu.profile.max_binding_bytes

    @property
    def flops_per_row(self) -> int:
        return 2 * self.k * self.o

    def bind(self, x, y, m: int) -> list[Dispatch]:
        return [self.gemm.dispatch(y, x, 1, m, 0, 0, bsrc=gemm_cpu.Rows, transposed=True)]


TEX_UNROLL = 4  # texels per step of TexLinear's K loop


class TexLinear:
    """Linear for fewer than REGISTER_ROWS rows on CPU adapters: the weight in a texture, an invocation per 4
    output features streaming their texture row of each K segment, every row of x unrolled. lavapipe reads texels at
    about twice the rate of storage vec4s (4096 x 4096: 15.4 vs 6.8 GB/s; NOTES session 18). Flat texture row
    jb * S + s holds output block jb's texels k of segment s (S segments of KS <= TEX_DIM texels, the last one
    short where S * KS > K). Sizes are WGSL constants (no parameter block)."""

    def __init__(self, gpu: Gpu, weight: np.ndarray, bias: np.ndarray | None, act=None, precision: Precision = FP32):
        self.gpu, self.act, self.precision = gpu, act, precision
        packed, b = pack_fours(weight, bias)  # [OB, K, 4]
        self.blocks, self.k = packed.shape[:2]
        self.o = np.asarray(weight).shape[0]
        self.segments, self.ks = tex_segments(self.k)
        rows = self.blocks * self.segments
        height, layers = TextureLayout.shape(rows)
        texels = np.zeros((layers * height, self.ks, 4), precision.numpy)
        texels[:rows].reshape(self.blocks, self.segments * self.ks, 4)[:, :self.k] = packed
        self.weight = gpu.texture_of(texels.reshape(layers, height, self.ks, 4), FORMATS[precision.dtype],
                                     "linear weight texels")
        self.bias = gpu.upload(b, "linear bias")

    @staticmethod
    def fits(gpu: Gpu, weight_shape, rows: int) -> bool:
        o, k = weight_shape
        segments, ks = tex_segments(k)
        loops = segments * (ks // TEX_UNROLL + TEX_UNROLL)
        return (gpu.profile.texture_paths and rows < REGISTER_ROWS and loops < CPU_LOOP_LIMIT
                and TextureLayout.shape(ceil_div(o, 4) * segments)[1] <= TEX_LAYERS)

    @property
    def flops_per_row(self) -> int:
        return 2 * self.k * self.o

    def source(self, rows: int) -> str:
        step = "\n".join(f"      let w{u} = textureLoad(wt, vec2<u32>(q + {u}u, tr), tl);" for u in range(TEX_UNROLL))
        step += "\n" + "\n".join(f"      acc[{r}] += " + " + ".join(f"w{u} * f32(x[x{r} + k + {u}u])"
                                                              for u in range(TEX_UNROLL)) + ";" for r in range(rows))
        tail = "\n".join(f"      acc[{r}] += w * f32(x[x{r} + k]);" for r in range(rows))
        offsets = "\n".join(f"  let x{r} = {r * self.k}u;" for r in range(rows))
        sizes = constants(dict(K=self.k, KS=self.ks, S=self.segments, OB=self.blocks, O=self.o, WG=WG))
        return self.precision.wgsl() + sizes + act_source(self.act) + f"""
{read_texture(0, "wt", FORMATS[self.precision.dtype])}
{storage("x", "bias:vec4<f32>", "y!")}
@compute @workgroup_size({WG})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= OB) {{ return; }}
  let jb = t;
{offsets}
  var acc: array<vec4<f32>, {rows}>;
  for (var r = 0u; r < {rows}u; r++) {{ acc[r] = bias[jb]; }}
  for (var s = 0u; s < S; s++) {{
    let row = jb * S + s;
    let tr = row & {TEX_DIM - 1}u;
    let tl = row >> {ROW_BITS}u;
    let k0 = s * KS;
    let kn = min(KS, K - k0);
    var q = 0u;
    for (; q + {TEX_UNROLL}u <= kn; q += {TEX_UNROLL}u) {{
      let k = k0 + q;
{step}
    }}
    for (; q < kn; q++) {{
      let k = k0 + q;
      let w = textureLoad(wt, vec2<u32>(q, tr), tl);
{tail}
    }}
  }}
  for (var r = 0u; r < {rows}u; r++) {{
    for (var i = 0u; i < 4u; i++) {{ if (jb * 4u + i < O) {{ y[r * O + jb * 4u + i] = ST(act(acc[r][i])); }} }}
  }}
}}
"""

    def bind(self, x, y, m: int) -> list[Dispatch]:
        if not 1 <= m < REGISTER_ROWS:
            raise ValueError(f"TexLinear takes 1 to {REGISTER_ROWS - 1} rows, got {m}")
        return [self.gpu.dispatch(self.source(m), [self.weight, x, self.bias, y], self.blocks, WG)]


def tex_segments(k: int) -> tuple[int, int]:
    """(S, KS): K split into S texture rows of KS texels each, KS a multiple of TEX_UNROLL within TEX_DIM."""
    segments = ceil_div(k, TEX_DIM - TEX_UNROLL)
    return segments, ceil_div(ceil_div(k, segments), TEX_UNROLL) * TEX_UNROLL


REGISTER_ROWS = 4
GEMV_ROWS = 4  # Gemv's most rows (one workgroup computes all rows of its 4 features)
GEMV_WG = 256
GEMV_PARAMS = ["m", "k", "o", "ob"]
GEMV = """
const R: u32 = {rows}u;
const WG: u32 = {wg}u;
{params}
@group(0) @binding(0) var<uniform> P: Params;
{buffers}
{act}
var<workgroup> part: array<vec4<f32>, {slots}>;
@compute @workgroup_size({wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let jb = wid.x + wid.y * nwg.x;
  let live = jb < P.ob;
  let w0 = select(0u, jb, live) * P.k;
  var acc: array<vec4<f32>, R>;
  for (var r = 0u; r < R; r++) {{ acc[r] = vec4<f32>(0.0); }}
  var k = lid;
  for (; live && k + 3u * WG < P.k; k += 4u * WG) {{
    let wv0 = vec4<f32>(wt[w0 + k]);
    let wv1 = vec4<f32>(wt[w0 + k + WG]);
    let wv2 = vec4<f32>(wt[w0 + k + 2u * WG]);
    let wv3 = vec4<f32>(wt[w0 + k + 3u * WG]);
{fmas4}
  }}
  for (; live && k < P.k; k += WG) {{
    let wv = vec4<f32>(wt[w0 + k]);
{fmas}
  }}
  for (var r = 0u; r < R; r++) {{ part[r * WG + lid] = acc[r]; }}
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {{
    if (lid < s) {{
      for (var r = 0u; r < R; r++) {{ part[r * WG + lid] += part[r * WG + lid + s]; }}
    }}
    workgroupBarrier();
  }}
  if (live && lid < 4u * R) {{
    let r = lid / 4u;
    let i = lid % 4u;
    let col = jb * 4u + i;
    if (r < P.m && col < P.o) {{ y[r * P.o + col] = ST(act(part[r * WG][i] + bias[jb][i])); }}
  }}
}}
"""


class Gemv:
    """Linear for at most GEMV_ROWS rows on GPUs: a workgroup per 4 output features, K split over its
    invocations (neighbouring invocations read neighbouring vec4s of the weight, packed [O/4, K, 4])."""

    def __init__(self, gpu: Gpu, weight: np.ndarray, bias: np.ndarray | None, act=None, precision: Precision = FP32):
        self.gpu, self.act, self.precision = gpu, act, precision
        packed, b = pack_fours(weight, bias)
        self.blocks, self.k = packed.shape[:2]
        self.o = np.asarray(weight).shape[0]
        self.weight = gpu.upload(np.ascontiguousarray(packed), "linear weight", precision.numpy)
        self.bias = gpu.upload(b, "linear bias")

    @staticmethod
    def fits(gpu: Gpu, weight_shape, rows: int, precision: Precision = FP32) -> bool:
        o, k = weight_shape
        return (gpu.profile.gemm_style == "workgroup" and rows <= GEMV_ROWS
                and ceil_div(o, 4) * 4 * k * precision.itemsize <= gpu.profile.max_binding_bytes)

    @property
    def flops_per_row(self) -> int:
        return 2 * self.k * self.o

    def source(self, rows: int) -> str:
        fmas = "\n".join(f"    acc[{r}] += wv * f32(x[{r}u * P.k + k]);" for r in range(rows))
        fmas4 = "\n".join(f"    acc[{r}] += wv{i} * f32(x[{r}u * P.k + k + {i}u * WG]);"
                           for i in range(4) for r in range(rows))
        return self.precision.wgsl() + GEMV.format(
            rows=rows, wg=GEMV_WG, params=uniform_block(GEMV_PARAMS), slots=rows * GEMV_WG,
            buffers=storage("x", "wt:vec4<ST>", "bias:vec4<f32>", "y!"), act=act_source(self.act), fmas=fmas,
            fmas4=fmas4)

    def bind(self, x, y, m: int) -> list[Dispatch]:
        if not 1 <= m <= GEMV_ROWS:
            raise ValueError(f"Gemv takes 1 to {GEMV_ROWS} rows, got {m}")
        u = self.gpu.uniform(pack(GEMV_PARAMS, dict(m=m, k=self.k, o=self.o, ob=self.blocks)))
        return [self.gpu.dispatch(self.source(m), [u, x, self.weight, self.bias, y], self.blocks * GEMV_WG,
                                  GEMV_WG)]

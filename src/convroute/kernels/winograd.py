"""`winograd2` / `winograd4`: Winograd F(2x2,3x3) and F(4x4,3x3) for 3x3, stride-1, dilation-1 dense convs.

Output tiles of m x m come from (m+2) x (m+2) input tiles: Y = A^T [U (.) V] A with U = G g G^T (per output/
input channel pair, on the host, once) and V = B^T d B (per input channel and tile). The element-wise product
summed over input channels is, for each of the (m+2)^2 transform positions xi, one GEMM:
Mx[xi] = U[xi] (C_out x C_in) x V[xi] (C_in x tiles). Three dispatches per chunk of tiles:
1. input transform: one invocation per (channel, tile), consecutive invocations on consecutive tiles of one
   channel; reads its (m+2)^2 patch (zero outside the input) and writes V[xi][c][tile] for every xi.
2. gemm.BatchedGemm over all positions in one launch (raw sums; with K split, one slice per split).
3. output transform: one invocation per (output channel, tile): sums the K splits, A^T Mx A, bias (and the
   residual, when built with one), the activation, stores the m x m outputs inside Ho x Wo into NCHW.
NaN and Inf: a non-finite input smears over a whole tile in the transforms (and an overflow in them would
turn finite data into Inf), so a tile whose sums are not all finite is recomputed directly from x and the
original weights by the output transform: the result is then what PyTorch gives, element by element.
The transform matrices are built from the interpolation points in numpy (Toom-Cook, last point infinity)
and unrolled into the WGSL with the zero terms dropped. F(4x4,3x3) uses the points 0, 1, -1, 1/2, -2: their
B and A entries are dyadic (exact in fp32) and the relative error stays near 2e-6 on 512-channel layers
(0, +-1, +-2 gives about 3e-6). V and Mx are sized per bind; when they would exceed one binding the tiles go
in chunks. With dtype float16, x, y, U, V and the fallback's weights are f16 and the transforms compute in
f32; Mx stays f32 (the output transform's cancellations need it), and F(4x4)'s GEMM sums in f32 as well.
A V that overflows f16 is Inf, so its tiles take the direct fallback. F(2x2)'s V is stored in f16 times 1/4
(`v_scale`; its B^T rows each add two inputs, so |V| <= 4 max|x|) and the output transform multiplies by 4:
exact in binary, so V cannot overflow for finite f16 inputs (timm resnet50d's 512x7x7 convs, inputs up to 2.7e4,
sent every tile to the fallback without it: NOTES, session 21). F(4x4)'s V would need 1/64 (row sums up to 7),
which pushes inputs below 4e-3 into f16's subnormals: it keeps the fallback.
"""

from __future__ import annotations

import numpy as np

from convroute.kernels import gemm, gemm_cpu
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import Precision, ceil_div, constants, storage
from convroute.kernels.flat import flat_shader, launch

BYTES_CAP = 256 << 20  # V and Mx each stay below this even where bindings are larger
TRANSFORM_PARAMS = ["t0", "cols", "cs", "total", "splits"]
GEMM_EXTRA = ["cs4"]


def toom_cook(m: int, points, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]) of F(m, r), a = m + r - 1, from a - 1 finite points and infinity.

    With L_j(x) = prod_{l != j} (x - p_l) and M(x) = prod_l (x - p_l): A^T[i, j] = p_j^i, G[j, k] =
    p_j^k / L_j(p_j), row j of B^T holds the coefficients of L_j (lowest power first); the infinity row/column
    picks the leading coefficients (B^T's last row is M). Then y = A^T [(G g) (.) (B^T d)] is the correlation
    y_i = sum_k g_k d_{i+k}.
    """
    pts = np.asarray(points, np.float64)
    a = m + r - 1
    if len(pts) != a - 1 or len(set(pts.tolist())) != len(pts):
        raise ValueError(f"F({m},{r}) needs {a - 1} distinct finite points, got {list(points)}")
    at = np.zeros((m, a))
    at[:, :-1] = pts[None, :] ** np.arange(m)[:, None]
    at[m - 1, -1] = 1.0
    g = np.zeros((a, r))
    bt = np.zeros((a, a))
    for j, pj in enumerate(pts):
        others = np.delete(pts, j)
        g[j] = pj ** np.arange(r) / np.prod(pj - others)
        bt[j, :-1] = np.poly(others)[::-1]
    g[-1, r - 1] = 1.0
    bt[-1] = np.poly(pts)[::-1]
    return at, g, bt


def combine(coeffs, names: list[str]) -> str:
    """WGSL for sum(c * name), zero terms dropped, +-1 without a multiply."""
    terms = []
    for c, name in zip(coeffs, names, strict=True):
        if c == 0:
            continue
        sign = "-" if c < 0 else "+"
        mag = abs(float(c))
        terms.append(f"{sign} {name}" if mag == 1.0 else f"{sign} {mag!r} * {name}")
    if not terms:
        return "0.0"
    text = " ".join(terms)
    return text[2:] if text.startswith("+") else "-" + text[2:]


def transform_2d(left: np.ndarray, names: list[list[str]], out: str) -> list[str]:
    """WGSL lines `let {out}_i_j = (L X L^T)[i][j]` for X given as names[row][col]."""
    rows, cols = left.shape[0], len(names[0])
    lines = []
    for i in range(rows):  # s_i_c = sum_r L[i, r] X[r][c]
        for c in range(cols):
            lines.append(f"  let {out}s{i}_{c} = {combine(left[i], [row[c] for row in names])};")
    for i in range(rows):  # out_i_j = sum_c s_i_c L[j, c]
        for j in range(rows):
            lines.append(f"  let {out}{i}_{j} = {combine(left[j], [f'{out}s{i}_{c}' for c in range(cols)])};")
    return lines


# Both transforms: one invocation per (channel ch, tile) of the chunk, tiles of one channel consecutive, with the
# layer's constants (M, C_IN, ...: see Winograd.prepare). (row0, col0): the tile's first output pixel (its input
# patch starts padding earlier).
LOCATE = """
  let tl = t % P.cols;
  let ch = t / P.cols;
  let tile = P.t0 + tl;
  let img = tile / TILES_IMG;
  let r = tile % TILES_IMG;
  let row0 = (r / TW) * M;
  let col0 = (r % TW) * M;
"""
INPUT = """
  let ih0 = i32(row0) - PH;
  let iw0 = i32(col0) - PW;
  let base = (img * C_IN + ch) * u32(H * W);
"""
OUTPUT_HELPERS = """
fn finite(v: f32) -> bool { return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u; }

// One output straight from the input and the [C_out, C_in, 3, 3] weights, summed as the direct algorithm does.
fn direct(img: u32, o: u32, oh: u32, ow: u32) -> f32 {
  var s = bias[o];
  for (var c = 0u; c < C_IN; c++) {
    let xc = (img * C_IN + c) * u32(H * W);
    let wc = (o * C_IN + c) * 9u;
    for (var kh = 0u; kh < 3u; kh++) {
      let ih = i32(oh + kh) - PH;
      if (ih < 0 || ih >= H) { continue; }
      for (var kw = 0u; kw < 3u; kw++) {
        let iw = i32(ow + kw) - PW;
        if (iw >= 0 && iw < W) { s += f32(x[xc + u32(ih * W + iw)]) * f32(wt[wc + kh * 3u + kw]); }
      }
    }
  }
  return s;
}
"""
OUTPUT = """
  let plane = C_OUT * P.cols;
"""

B_DECL = """@group(0) @binding(4) var<storage, read> v: array<vec4<ST>>;
fn load_v(base: u32, k: u32) -> vec4<AT> {
  if (k < P.k) { return vec4<AT>(v[base + k * P.cs4]); }
  return vec4<AT>(0.0);
}"""
B_SETUP = "let vbase = batch * P.k * P.cs4 + min(bcol / 4u, P.cs4 - 1u);"  # columns past cs are never stored
B_LOAD = "load_v(vbase, k)"


class Winograd(ConvKernel):
    """F(m x m, 3x3); subclasses fix m and the interpolation points, and whether the transform-domain GEMM sums
    in f32 even with f16 sums asked for (`f32_sums`)."""

    f32_sums = False
    v_scale = 1.0  # V is stored times this in f16 (a power of two), the outputs are divided by it

    m = 0
    points: tuple = ()

    dense = "is one dense GEMM per transform position"
    fuses_residual = True
    reads_float32_input = True

    @classmethod
    def unsupported_shape(cls, p):
        if (p.kh, p.kw) != (3, 3):
            return f"the kernel is {p.kh}x{p.kw}; {cls.name} needs a 3x3 kernel"
        if p.stride != (1, 1):
            return f"stride={p.stride}; {cls.name} needs stride 1"
        if p.dilation != (1, 1):
            return f"dilation={p.dilation}; {cls.name} needs dilation 1"
        return None

    def prepare(self, weight, bias):
        p, m = self.p, self.m
        a = m + 2
        self.positions = a * a
        at, g, bt = toom_cook(m, self.points)
        u = np.einsum("ik,ockl,jl->ijoc", g, weight.astype(np.float64), g).reshape(self.positions, p.c_out, p.c_in)
        sums = Precision(self.precision.dtype, "float32") if self.f32_sums else self.precision
        if self.gpu.profile.gemm_style == "registers":
            self.gemm = gemm_cpu.BatchedGemm(self.gpu, u.astype(np.float32), None, sums)
        else:
            self.gemm = gemm.BatchedGemm(self.gpu, u.astype(np.float32), None, B_DECL, B_SETUP, B_LOAD, GEMM_EXTRA,
                                         sums)
        self.th, self.tw = ceil_div(p.ho, m), ceil_div(p.wo, m)
        shape = constants(dict(M=m, C_IN=p.c_in, C_OUT=p.c_out, HO=p.ho, WO=p.wo, TW=self.tw,
                               TILES_IMG=self.th * self.tw, POSITIONS=self.positions),
                          dict(H=p.h, W=p.w, PH=p.padding[0], PW=p.padding[1]))
        self.input_source = flat_shader(TRANSFORM_PARAMS, storage("x", "v!"), LOCATE + INPUT + self.input_body(bt),
                                        shape, self.precision)
        outputs = storage("mx:f32", "bias:f32", "x", "wt", "y!", *(["res"] if self.residual else []))
        self.output_source = flat_shader(TRANSFORM_PARAMS, outputs,
                                         LOCATE + OUTPUT + self.output_body(at),
                                         shape + self.epilogue.wgsl() + OUTPUT_HELPERS, self.precision)
        self.bias_buf = self.gpu.upload(bias, "bias")
        self.weight_buf = self.upload(weight, "weights for non-finite tiles")
        self.gpu.pipeline(self.input_source)
        self.gpu.pipeline(self.output_source)

    def input_body(self, bt: np.ndarray) -> str:
        a = self.m + 2
        lines = [f"  let rok{i} = ih0 + {i} >= 0 && ih0 + {i} < H;" for i in range(a)]
        lines += [f"  let cok{j} = iw0 + {j} >= 0 && iw0 + {j} < W;" for j in range(a)]
        for i in range(a):
            for j in range(a):
                lines.append(f"  var d{i}_{j} = 0.0; if (rok{i} && cok{j}) {{ "
                             f"d{i}_{j} = f32(x[base + u32((ih0 + {i}) * W + iw0 + {j})]); }}")
        lines += transform_2d(bt, [[f"d{i}_{j}" for j in range(a)] for i in range(a)], "v")
        lines.append("  let out = ch * P.cs + tl;")
        for i in range(a):
            for j in range(a):
                lines.append(f"  v[{i * a + j}u * C_IN * P.cs + out] = ST(v{i}_{j}{self._times(self._v_scale)});")
        return "\n".join(lines)

    def output_body(self, at: np.ndarray) -> str:
        a, m = self.m + 2, self.m
        lines = [f"  var m{i}_{j} = 0.0;" for i in range(a) for j in range(a)]
        lines.append("  for (var s = 0u; s < P.splits; s++) {")
        lines.append("    let base = s * POSITIONS * plane + ch * P.cols + tl;")
        lines += [f"    m{i}_{j} += mx[base + {i * a + j}u * plane];" for i in range(a) for j in range(a)]
        lines.append("  }")
        finite = " && ".join(f"finite(m{i}_{j})" for i in range(a) for j in range(a))
        lines.append("  let out = (img * C_OUT + ch) * HO * WO + row0 * WO + col0;")
        lines.append(f"  if (!({finite})) {{")
        lines.append(f"    for (var i = 0u; i < {m}u; i++) {{ for (var j = 0u; j < {m}u; j++) {{")
        value = "direct(img, ch, row0 + i, col0 + j)" + (" + f32(res[out + i * WO + j])" if self.residual else "")
        lines.append(f"      if (row0 + i < HO && col0 + j < WO) {{ y[out + i * WO + j] = ST(act({value})); }}")
        lines.append("    } }")
        lines.append("    return;")
        lines.append("  }")
        lines += transform_2d(at, [[f"m{i}_{j}" for j in range(a)] for i in range(a)], "y")
        lines.append("  let b = bias[ch];")
        unscale = self._times(1 / self._v_scale)
        for i in range(m):
            for j in range(m):
                guard = f"row0 + {i}u < HO && col0 + {j}u < WO"
                index = f"out + {i}u * WO + {j}u"
                value = f"y{i}_{j}{unscale} + b" + (f" + f32(res[{index}])" if self.residual else "")
                lines.append(f"  if ({guard}) {{ y[{index}] = ST(act({value})); }}")
        return "\n".join(lines)

    @property
    def _v_scale(self) -> float:
        return self.v_scale if self.precision.dtype == "float16" else 1.0

    @staticmethod
    def _times(factor: float) -> str:
        return "" if factor == 1.0 else f" * {factor!r}"

    def chunk_tiles(self, total: int) -> int:
        """Tiles per chunk: the most (whole GEMM column tiles where possible) whose V and Mx fit one binding."""
        budget = min(self.gpu.profile.max_binding_bytes, BYTES_CAP)
        per_tile = 4 * self.positions * max(self.p.c_in, self.p.c_out)
        fit = budget // per_tile // 4 * 4  # V rows are padded to whole vec4s
        if fit == 0:
            raise ValueError(f"{self.name} of {self.p.describe()}: one tile's transforms need {4 * per_tile} "
                             f"bytes, more than the {budget}-byte buffer limit; use im2col or implicit_gemm")
        if fit >= gemm.TILE:
            fit = fit // gemm.TILE * gemm.TILE
        return min(fit, total)

    def bind(self, x, y, n, residual=None):
        res = self.residual_buffers(residual)
        total = n * self.th * self.tw
        chunk = self.chunk_tiles(total)
        budget = min(self.gpu.profile.max_binding_bytes, BYTES_CAP)
        cs = ceil_div(chunk, 4) * 4
        v = self.scratch.get(self.precision.itemsize * self.positions * self.p.c_in * cs, "Winograd input transforms V")
        starts = list(range(0, total, chunk))
        plans = {t0: self.gemm.plan(min(chunk, total - t0), budget) for t0 in starts}
        mx_bytes = max(self.gemm.out_bytes(min(chunk, total - t0), plans[t0][1]) for t0 in starts)
        mx = self.scratch.get(mx_bytes, "Winograd products Mx")
        dispatches = []
        for t0 in starts:
            cols = min(chunk, total - t0)
            splits = plans[t0][1]
            common = dict(t0=t0, cols=cols, cs=cs, splits=splits)
            dispatches += [
                launch(self.gpu, self.input_source, TRANSFORM_PARAMS, common | {"total": self.p.c_in * cols}, [x, v]),
                self.gemm.dispatch(mx, [v], cols, plans[t0], {"cs4": cs // 4}),
                launch(self.gpu, self.output_source, TRANSFORM_PARAMS, common | {"total": self.p.c_out * cols},
                       [mx, self.bias_buf, x, self.weight_buf, y, *res])]
        return dispatches


class Winograd2(Winograd):
    name = "winograd2"
    m = 2
    points = (0.0, 1.0, -1.0)
    v_scale = 0.25


class Winograd4(Winograd):
    name = "winograd4"
    m = 4
    points = (0.0, 1.0, -1.0, 0.5, -2.0)
    # F(4x4)'s output transform (entries up to 8) amplifies the rounding of f16 products: on the H100 f16 sums
    # gave 1.1-1.2 % relative error on a 4-channel layer (fuzz seed 1602, NOTES session 11)
    f32_sums = True

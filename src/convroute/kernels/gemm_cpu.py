"""GEMM for CPU adapters (lavapipe/llvmpipe): register tiles, no workgroup memory, no barriers.

llvmpipe runs an invocation as one lane of a 256-bit SIMD vector (8 lanes). In Mesa 22.3 every storage-buffer
and workgroup-memory access is a loop over the lanes with a scalar, bounds-checked load or store per component,
and a workgroup barrier is a coroutine switch: staging tiles through workgroup memory, as gemm_tiles does for GPUs,
costs more memory operations than it saves. Here each invocation keeps a tm x tn tile of sums in registers and
reads its A and B vec4s straight from the storage buffers (the CPU caches do the staging): per K step tm/4 + tn/4
vec4 loads feed tm * tn FMAs, and that ratio sets the speed (16x16 runs ~3x faster than the workgroup GEMM here).

RegisterGemm: Out[b] = A[b] x B[b] + bias[b] for b < batches in one launch, A either one matrix per batch
(Winograd's transform positions) or one shared by all (a 1x1 conv over the images of a batch). B is an array of
vec4 columns bound at binding 4, batch b's row k at b * b_stride + k * cs4 (or gathered: a conv's windows, a
linear layer's rows); Out is [batches, M, cols] (or its transpose: a linear layer's [rows, features]), raw f32
sums or (with an activation) the output in the storage type, which for a 1x1 conv is NCHW. No split-K: a CPU runs
only as many workgroups at once as it has cores, and every launch here has plenty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import CPU_LOOP_LIMIT, residual_buffers, storage_params
from convroute.kernels.common import FP32, Precision, ceil_div, split_index, storage, storage_frame

WG = 8  # one SIMD vector of llvmpipe: workgroups are the unit of its thread pool, so many small ones balance best
PARAMS = ["m", "k", "m4", "cols", "cs4", "tiles_m", "tiles_n", "total", "a_stride", "b_stride", "bias_stride",
          "c_in", "h", "w", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw"]  # the last: Windows' conv


def wanted(gpu: Gpu, trips: int) -> bool:
    """Whether a GEMM runs as register tiles on this device: the device's GEMM style says so and one invocation's
    K loops (`trips` iterations in all) stay within lavapipe's loop limit."""
    return gpu.profile.gemm_style == "registers" and trips <= CPU_LOOP_LIMIT


def for_conv(kernel, weight: np.ndarray, bias: np.ndarray, trips: int) -> RegisterGemm | None:
    """A conv kernel's weights [C_out, ...] as a register-tile GEMM (one matrix for every image), or None where
    the device wants workgroup tiles or the K loops (`trips`) would pass lavapipe's loop limit."""
    if not wanted(kernel.gpu, trips):
        return None
    return RegisterGemm(kernel.gpu, weight.reshape(1, kernel.p.c_out, -1), bias[None], kernel.precision,
                        kernel.epilogue.wgsl(), kernel.residual)


@dataclass(frozen=True)
class CpuTile:
    tm: int  # rows (output channels) per invocation, a multiple of 4
    tn: int  # columns per invocation, a multiple of 4

    def __str__(self) -> str:
        return f"{self.tm}x{self.tn}"


TILES = (CpuTile(16, 16), CpuTile(16, 8), CpuTile(16, 4), CpuTile(8, 4))


def padded_rows(m: int) -> int:
    """Rows of A as RegisterGemm packs them: a whole number of the tallest tile."""
    tallest = max(t.tm for t in TILES)
    return ceil_div(m, tallest) * tallest


def choose_tile(m: int, cols: int, batches: int, max_tn: int | None = None) -> CpuTile:
    """The largest tile (at most `max_tn` columns, when given) that does not waste most of itself on padding and
    leaves >= 64 invocations."""
    for tile in (t for t in TILES if max_tn is None or t.tn <= max_tn):
        waste = (ceil_div(cols, tile.tn) * tile.tn - cols) / cols
        if waste <= 0.25 and batches * ceil_div(m, tile.tm) * ceil_div(cols, tile.tn) >= 64:
            return tile
    return TILES[-1]


class VecColumns:
    """The B operand as stored vec4 columns (Winograd's V, a 1x1 conv's input): batch b's row k starts at vec4
    b * p.b_stride + k * p.cs4 (p: the parameters). A B source gives the binding (`decl`), per-invocation setup
    for its column group c (columns (tni * tn/4 + c) * 4 .. +3), the K loop's head (WGSL that opens the loops
    and leaves the A row in `k`) and tail, and a column group's vec4 at row k."""

    decl = "@group(0) @binding(4) var<storage, read> b: array<ST4>;"
    head = "  for (var k = 0u; k < p.k; k++) {"
    tail = "  }"

    @staticmethod
    def trips(depth: int) -> int:
        return depth

    @staticmethod
    def setup(c: int, cg: int) -> str:  # columns past cs are never stored: clamp their loads into the row
        return f"  let bc{c} = batch * p.b_stride + min(tni * {cg}u + {c}u, p.cs4 - 1u);"

    @staticmethod
    def load(c: int) -> str:
        return f"ld4(b[bc{c} + k * p.cs4])"


class InputColumns(VecColumns):
    """VecColumns over a conv's input itself (a 1x1 conv's at stride 1): quads of the input's type (XT4)."""

    decl = "@group(0) @binding(4) var<storage, read> b: array<XT4>;"

    @staticmethod
    def load(c: int) -> str:
        return f"xld4(b[bc{c} + k * p.cs4])"


class Rows(VecColumns):
    """The B operand as the rows of a row-major [cols, K] matrix (a linear layer's input, B = X^T): column j's
    row k is x[b * p.b_stride + j * p.k + k], four rows gathered per vec4 (VecColumns' K loop)."""

    decl = "@group(0) @binding(4) var<storage, read> x: array<ST>;"

    @staticmethod
    def setup(c: int, cg: int) -> str:  # columns past cols are never stored: clamp their loads into the matrix
        return "\n".join(f"  let xr{c}_{q} = batch * p.b_stride"
                         f" + min((tni * {cg}u + {c}u) * 4u + {q}u, p.cols - 1u) * p.k;" for q in range(4))

    @staticmethod
    def load(c: int) -> str:
        return "vec4<f32>(" + ", ".join(f"f32(x[xr{c}_{q} + k])" for q in range(4)) + ")"


class Windows:
    """The B operand of a conv as a GEMM, gathered from the NCHW input (implicit GEMM): row k = (input channel,
    kernel row, kernel column), column j output pixel j of image `batch` (zero in the padding). The conv's shape
    is in the parameters (one pipeline per tile shape, not per layer: a 16x16 tile takes seconds to compile on
    lavapipe); nested loops over channel, kernel row and column count k up, so no division by a runtime value
    runs per K step. On llvmpipe a gathered component costs what a component of a vec4 load does."""

    decl = """@group(0) @binding(4) var<storage, read> x: array<XT>;
fn gather(i: u32, ok: bool) -> f32 { return select(0.0, f32(x[select(0u, i, ok)]), ok); }"""
    head = """  let hi = i32(p.h);
  let wi = i32(p.w);
  var k = 0u;
  for (var ci = 0u; ci < p.c_in; ci++) {
  let chan = xb + ci * p.h * p.w;
  for (var kh = 0u; kh < p.kh; kh++) {
  let dh = i32(kh * p.dh);
  for (var kw = 0u; kw < p.kw; kw++) {
    let dw = i32(kw * p.dw);"""
    tail = "    k++;\n  } } }"

    @staticmethod
    def trips(c_in: int, kh: int, kw: int) -> int:
        return c_in * (1 + kh * (1 + kw))

    @staticmethod
    def setup(c: int, cg: int) -> str:
        lines = ["  let xb = batch * p.c_in * p.h * p.w;"] if c == 0 else []
        for q in range(4):  # pixels past the image are never stored: clamp them into it
            lines.append(f"  let pix{c}_{q} = min((tni * {cg}u + {c}u) * 4u + {q}u, p.cols - 1u);")
            lines.append(f"  let ih{c}_{q} = i32((pix{c}_{q} / p.wo) * p.sh) - i32(p.ph);")
            lines.append(f"  let iw{c}_{q} = i32((pix{c}_{q} % p.wo) * p.sw) - i32(p.pw);")
        return "\n".join(lines)

    @staticmethod
    def load(c: int) -> str:
        parts = []
        for q in range(4):
            ih, iw = f"ih{c}_{q} + dh", f"iw{c}_{q} + dw"
            parts.append(f"gather(chan + u32(({ih}) * wi + {iw}), {ih} >= 0 && {ih} < hi && {iw} >= 0 && {iw} < wi)")
        return "vec4<f32>(" + ", ".join(parts) + ")"

    @staticmethod
    def params(p) -> dict:
        return dict(c_in=p.c_in, h=p.h, w=p.w, wo=p.wo, kh=p.kh, kw=p.kw, sh=p.stride[0], sw=p.stride[1],
                    ph=p.padding[0], pw=p.padding[1], dh=p.dilation[0], dw=p.dilation[1])


def generate(tile: CpuTile, precision: Precision = FP32, act: str = "", bsrc=VecColumns, residual: bool = False,
             transposed: bool = False) -> str:
    """The WGSL; with `act` (the WGSL of `fn act`) the output is act(sum + bias) stored as ST, else f32 sums;
    with `residual` (and `act`) act(sum + bias + res) where `res` (binding 5) is laid out as the output;
    `transposed`: Out[b] stored as [cols, M] (a linear layer's [rows, features]) instead of [M, cols]."""
    rg, cg = tile.tm // 4, tile.tn // 4
    buffers = storage("wa:ST4", "bias:f32", "y!:" + ("ST" if act else "f32"))
    if residual:
        bsrc_decl = f"{bsrc.decl}\n{storage('res', first=5)}"
    else:
        bsrc_decl = bsrc.decl
    out = [storage_frame(precision.wgsl(), PARAMS, f"{buffers}\n{bsrc_decl}", act, WG),
           f"""  let g = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (g >= p.total) {{ return; }}""", split_index("g", [("tni", "p.tiles_n"), ("tmi", "p.tiles_m")], "batch"),
           f"  let abase = batch * p.a_stride + tmi * {rg}u;"]
    emit = out.append
    out += [bsrc.setup(c, cg) for c in range(cg)]
    # s{j}_{r}: rows (tmi * rg + r) * 4 .. +3 of the invocation's column j
    sums = [(j, r) for j in range(tile.tn) for r in range(rg)]
    out += [f"  var s{j}_{r} = vec4<f32>(0.0);" for j, r in sums]
    emit(bsrc.head)
    out += [f"    let a{r} = ld4(wa[abase + k * p.m4 + {r}u]);" for r in range(rg)]
    out += [f"    let b{c} = {bsrc.load(c)};" for c in range(cg)]
    out += [f"    s{j}_{r} = fma(a{r}, vec4<f32>(b{j // 4}.{'xyzw'[j % 4]}), s{j}_{r});" for j, r in sums]
    emit(bsrc.tail)
    emit(f"  let m0 = tmi * {tile.tm}u;")
    emit("  let obase = batch * p.m;")
    emit("  let bias0 = batch * p.bias_stride;")
    value = "ST(act(v))" if act else "v"
    index = "(batch * p.cols + j) * p.m + m" if transposed else "(obase + m) * p.cols + j"
    at = f"let ro = {index}; " if residual else ""
    if residual:
        index, value = "ro", "ST(act(v + f32(res[ro])))"
    for j in range(tile.tn):
        emit(f"  {{ let j = tni * {tile.tn}u + {j}u; if (j < p.cols) {{")
        for r in range(rg):
            emit(f"    for (var e = 0u; e < 4u; e++) {{ let m = m0 + {4 * r}u + e; if (m < p.m) {{ "
                 f"let v = s{j}_{r}[e] + bias[bias0 + m]; {at}y[{index}] = {value}; }} }}")
        emit("  } }")
    emit("}")
    return "\n".join(out)


class RegisterGemm:
    """Prepacked A (and bias) for register-tile launches; `dispatch` builds one launch over all batches."""

    def __init__(self, gpu: Gpu, weights: np.ndarray, bias: np.ndarray | None, precision: Precision = FP32,
                 act: str = "", residual: bool = False):
        """weights: [batches or 1, M, K] (one matrix shared by every batch when 1); bias: like [.., M] or None;
        act: the WGSL of `fn act` to finish the output with (stored as ST), or "" for raw f32 sums;
        residual (with act): the store adds a tensor laid out as the output, passed to `dispatch`."""
        if residual and not act:
            raise ValueError("a residual needs the finished output (act), not raw sums")
        self.gpu, self.precision, self.act, self.residual = gpu, precision, act, residual
        count, self.m, self.k = weights.shape
        m_pad = padded_rows(self.m)
        a = np.zeros((count, self.k, m_pad), np.float32)
        a[:, :, :self.m] = np.transpose(weights, (0, 2, 1))  # K-major: one vec4 holds 4 rows at one k
        self.m4 = m_pad // 4
        self.a_stride = 0 if count == 1 else self.k * self.m4
        self.w_buf = gpu.upload(a, "packed weight matrices", precision.numpy)
        bias = np.zeros((count, self.m), np.float32) if bias is None else np.asarray(bias, np.float32)
        self.bias_stride = 0 if count == 1 else self.m
        self.b_buf = gpu.upload(bias.reshape(count, self.m), "bias")

    def dispatch(self, out, b_buf, batches: int, cols: int, cs4: int, b_stride: int,
                 tile: CpuTile | None = None, bsrc=VecColumns, conv: dict | None = None, residual=None,
                 transposed: bool = False) -> Dispatch:
        """Out[b][:, :cols] for b < batches (with `transposed`, Out[b]^T), B of batch b at b * b_stride (vec4s
        for VecColumns, rows cs4 vec4s apart; elements for Rows)."""
        res = residual_buffers("a register-tile GEMM", self.residual, residual)
        max_tn = self.gpu.profile.max_gathered_columns if bsrc in (Windows, Rows) else None
        tile = tile or choose_tile(self.m, cols, batches, max_tn)
        tiles_m, tiles_n = ceil_div(self.m, tile.tm), ceil_div(cols, tile.tn)
        total = batches * tiles_m * tiles_n
        values = dict(m=self.m, k=self.k, m4=self.m4, cols=cols, cs4=cs4, tiles_m=tiles_m, tiles_n=tiles_n,
                      total=total, a_stride=self.a_stride, b_stride=b_stride, bias_stride=self.bias_stride)
        values |= conv or dict.fromkeys(PARAMS[11:], 0)
        u = storage_params(self.gpu, PARAMS, values, "GEMM parameters")
        return self.gpu.dispatch(generate(tile, self.precision, self.act, bsrc, self.residual, transposed),
                                 [u, self.w_buf, self.b_buf, out, b_buf, *res], total, WG)


class BatchedGemm(RegisterGemm):
    """gemm.BatchedGemm's interface (plan / out_bytes / dispatch), for Winograd: B is V, [batches, K, cs4]."""

    def __init__(self, gpu: Gpu, weights: np.ndarray, bias: np.ndarray | None, precision: Precision = FP32):
        super().__init__(gpu, weights, bias, precision)
        self.batches = weights.shape[0]

    def plan(self, cols: int, max_out_bytes: int) -> tuple[CpuTile, int]:
        return choose_tile(self.m, cols, self.batches), 1

    def out_bytes(self, cols: int, splits: int) -> int:
        return 4 * splits * self.batches * self.m * cols

    def dispatch(self, out, b_buffers: list, cols: int, plan: tuple[CpuTile, int], extra: dict) -> Dispatch:
        cs4 = extra["cs4"]
        return super().dispatch(out, b_buffers[0], self.batches, cols, cs4, self.k * cs4, plan[0])

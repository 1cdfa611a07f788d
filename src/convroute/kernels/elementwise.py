"""Elementwise ops for whole models: standalone activations, broadcasting math over up to MAX_RANK dimensions
(add/sub/mul/div, pow, maximum/minimum, where, clamp with tensor bounds, unary math) with a fused
activation, and a per-channel affine (a batch norm that follows no conv). Dense row-major tensors stored as
float32 or float16 (`precision`), computed in f32.

Like the conv algorithms, each op is built once per shape (`__init__` compiles, uploads constants) and
`bind(...)` returns the dispatches for concrete buffers.
"""

from __future__ import annotations

import math

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import (
    ACTIVATIONS,
    ENTRY_ARGS,
    FLAT_INDEX,
    FP32,
    Epilogue,
    Precision,
    ceil_div,
    constants,
    split_index,
    storage,
)
from convroute.kernels.flat import f32_bits, flat_shader, launch

MAX_RANK = 6
UNARY_KINDS = tuple(a for a in ACTIVATIONS if a != "none")


def act_source(act) -> str:
    """`fn act(v: f32) -> f32` for an Epilogue, a name in UNARY_KINDS or a (name, *parameters) tuple."""
    return Epilogue.parse(act).wgsl()


class Unary:
    """y = act(x) for every activation of the table (common.TABLE); with act None a plain copy. `x_type` "f32"
    reads a float32 x into ST storage (an f16 program's float32 input, converted on the GPU rather than the
    host)."""

    PARAMS = ["total"]

    def __init__(self, gpu: Gpu, act, total: int, precision: Precision = FP32, x_type: str = "ST"):
        self.gpu, self.total = gpu, total
        self.source = flat_shader(self.PARAMS, storage(f"x:{x_type}", "y!"), "  y[t] = ST(act(f32(x[t])));",
                                  act_source(act), precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, self.PARAMS, {"total": self.total}, [x, y])]


# Math on the operands u0, u1, ... (f32) and the scalar parameters (f32 `let`s of the same names).
MATH_HELPERS = """
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
fn pow_real(a: f32, b: f32) -> f32 {
  let m = pow(abs(a), b);
  let integral = b == round(b);
  let odd = integral && abs(b) < 16777216.0 && (i32(b) & 1) == 1;
  let r = select(m, -m, a < 0.0 && odd);
  let inf_bits = 0x7f800000u;  // through a let: Tint refuses inf as a constant expression
  let zero = select(select(1.0, 0.0, b > 0.0), bitcast<f32>(inf_bits), b < 0.0);
  let nz = select(r, zero, a == 0.0);
  return select(select(nz, sqrt(-1.0 - abs(b)), a < 0.0 && !integral), 1.0, b == 0.0);
}
fn log1p_(x: f32) -> f32 {
  let u = 1.0 + x;
  return select(log(u) * (x / (u - 1.0)), x, u == 1.0);
}
"""
BINARY_EXPR = {"add": "u0 + alpha * u1", "sub": "u0 - alpha * u1", "mul": "u0 * u1", "div": "u0 / u1",
               "pow": "pow_real(u0, u1)", "maximum": "select(max(u0, u1), u0 + u1, is_nan(u0) || is_nan(u1))",
               "minimum": "select(min(u0, u1), u0 + u1, is_nan(u0) || is_nan(u1))"}
UNARY_EXPR = {"sqrt": "sqrt(u0)", "rsqrt": "inverseSqrt(u0)", "exp": "exp(u0)", "exp2": "exp2(u0)", "log": "log(u0)",
              "log2": "log2(u0)", "neg": "-u0", "abs": "abs(u0)", "reciprocal": "1.0 / u0",
              "expm1": "select(exp(u0) - 1.0, u0, abs(u0) < 1e-5)", "log1p": "log1p_(u0)", "square": "u0 * u0",
              "sin": "sin(u0)", "cos": "cos(u0)", "floor": "floor(u0)", "ceil": "ceil(u0)", "round": "round(u0)",
              "trunc": "trunc(u0)", "sign": "select(sign(u0), u0, is_nan(u0))"}
COMPARE_EXPR = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}


def broadcast_strides(shape, out_shape) -> list[int] | None:
    """Element strides of a dense `shape` read broadcast to `out_shape` (left-padded to its rank), or None."""
    rank = len(out_shape)
    if len(shape) > rank:
        return None
    shape = (1,) * (rank - len(shape)) + tuple(shape)
    strides, step = [0] * rank, 1
    for i in reversed(range(rank)):
        if shape[i] not in (1, out_shape[i]):
            return None
        strides[i] = step if shape[i] == out_shape[i] and out_shape[i] != 1 else 0
        step *= shape[i]
    return strides


def collapse(out_shape, strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dimensions and merge neighbours every operand reads the same way (strides[i] =
    strides[i + 1] * size[i + 1]), so fewer index digits remain."""
    dims, cols = [], [[] for _ in strides]
    for i, size in enumerate(out_shape):
        if size == 1:
            continue
        if dims and all(c[-1] == s[i] * size for c, s in zip(cols, strides, strict=True)):
            dims[-1] *= size
            for c, s in zip(cols, strides, strict=True):
                c[-1] = s[i]
            continue
        dims.append(size)
        for c, s in zip(cols, strides, strict=True):
            c.append(s[i])
    return dims or [1], [c or [0] for c in cols]


class Elementwise:
    """y = act(`expr`) over operands u0, u1, ... read with NumPy broadcasting to `out_shape` (rank <=
    MAX_RANK); `scalars` are f32 parameters the expression names. `bind(operand buffers..., y)`."""

    def __init__(self, gpu: Gpu, expr: str, shapes, out_shape, act=None, precision: Precision = FP32,
                 scalars: dict | None = None):
        out_shape = tuple(out_shape)
        strides = [broadcast_strides(s, out_shape) for s in shapes]
        if len(out_shape) > MAX_RANK or any(s is None for s in strides):
            raise ValueError(f"cannot broadcast {' and '.join(str(tuple(s)) for s in shapes)} to {out_shape} "
                             f"within rank {MAX_RANK}")
        self.gpu, self.count = gpu, len(shapes)
        dims, cols = collapse(out_shape, strides)
        rank = len(dims)
        scalars = scalars or {}
        self.params = ["total", *(f"d{k}" for k in range(1, rank)),
                       *(f"s{j}_{k}" for j in range(len(shapes)) for k in range(rank)), *scalars]
        self.values = dict(total=math.prod(out_shape), **{f"d{k}": dims[k] for k in range(1, rank)},
                           **{f"s{j}_{k}": c[k] for j, c in enumerate(cols) for k in range(rank)},
                           **{n: f32_bits(v) for n, v in scalars.items()})
        same = all(tuple(s) == out_shape for s in shapes)
        self.cpu_invocations = None  # set for the CPU adapters' form
        if not same and cpu_form(gpu):
            self.cpu_invocations, self.source = row_strips(dims, cols, expr, scalars, act, precision)
            gpu.pipeline(self.source)
            return
        lines = [f"  let {n} = bitcast<f32>(P.{n});" for n in scalars]
        if not same:
            lines.append(split_index("t", [(f"i{k}", f"P.d{k}") for k in reversed(range(1, rank))], "i0"))
        for j in range(len(shapes)):
            index = "t" if same else " + ".join(f"i{k} * P.s{j}_{k}" for k in range(rank))
            lines.append(f"  let u{j} = f32(x{j}[{index}]);")
        lines.append(f"  y[t] = ST(act({expr}));")
        buffers = storage(*(f"x{j}" for j in range(len(shapes))), "y!")
        self.source = flat_shader(self.params, buffers, "\n".join(lines), MATH_HELPERS + act_source(act), precision)
        gpu.pipeline(self.source)

    def bind(self, *buffers) -> list[Dispatch]:
        """Operand buffers in order, then y."""
        if len(buffers) != self.count + 1:
            raise ValueError(f"elementwise op takes {self.count} operand buffers and y, got {len(buffers)}")
        if self.cpu_invocations is not None:
            return [self.gpu.dispatch(self.source, list(buffers), self.cpu_invocations, CPU_WG)]
        return [launch(self.gpu, self.source, self.params, self.values, list(buffers))]


def cpu_form(gpu: Gpu) -> bool:
    """Whether kernels take their CPU adapters' form (here: an invocation per row or plane and strip, the index
    math once per invocation, not per element, as llvmpipe divides lane by lane; squeeze_excite's two passes;
    NOTES session 18)."""
    return gpu.profile.family == "cpu"


def row_strips(dims: list[int], cols: list[list[int]], expr: str, scalars: dict, act,
               precision: Precision, offsets: list[int] | None = None) -> tuple[int, str]:
    """Elementwise's CPU form over the collapsed `dims` (operand j's strides `cols[j]`, its first element at
    `offsets[j]`, 0 by default): (invocations, WGSL), an invocation per (row of the innermost dim, strip), its
    operands' row offsets worked out once. layout.StridedCopy's too (expr "u0")."""
    offsets = offsets or [0] * len(cols)
    *outer, inner = dims
    strips = ceil_div(inner, min(inner, CPU_STRIP))
    lines = [f"  let {n} = bitcast<f32>({f32_bits(v)}u);" for n, v in scalars.items()]
    lines += [f"  let strip = t % {strips}u;", f"  let o = t / {strips}u;"]
    if outer:
        lines.append(split_index("o", [(f"i{k}", f"{outer[k]}u") for k in reversed(range(1, len(outer)))], "i0"))
    for j, c in enumerate(cols):
        lines.append(f"  let b{j} = " + " + ".join([f"{offsets[j]}u"] + [f"i{k} * {c[k]}u" for k in range(len(outer))])
                     + ";")
    loads = "\n".join(f"    let u{j} = f32(x{j}[b{j} + e * {c[-1]}u]);" for j, c in enumerate(cols))
    rows = math.prod(outer)
    return rows * strips, precision.wgsl() + constants(dict(WG=CPU_WG)) + MATH_HELPERS + act_source(act) + f"""
{storage(*(f"x{j}" for j in range(len(cols))), "y!", first=0)}
@compute @workgroup_size({CPU_WG})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= {rows * strips}u) {{ return; }}
{chr(10).join(lines)}
  for (var e = strip; e < {inner}u; e += {strips}u) {{
{loads}
    y[o * {inner}u + e] = ST(act({expr}));
  }}
}}
"""


class Binary(Elementwise):
    """y = act(a OP b) with NumPy broadcasting up to rank MAX_RANK; add/sub take alpha as torch does."""

    def __init__(self, gpu: Gpu, op: str, a_shape, b_shape, out_shape, act=None, alpha: float = 1.0,
                 precision: Precision = FP32):
        if op not in BINARY_EXPR:
            raise ValueError(f"unknown binary op {op!r}; known: {', '.join(BINARY_EXPR)}")
        scalars = {"alpha": alpha} if "alpha" in BINARY_EXPR[op] else {}
        super().__init__(gpu, BINARY_EXPR[op], [a_shape, b_shape], out_shape, act, precision, scalars)


class ChannelAffine:
    """y = act(x * scale[c] + shift[c]) over NC... tensors: an eval batch norm with nothing to fold into.

    GPUs: an invocation per element. CPU adapters: an invocation per (plane, strip), its channel's scale and
    shift loaded once, then every `strips`-th element (or vec4, where planes are whole vec4s) of the plane from
    the strip's index: no division per element, which llvmpipe does lane by lane (DenseNet's 256 x 16 x 16
    batch norm: 0.54 -> 0.16 ms; NOTES session 18)."""

    PARAMS = ["total", "c", "hw"]

    def __init__(self, gpu: Gpu, shape, scale: np.ndarray, shift: np.ndarray, act=None, precision: Precision = FP32,
                 per_plane: bool | None = None):
        """`per_plane`: the CPU adapters' form (None: on CPU adapters only)."""
        self.gpu = gpu
        c, hw = shape[1], math.prod(shape[2:])
        self.values = dict(total=math.prod(shape), c=c, hw=hw)
        self.scale = gpu.upload(np.asarray(scale, np.float32).reshape(c), "batch norm scale")
        self.shift = gpu.upload(np.asarray(shift, np.float32).reshape(c), "batch norm shift")
        self.cpu_invocations = None  # set for the CPU adapters' form
        if cpu_form(gpu) if per_plane is None else per_plane:
            self.cpu_invocations, self.source = plane_strips(math.prod(shape[:2]), c, hw, act, precision)
        else:
            body = "  let c = (t / P.hw) % P.c;\n  y[t] = ST(act(f32(x[t]) * scale[c] + shift[c]));"
            self.source = flat_shader(self.PARAMS, storage("x", "scale:f32", "shift:f32", "y!"), body,
                                      act_source(act), precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if self.cpu_invocations is not None:
            return [self.gpu.dispatch(self.source, [x, self.scale, self.shift, y], self.cpu_invocations, CPU_WG)]
        return [launch(self.gpu, self.source, self.PARAMS, self.values, [x, self.scale, self.shift, y])]


CPU_WG = 8  # one llvmpipe SIMD vector
CPU_STRIP = 64  # loads (elements, or vec4s) a CPU adapter's invocation takes on, at least (a whole plane's if fewer)


def plane_strips(planes: int, c: int, hw: int, act, precision: Precision) -> tuple[int, str]:
    """ChannelAffine's CPU form: (invocations, WGSL); four elements a load where planes are whole vec4s."""
    vec = hw % 4 == 0
    n = hw // 4 if vec else hw  # loads per plane
    strips = ceil_div(n, min(n, CPU_STRIP))
    if vec:
        step = "vec4<ST>"
        apply = ("let v = vec4<f32>(x[base + e]) * s + b;\n"
                 "    y[base + e] = vec4<ST>(vec4<f32>(act(v.x), act(v.y), act(v.z), act(v.w)));")
    else:
        step, apply = "ST", "y[base + e] = ST(act(f32(x[base + e]) * s + b));"
    return planes * strips, precision.wgsl() + constants(dict(C=c, N=n, STRIPS=strips, WG=CPU_WG)) + \
        act_source(act) + f"""
{storage(f"x:{step}", "scale:f32", "shift:f32", f"y!:{step}", first=0)}
@compute @workgroup_size({CPU_WG})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= {planes * strips}u) {{ return; }}
  let plane = t / STRIPS;
  let s = scale[plane % C];
  let b = shift[plane % C];
  let base = plane * N;
  for (var e = t % STRIPS; e < N; e += STRIPS) {{
    {apply}
  }}
}}
"""

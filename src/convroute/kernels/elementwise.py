"""Elementwise ops for whole models: standalone activations, broadcasting add/sub/mul/div with a fused
activation, and a per-channel affine (a batch norm that follows no conv). Dense row-major tensors stored as
float32 or float16 (`precision`), computed in f32.

Like the conv algorithms, each op is built once per shape (`__init__` compiles, uploads constants) and
`bind(...)` returns the dispatches for concrete buffers.
"""

from __future__ import annotations

import math

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ACTIVATIONS, FP32, Epilogue, Precision, keep_nan, storage
from convroute.kernels.flat import f32_bits, flat_shader, launch

MAX_RANK = 4

# Activations beyond the conv epilogue's set (they never fuse into a conv).
EXTRA_ACTIVATIONS = {
    "gelu": "return 0.5 * v * (1.0 + erf_approx(v * 0.7071067811865476));",
    "gelu_tanh": "return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v)));",
    "hardsigmoid": "return select(select((v + 3.0) / 6.0, 0.0, v + 3.0 < 0.0), 1.0, v + 3.0 > 6.0);",
    "tanh": "return tanh_safe(v);",
}
HELPERS = """
fn tanh_safe(v: f32) -> f32 {
  let e = exp(-2.0 * abs(v));
  let r = (1.0 - e) / (1.0 + e);
  return select(r, -r, v < 0.0);
}
fn erf_approx(x: f32) -> f32 {
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
  let y = 1.0 - p * exp(-a * a);
  return select(y, -y, x < 0.0);
}
"""
UNARY_KINDS = tuple(a for a in ACTIVATIONS if a != "none") + tuple(EXTRA_ACTIVATIONS)


def act_source(act) -> str:
    """`fn act(v: f32) -> f32` for an Epilogue or a name in UNARY_KINDS."""
    if isinstance(act, str) and act in EXTRA_ACTIVATIONS:
        return HELPERS + keep_nan(EXTRA_ACTIVATIONS[act])
    return Epilogue.parse(act).wgsl()


class Unary:
    """y = act(x) for relu, relu6, clamp, hardswish, silu, sigmoid, hardsigmoid, gelu, gelu_tanh, tanh; with
    act None a plain copy. `x_type` "f32" reads a float32 x into ST storage (an f16 program's float32 input,
    converted on the GPU rather than the host)."""

    PARAMS = ["total"]

    def __init__(self, gpu: Gpu, act, total: int, precision: Precision = FP32, x_type: str = "ST"):
        self.gpu, self.total = gpu, total
        self.source = flat_shader(self.PARAMS, storage(f"x:{x_type}", "y!"), "  y[t] = ST(act(f32(x[t])));",
                                  act_source(act), precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, self.PARAMS, {"total": self.total}, [x, y])]


BINARY_PARAMS = ["total", "d1", "d2", "d3", "a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3", "alpha"]
SAME_INDEX = "  let ia = t;\n  let ib = t;"
BROADCAST_INDEX = """  let i3 = t % P.d3;
  let i2 = (t / P.d3) % P.d2;
  let i1 = (t / (P.d3 * P.d2)) % P.d1;
  let i0 = t / (P.d3 * P.d2 * P.d1);
  let ia = i0 * P.a0 + i1 * P.a1 + i2 * P.a2 + i3 * P.a3;
  let ib = i0 * P.b0 + i1 * P.b1 + i2 * P.b2 + i3 * P.b3;"""
BINARY_EXPR = {"add": "u + alpha * v", "sub": "u - alpha * v", "mul": "u * v", "div": "u / v"}


def broadcast_strides(shape, out_shape) -> list[int] | None:
    """Element strides of a dense `shape` read broadcast to `out_shape` (both left-padded to rank 4)."""
    if len(out_shape) > MAX_RANK or len(shape) > len(out_shape):
        return None
    shape = (1,) * (MAX_RANK - len(shape)) + tuple(shape)
    out = (1,) * (MAX_RANK - len(out_shape)) + tuple(out_shape)
    strides, step = [0] * MAX_RANK, 1
    for i in reversed(range(MAX_RANK)):
        if shape[i] not in (1, out[i]):
            return None
        strides[i] = step if shape[i] == out[i] and out[i] != 1 else 0
        step *= shape[i]
    return strides


class Binary:
    """y = act(a OP b) with NumPy broadcasting up to rank 4; add/sub take alpha as torch does."""

    def __init__(self, gpu: Gpu, op: str, a_shape, b_shape, out_shape, act=None, alpha: float = 1.0,
                 precision: Precision = FP32):
        if op not in BINARY_EXPR:
            raise ValueError(f"unknown binary op {op!r}; known: {', '.join(BINARY_EXPR)}")
        sa, sb = broadcast_strides(a_shape, out_shape), broadcast_strides(b_shape, out_shape)
        if sa is None or sb is None:
            raise ValueError(f"cannot broadcast {tuple(a_shape)} and {tuple(b_shape)} to {tuple(out_shape)} "
                             f"within rank {MAX_RANK}")
        self.gpu = gpu
        out = (1,) * (MAX_RANK - len(out_shape)) + tuple(out_shape)
        same = tuple(a_shape) == tuple(b_shape) == tuple(out_shape)
        self.values = dict(total=math.prod(out), d1=out[1], d2=out[2], d3=out[3], alpha=f32_bits(alpha),
                           **{f"a{i}": s for i, s in enumerate(sa)}, **{f"b{i}": s for i, s in enumerate(sb)})
        body = (f"  let alpha = bitcast<f32>(P.alpha);\n{SAME_INDEX if same else BROADCAST_INDEX}\n"
                f"  let u = f32(a[ia]);\n  let v = f32(b[ib]);\n  y[t] = ST(act({BINARY_EXPR[op]}));")
        self.source = flat_shader(BINARY_PARAMS, storage("a", "b", "y!"), body, act_source(act), precision)
        gpu.pipeline(self.source)

    def bind(self, a, b, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, BINARY_PARAMS, self.values, [a, b, y])]


class ChannelAffine:
    """y = act(x * scale[c] + shift[c]) over NC... tensors: an eval batch norm with nothing to fold into."""

    PARAMS = ["total", "c", "hw"]

    def __init__(self, gpu: Gpu, shape, scale: np.ndarray, shift: np.ndarray, act=None, precision: Precision = FP32):
        self.gpu = gpu
        c = shape[1]
        self.values = dict(total=math.prod(shape), c=c, hw=math.prod(shape[2:]))
        self.scale = gpu.upload(np.asarray(scale, np.float32).reshape(c), "batch norm scale")
        self.shift = gpu.upload(np.asarray(shift, np.float32).reshape(c), "batch norm shift")
        body = "  let c = (t / P.hw) % P.c;\n  y[t] = ST(act(f32(x[t]) * scale[c] + shift[c]));"
        self.source = flat_shader(self.PARAMS, storage("x", "scale:f32", "shift:f32", "y!"), body, act_source(act),
                                  precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, self.PARAMS, self.values, [x, self.scale, self.shift, y])]

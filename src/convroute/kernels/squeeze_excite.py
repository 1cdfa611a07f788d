"""A squeeze-excitation block's second dispatch: from the pooled means p [N, C] (the first dispatch, kernels/pool.py),
gate = act2(W2 act1(W1 p + b1) + b2) and y = act(x * gate) over x [N, C, H*W], in one dispatch. ECA's block
(`EfficientChannelAttention`) is the same with gate = act2(conv1d over the channels of p + b).

One workgroup per (block of CB channels, image): it computes the whole hidden vector (Cr = W1's rows; every
workgroup of an image repeats this small matvec, threads splitting the C terms and summing in workgroup
memory), then its CB gates, then scales its CB planes. CB is chosen so that each workgroup scales a few thousand
elements, and on CPU adapters at least C * Cr of them, which keeps the repeated matvec no larger than the
scaling there (lavapipe ran a 480-channel block 5x slower with 15 workgroups than with 2: its matvecs are slow;
a GPU runs the repeats side by side). Sizes are baked into the source (no parameter block).
Weights stay f32; x and y are stored as ST (float32 or float16) and all arithmetic is f32.
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ENTRY_ARGS, FP32, Epilogue, Precision, ceil_div, storage

WG = 256
ELEMENTS_PER_GROUP = 4096  # scale work a workgroup takes on, at least


def pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= min(n, cap):
        p *= 2
    return p


class SqueezeExcite:
    def __init__(self, gpu: Gpu, shape: tuple, w1: np.ndarray, b1: np.ndarray | None, act1: Epilogue,
                 w2: np.ndarray, b2: np.ndarray | None, act2: Epilogue, act: Epilogue | None = None,
                 precision: Precision = FP32):
        n, c, hw = shape[0], shape[1], int(np.prod(shape[2:]))
        cr = w1.shape[0]
        if w1.reshape(cr, -1).shape[1] != c or w2.reshape(c, -1).shape[1] != cr:
            raise ValueError(f"squeeze-excite weights {w1.shape}, {w2.shape} do not fit {c} channels")
        self.gpu, self.n = gpu, n
        # each workgroup repeats the C x Cr matvec: on CPU adapters (few threads) at least as many elements to scale
        repeat = ceil_div(c * cr, hw) if gpu.profile.family == "cpu" else 1
        self.cb = max(1, min(c, max(ceil_div(ELEMENTS_PER_GROUP, hw), repeat)))
        self.blocks = ceil_div(c, self.cb)
        if max(self.blocks, n) > gpu.profile.max_workgroups_per_dim:
            raise ValueError(f"squeeze-excite grid {self.blocks} x {n} exceeds the device's dispatch grid")
        wg = min(WG, gpu.profile.max_invocations)
        shared = 4 * (wg + cr + self.cb)
        if shared > gpu.profile.max_workgroup_storage:
            raise ValueError(f"squeeze-excite needs {shared} bytes of workgroup memory")
        self.w1t = gpu.upload(np.ascontiguousarray(w1.reshape(cr, c).T), "squeeze-excite W1^T")  # [C, Cr]
        self.b1 = gpu.upload(np.zeros(cr, np.float32) if b1 is None else b1.reshape(cr), "squeeze-excite b1")
        self.w2 = gpu.upload(w2.reshape(c, cr), "squeeze-excite W2")  # [C, Cr]
        self.b2 = gpu.upload(np.zeros(c, np.float32) if b2 is None else b2.reshape(c), "squeeze-excite b2")
        self.source = shader(c, cr, hw, self.cb, wg, act1, act2, act or Epilogue(), precision)
        gpu.pipeline(self.source)

    def bind(self, x, pooled, y) -> list[Dispatch]:
        pipe = self.gpu.pipeline(self.source)
        group = self.gpu.bind(pipe, [x, pooled, self.w1t, self.b1, self.w2, self.b2, y])
        return [Dispatch(pipe, group, (self.blocks, self.n, 1))]


# Both kernels end alike: every invocation scales its share of the block's channels by their gates.
SCALE_BY_GATE = """  let base = (img * C + c0) * HW;
  let count = min(CB, C - c0) * HW;
  for (var e = t; e < count; e += WG) { y[base + e] = ST(act(f32(x[base + e]) * gate[e / HW])); }
"""


def shader(c: int, cr: int, hw: int, cb: int, wg: int, act1: Epilogue, act2: Epilogue, act: Epilogue,
           precision: Precision) -> str:
    hj = pow2_at_most(cr, wg)  # hidden units per round; wg / hj threads split each one's C terms
    gj = pow2_at_most(cb, wg)  # gates per round; wg / gj threads split each one's Cr terms
    return precision.wgsl() + f"""
const C: u32 = {c}u;
const CR: u32 = {cr}u;
const HW: u32 = {hw}u;
const CB: u32 = {cb}u;
const WG: u32 = {wg}u;
const HJ: u32 = {hj}u;
const HS: u32 = {wg // hj}u;
const GJ: u32 = {gj}u;
const GS: u32 = {wg // gj}u;
{storage("x", "pooled", "w1t:f32", "b1:f32", "w2:f32", "b2:f32", "y!", first=0)}
var<workgroup> part: array<f32, {wg}>;
var<workgroup> hidden: array<f32, {cr}>;
var<workgroup> gate: array<f32, {cb}>;
{act1.wgsl("act1")}
{act2.wgsl("act2")}
{act.wgsl("act")}
@compute @workgroup_size({wg})
fn main({ENTRY_ARGS}) {{
  let t = lid_x;
  let img = wid.y;
  let c0 = wid.x * CB;
  for (var j0 = 0u; j0 < CR; j0 += HJ) {{
    let j = j0 + t % HJ;
    var acc = 0.0;
    if (j < CR) {{
      for (var k = t / HJ; k < C; k += HS) {{ acc += f32(pooled[img * C + k]) * w1t[k * CR + j]; }}
    }}
    part[t] = acc;
    workgroupBarrier();
    if (t < HJ && j < CR) {{
      var h = b1[j];
      for (var s = 0u; s < HS; s++) {{ h += part[s * HJ + t]; }}
      hidden[j] = act1(h);
    }}
    workgroupBarrier();
  }}
  for (var i0 = 0u; i0 < CB; i0 += GJ) {{
    let i = i0 + t % GJ;
    var acc = 0.0;
    if (i < CB && c0 + i < C) {{
      for (var k = t / GJ; k < CR; k += GS) {{ acc += hidden[k] * w2[(c0 + i) * CR + k]; }}
    }}
    part[t] = acc;
    workgroupBarrier();
    if (t < GJ && i < CB && c0 + i < C) {{
      var g = b2[c0 + i];
      for (var s = 0u; s < GS; s++) {{ g += part[s * GJ + t]; }}
      gate[i] = act2(g);
    }}
    workgroupBarrier();
  }}
{SCALE_BY_GATE}}}
"""


class EfficientChannelAttention:
    """ECA's gate and scale: gate_c = act2(b + sum_k w[k] p[c + k * dilation - padding]) (zero outside the
    channels), y = act(x * gate), one workgroup per (block of CB channels, image)."""

    def __init__(self, gpu: Gpu, shape: tuple, taps: np.ndarray, bias: float, padding: int, dilation: int,
                 act2: Epilogue, act: Epilogue | None = None, precision: Precision = FP32):
        n, c, hw = shape[0], shape[1], int(np.prod(shape[2:]))
        self.gpu, self.n = gpu, n
        self.cb = max(1, min(c, ceil_div(ELEMENTS_PER_GROUP, hw)))
        self.blocks = ceil_div(c, self.cb)
        if max(self.blocks, n) > gpu.profile.max_workgroups_per_dim:
            raise ValueError(f"channel-attention grid {self.blocks} x {n} exceeds the device's dispatch grid")
        if 4 * self.cb > gpu.profile.max_workgroup_storage:
            raise ValueError(f"channel attention needs {4 * self.cb} bytes of workgroup memory")
        wg = min(WG, gpu.profile.max_invocations)
        self.taps = gpu.upload(np.append(taps.reshape(-1), np.float32(bias)), "channel-attention taps and bias")
        self.source = eca_shader(c, hw, self.cb, wg, taps.size, padding, dilation, act2, act or Epilogue(),
                                 precision)
        gpu.pipeline(self.source)

    def bind(self, x, pooled, y) -> list[Dispatch]:
        pipe = self.gpu.pipeline(self.source)
        group = self.gpu.bind(pipe, [x, pooled, self.taps, y])
        return [Dispatch(pipe, group, (self.blocks, self.n, 1))]


def eca_shader(c: int, hw: int, cb: int, wg: int, k: int, padding: int, dilation: int, act2: Epilogue,
               act: Epilogue, precision: Precision) -> str:
    return precision.wgsl() + f"""
const C: u32 = {c}u;
const HW: u32 = {hw}u;
const CB: u32 = {cb}u;
const WG: u32 = {wg}u;
const K: u32 = {k}u;
{storage("x", "pooled", "taps:f32", "y!", first=0)}
var<workgroup> gate: array<f32, {cb}>;
{act2.wgsl("act2")}
{act.wgsl("act")}
@compute @workgroup_size({wg})
fn main({ENTRY_ARGS}) {{
  let t = lid_x;
  let img = wid.y;
  let c0 = wid.x * CB;
  for (var i = t; i < CB; i += WG) {{
    var g = taps[K];
    for (var k = 0u; k < K; k++) {{
      let src = i32(c0 + i) + i32(k * {dilation}u) - {padding};
      if (src >= 0 && src < i32(C)) {{ g += taps[k] * f32(pooled[img * C + u32(src)]); }}
    }}
    gate[i] = act2(g);
  }}
  workgroupBarrier();
{SCALE_BY_GATE}}}
"""

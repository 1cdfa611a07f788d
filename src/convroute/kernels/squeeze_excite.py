"""A squeeze-excitation block's second dispatch: from the pooled means p [N, C] (the first dispatch, kernels/pool.py),
gate = act2(W2 act1(W1 p + b1) + b2) and y = act(x * gate) over x [N, C, H*W], in one dispatch. ECA's block
(`EfficientChannelAttention`) is the same with gate = act2(conv1d over the channels of p + b).

One workgroup per (block of CB channels, image): it computes the whole hidden vector (Cr = W1's rows; every
workgroup of an image repeats this small matvec, threads splitting the C terms and summing in workgroup memory, each
load four hidden units' weights), then its CB gates, then scales its CB planes. CB is chosen so that each workgroup
scales a few thousand elements (a GPU runs the repeated matvecs side by side). Sizes are baked into the source (no
parameter block). Weights stay f32; x and y are stored as ST (float32 or float16) and all arithmetic is f32.

CPU adapters run `TwoPassSqueezeExcite` instead (`make_squeeze_excite` picks): the hidden vector once per image
into a scratch buffer, then an invocation per (image, channel, strip of its plane) that computes its gate and
scales its strip; weights in fours (vec4 loads: lavapipe's storage loads are slow). No workgroup memory, no
barriers: the one-dispatch kernel ran a block at 2x2 as one workgroup on one of lavapipe's threads (2.9 ms for
960 channels).
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import (
    ENTRY_ARGS,
    FLAT_INDEX,
    FP32,
    Epilogue,
    Precision,
    ceil_div,
    constants,
    storage,
)
from convroute.kernels.elementwise import CPU_STRIP, CPU_WG, cpu_form

WG = 256
ELEMENTS_PER_GROUP = 4096  # scale work a workgroup takes on, at least


def pow2_at_most(n: int, cap: int) -> int:
    p = 1
    while p * 2 <= min(n, cap):
        p *= 2
    return p


def make_squeeze_excite(gpu: Gpu, shape: tuple, w1: np.ndarray, b1: np.ndarray | None, act1: Epilogue,
                        w2: np.ndarray, b2: np.ndarray | None, act2: Epilogue, act: Epilogue | None = None,
                        precision: Precision = FP32, two_pass: bool | None = None):
    """The block's kernel: `TwoPassSqueezeExcite` on CPU adapters (or where `two_pass`), else `SqueezeExcite`."""
    cls = TwoPassSqueezeExcite if (cpu_form(gpu) if two_pass is None else two_pass) else SqueezeExcite
    return cls(gpu, shape, w1, b1, act1, w2, b2, act2, act, precision)


def check_weights(c: int, w1: np.ndarray, w2: np.ndarray) -> int:
    """Cr, after checking that W1 [Cr, C] and W2 [C, Cr] fit C channels."""
    cr = w1.shape[0]
    if w1.reshape(cr, -1).shape[1] != c or w2.reshape(c, -1).shape[1] != cr:
        raise ValueError(f"squeeze-excite weights {w1.shape}, {w2.shape} do not fit {c} channels")
    return cr


def weights_in_fours(c: int, cr: int, w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray) -> tuple:
    """(Cr4, W1^T [C, 4 Cr4], b1 [4 Cr4], W2 [C, 4 Cr4]): the hidden units padded to a multiple of four for vec4
    loads; a padded unit's act1(0) meets zeros in W2."""
    cr4 = ceil_div(cr, 4)
    w1t = np.zeros((c, 4 * cr4), np.float32)
    w1t[:, :cr] = w1.reshape(cr, c).T
    w2p = np.zeros((c, 4 * cr4), np.float32)
    w2p[:, :cr] = w2.reshape(c, cr)
    b1p = np.zeros(4 * cr4, np.float32)
    if b1 is not None:
        b1p[:cr] = b1.reshape(cr)
    return cr4, w1t, b1p, w2p


class SqueezeExcite:
    def __init__(self, gpu: Gpu, shape: tuple, w1: np.ndarray, b1: np.ndarray | None, act1: Epilogue,
                 w2: np.ndarray, b2: np.ndarray | None, act2: Epilogue, act: Epilogue | None = None,
                 precision: Precision = FP32, elements_per_group: int = ELEMENTS_PER_GROUP):
        n, c, hw = shape[0], shape[1], int(np.prod(shape[2:]))
        cr = check_weights(c, w1, w2)
        self.gpu, self.n = gpu, n
        self.cb = max(1, min(c, ceil_div(elements_per_group, hw)))
        self.blocks = ceil_div(c, self.cb)
        if max(self.blocks, n) > gpu.profile.max_workgroups_per_dim:
            raise ValueError(f"squeeze-excite grid {self.blocks} x {n} exceeds the device's dispatch grid")
        wg = min(WG, gpu.profile.max_invocations)
        cr4, w1t, b1p, w2p = weights_in_fours(c, cr, w1, b1, w2)
        shared = 16 * (wg + cr4) + 4 * self.cb
        if shared > gpu.profile.max_workgroup_storage:
            raise ValueError(f"squeeze-excite needs {shared} bytes of workgroup memory")
        self.w1t, self.b1 = gpu.upload(w1t, "squeeze-excite W1^T"), gpu.upload(b1p, "squeeze-excite b1")
        self.w2 = gpu.upload(w2p, "squeeze-excite W2")
        self.b2 = gpu.upload(np.zeros(c, np.float32) if b2 is None else b2.reshape(c), "squeeze-excite b2")
        self.source = shader(c, cr4, hw, self.cb, wg, act1, act2, act or Epilogue(), precision)
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


def shader(c: int, cr4: int, hw: int, cb: int, wg: int, act1: Epilogue, act2: Epilogue, act: Epilogue,
           precision: Precision) -> str:
    """Both matrix-vector products four hidden units a load (vec4): a thread of the hidden one sums every HS-th
    channel's terms for its four units, one of the gates every GS-th group of four terms for its channel."""
    hj = pow2_at_most(cr4, wg)  # groups of four hidden units per round; wg / hj threads split each one's C terms
    gj = pow2_at_most(cb, wg)  # gates per round; wg / gj threads split each one's Cr4 groups of terms
    sizes = constants(dict(C=c, CR4=cr4, HW=hw, CB=cb, WG=wg, HJ=hj, HS=wg // hj, GJ=gj, GS=wg // gj))
    return precision.wgsl() + sizes + f"""
{storage("x", "pooled", "w1t:vec4<f32>", "b1:vec4<f32>", "w2:vec4<f32>", "b2:f32", "y!", first=0)}
var<workgroup> part: array<vec4<f32>, {wg}>;
var<workgroup> hidden: array<vec4<f32>, {cr4}>;
var<workgroup> gate: array<f32, {cb}>;
{act1.wgsl("act1")}
{act2.wgsl("act2")}
{act.wgsl("act")}
@compute @workgroup_size({wg})
fn main({ENTRY_ARGS}) {{
  let t = lid_x;
  let img = wid.y;
  let c0 = wid.x * CB;
  for (var j0 = 0u; j0 < CR4; j0 += HJ) {{
    let j = j0 + t % HJ;
    var acc = vec4<f32>(0.0);
    if (j < CR4) {{
      for (var k = t / HJ; k < C; k += HS) {{ acc += f32(pooled[img * C + k]) * w1t[k * CR4 + j]; }}
    }}
    part[t] = acc;
    workgroupBarrier();
    if (t < HJ && j < CR4) {{
      var h = b1[j];
      for (var s = 0u; s < HS; s++) {{ h += part[s * HJ + t]; }}
      hidden[j] = vec4<f32>(act1(h.x), act1(h.y), act1(h.z), act1(h.w));
    }}
    workgroupBarrier();
  }}
  for (var i0 = 0u; i0 < CB; i0 += GJ) {{
    let i = i0 + t % GJ;
    var acc = vec4<f32>(0.0);
    if (i < CB && c0 + i < C) {{
      for (var k = t / GJ; k < CR4; k += GS) {{ acc += hidden[k] * w2[(c0 + i) * CR4 + k]; }}
    }}
    part[t] = acc;
    workgroupBarrier();
    if (t < GJ && i < CB && c0 + i < C) {{
      var g = b2[c0 + i];
      for (var s = 0u; s < GS; s++) {{ let v = part[s * GJ + t]; g += v.x + v.y + v.z + v.w; }}
      gate[i] = act2(g);
    }}
    workgroupBarrier();
  }}
{SCALE_BY_GATE}}}
"""


class TwoPassSqueezeExcite:
    """The block in two dispatches without workgroup memory (see the module's text): hidden[img] = act1(W1 p +
    b1) with an invocation per four hidden units, then an invocation per (image, channel, strip)."""

    def __init__(self, gpu: Gpu, shape: tuple, w1: np.ndarray, b1: np.ndarray | None, act1: Epilogue,
                 w2: np.ndarray, b2: np.ndarray | None, act2: Epilogue, act: Epilogue | None = None,
                 precision: Precision = FP32):
        n, c, hw = shape[0], shape[1], int(np.prod(shape[2:]))
        cr4, w1t, b1p, w2p = weights_in_fours(c, check_weights(c, w1, w2), w1, b1, w2)
        self.gpu, self.shape = gpu, (n, c, cr4)
        self.w1t, self.b1 = gpu.upload(w1t, "squeeze-excite W1^T"), gpu.upload(b1p, "squeeze-excite b1")
        self.w2 = gpu.upload(w2p, "squeeze-excite W2")
        self.b2 = gpu.upload(np.zeros(c, np.float32) if b2 is None else b2.reshape(c), "squeeze-excite b2")
        self.hidden = gpu.empty(16 * n * cr4, "squeeze-excite hidden vector")
        self.strips = ceil_div(hw, min(hw, max(4 * cr4, CPU_STRIP)))  # the gate's Cr terms at most double the work
        self.sources = (hidden_shader(n, c, cr4, act1, precision),
                        gate_shader(n, c, cr4, hw, self.strips, act2, act or Epilogue(), precision))
        for source in self.sources:
            gpu.pipeline(source)

    def bind(self, x, pooled, y) -> list[Dispatch]:
        n, c, cr4 = self.shape
        hidden, gate = self.sources
        return [self.gpu.dispatch(hidden, [pooled, self.w1t, self.b1, self.hidden], n * cr4, CPU_WG),
                self.gpu.dispatch(gate, [x, self.hidden, self.w2, self.b2, y], n * c * self.strips, CPU_WG)]


def hidden_shader(n: int, c: int, cr4: int, act1: Epilogue, precision: Precision) -> str:
    """hidden[img, 4j..4j+3] = act1(b1 + sum_k pooled[img, k] W1^T[k, 4j..4j+3]), an invocation per (img, j);
    four pooled means a load where C is a multiple of 4."""
    if c % 4:
        pooled, loop = "pooled", "  for (var k = 0u; k < C; k++) { h += f32(pooled[img * C + k]) * w1t[k * CR4 + j]; }"
    else:
        pooled, loop = "pooled:vec4<ST>", """  for (var k = 0u; k < C; k += 4u) {
    let p = vec4<f32>(pooled[(img * C + k) / 4u]);
    let w = k * CR4 + j;
    h += p.x * w1t[w] + p.y * w1t[w + CR4] + p.z * w1t[w + 2u * CR4] + p.w * w1t[w + 3u * CR4];
  }"""
    return precision.wgsl() + constants(dict(C=c, CR4=cr4, WG=CPU_WG)) + f"""
{storage(pooled, "w1t:vec4<f32>", "b1:vec4<f32>", "hidden!:vec4<f32>", first=0)}
{act1.wgsl("act1")}
@compute @workgroup_size({CPU_WG})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= {n * cr4}u) {{ return; }}
  let img = t / CR4;
  let j = t % CR4;
  var h = b1[j];
{loop}
  hidden[t] = vec4<f32>(act1(h.x), act1(h.y), act1(h.z), act1(h.w));
}}
"""


def gate_shader(n: int, c: int, cr4: int, hw: int, strips: int, act2: Epilogue, act: Epilogue,
                precision: Precision) -> str:
    """An invocation per (image, channel, strip): the channel's gate, then act(x * gate) over every
    `strips`-th element of the plane from the strip's index (neighbouring invocations, neighbouring elements)."""
    return precision.wgsl() + constants(dict(C=c, CR4=cr4, HW=hw, STRIPS=strips, WG=CPU_WG)) + f"""
{storage("x", "hidden:vec4<f32>", "w2:vec4<f32>", "b2:f32", "y!", first=0)}
{act2.wgsl("act2")}
{act.wgsl("act")}
@compute @workgroup_size({CPU_WG})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= {n * c * strips}u) {{ return; }}
  let strip = t % STRIPS;
  let plane = t / STRIPS;
  let ch = plane % C;
  let img = plane / C;
  var g = b2[ch];
  for (var k = 0u; k < CR4; k++) {{ g += dot(hidden[img * CR4 + k], w2[ch * CR4 + k]); }}
  g = act2(g);
  let base = plane * HW;
  for (var e = strip; e < HW; e += STRIPS) {{ y[base + e] = ST(act(f32(x[base + e]) * g)); }}
}}
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
    return precision.wgsl() + constants(dict(C=c, HW=hw, CB=cb, WG=wg, K=k)) + f"""
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

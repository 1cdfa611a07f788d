"""2-D pooling over NCHW planes: max_pool2d (dilation, ceil_mode), avg_pool2d (ceil_mode, count_include_pad,
divisor_override), adaptive_avg_pool2d (which also serves mean over H and W) and adaptive_max_pool2d.

Output sizes come from the caller (the graph's shapes), so ceil_mode needs no logic here: partial
windows are clipped as torch clips them. Small windows take one invocation per output; larger ones
(global pooling) take a workgroup per output that splits the window and reduces in workgroup memory,
which also keeps every invocation's loop short (lavapipe stops any invocation's loops after 65535
iterations in all). On GPUs "larger" starts past COOP_WINDOW_GPU elements: an invocation's loop of
dependent loads is latency-bound there (the H100 took 21 us for MobileNetV2's 1280 planes of 7x7 with
one invocation each); CPU adapters, where a barrier is a coroutine switch, past COOP_WINDOW. Values are
stored as float32 or float16 (`precision`) and reduced in f32.
"""

from __future__ import annotations

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, ceil_div, pack, storage, uniform_block
from convroute.kernels.flat import WG, flat_shader, launch

COOP_WINDOW, COOP_WINDOW_GPU = 256, 16
MAX_LOOP = 60000  # iterations one invocation may run (lavapipe's limit is 65535)
PARAMS = ["total", "h", "w", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "include_pad",
          "divisor"]

# fn window(o) -> Win: the window of output o as a start, a count and a step per axis, and its divisor.
WINDOWS = {
    "max": """
fn window(o: u32) -> Win {
  let ow = o % P.wo;
  let oh = (o / P.wo) % P.ho;
  return Win(i32(oh * P.sh) - i32(P.ph), i32(ow * P.sw) - i32(P.pw), P.kh, P.kw, P.dh, P.dw, 1.0);
}
""",
    "avg": """
fn window(o: u32) -> Win {
  let ow = o % P.wo;
  let oh = (o / P.wo) % P.ho;
  let hs = i32(oh * P.sh) - i32(P.ph);
  let ws = i32(ow * P.sw) - i32(P.pw);
  let he = min(hs + i32(P.kh), i32(P.h + P.ph));
  let we = min(ws + i32(P.kw), i32(P.w + P.pw));
  let pool = (he - hs) * (we - ws);
  let h0 = max(hs, 0);
  let w0 = max(ws, 0);
  let nh = max(min(he, i32(P.h)) - h0, 0);
  let nw = max(min(we, i32(P.w)) - w0, 0);
  var div = f32(select(nh * nw, pool, P.include_pad == 1u));
  if (P.divisor != 0u) { div = f32(P.divisor); }
  return Win(h0, w0, u32(nh), u32(nw), 1u, 1u, div);
}
""",
    "adaptive": """
fn window(o: u32) -> Win {
  let ow = o % P.wo;
  let oh = (o / P.wo) % P.ho;
  let h0 = (oh * P.h) / P.ho;
  let h1 = ((oh + 1u) * P.h + P.ho - 1u) / P.ho;
  let w0 = (ow * P.w) / P.wo;
  let w1 = ((ow + 1u) * P.w + P.wo - 1u) / P.wo;
  return Win(i32(h0), i32(w0), h1 - h0, w1 - w0, 1u, 1u, f32((h1 - h0) * (w1 - w0)));
}
""",
}

WINDOWS["adaptive_max"] = WINDOWS["adaptive"]

# Reduction per kind: start value, combine(acc, v), finish(acc, win). NaN propagates through max as in torch.
REDUCE = {
    "max": ("neg_inf()", "select(a, v, !is_nan(a) && (v > a || is_nan(v)))", "a"),
    "avg": ("0.0", "a + v", "select(a / win.div, 0.0, win.nh == 0u || win.nw == 0u)"),
    "adaptive": ("0.0", "a + v", "a / win.div"),
}
REDUCE["adaptive_max"] = REDUCE["max"]

FRAME = """
struct Win { hs: i32, ws: i32, nh: u32, nw: u32, dh: u32, dw: u32, div: f32 }
WINDOW
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }  // v != v may fold away
fn neg_inf() -> f32 { let bits = 0xff800000u; return bitcast<f32>(bits); }  // as a constant, Tint refuses -inf
fn combine(a: f32, v: f32) -> f32 { return COMBINE; }
fn finish(a: f32, win: Win) -> f32 { return FINISH; }
fn element_at(a: f32, base: u32, win: Win, i: u32, j: u32) -> f32 {
  let ih = win.hs + i32(i * win.dh);
  let iw = win.ws + i32(j * win.dw);
  if (ih < 0 || ih >= i32(P.h) || iw < 0 || iw >= i32(P.w)) { return a; }
  return combine(a, f32(x[base + u32(ih) * P.w + u32(iw)]));
}
fn element(a: f32, base: u32, win: Win, e: u32) -> f32 { return element_at(a, base, win, e / win.nw, e % win.nw); }
"""

# Two loops, not one over the window's elements: no division per element (llvmpipe divides lane by lane; a
# 3x3 max pool of 64 x 31 x 31 took 0.35 ms on lavapipe with the division, NOTES session 18).
PER_INVOCATION = """  let win = window(t);
  let base = (t / (P.wo * P.ho)) * P.h * P.w;
  var a = START;
  for (var i = 0u; i < win.nh; i++) {
    for (var j = 0u; j < win.nw; j++) { a = element_at(a, base, win, i, j); }
  }
  y[t] = ST(finish(a, win));"""

PER_WORKGROUP = """{precision}
const WG: u32 = {wg}u;
{params}
@group(0) @binding(0) var<uniform> P: Params;
{buffers}
{helpers}
var<workgroup> part: array<f32, {wg}>;
@compute @workgroup_size({wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
  let o = wid.x + wid.y * nwg.x;
  let live = o < P.total;
  let oc = select(0u, o, live);
  let win = window(oc);
  let base = (oc / (P.wo * P.ho)) * P.h * P.w;
  var a = {start};
  for (var e = lid; live && e < win.nh * win.nw; e += WG) {{ a = element(a, base, win, e); }}
  part[lid] = a;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s / 2u) {{
    if (lid < s) {{ part[lid] = combine(part[lid], part[lid + s]); }}
    workgroupBarrier();
  }}
  if (lid == 0u && live) {{ y[o] = ST(finish(part[0], win)); }}
}}
"""


class Pool2d:
    """kind 'max', 'avg', 'adaptive' or 'adaptive_max' over `planes` = N*C planes of h x w, giving ho x wo each."""

    def __init__(self, gpu: Gpu, kind: str, planes: int, h: int, w: int, ho: int, wo: int, kernel=(1, 1),
                 stride=(1, 1), padding=(0, 0), dilation=(1, 1), count_include_pad=True, divisor_override=None,
                 precision: Precision = FP32):
        if kind not in WINDOWS:
            raise ValueError(f"unknown pool kind {kind!r}; known: {', '.join(WINDOWS)}")
        self.gpu = gpu
        self.total = planes * ho * wo
        self.values = dict(total=self.total, h=h, w=w, ho=ho, wo=wo, kh=kernel[0], kw=kernel[1], sh=stride[0],
                           sw=stride[1], ph=padding[0], pw=padding[1], dh=dilation[0], dw=dilation[1],
                           include_pad=int(bool(count_include_pad)), divisor=int(divisor_override or 0))
        if kind.startswith("adaptive"):
            window = (ceil_div(h, ho) + 1) * (ceil_div(w, wo) + 1)
        else:
            window = kernel[0] * kernel[1]
        self.coop = window > (COOP_WINDOW_GPU if gpu.profile.gemm_style == "workgroup" else COOP_WINDOW)
        if window > MAX_LOOP * (WG if self.coop else 1):
            raise ValueError(f"a pooling window of {window} elements is more than the GPU kernel handles")
        start, combine, finish = REDUCE[kind]
        helpers = FRAME.replace("WINDOW", WINDOWS[kind]).replace("COMBINE", combine).replace("FINISH", finish)
        if self.coop:
            self.source = PER_WORKGROUP.format(wg=WG, params=uniform_block(PARAMS), buffers=storage("x", "y!"),
                                               helpers=helpers, start=start, precision=precision.wgsl())
        else:
            self.source = flat_shader(PARAMS, storage("x", "y!"), PER_INVOCATION.replace("START", start), helpers,
                                      precision)
        self.gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if not self.coop:
            return [launch(self.gpu, self.source, PARAMS, self.values, [x, y])]
        u = self.gpu.uniform(pack(PARAMS, self.values))
        return [self.gpu.dispatch(self.source, [u, x, y], self.total * WG, WG)]  # a workgroup per output

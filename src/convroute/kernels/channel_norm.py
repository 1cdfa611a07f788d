"""Layer norm over the channels of an NCHW tensor at every pixel (timm's LayerNorm2d; ConvNeXt's channels-last
blocks once frontend/channels_last.py takes their permutes away):
y[n, :, p] = act((x[n, :, p] - mean) * rstd * weight + bias).

A workgroup holds PX pixels, consecutive over the flattened N x H x W (so one channel's loads are contiguous),
times L lanes that split the channels and add their sums in workgroup memory. CPU adapters take L = 1: no
workgroup memory and no barrier (on lavapipe a barrier is a coroutine switch); GPUs double L while the pixels
alone leave the device idle. Two passes (mean, then the mean of squared deviations: no cancellation); f32
arithmetic in either storage.
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import storage_params
from convroute.kernels.common import ENTRY_ARGS, FP32, Precision, ceil_div, storage, uniform_block
from convroute.kernels.elementwise import act_source
from convroute.kernels.flat import f32_bits
from convroute.kernels.norm import upload_affine

WG = 64
PARAMS = ["pixels", "hw", "c", "eps"]

LANE_SUM = """var<workgroup> part: array<f32, WG>;
fn total(v: f32, lid: u32) -> f32 {
  part[lid] = v;
  workgroupBarrier();
  var s = 0.0;
  for (var l = 0u; l < L; l++) { s = s + part[lid % PX + l * PX]; }
  workgroupBarrier();
  return s;
}"""

SHADER = """
const WG: u32 = {wg}u;
const L: u32 = {lanes}u;
const PX: u32 = {px}u;
{params}
@group(0) @binding(0) var<storage, read> P: Params;
{buffers}
{lane_sum}
{act}
@compute @workgroup_size({wg})
fn main({entry}) {{
  let pix = (wid.x + wid.y * nwg.x) * PX + lid_x % PX;
  let lane = lid_x / PX;
  let live = pix < P.pixels;
  let base = (pix / P.hw) * P.c * P.hw + pix % P.hw;
  var s = 0.0;
  for (var c = lane; live && c < P.c; c = c + L) {{ s = s + f32(x[base + c * P.hw]); }}
  let mean = {total_s} / f32(P.c);
  var q = 0.0;
  for (var c = lane; live && c < P.c; c = c + L) {{
    let d = f32(x[base + c * P.hw]) - mean;
    q = q + d * d;
  }}
  let rstd = inverseSqrt({total_q} / f32(P.c) + bitcast<f32>(P.eps));
  for (var c = lane; live && c < P.c; c = c + L) {{
    let i = base + c * P.hw;
    y[i] = ST(act((f32(x[i]) - mean) * rstd * weight[c] + bias[c]));
  }}
}}
"""


def lanes_for(gpu: Gpu, pixels: int, channels: int) -> int:
    """Lanes per pixel: 1 where barriers are dear (the register GEMM style: CPU adapters); on GPUs doubled (to at
    most WG, each lane keeping >= 8 channels) while the launch has fewer workgroups than keep the device busy."""
    if gpu.profile.gemm_style == "registers":
        return 1
    lanes = 1
    while lanes < WG and channels >= 16 * lanes and ceil_div(pixels * lanes, WG) < gpu.profile.busy_workgroups:
        lanes *= 2
    return lanes


def generate(lanes: int, act=None, precision: Precision = FP32) -> str:
    if lanes < 1 or WG % lanes:
        raise ValueError(f"channel norm lanes must divide {WG}, got {lanes}")
    summed = ("total(s, lid_x)", "total(q, lid_x)") if lanes > 1 else ("s", "q")
    return precision.wgsl() + SHADER.format(
        wg=WG, lanes=lanes, px=WG // lanes, params=uniform_block(PARAMS),
        buffers=storage("x", "weight:f32", "bias:f32", "y!"), lane_sum=LANE_SUM if lanes > 1 else "",
        act=act_source(act), entry=ENTRY_ARGS, total_s=summed[0], total_q=summed[1])


class ChannelNorm:
    """y = act(layer norm over C of x[n, :, h, w] * weight + bias) for an [N, C, H, W] tensor."""

    def __init__(self, gpu: Gpu, shape: tuple[int, ...], weight: np.ndarray | None, bias: np.ndarray | None,
                 eps: float, act=None, precision: Precision = FP32, lanes: int | None = None):
        if len(shape) != 4 or shape[1] < 1:
            raise ValueError(f"channel norm takes an [N, C, H, W] tensor with C >= 1, got {tuple(shape)}")
        n, c, h, w = (int(v) for v in shape)
        self.gpu, self.pixels = gpu, n * h * w
        self.lanes = lanes_for(gpu, self.pixels, c) if lanes is None else lanes
        self.source = generate(self.lanes, act, precision)
        self.values = dict(pixels=self.pixels, hw=h * w, c=c, eps=f32_bits(eps))
        self.weight, self.bias = upload_affine(gpu, weight, bias, c)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if not self.pixels:
            return []
        u = storage_params(self.gpu, PARAMS, self.values, "channel norm parameters")
        px = WG // self.lanes
        return [self.gpu.dispatch(self.source, [u, x, self.weight, self.bias, y], ceil_div(self.pixels, px) * WG, WG)]

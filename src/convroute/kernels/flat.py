"""The shader frame the model ops share (elementwise, pooling, resize, concat, linear): a 1-D launch of
one invocation per output, a u32 parameter block at binding 0, then the op's storage buffers.

Shaders start with a Precision header (kernels/common.py): activations are stored as `ST` (f32, or f16 with
shader-f16), loaded with `f32(...)` and stored with `ST(...)`, so all arithmetic is f32 in either precision."""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ENTRY_ARGS, FLAT_INDEX, FP32, Precision, pack, storage, uniform_block

WG = 64


def flat_shader(params: list[str], buffers: str, body: str, helpers: str = "", precision: Precision = FP32,
                wg: int = WG) -> str:
    """`body` runs once for each t < P.total (`params` must include 'total'); `buffers` from common.storage."""
    return precision.wgsl() + f"""
const WG: u32 = {wg}u;
{uniform_block(params)}
@group(0) @binding(0) var<uniform> P: Params;
{buffers}
{helpers}
@compute @workgroup_size({wg})
fn main({ENTRY_ARGS}) {{
  let t = {FLAT_INDEX};
  if (t >= P.total) {{ return; }}
{body}
}}
"""


def launch(gpu: Gpu, source: str, params: list[str], values: dict, buffers: list, wg: int = WG) -> Dispatch:
    """One dispatch of `values['total']` invocations with its own parameter block."""
    u = gpu.uniform(pack(params, values))
    return gpu.dispatch(source, [u, *buffers], values["total"], wg)


ZERO_PARAMS = ["first", "total"]


def zeros(gpu: Gpu, buffer, first: int, count: int) -> Dispatch:
    """A dispatch setting `count` f32 words of `buffer` from word `first` to zero (Dispatch.zeroes)."""
    wg = min(WG, gpu.profile.max_invocations)
    source = flat_shader(ZERO_PARAMS, storage("y!:f32"), "  y[P.first + t] = 0.0;", wg=wg)
    d = launch(gpu, source, ZERO_PARAMS, {"first": first, "total": count}, [buffer], wg)
    d.zeroes = buffer
    return d


def f32_bits(x: float) -> int:
    """A float's bits as u32, to pass floats through the u32 parameter block (bitcast<f32> in WGSL)."""
    return int(np.array([x], np.float32).view(np.uint32)[0])

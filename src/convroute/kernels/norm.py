"""Layer norm over the last `width` elements of each row, and group / instance norm (rows of a group's channels
times H x W, with a per-channel affine): one workgroup per row.

Two passes over the row (mean, then the mean of squared deviations: no cancellation), each a strided
loop of width / 64 steps per invocation and a tree reduction in workgroup memory; then
y = (x - mean) * rstd * weight + bias, with an optional activation. f32 arithmetic in either storage.
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ENTRY_ARGS, FP32, Precision, pack, storage, uniform_block
from convroute.kernels.elementwise import act_source
from convroute.kernels.flat import f32_bits

WG = 64
PARAMS = ["rows", "width", "eps", "arows", "adiv"]

SHADER = """
const WG: u32 = {wg}u;
{uniforms}
@group(0) @binding(0) var<uniform> P: Params;
{buffers}
var<workgroup> partial: array<f32, {wg}>;
{act}
fn reduce(v: f32, lid: u32) -> f32 {{
  partial[lid] = v;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h = h / 2u) {{
    if (lid < h) {{ partial[lid] = partial[lid] + partial[lid + h]; }}
    workgroupBarrier();
  }}
  let total = partial[0];
  workgroupBarrier();
  return total;
}}

@compute @workgroup_size({wg})
fn main({entry}) {{
  let row = wid.x + wid.y * nwg.x;
  let live = row < P.rows;
  let base = row * P.width;
  var s = 0.0;
  for (var j = lid_x; live && j < P.width; j = j + WG) {{ s = s + f32(x[base + j]); }}
  let mean = reduce(s, lid_x) / f32(P.width);
  var q = 0.0;
  for (var j = lid_x; live && j < P.width; j = j + WG) {{
    let d = f32(x[base + j]) - mean;
    q = q + d * d;
  }}
  let rstd = inverseSqrt(reduce(q, lid_x) / f32(P.width) + bitcast<f32>(P.eps));
  for (var j = lid_x; live && j < P.width; j = j + WG) {{
    let k = {affine_index};
    y[base + j] = ST(act((f32(x[base + j]) - mean) * rstd * weight[k] + bias[k]));
  }}
}}
"""


def upload_affine(gpu: Gpu, weight: np.ndarray | None, bias: np.ndarray | None, length: int) -> tuple:
    """A norm's `length` scales and shifts as float32 buffers (1 and 0 when None)."""
    w = np.ones(length, np.float32) if weight is None else np.asarray(weight, np.float32).reshape(length)
    b = np.zeros(length, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(length)
    return gpu.upload(w, "norm weight"), gpu.upload(b, "norm bias")


class LayerNorm:
    """y = act(layer_norm(x) * weight + bias) over rows of `width` elements (weight 1 / bias 0 when None)."""

    def __init__(self, gpu: Gpu, rows: int, width: int, weight: np.ndarray | None, bias: np.ndarray | None,
                 eps: float, act=None, precision: Precision = FP32, channels: tuple[int, int] | None = None):
        """`channels` (groups, plane): the affine is per channel, a row holding `width / plane` channels of
        `plane` elements and row r being group r % groups (group norm); None: per element of the row."""
        if width < 1:
            raise ValueError(f"layer norm over {width} elements")
        self.gpu, self.rows = gpu, rows
        groups, plane = channels or (1, 1)
        length = groups * width // plane  # affine values
        self.values = dict(rows=rows, width=width, eps=f32_bits(eps), arows=groups, adiv=plane)
        self.weight, self.bias = upload_affine(gpu, weight, bias, length)
        index = "j" if channels is None else "((row % P.arows) * P.width + j) / P.adiv"
        self.source = precision.wgsl() + SHADER.format(
            wg=WG, uniforms=uniform_block(PARAMS), buffers=storage("x", "weight:f32", "bias:f32", "y!"),
            act=act_source(act), entry=ENTRY_ARGS, affine_index=index)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if not self.rows:
            return []
        u = self.gpu.uniform(pack(PARAMS, self.values))
        return [self.gpu.dispatch(self.source, [u, x, self.weight, self.bias, y], self.rows * WG, WG)]


class GroupNorm(LayerNorm):
    """y = act(group_norm(x) * weight[c] + bias[c]) over an N x C x (plane) tensor in `groups` groups of channels
    (instance norm: groups = C)."""

    def __init__(self, gpu: Gpu, n: int, c: int, plane: int, groups: int, weight: np.ndarray | None,
                 bias: np.ndarray | None, eps: float, act=None, precision: Precision = FP32):
        if groups < 1 or c % groups:
            raise ValueError(f"group norm of {c} channels in {groups} groups")
        super().__init__(gpu, n * groups, c // groups * plane, weight, bias, eps, act, precision, (groups, plane))

"""Upsampling of NCHW planes: nearest, nearest-exact and bilinear (with or without align_corners).

Source coordinates follow torch's CPU rules in float32: the scale is 1/scale_factor when the caller
gave one, else in/out; nearest picks floor(dst * scale) (floor((dst + 0.5) * scale) for nearest-exact);
bilinear uses scale * (dst + 0.5) - 0.5 clamped at 0, or dst * (in-1)/(out-1) with align_corners. Values are
stored as float32 or float16 (`precision`) and interpolated in f32.
"""

from __future__ import annotations

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, storage
from convroute.kernels.flat import f32_bits, flat_shader, launch

PARAMS = ["total", "h", "w", "ho", "wo", "scale_h", "scale_w"]
BODY = """  let ow = t % P.wo;
  let oh = (t / P.wo) % P.ho;
  y[t] = ST(sample((t / (P.wo * P.ho)) * P.h * P.w, oh, ow));"""

NEAREST = """
fn src(dst: u32, size: u32, out: u32, scale: f32) -> u32 {
  if (out == size) { return dst; }
  INDEX
  return min(u32(floor(s)), size - 1u);
}
fn sample(base: u32, oh: u32, ow: u32) -> f32 {
  let ih = src(oh, P.h, P.ho, bitcast<f32>(P.scale_h));
  let iw = src(ow, P.w, P.wo, bitcast<f32>(P.scale_w));
  return f32(x[base + ih * P.w + iw]);
}
"""
NEAREST_INDEX = "if (out == 2u * size) { return dst / 2u; }\n  let s = f32(dst) * scale;"
NEAREST_EXACT_INDEX = "let s = (f32(dst) + 0.5) * scale;"

BILINEAR = """
fn src(dst: u32, scale: f32) -> f32 {
  INDEX
}
fn sample(base: u32, oh: u32, ow: u32) -> f32 {
  let sh = src(oh, bitcast<f32>(P.scale_h));
  let sw = src(ow, bitcast<f32>(P.scale_w));
  let h0 = u32(sh);
  let w0 = u32(sw);
  let h1 = select(h0, h0 + 1u, h0 < P.h - 1u);
  let w1 = select(w0, w0 + 1u, w0 < P.w - 1u);
  let lh = sh - f32(h0);
  let lw = sw - f32(w0);
  let top = (1.0 - lw) * f32(x[base + h0 * P.w + w0]) + lw * f32(x[base + h0 * P.w + w1]);
  let bottom = (1.0 - lw) * f32(x[base + h1 * P.w + w0]) + lw * f32(x[base + h1 * P.w + w1]);
  return (1.0 - lh) * top + lh * bottom;
}
"""
ALIGNED_INDEX = "return scale * f32(dst);"
HALF_PIXEL_INDEX = "return max(scale * (f32(dst) + 0.5) - 0.5, 0.0);"


def source_scale(size: int, out: int, scale_factor, align_corners: bool) -> float:
    if align_corners:
        return (size - 1) / (out - 1) if out > 1 else 0.0
    if scale_factor is not None and scale_factor > 0:
        return 1.0 / scale_factor
    return size / out


class Upsample2d:
    """mode 'nearest', 'nearest-exact' or 'bilinear'; scale_factors (h, w) as torch received them or None."""

    def __init__(self, gpu: Gpu, mode: str, planes: int, h: int, w: int, ho: int, wo: int,
                 scale_factors=None, align_corners: bool = False, precision: Precision = FP32):
        scales = scale_factors or (None, None)
        if mode == "bilinear":
            helpers = BILINEAR.replace("INDEX", ALIGNED_INDEX if align_corners else HALF_PIXEL_INDEX)
        elif mode in ("nearest", "nearest-exact"):
            align_corners = False
            helpers = NEAREST.replace("INDEX", NEAREST_INDEX if mode == "nearest" else NEAREST_EXACT_INDEX)
        else:
            raise ValueError(f"unknown upsample mode {mode!r}; known: nearest, nearest-exact, bilinear")
        self.gpu = gpu
        self.values = dict(total=planes * ho * wo, h=h, w=w, ho=ho, wo=wo,
                           scale_h=f32_bits(source_scale(h, ho, scales[0], align_corners)),
                           scale_w=f32_bits(source_scale(w, wo, scales[1], align_corners)))
        self.source = flat_shader(PARAMS, storage("x", "y!"), BODY, helpers, precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        return [launch(self.gpu, self.source, PARAMS, self.values, [x, y])]

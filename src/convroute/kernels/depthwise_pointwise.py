"""`depthwise+pointwise`: a depthwise conv (one channel per group, no channel multiplier) and the 1x1 conv that
reads its result (stride 1, no padding, groups 1) as one GEMM: MobileNet's inverted residual, its last two convs.

B[k, j] is the depthwise conv's output for channel k at output pixel j (its bias and activation included),
computed in the GEMM's B load from the depthwise conv's input: the intermediate never goes to memory, and the
pair is one dispatch (two with a K split) instead of two (three). Each tile along M recomputes its B rows, so
the depthwise work is repeated ceil(C_out / tile rows) times: cheap next to the 1x1's multiply-adds.
The depthwise sums are f32 whatever the precision; the GEMM sees them in its sum type (AT).
"""

from __future__ import annotations

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels import gemm
from convroute.kernels.base import residual_buffers
from convroute.kernels.common import Epilogue, Precision, constants, storage
from convroute.kernels.implicit_gemm import B_SETUP, WINDOWS_DECL
from convroute.params import ConvParams

NAME = "depthwise+pointwise"

B_DECL = WINDOWS_DECL + """fn load_b(k: u32) -> vec4<AT> {
  if (k >= C_IN) { return vec4<AT>(0.0); }
  let chan = k * u32(H * W);
  var s = vec4<f32>(dwb[k]);
  for (var kh = 0u; kh < KH; kh++) {
    for (var kw = 0u; kw < KW; kw++) {
      let wv = dww[k * KHW + kh * KW + kw];
      for (var q = 0u; q < 4u; q++) {
        let ih = b_ih[q] + i32(kh * DH);
        let iw = b_iw[q] + i32(kw * DW);
        if (b_ok[q] && ih >= 0 && ih < H && iw >= 0 && iw < W) {
          s[q] += wv * f32(x[b_img[q] + chan + u32(ih * W + iw)]);
        }
      }
    }
  }
  let a = vec4<f32>(dw_act(s.x), dw_act(s.y), dw_act(s.z), dw_act(s.w));
  return vec4<AT>(select(vec4<f32>(0.0), a, vec4<bool>(b_ok[0], b_ok[1], b_ok[2], b_ok[3])));
}
"""
B_LOAD = "load_b(k)"


def unfusable(dw: ConvParams, pw: ConvParams) -> str | None:
    """Why the pair cannot be one kernel, or None when it can."""
    if dw.transposed or not dw.is_depthwise_without_multiplier:
        return "the first conv is not depthwise with one output channel per input channel"
    if pw.transposed or (pw.kh, pw.kw) != (1, 1) or pw.groups != 1 or pw.stride != (1, 1) or pw.padding != (0, 0):
        return "the second conv is not a 1x1 conv with stride 1, no padding and groups 1"
    if (pw.n, pw.c_in, pw.h, pw.w) != (dw.n, dw.c_out, dw.ho, dw.wo):
        return f"the second conv's input {pw.input_shape} is not the first conv's output {dw.output_shape}"
    return None


class DepthwisePointwise:
    """Prepacked weights of both convs; `bind(x, y, n, residual)` as a conv kernel's, x being the depthwise conv's
    input and y the 1x1 conv's output."""

    name = NAME

    def __init__(self, gpu: Gpu, dw: ConvParams, pw: ConvParams, dw_weight: np.ndarray, dw_bias: np.ndarray | None,
                 dw_act: Epilogue, pw_weight: np.ndarray, pw_bias: np.ndarray | None, epilogue: Epilogue,
                 precision: Precision, residual: bool = False):
        reason = unfusable(dw, pw)
        if reason:
            raise ValueError(f"depthwise+pointwise: {reason}")
        self.gpu, self.dw, self.pw, self.residual = gpu, dw, pw, residual
        self.dw_w = gpu.upload(np.ascontiguousarray(dw_weight, np.float32).reshape(-1), "depthwise weights")
        self.dw_b = gpu.upload(np.zeros(dw.c_out, np.float32) if dw_bias is None else
                               np.ascontiguousarray(dw_bias, np.float32), "depthwise bias")
        shape = constants(dict(C_IN=dw.c_in, WO=dw.wo, PIX=dw.ho * dw.wo, KH=dw.kh, KW=dw.kw, KHW=dw.kh * dw.kw,
                               DH=dw.dilation[0], DW=dw.dilation[1], SH=dw.stride[0], SW=dw.stride[1]),
                          dict(H=dw.h, W=dw.w, PH=dw.padding[0], PW=dw.padding[1]))
        # the depthwise activation is `dw_act`: the GEMM's own store uses `act`
        decl = "\n".join(["", storage("x", "dww:f32", "dwb:f32", first=4), shape, dw_act.wgsl("dw_act"), B_DECL])
        bias = np.zeros(pw.c_out, np.float32) if pw_bias is None else np.asarray(pw_bias, np.float32)
        self.gemm = gemm.Gemm(gpu, pw_weight.reshape(pw.c_out, -1), bias, epilogue, decl, B_SETUP, B_LOAD, [],
                              precision, residual=residual, b_bindings=3)

    def bind(self, x, y, n: int, residual=None) -> list[Dispatch]:
        residual_buffers("depthwise+pointwise", self.residual, residual)
        pixels = self.pw.ho * self.pw.wo
        return self.gemm.dispatches(y, [x, self.dw_w, self.dw_b], n * pixels, 0, pixels, {}, residual)

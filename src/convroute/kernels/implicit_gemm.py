"""`implicit_gemm`: the conv as the tiled GEMM whose B operand is gathered from the input on the fly.

B[k, j] is input channel k // (Kh*Kw) at tap (kh, kw) of output pixel j's window (zero in the padding), the
im2col matrix without ever writing it: no column buffer, no second pass over memory. Each invocation works
out its four columns' window origins once; per K step it decomposes k once and gathers four values. The
layer's shape is baked into the shader as constants, so the index arithmetic folds to multiplies and shifts.
On CPU adapters (gemm_style "registers") gemm_cpu.Windows gathers the same B for register tiles instead.
"""

from __future__ import annotations

from convroute.kernels import gemm, gemm_cpu
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import constants, storage

# The four columns' window origins (image offset, top row, left column, in range), set once by B_SETUP; shared
# with depthwise_pointwise, whose B is a window of the input too (constants C_IN, PIX, WO, SH, SW, PH, PW, H, W).
WINDOWS_DECL = """
var<private> b_img: array<u32, 4>;
var<private> b_ih: array<i32, 4>;
var<private> b_iw: array<i32, 4>;
var<private> b_ok: array<bool, 4>;
"""
B_DECL = WINDOWS_DECL + """fn load_b(k: u32) -> vec4<AT> {
  var v = vec4<AT>(0.0);
  if (k >= KK) { return v; }
  let tap = k % KHW;
  let dh = i32((tap / KW) * DH);
  let dw = i32((tap % KW) * DW);
  let chan = (k / KHW) * u32(H * W);
  for (var q = 0u; q < 4u; q++) {
    let ih = b_ih[q] + dh;
    let iw = b_iw[q] + dw;
    if (b_ok[q] && ih >= 0 && ih < H && iw >= 0 && iw < W) {
      v[q] = AT(x[b_img[q] + chan + u32(ih * W + iw)]);
    }
  }
  return v;
}
"""
B_SETUP = """
  for (var q = 0u; q < 4u; q++) {
    let j = bcol + q;
    let pix = j % PIX;
    b_ok[q] = j < P.cols;
    b_img[q] = (j / PIX) * C_IN * u32(H * W);
    b_ih[q] = i32((pix / WO) * SH) - PH;
    b_iw[q] = i32((pix % WO) * SW) - PW;
  }
"""
B_LOAD = "load_b(k)"


class ImplicitGemm(ConvKernel):
    name = "implicit_gemm"
    fuses_residual = True
    reads_float32_input = True
    dense = "is one dense GEMM"

    def prepare(self, weight, bias):
        p = self.p
        self.cpu = gemm_cpu.for_conv(self, weight, bias, gemm_cpu.Windows.trips(p.c_in, p.kh, p.kw))
        if self.cpu:
            return
        shape = constants(dict(C_IN=p.c_in, WO=p.wo, PIX=p.ho * p.wo, KW=p.kw, KHW=p.kh * p.kw,
                               KK=p.c_in * p.kh * p.kw, DH=p.dilation[0], DW=p.dilation[1], SH=p.stride[0],
                               SW=p.stride[1]), dict(H=p.h, W=p.w, PH=p.padding[0], PW=p.padding[1]))
        decl = "\n" + storage("x", first=4) + "\n" + shape + B_DECL
        self.gemm = gemm.Gemm(self.gpu, weight, bias, self.epilogue, decl, B_SETUP, B_LOAD, [], self.precision,
                              residual=self.residual)

    def bind(self, x, y, n, residual=None):
        self.residual_buffers(residual)
        pixels = self.p.ho * self.p.wo
        if self.cpu:  # one launch over the images: columns are one image's pixels, y is [n, C_out, pixels]
            conv = gemm_cpu.Windows.params(self.p)
            return [self.cpu.dispatch(y, x, n, pixels, 1, 0, bsrc=gemm_cpu.Windows, conv=conv, residual=residual)]
        return self.gemm.dispatches(y, [x], n * pixels, 0, pixels, {}, residual)

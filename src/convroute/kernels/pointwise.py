"""`pointwise`: a 1x1 conv (groups 1, any stride and padding) as the tiled GEMM read straight from the input.

B[k, j] is input channel k at the pixel that output pixel j sees (zero in the padding). Each invocation
works out its four B columns' input offsets once; the K loop then only adds k * H * W. With stride 1, no
padding and H*W a multiple of 4, four neighbouring columns are one aligned vec4 of the input. CPU adapters
copy B into a texture for gemm_tex where it fits (im2col_tex), else read it with gemm_cpu's register tiles.
"""

from __future__ import annotations

from convroute.kernels import gemm, gemm_cpu, im2col_tex
from convroute.kernels.base import ConvKernel

PARAMS = ["c_in", "h", "w", "wo", "sh", "sw", "ph", "pw", "hw"]

SCALAR_DECL = """
@group(0) @binding(4) var<storage, read> x: array<XT>;
fn load_x(off: u32, ok: bool, k: u32) -> AT {
  if (ok && k < P.k) { return AT(x[off + k * P.hw]); }
  return AT(0.0);
}
"""
SCALAR_SETUP = """
  var boff: array<u32, 4>;
  var bok: array<bool, 4>;
  for (var q = 0u; q < 4u; q++) {
    let j = bcol + q;
    let pix = j % P.p;
    let ih = i32((pix / P.wo) * P.sh) - i32(P.ph);
    let iw = i32((pix % P.wo) * P.sw) - i32(P.pw);
    bok[q] = j < P.cols && ih >= 0 && ih < i32(P.h) && iw >= 0 && iw < i32(P.w);
    boff[q] = select(0u, (j / P.p) * P.c_in * P.hw + u32(ih) * P.w + u32(iw), bok[q]);
  }
"""
SCALAR_LOAD = ("vec4<AT>(load_x(boff[0], bok[0], k), load_x(boff[1], bok[1], k), load_x(boff[2], bok[2], k), "
               "load_x(boff[3], bok[3], k))")

VEC4_DECL = """
@group(0) @binding(4) var<storage, read> x: array<XT4>;
fn load_x(off: u32, ok: bool, k: u32) -> vec4<AT> {
  if (ok && k < P.k) { return vec4<AT>(xld4(x[off + k * (P.hw / 4u)])); }
  return vec4<AT>(0.0);
}
"""
VEC4_SETUP = """
  let bok = bcol < P.cols;
  let boff = select(0u, ((bcol / P.p) * P.c_in * P.hw + bcol % P.p) / 4u, bok);
"""
VEC4_LOAD = "load_x(boff, bok, k)"


class Pointwise(ConvKernel):
    name = "pointwise"
    fuses_residual = True
    reads_float32_input = True
    dense = "is one dense GEMM"

    @classmethod
    def unsupported_shape(cls, p):
        return None if (p.kh, p.kw) == (1, 1) else f"the kernel is {p.kh}x{p.kw}; pointwise needs a 1x1 kernel"

    def prepare(self, weight, bias):
        p = self.p
        self.vec4 = p.stride == (1, 1) and p.padding == (0, 0) and p.h * p.w % 4 == 0
        self.bsrc = gemm_cpu.InputColumns if self.vec4 else gemm_cpu.Windows  # CPU adapters: gemm_cpu register tiles
        trips = p.c_in if self.vec4 else gemm_cpu.Windows.trips(p.c_in, 1, 1)
        self.cpu = gemm_cpu.for_conv(self, weight, bias, trips)
        if self.cpu:  # reading textures where they fit (im2col_tex), else the buffers
            self.tex = im2col_tex.ColumnTextures(self, weight, bias, repack=False) \
                if im2col_tex.ColumnTextures.wanted(self) else None
            return
        decl, setup, load = (VEC4_DECL, VEC4_SETUP, VEC4_LOAD) if self.vec4 else \
            (SCALAR_DECL, SCALAR_SETUP, SCALAR_LOAD)
        self.gemm = gemm.Gemm(self.gpu, weight, bias, self.epilogue, decl, setup, load, PARAMS, self.precision,
                              residual=self.residual)

    def bind(self, x, y, n, residual=None):
        self.residual_buffers(residual)
        p = self.p
        pixels = p.ho * p.wo
        if self.cpu and self.tex and self.tex.fits(n):
            return self.tex.bind(x, y, n, residual)
        if self.cpu:  # columns are one image's pixels, one launch over the images
            hw4 = p.h * p.w // 4
            conv = None if self.vec4 else gemm_cpu.Windows.params(p)
            return [self.cpu.dispatch(y, x, n, pixels, hw4, p.c_in * hw4, bsrc=self.bsrc, conv=conv,
                                      residual=residual)]
        extra = dict(c_in=p.c_in, h=p.h, w=p.w, wo=p.wo, sh=p.stride[0], sw=p.stride[1], ph=p.padding[0],
                     pw=p.padding[1], hw=p.h * p.w)
        return self.gemm.dispatches(y, [x], n * pixels, 0, pixels, extra, residual)

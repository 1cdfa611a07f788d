"""`transposed`: conv_transpose2d. Stride, padding, output_padding, dilation and groups.

Which path runs: on GPUs (gemm_style "workgroup") a kernel that tiles the output exactly (Kh == Sh, Kw == Sw,
no padding, output_padding or dilation, groups 1: UNet's 2x2 stride-2 up-convolutions) is one GEMM, rows
oc * Kh * Kw + kh * Kw + kw, K = C_in, columns the input pixels read as `pointwise` reads them, whose store
puts each sum at its one output pixel (depth-to-space). Every other case, and CPU adapters, take the gather:
Output pixel (oh, ow) sums input (ih, iw) through tap (kh, kw) when oh + ph = ih * sh + kh * dh (same in w).
Remainders are taken on u32 values only: Vulkan leaves OpSRem with a negative operand undefined, and NVIDIA's
driver returns garbage for it (gfx-rs/wgpu#8191), which made this kernel wrong on the H100 only.
Each invocation computes 4 output channels (a vec4 of prepacked weights) x 4 output pixels of one row spaced
by the stride: those four share which taps reach them, and read four neighbouring input pixels.
"""

from __future__ import annotations

import numpy as np

from convroute.kernels import gemm, pointwise
from convroute.kernels.base import pack_oc4
from convroute.kernels.common import ceil_div, storage
from convroute.kernels.sliding_window import FlatConv

BODY = """
  let tb = t % P.owb;
  let oh = (t / P.owb) % P.ho;
  let gob = (t / (P.owb * P.ho)) % P.gocb;
  let n = t / (P.owb * P.ho * P.gocb);
  let g = gob / P.ocb;
  // pixels ow0 + j * sw, j < 4: residue tb / nb of the stride, block tb % nb
  let ow0 = tb / P.nb + (tb % P.nb) * 4u * P.sw;
  if (ow0 >= P.wo) {{ return; }}
  var acc: array<vec4<f32>, 4>;
  let b = bias[gob];
  for (var j = 0u; j < 4u; j++) {{ acc[j] = b; }}
  let hw = P.h * P.w;
  let taps = P.kh * P.kw;
  let xg = (n * P.c_in + g * P.cin_g) * hw;
  let wbase = gob * P.cin_g * taps;
  let lift = P.kw * P.dw;
  for (var kh = 0u; kh < P.kh; kh++) {{
    let thp = oh + P.ph;
    if (thp < kh * P.dh) {{ continue; }}
    let th = thp - kh * P.dh;
    if (th % P.sh != 0u) {{ continue; }}
    let ih = th / P.sh;
    if (ih >= P.h) {{ continue; }}
    for (var kw = 0u; kw < P.kw; kw++) {{
      // shifted by lift * sw >= kw * dw so the remainder is taken of a non-negative value
      let tw = ow0 + P.pw + lift * P.sw - kw * P.dw;
      if (tw % P.sw != 0u) {{ continue; }}
      let iw0 = i32(tw / P.sw) - i32(lift);
      var ok: array<bool, 4>;
      var off: array<u32, 4>;
      for (var j = 0u; j < 4u; j++) {{
        let iw = iw0 + i32(j);
        ok[j] = iw >= 0 && iw < i32(P.w);
        off[j] = select(0u, xg + ih * P.w + u32(iw), ok[j]);
      }}
      var wi = wbase + kh * P.kw + kw;
      {open_block}
      for (var ic = 0u; ic < P.cin_g; ic++) {{
        let wv = vec4<AT>(wt[wi]);
        for (var j = 0u; j < 4u; j++) {{
          if (ok[j]) {{ {sum}[j] += wv * AT(x[off[j] + ic * hw]); }}
        }}
        wi += taps;
      }}
      {close_block}
    }}
  }}
  let ocg0 = (gob % P.ocb) * 4u;
  for (var i = 0u; i < 4u; i++) {{
    if (ocg0 + i >= P.cout_g) {{ break; }}
    let obase = ((n * P.c_out + g * P.cout_g + ocg0 + i) * P.ho + oh) * P.wo;
    for (var j = 0u; j < 4u; j++) {{
      let ow = ow0 + j * P.sw;
      if (ow < P.wo) {{ y[obase + ow] = ST(act(acc[j][i])); }}
    }}
  }}"""

# f16 sums: one block per kernel tap. Zeroed explicitly: naga does not re-zero a loop-local `var` without an
# initializer on each iteration (gfx-rs/wgpu#9489).
OPEN_BLOCK = "var part = array<vec4<AT>, 4>();"
CLOSE_BLOCK = "for (var j = 0u; j < 4u; j++) { acc[j] += vec4<f32>(part[j]); }"


# The exact-cover GEMM's store: row m = oc * taps + kh * Kw + kw and column gj (input pixel (ih, iw) of image
# gj / P.p) give out[n, oc, ih * Kh + kh, iw * Kw + kw]; an image's output is M x P.p values.
DEPTH_TO_SPACE = ("let gj = P.col0 + j; let pix = gj % P.p; let taps = P.kh * P.kw; let tap = m % taps; "
                  "y[(gj / P.p) * P.m * P.p + (m / taps) * taps * P.p + ((pix / P.w) * P.kh + tap / P.kw) * P.w * P.kw "
                  "+ (pix % P.w) * P.kw + tap % P.kw] = ST(act(v + bias[m]));")
GEMM_PARAMS = pointwise.PARAMS + ["kh", "kw"]


def exact_cover(p) -> bool:
    """Every output pixel takes exactly one tap of one input pixel, so the conv is a GEMM and a depth-to-space."""
    return ((p.kh, p.kw) == p.stride and p.padding == (0, 0) and p.dilation == (1, 1)
            and p.output_padding == (0, 0) and p.groups == 1)


class Transposed(FlatConv):
    name = "transposed"
    runs_transposed = True
    PARAMS = ["c_in", "h", "w", "c_out", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "cin_g",
              "cout_g", "ocb", "gocb", "nb", "owb", "total"]
    BUFFERS = storage("x", "wt:vec4<ST>", "bias:vec4<f32>", "y!")  # weights and bias in fours of output channels

    @classmethod
    def loop_trips(cls, p):
        return (p.c_in // p.groups) * p.kh * p.kw

    def prepare(self, weight, bias):
        p = self.p
        self.gemm = None
        if exact_cover(p) and self.gpu.profile.gemm_style == "workgroup":
            self.prepare_gemm(weight, bias)
            return
        cin_g, cout_g = p.c_in // p.groups, p.c_out // p.groups
        # [C_in, C_out/g, Kh, Kw] -> [C_out, C_in/g, Kh, Kw], the forward-conv layout pack_oc4 takes
        oc_first = weight.reshape(p.groups, cin_g, cout_g, p.kh, p.kw).transpose(0, 2, 1, 3, 4)
        w, b, self.ocb = pack_oc4(oc_first.reshape(p.c_out, cin_g, p.kh, p.kw), p.groups, bias)
        self.compile(w, b, BODY, (OPEN_BLOCK, CLOSE_BLOCK))

    def prepare_gemm(self, weight, bias):
        p = self.p
        self.vec4 = p.h * p.w % 4 == 0
        decl, setup, load = (pointwise.VEC4_DECL, pointwise.VEC4_SETUP, pointwise.VEC4_LOAD) if self.vec4 else \
            (pointwise.SCALAR_DECL, pointwise.SCALAR_SETUP, pointwise.SCALAR_LOAD)
        rows = weight.reshape(p.c_in, p.c_out * p.kh * p.kw).T  # [C_in, C_out, Kh, Kw] -> [M, K]
        self.gemm = gemm.Gemm(self.gpu, rows, np.repeat(bias, p.kh * p.kw), self.epilogue, decl, setup, load,
                              GEMM_PARAMS, self.precision, store=DEPTH_TO_SPACE)

    def bind(self, x, y, n):
        p = self.p
        if self.gemm:  # pointwise's B over the input pixels: a 1x1 conv with stride 1 and no padding
            pixels = p.h * p.w
            extra = dict(c_in=p.c_in, h=p.h, w=p.w, wo=p.w, sh=1, sw=1, ph=0, pw=0, hw=pixels, kh=p.kh, kw=p.kw)
            return self.gemm.dispatches(y, [x], n * pixels, 0, pixels, extra)
        sw = p.stride[1]
        nb = ceil_div(ceil_div(p.wo, sw), 4)
        gocb = p.groups * self.ocb
        return self.launch(x, y, ocb=self.ocb, gocb=gocb, nb=nb, owb=sw * nb, total=n * gocb * p.ho * sw * nb)

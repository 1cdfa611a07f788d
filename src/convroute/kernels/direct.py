"""`direct`: the general sliding-window conv. Any stride, padding, dilation, groups, kernel shape.

Each invocation computes a 4 output channels x 4 output pixels (along a row) block: per input tap it
loads one vec4 of weights and four input values and does sixteen multiply-adds.
"""

from __future__ import annotations

from convroute.kernels.base import OC4_BINDINGS, ConvKernel, pack_oc4
from convroute.kernels.common import ENTRY_ARGS, FLAT_INDEX, ceil_div, pack, uniform_block

WG = 64
PARAMS = ["n", "c_in", "h", "w", "c_out", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw",
          "cin_g", "cout_g", "ocb", "owb", "gocb", "total"]

SHADER = """
const WG: u32 = {wg}u;
{params}
{bindings}
{act}
@compute @workgroup_size({wg})
fn main({args}) {{
  let t = {flat};
  if (t >= P.total) {{ return; }}
  let owb = t % P.owb;
  let oh = (t / P.owb) % P.ho;
  let gob = (t / (P.owb * P.ho)) % P.gocb;
  let n = t / (P.owb * P.ho * P.gocb);
  let g = gob / P.ocb;
  let ow0 = owb * 4u;
  var acc: array<vec4<f32>, 4>;
  let b = bias[gob];
  for (var j = 0u; j < 4u; j++) {{ acc[j] = b; }}
  let ih0 = i32(oh * P.sh) - i32(P.ph);
  let iw0 = i32(ow0 * P.sw) - i32(P.pw);
  for (var ic = 0u; ic < P.cin_g; ic++) {{
    let xc = (n * P.c_in + g * P.cin_g + ic) * P.h;
    let wc = (gob * P.cin_g + ic) * P.kh;
    {open_block}
    for (var kh = 0u; kh < P.kh; kh++) {{
      let ih = ih0 + i32(kh * P.dh);
      if (ih < 0 || ih >= i32(P.h)) {{ continue; }}
      let row = (xc + u32(ih)) * P.w;
      for (var kw = 0u; kw < P.kw; kw++) {{
        let wv = vec4<AT>(wt[(wc + kh) * P.kw + kw]);
        let iwk = iw0 + i32(kw * P.dw);
        for (var j = 0u; j < 4u; j++) {{
          let iw = iwk + i32(j * P.sw);
          if (iw >= 0 && iw < i32(P.w)) {{ {sum}[j] += wv * AT(x[row + u32(iw)]); }}
        }}
      }}
    }}
    {close_block}
  }}
  let ocg0 = (gob % P.ocb) * 4u;
  for (var i = 0u; i < 4u; i++) {{
    if (ocg0 + i >= P.cout_g) {{ break; }}
    let obase = ((n * P.c_out + g * P.cout_g + ocg0 + i) * P.ho + oh) * P.wo;
    for (var j = 0u; j < 4u; j++) {{
      if (ow0 + j < P.wo) {{ y[obase + ow0 + j] = ST(act(acc[j][i])); }}
    }}
  }}
}}
"""

# f16 sums: one block per input channel. Zeroed explicitly: naga does not re-zero a loop-local `var` without an
# initializer on each iteration (gfx-rs/wgpu#9489).
OPEN_BLOCK = "var part = array<vec4<AT>, 4>();"
CLOSE_BLOCK = "for (var j = 0u; j < 4u; j++) { acc[j] += vec4<f32>(part[j]); }"


class Direct(ConvKernel):
    name = "direct"

    @classmethod
    def unsupported(cls, p):
        return "it is a transposed convolution" if p.transposed else None

    @classmethod
    def loop_trips(cls, p):
        return (p.c_in // p.groups) * p.kh * p.kw

    def prepare(self, weight, bias):
        p = self.p
        w, b, self.ocb = pack_oc4(weight, p.groups, bias)
        self.w_buf = self.upload(w, "packed weights")
        self.b_buf = self.gpu.upload(b, "bias")
        self.source = self.precision.wgsl() + SHADER.format(
            wg=WG, params=uniform_block(PARAMS), bindings=OC4_BINDINGS, act=self.epilogue.wgsl(), args=ENTRY_ARGS,
            flat=FLAT_INDEX, **self.precision.block_sums(OPEN_BLOCK, CLOSE_BLOCK))
        self.gpu.pipeline(self.source)

    def bind(self, x, y, n):
        p = self.p
        owb, gocb = ceil_div(p.wo, 4), p.groups * self.ocb
        total = n * gocb * p.ho * owb
        values = self.shape_values(n=n, ocb=self.ocb, owb=owb, gocb=gocb, total=total)
        u = self.gpu.uniform(pack(PARAMS, values))
        return [self.gpu.dispatch(self.source, [u, x, self.w_buf, self.b_buf, y], total, WG)]

"""`transposed`: conv_transpose2d as a gather. Stride, padding, output_padding, dilation and groups.

Output pixel (oh, ow) sums input (ih, iw) through tap (kh, kw) when oh + ph = ih * sh + kh * dh (same in w).
Remainders are taken on u32 values only: Vulkan leaves OpSRem with a negative operand undefined, and NVIDIA's
driver returns garbage for it (gfx-rs/wgpu#8191), which made this kernel wrong on the H100 only.
Each invocation computes 4 output channels (a vec4 of prepacked weights) x 4 output pixels of one row spaced
by the stride: those four share which taps reach them, and read four neighbouring input pixels.
"""

from __future__ import annotations

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
        cin_g, cout_g = p.c_in // p.groups, p.c_out // p.groups
        # [C_in, C_out/g, Kh, Kw] -> [C_out, C_in/g, Kh, Kw], the forward-conv layout pack_oc4 takes
        oc_first = weight.reshape(p.groups, cin_g, cout_g, p.kh, p.kw).transpose(0, 2, 1, 3, 4)
        w, b, self.ocb = pack_oc4(oc_first.reshape(p.c_out, cin_g, p.kh, p.kw), p.groups, bias)
        self.compile(w, b, BODY, (OPEN_BLOCK, CLOSE_BLOCK))

    def bind(self, x, y, n):
        p = self.p
        sw = p.stride[1]
        nb = ceil_div(ceil_div(p.wo, sw), 4)
        gocb = p.groups * self.ocb
        return self.launch(x, y, ocb=self.ocb, gocb=gocb, nb=nb, owb=sw * nb, total=n * gocb * p.ho * sw * nb)

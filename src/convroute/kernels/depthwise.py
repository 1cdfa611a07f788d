"""`depthwise`: groups == C_in, output channel c reads input channel c // m (channel multiplier m >= 1).

Any kernel size, stride, padding and dilation. Each invocation computes four neighbouring output pixels of
one row of one channel: per tap one weight and four input values. CPU adapters (gemm_style "registers") read
textures instead where they fit (depthwise_cpu).
"""

from __future__ import annotations

from convroute.kernels import depthwise_cpu, direct_cpu
from convroute.kernels.common import Precision, ceil_div
from convroute.kernels.sliding_window import FlatConv
from convroute.settings import env_flag

BODY = """
  let owb = t % P.owb;
  let oh = (t / P.owb) % P.ho;
  let nc = t / (P.owb * P.ho);
  let oc = nc % P.c_out;
  let n = nc / P.c_out;
  let ow0 = owb * 4u;
  let b = bias[oc];
  var acc = vec4<f32>(b, b, b, b);
  let xc = (n * P.c_in + oc / P.mult) * P.h;
  let ih0 = i32(oh * P.sh) - i32(P.ph);
  let iw0 = i32(ow0 * P.sw) - i32(P.pw);
  for (var kh = 0u; kh < P.kh; kh++) {{
    let ih = ih0 + i32(kh * P.dh);
    if (ih < 0 || ih >= i32(P.h)) {{ continue; }}
    let row = (xc + u32(ih)) * P.w;
    let wrow = (oc * P.kh + kh) * P.kw;
    {open_block}
    for (var kw = 0u; kw < P.kw; kw++) {{
      let wv = AT(wt[wrow + kw]);
      let iwk = iw0 + i32(kw * P.dw);
      for (var j = 0u; j < 4u; j++) {{
        let iw = iwk + i32(j * P.sw);
        if (iw >= 0 && iw < i32(P.w)) {{ {sum}[j] += wv * AT(x[row + u32(iw)]); }}
      }}
    }}
    {close_block}
  }}
  let obase = (nc * P.ho + oh) * P.wo + ow0;
  for (var j = 0u; j < 4u; j++) {{
    if (ow0 + j < P.wo) {{ y[obase + j] = ST(act(acc[j])); }}
  }}"""

OPEN_BLOCK = "var part = vec4<AT>(0.0);"  # f16 sums: one block per kernel row
CLOSE_BLOCK = "acc += vec4<f32>(part);"


class Depthwise(FlatConv):
    name = "depthwise"
    PARAMS = ["c_in", "h", "w", "c_out", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "mult", "owb",
              "total"]

    @classmethod
    def unsupported_shape(cls, p):
        if not p.is_depthwise:
            return (f"it is not depthwise: depthwise needs groups == C_in (one input channel per group), "
                    f"got groups={p.groups} with C_in={p.c_in}")
        return None

    @classmethod
    def loop_trips(cls, p):
        return p.kh * p.kw

    def grid_values(self) -> dict:
        """The buffer kernel's values beside the layer's shape: the channel multiplier, blocks of 4 outputs a row."""
        return dict(mult=self.p.c_out // self.p.c_in, owb=ceil_div(self.p.wo, 4))

    def prepare(self, weight, bias):
        baked = None
        if env_flag("CONVROUTE_DEPTHWISE_CONSTANTS", False):  # on trial: the layer's shape as literals
            baked = {k: v for k, v in self.shape_values(**self.grid_values()).items() if k in self.PARAMS}
        sums = None
        if env_flag("CONVROUTE_DEPTHWISE_F32_SUMS", True):  # with f16 sums it ran 13 % slower than fp32 (H100)
            sums = Precision(self.precision.dtype, "float32")
        self.compile(weight, bias, BODY, (OPEN_BLOCK, CLOSE_BLOCK), baked, sums)
        self.tex = None
        if self.gpu.profile.texture_paths and depthwise_cpu.layout(self.p, 1) is not None:
            fmt = direct_cpu.FORMATS[self.dtype]
            w_tex = self.gpu.texture_of(depthwise_cpu.weight_texels(weight).astype(self.precision.numpy), fmt,
                                        "depthwise weight texels")
            header = self.precision.wgsl()
            self.tex = (w_tex, direct_cpu.repack_shader(header, fmt),
                        depthwise_cpu.generate(self.p, header, fmt, self.epilogue.wgsl()), {})
            self.gpu.pipeline(self.tex[1])
            self.gpu.pipeline(self.tex[2])

    def bind(self, x, y, n):
        p = self.p
        layout = depthwise_cpu.layout(p, n) if self.tex else None
        if layout:
            return self.bind_textures(x, y, n, layout)
        grid = self.grid_values()
        return self.launch(x, y, **grid, total=n * p.c_out * p.ho * grid["owb"])

    def bind_textures(self, x, y, n, layout):
        p = self.p
        w_tex, repack, source, inputs = self.tex
        if n not in inputs:
            inputs[n] = direct_cpu.input_texture(self.gpu, layout, direct_cpu.FORMATS[self.dtype],
                                                 "depthwise's padded input")
        grid = depthwise_cpu.grid(p, n)
        params = self.param_buffer(depthwise_cpu.PARAMS, self.shape_values(mult=p.c_out // p.c_in, hp=layout.hp,
                                                                           **grid))
        return [direct_cpu.repack_dispatch(self, repack, x, inputs[n], layout),
                self.gpu.dispatch(source, [params, inputs[n], w_tex, self.b_buf, y], grid["total"],
                                  depthwise_cpu.WG)]

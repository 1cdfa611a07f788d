"""im2col's gather on CPU adapters: the column matrix written into a storage texture for gemm_tex.

First direct_cpu's repack pass copies the input, zero-padded, into an rgba texture (4 padded columns a texel,
`hp` padded rows a plane): the only storage-buffer loads, one per input value. The gather then reads that
texture, with no bounds checks, and writes B: row k = (input channel, kernel row, kernel column) holds texels
of 4 output pixels, each image's pixels padded to whole texels (pp4 per image), images back to back; rows
from K to the padded K are zeros. One workgroup per row works out its channel and taps once; its invocations
take every WG-th texel, a texel's first pixel by one division, the next three by stepping along the output
row. At stride 1 with output rows of whole texels (`aligned`) a texel's four pixels are 4 neighbouring padded
columns: two texel loads; else a load per pixel. Two shaders, not a branch: llvmpipe runs both sides of a
branch whose condition varies per invocation (measured: 9.4 ms with the branch, 5.5 with the two loads alone,
128@28 3x3).
"""

from __future__ import annotations

from dataclasses import dataclass

from convroute.kernels.common import ceil_div, storage_frame
from convroute.kernels.direct_cpu import ROW_BITS, TEX_DIM, TEX_LAYERS, TextureLayout

WG = 8
PARAMS = ["c_in", "ho", "wo", "kh", "kw", "sh", "sw", "dh", "dw", "k", "k_pad", "pixels", "pp4", "texels", "hp"]


@dataclass(frozen=True)
class PaddedInput:
    """The repacked input: `hp` padded rows of `width` texels per plane, n * C_in planes in flat rows."""

    width: int
    hp: int
    rows: int

    @staticmethod
    def of(p, n: int) -> PaddedInput | None:
        """The layout at batch n, or None past WebGPU's guaranteed texture limits. One texel more than the
        windows span, for the two-texel loads."""
        hp = (p.ho - 1) * p.stride[0] + (p.kh - 1) * p.dilation[0] + 1
        width = ceil_div((p.wo - 1) * p.stride[1] + (p.kw - 1) * p.dilation[1] + 1, 4) + 1
        layout = PaddedInput(width, hp, n * p.c_in * hp)
        return layout if width <= TEX_DIM and TextureLayout.shape(layout.rows)[1] <= TEX_LAYERS else None


def aligned(p) -> bool:
    return p.stride[1] == 1 and p.wo % 4 == 0


def gather_shader(header: str, fmt: str, aligned: bool) -> str:
    buffers = ("@group(0) @binding(1) var xt: texture_2d_array<f32>;\n"
               f"@group(0) @binding(2) var col: texture_storage_2d_array<{fmt}, write>;")
    mask = f"{TEX_DIM - 1}u"
    return storage_frame(header, PARAMS, buffers, "", WG) + f"""
  let r = wid.x + wid.y * nwg.x;
  if (r >= p.k_pad) {{ return; }}
  let row = r & {mask};
  let layer = r >> {ROW_BITS}u;
  let live = r < p.k;
  let kw = r % p.kw;
  let kh = (r / p.kw) % p.kh;
  let c = select(0u, r / (p.kw * p.kh), live);
  let dh = kh * p.dh;
  let dw = kw * p.dw;
  let shift = dw & 3u;
  for (var t = lid_x; t < p.texels; t += {WG}u) {{
    let b = t / p.pp4;  // aligned: no pixel past the image's, and p.pp4 * 4 == p.pixels
    let pix = (t - b * p.pp4) * 4u;
    let oh = pix / p.wo;
    let ow = pix - oh * p.wo;
    let plane = (b * p.c_in + c) * p.hp + dh;
    var v = vec4<f32>(0.0);
    if ({str(aligned).lower()}) {{
      let xr = plane + oh * p.sh;
      let x0 = (ow + dw) >> 2u;
      let lo = textureLoad(xt, vec2<u32>(x0, xr & {mask}), xr >> {ROW_BITS}u, 0);
      let hi = textureLoad(xt, vec2<u32>(x0 + 1u, xr & {mask}), xr >> {ROW_BITS}u, 0);
      switch shift {{
        case 0u: {{ v = lo; }}
        case 1u: {{ v = vec4<f32>(lo.yzw, hi.x); }}
        case 2u: {{ v = vec4<f32>(lo.zw, hi.xy); }}
        default: {{ v = vec4<f32>(lo.w, hi.xyz); }}
      }}
    }} else {{
      var qh = oh;
      var qw = ow;
      for (var q = 0u; q < 4u; q++) {{
        let xr = plane + min(qh, p.ho - 1u) * p.sh;
        let xc = qw * p.sw + dw;
        let texel = textureLoad(xt, vec2<u32>(xc >> 2u, xr & {mask}), xr >> {ROW_BITS}u, 0);
        v[q] = select(0.0, texel[xc & 3u], pix + q < p.pixels);
        qw += 1u;
        let wrap = qw == p.wo;
        qw = select(qw, 0u, wrap);
        qh += select(0u, 1u, wrap);
      }}
    }}
    textureStore(col, vec2<u32>(t, row), layer, select(vec4<f32>(0.0), v, live));
  }}
}}"""

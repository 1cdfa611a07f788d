"""im2col's column matrix on CPU adapters as a texture, for gemm_tex (im2col and pointwise convs).

B's row k = (input channel, kernel row, kernel column) holds texels of 4 output pixels, each image's pixels
padded to whole texels (pp4 per image), images back to back; rows from K to the padded K are zeros. A gather
writes it (textureStore) each run, an invocation per row (its channel and taps worked out once) walking its
texels, a texel's first pixel by one division, the next three by stepping along the output row. (A workgroup
per row left most lanes idle where rows are a few texels, late in a network, and paid lavapipe's cost per
workgroup 8 times over, as direct_cpu's repack pass did.) Two gathers:
- from the storage buffer, a load per value (pointwise: each input value is read once anyway);
- from a texture of the zero-padded input that direct_cpu's repack pass writes first (one storage load per
  input value, no bounds checks after it; im2col, which reads each input value KH * KW times). At stride 1
  with output rows of whole texels (`aligned`) the KW rows of one (channel, kernel row) come from the same
  few texels (aligned_gather); else a load per pixel. Two shaders, not a branch: llvmpipe runs both sides of
  a branch whose condition varies per invocation (128@28 3x3: 9.4 ms with the branch, 5.5 with the two
  loads alone).
"""

from __future__ import annotations

from dataclasses import dataclass

from convroute.kernels import direct_cpu, gemm_tex
from convroute.kernels.common import ceil_div, storage, storage_frame
from convroute.kernels.direct_cpu import ROW_BITS, TEX_DIM, TEX_LAYERS, TextureLayout, read_texture

WG = 8
PARAMS = ["c_in", "h", "w", "ho", "wo", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "k", "k_pad", "pixels",
          "pp4", "texels", "hp"]
MASK = f"{TEX_DIM - 1}u"


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


def frame(header: str, fmt: str, source: str) -> str:
    """The gather up to the texel loop's body: row r's taps, texel t's image b and first pixel (oh, ow)."""
    buffers = source + f"\n@group(0) @binding(2) var col: texture_storage_2d_array<{fmt}, write>;"
    return storage_frame(header, PARAMS, buffers, "", WG) + f"""
  let r = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (r >= p.k_pad) {{ return; }}
  let row = r & {MASK};
  let layer = r >> {ROW_BITS}u;
  let live = r < p.k;
  let kw = r % p.kw;
  let kh = (r / p.kw) % p.kh;
  let c = select(0u, r / (p.kw * p.kh), live);
  let dh = kh * p.dh;
  let dw = kw * p.dw;
  for (var t = 0u; t < p.texels; t++) {{
    let b = t / p.pp4;
    let pix = (t - b * p.pp4) * 4u;
    let oh = pix / p.wo;
    let ow = pix - oh * p.wo;
    var v = vec4<f32>(0.0);
"""


STEP = """
      qw += 1u;
      let wrap = qw == p.wo;
      qw = select(qw, 0u, wrap);
      qh += select(0u, 1u, wrap);
    }"""
STORE = """
    textureStore(col, vec2<u32>(t, row), layer, select(vec4<f32>(0.0), v, live));
  }
}"""


def buffer_gather(header: str, fmt: str) -> str:
    body = """    let xb = (b * p.c_in + c) * p.h * p.w;
    let hi = i32(p.h);
    let wi = i32(p.w);
    var qh = oh;
    var qw = ow;
    for (var q = 0u; q < 4u; q++) {
      let ih = i32(qh * p.sh + dh) - i32(p.ph);
      let iw = i32(qw * p.sw + dw) - i32(p.pw);
      let ok = live && pix + q < p.pixels && ih >= 0 && ih < hi && iw >= 0 && iw < wi;
      v[q] = select(0.0, f32(x[xb + select(0u, u32(ih) * p.w + u32(iw), ok)]), ok);"""
    return frame(header, fmt, storage("x")) + body + STEP + STORE


def texture_gather(header: str, fmt: str) -> str:
    """From the padded input texture, a load per pixel (any stride; pixels of a texel may span output rows)."""
    out = [frame(header, fmt, read_texture(1, "xt", fmt)),
           "    let plane = (b * p.c_in + c) * p.hp + dh;"]
    out.append(f"""    var qh = oh;
    var qw = ow;
    for (var q = 0u; q < 4u; q++) {{
      let xr = plane + min(qh, p.ho - 1u) * p.sh;
      let xc = qw * p.sw + dw;
      let texel = textureLoad(xt, vec2<u32>(xc >> 2u, xr & {MASK}), xr >> {ROW_BITS}u);
      v[q] = select(0.0, texel[xc & 3u], pix + q < p.pixels);""")
    return "\n".join(out) + STEP + STORE


def aligned_gather(header: str, fmt: str, kw: int, dw: int) -> str:
    """Stride 1, output rows of whole texels: an invocation per (input channel, kernel row) writes the KW rows
    of its kernel columns; a texel's four pixels are 4 neighbouring padded columns from a texel boundary, so
    its KW texels are fixed components of the (3 + (KW - 1) * dw) / 4 + 1 input texels loaded once."""
    loads = (3 + (kw - 1) * dw) // 4 + 1
    buffers = (read_texture(1, "xt", fmt) + "\n"
               f"@group(0) @binding(2) var col: texture_storage_2d_array<{fmt}, write>;")
    out = [storage_frame(header, PARAMS, buffers, "", WG) + f"""
  let g = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  let r0 = g * {kw}u;
  if (r0 >= p.k_pad) {{ return; }}
  let live = r0 < p.k;
  let c = select(0u, g / p.kh, live);
  let dh = (g % p.kh) * p.dh;
  for (var t = 0u; t < p.texels; t++) {{
    let b = t / p.pp4;
    let pix = (t - b * p.pp4) * 4u;
    let oh = pix / p.wo;
    let x0 = (pix - oh * p.wo) >> 2u;
    let xr = (b * p.c_in + c) * p.hp + dh + oh * p.sh;
    let xl = xr >> {ROW_BITS}u;"""]
    out += [f"    let u{i} = select(vec4<f32>(0.0), textureLoad(xt, vec2<u32>(x0 + {i}u, xr & {MASK}), xl), live);"
            for i in range(loads)]
    for k in range(kw):
        comps = ", ".join(f"u{(k * dw + e) // 4}.{'xyzw'[(k * dw + e) % 4]}" for e in range(4))
        out.append(f"    if (r0 + {k}u < p.k_pad) {{ let r = r0 + {k}u; "
                   f"textureStore(col, vec2<u32>(t, r & {MASK}), r >> {ROW_BITS}u, vec4<f32>({comps})); }}")
    out.append("  }\n}")
    return "\n".join(out)


class ColumnTextures:
    """A conv kernel's (im2col's, pointwise's) path on CPU adapters where the textures fit: the weights in
    a TexGemm, the gather (after the repack pass with `repack`), the column texture per batch."""

    def __init__(self, kernel, weight, bias, repack: bool):
        p, precision = kernel.p, kernel.precision
        self.kernel, self.k = kernel, p.c_in * p.kh * p.kw
        self.gemm = gemm_tex.TexGemm(kernel.gpu, weight.reshape(p.c_out, -1), bias, precision,
                                     kernel.epilogue.wgsl(), kernel.residual)
        header, fmt = precision.wgsl(), self.gemm.fmt
        self.repack = direct_cpu.repack_shader(header, fmt) if repack else None
        if not repack:
            self.gather = buffer_gather(header, fmt)
        elif aligned(p):
            self.gather = aligned_gather(header, fmt, p.kw, p.dilation[1])
        else:
            self.gather = texture_gather(header, fmt)
        self.rows_per_group = p.kw if repack and aligned(p) else 1
        for source in filter(None, (self.repack, self.gather)):
            kernel.gpu.pipeline(source)
        self._textures: dict[int, tuple] = {}

    @staticmethod
    def wanted(kernel) -> bool:
        p = kernel.p
        return kernel.gpu.profile.texture_paths and gemm_tex.fits(p.c_out, p.c_in * p.kh * p.kw, 1)

    def fits(self, n: int) -> bool:
        p = self.kernel.p
        texels = n * ceil_div(p.ho * p.wo, 4)
        return gemm_tex.fits(p.c_out, self.k, texels) and (self.repack is None or PaddedInput.of(p, n) is not None)

    def textures(self, n: int) -> tuple:
        """(padded input texture or None, column texture) at batch n."""
        if n not in self._textures:
            p, gpu, fmt = self.kernel.p, self.kernel.gpu, self.gemm.fmt
            xt = None
            if self.repack:
                xt = direct_cpu.input_texture(gpu, PaddedInput.of(p, n), fmt, "padded input texels")
            self._textures[n] = (xt, self.gemm.columns(n * ceil_div(p.ho * p.wo, 4), "column texels"))
        return self._textures[n]

    def bind(self, x, y, n: int, residual) -> list:
        kernel = self.kernel
        p, gpu = kernel.p, kernel.gpu
        pixels = p.ho * p.wo
        pp4 = ceil_div(pixels, 4)
        xt, col = self.textures(n)
        layout = PaddedInput.of(p, n) if self.repack else PaddedInput(0, 0, 0)
        values = kernel.shape_values(k=self.k, k_pad=self.gemm.k_pad, pixels=pixels, pp4=pp4, texels=n * pp4,
                                     hp=layout.hp)
        dispatches = []
        if self.repack:
            dispatches.append(direct_cpu.repack_dispatch(kernel, self.repack, x, xt, layout))
        groups = ceil_div(self.gemm.k_pad, self.rows_per_group)
        dispatches.append(gpu.dispatch(self.gather, [kernel.param_buffer(PARAMS, values), xt or x, col],
                                       groups, WG))
        return dispatches + [self.gemm.dispatch(y, col, n, pixels, pp4, residual)]

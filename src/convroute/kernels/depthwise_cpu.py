"""`depthwise` on CPU adapters: the input as texels (direct_cpu's repack pass), taps unrolled.

On lavapipe a storage-buffer load costs ~10x a texel's value (direct_cpu's text), and the buffer kernel loads
per tap one weight and four input values for four outputs. Here a repack pass copies the input, zero-padded,
into an rgba texture array (4 padded columns a texel) and the weights sit in a texture packed once (one row of
taps per output channel); each invocation computes TR output rows x TN output columns of one channel as vec4s
of 4 neighbouring pixels, loading each input texel its windows read once. Kernel size, stride and dilation
are WGSL constants, so every tap's pixels are fixed components of those texels: no loop, no bounds check.
Layers whose unrolled code would be large, or whose textures would pass WebGPU's limits, keep the buffer
kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convroute.kernels.common import ceil_div, split_index, storage, storage_frame
from convroute.kernels.direct_cpu import ROW_BITS, TEX_DIM, TEX_LAYERS, TextureLayout, read_texture

WG = 8
TR, TN = 4, 8  # output rows and columns per invocation
MAX_FMAS = 400  # vec4 FMAs unrolled per invocation (TR * TN / 4 * KH * KW): 72 at 3x3, 200 at 5x5
PARAMS = ["c_in", "c_out", "ho", "wo", "mult", "hp", "tiles_n", "tiles_r", "total"]
MASK = f"{TEX_DIM - 1}u"


@dataclass(frozen=True)
class Layout:
    width: int  # input texels per padded row
    hp: int  # padded rows per plane
    rows: int  # n * C_in * hp


def layout(p, n: int) -> Layout | None:
    """The padded input's layout at batch n (every tile's windows inside), or None where the kernel would be
    large or the textures would pass WebGPU's guaranteed limits."""
    if TR * TN // 4 * p.kh * p.kw > MAX_FMAS:
        return None
    width = ceil_div((ceil_div(p.wo, TN) * TN - 1) * p.stride[1] + (p.kw - 1) * p.dilation[1] + 1, 4)
    hp = (ceil_div(p.ho, TR) * TR - 1) * p.stride[0] + (p.kh - 1) * p.dilation[0] + 1
    out = Layout(width, hp, n * p.c_in * hp)
    taps = ceil_div(p.kh * p.kw, 4)
    if width > TEX_DIM or taps > TEX_DIM:
        return None
    if max(TextureLayout.shape(out.rows)[1], TextureLayout.shape(p.c_out)[1]) > TEX_LAYERS:
        return None
    return out


def weight_texels(weight: np.ndarray) -> np.ndarray:
    """[C_out, 1, KH, KW] -> [layers, height, ceil(KH * KW / 4), 4]: output channel oc's taps in flat row oc."""
    c_out = weight.shape[0]
    taps = weight.reshape(c_out, -1)
    per_row = ceil_div(taps.shape[1], 4)
    height, layers = TextureLayout.shape(c_out)
    flat = np.zeros((layers * height, per_row * 4), np.float32)
    flat[:c_out, :taps.shape[1]] = taps
    return flat.reshape(layers, height, per_row, 4)


def generate(p, header: str, fmt: str, act: str) -> str:
    (sh, sw), (dh, dw) = p.stride, p.dilation
    span = (TN - 1) * sw + (p.kw - 1) * dw + 1
    buffers = (read_texture(1, "xt", fmt) + "\n" + read_texture(2, "wt", fmt) + "\n"
               + storage("bias:f32", "y!", first=3))
    out = [storage_frame(header, PARAMS, buffers, act, WG),
           f"""  let t = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (t >= p.total) {{ return; }}""",
           split_index("t", [("tni", "p.tiles_n"), ("tri", "p.tiles_r"), ("oc", "p.c_out")], "n"),
           f"""  let ow0 = tni * {TN}u;
  let oh0 = tri * {TR}u;
  let rb = (n * p.c_in + oc / p.mult) * p.hp + oh0 * {sh}u;
  let tx0 = tni * {TN * sw // 4}u;"""]
    out += [f"  let w{q} = textureLoad(wt, vec2<u32>({q}u, oc & {MASK}), oc >> {ROW_BITS}u);"
            for q in range(ceil_div(p.kh * p.kw, 4))]
    rows = sorted({i * sh + kh * dh for i in range(TR) for kh in range(p.kh)})
    for off in rows:
        out.append(f"  let r{off} = rb + {off}u;")
        out += [f"  let u{off}_{k} = textureLoad(xt, vec2<u32>(tx0 + {k}u, r{off} & {MASK}), r{off} >> {ROW_BITS}u);"
                for k in range(ceil_div(span, 4))]
    for i in range(TR):
        for j in range(TN // 4):
            out.append(f"  var s{i}_{j} = vec4<f32>(0.0);")
            for kh in range(p.kh):
                off = i * sh + kh * dh
                for kw in range(p.kw):
                    tap = kh * p.kw + kw
                    cols = [(4 * j + e) * sw + kw * dw for e in range(4)]
                    pixels = ", ".join(f"u{off}_{c // 4}.{'xyzw'[c % 4]}" for c in cols)
                    out.append(f"  s{i}_{j} = fma(vec4<f32>(w{tap // 4}.{'xyzw'[tap % 4]}), vec4<f32>({pixels}), "
                               f"s{i}_{j});")
    out += ["  let b = bias[oc];", "  let ob = (n * p.c_out + oc) * p.ho;"]
    for i in range(TR):
        out.append(f"  if (oh0 + {i}u < p.ho) {{")
        out.append(f"    let o{i} = (ob + oh0 + {i}u) * p.wo + ow0;")
        for j in range(TN // 4):
            for e, comp in enumerate("xyzw"):
                col = 4 * j + e
                out.append(f"    if (ow0 + {col}u < p.wo) {{ y[o{i} + {col}u] = ST(act(s{i}_{j}.{comp} + b)); }}")
        out.append("  }")
    out.append("}")
    return "\n".join(out)


def grid(p, n: int) -> dict:
    tiles_n, tiles_r = ceil_div(p.wo, TN), ceil_div(p.ho, TR)
    return dict(tiles_n=tiles_n, tiles_r=tiles_r, total=n * p.c_out * tiles_r * tiles_n)

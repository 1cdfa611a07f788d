"""`direct` on CPU adapters (gemm_style "registers"): one register tile per invocation, no workgroup memory.

Each invocation computes TM output channels x TR output rows x TN neighbouring output columns. On llvmpipe
(Mesa 22.3) a storage-buffer load is a loop over the 8 SIMD lanes with a scalar, bounds-checked load per
component, ~20 cycles per value; a textureLoad of an rgba32float texel is one vectorised fetch that brings 4
values for about what 1/3 of a storage load costs (measured per value: 0.55 ns vs 6.1 ns). So the specialised
kernel reads textures: a repack pass first copies the input, zero-padded, into an rgba texture array (4 padded
columns per texel: the only per-value storage loads), and the weights are prepacked once as texels of 4 output
channels. Per input channel an invocation loads TM/4 * KH * KW weight texels and ceil(span / 4) input texels
per input row its windows read, then runs every sum's KH * KW taps back to back (a sum stays in registers for
its run; the tile's sums do not all fit). Kernel size, stride, dilation and padding are WGSL constants (taps
unrolled); channel and spatial sizes come from a parameter buffer, so one pipeline per (kernel geometry, tile)
serves every layer that shares it. One invocation loops C_in/groups times; nothing needs a bounds check.

lavapipe compiles a pipeline at its first dispatch (0.1-3 s for the 3x3 tiles here), which small layers (a few
MFLOPs, run in milliseconds) would pay again for every new geometry. Those get the generic kernel: the geometry
comes from the parameters too, so one pipeline per (tile, activation, dtype) serves every small layer; it reads
the storage buffers directly, per tap the weights and one input value per pixel. It loops
C_in/groups * (1 + KH * (1 + KW)) times. Layers whose textures would pass WebGPU's guaranteed texture limits
take it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convroute.device.gpu import Dispatch
from convroute.kernels.base import CPU_LOOP_LIMIT
from convroute.kernels.common import ceil_div, split_index, storage, storage_frame

WG = 8  # one llvmpipe SIMD vector (see gemm_cpu.WG)
PARAMS = ["n", "c_in", "h", "w", "c_out", "ho", "wo", "cin_g", "cout_g", "groups", "bpg", "cin_pad", "tiles_m",
          "tiles_n", "tiles_r", "total", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw"]  # the last: the generic's
# Per image: smaller layers take the generic kernel. At 20 MFLOP MobileNetV2's 1x1s (9-15 MFLOP) took it at
# 1.4-5x the texture kernel's time (64@14 -> 384: 7.4 vs 1.6 ms) and the derived rule, fitted where direct
# reads textures, sent them there; the texture kernel was faster on 8 of 9 layers of 0.1-15 MFLOP (not on a
# 0.7-MFLOP stride-2 depthwise), NOTES session 7.
SPECIALISE_FLOPS = 2_000_000
MAX_FMAS = 800  # vec4 FMAs unrolled per input channel: bounds compile time (8x4x8 on 3x3 taps: 576, ~1 s)
BUSY_WORKGROUPS = 16  # launches with fewer leave lavapipe's threads idle part of the time


@dataclass(frozen=True)
class RegisterTile:
    tm: int  # output channels per invocation, a multiple of 4
    tn: int  # neighbouring output columns per invocation, a multiple of 4
    tr: int = 1  # output rows per invocation
    per_fma: float = field(default=1.0, compare=False)  # relative time per FMA (measured on lavapipe)

    def __str__(self) -> str:
        return f"{self.tm}x{self.tr}x{self.tn}"


# Few tiles: lavapipe compiles a pipeline at its first dispatch, once per tile and kernel geometry (calibration
# meets dozens of geometries). Time per FMA relative to 8x4x8 on lavapipe (64@224, 64@56, 256@56, 256@28 and
# 512@28 3x3 layers, normalised for padding; `tools/direct_bench.py --tiles` times them): 64 sums per
# invocation run best, smaller tiles reload their operands more often per FMA.
TILES = (RegisterTile(8, 8, 4, 1.0), RegisterTile(8, 16, 2, 1.02), RegisterTile(16, 4, 4, 1.1),
         RegisterTile(4, 8, 4, 1.2), RegisterTile(4, 8, 2, 1.45), RegisterTile(4, 4, 2, 2.0),
         RegisterTile(4, 4, 1, 3.0))


def input_rows(p, tile: RegisterTile) -> list[int]:
    """Offsets of the input rows an invocation reads, from its first window's top row."""
    return sorted({i * p.stride[0] + k * p.dilation[0] for i in range(tile.tr) for k in range(p.kh)})


def unrolled_fmas(p, tile: RegisterTile) -> int:
    """vec4 FMAs in the specialised kernel's straight-line code (one input channel)."""
    return tile.tm // 4 * tile.tn * tile.tr * p.kh * p.kw


def fits(p, tile: RegisterTile) -> bool:
    return unrolled_fmas(p, tile) <= MAX_FMAS


def tile_cost(p, tile: RegisterTile) -> float:
    """Relative time: the FMAs of every invocation (C_out/groups and the output rows and columns padded to whole
    tiles) times the tile's time per FMA, more when the launch has too few workgroups to keep the CPU busy."""
    padded = (ceil_div(p.c_out // p.groups, tile.tm) * tile.tm * ceil_div(p.ho, tile.tr) * tile.tr
              * ceil_div(p.wo, tile.tn) * tile.tn)
    workgroups = ceil_div(grid(p, tile, p.n)["total"], WG)
    return padded * tile.per_fma / min(1.0, workgroups / BUSY_WORKGROUPS)


def choose_tile(p) -> RegisterTile:
    """The cheapest tile by tile_cost among those whose unrolled code stays small (any tile for the generic
    kernel, which unrolls no taps)."""
    return min([t for t in TILES if fits(p, t)] or TILES, key=lambda t: (tile_cost(p, t), -t.tm * t.tn * t.tr))


def loop_trips(p) -> int:
    """Trips of the kernel `p` takes (where the textures fit, see Direct)."""
    return p.c_in // p.groups if specialised(p) else generic_trips(p)


def generic_trips(p) -> int:
    return (p.c_in // p.groups) * (1 + p.kh * (1 + p.kw))


def specialised(p) -> bool:
    """Whether `p` gets a pipeline of its own (geometry as constants, taps unrolled): for layers large enough
    that its faster run pays for the compile, or whose channels would loop the generic kernel too often, when
    one of the tiles keeps the unrolled code small."""
    wanted = p.flops // p.n >= SPECIALISE_FLOPS or generic_trips(p) > CPU_LOOP_LIMIT
    return wanted and any(fits(p, t) for t in TILES)


TEX_DIM = 8192  # WebGPU's guaranteed maxTextureDimension2D: texels per texture row, rows per layer
TEX_LAYERS = 256  # and maxTextureArrayLayers
ROW_BITS = TEX_DIM.bit_length() - 1  # a texture's flat row r is row r & (TEX_DIM - 1) of layer r >> ROW_BITS
TEX_PARAMS = ["n", "c_in", "c_out", "ho", "wo", "cin_g", "cout_g", "groups", "bpg", "tiles_m", "tiles_n", "tiles_r",
              "total", "hp", "wrow", "icr"]
REPACK_PARAMS = ["total", "width", "hp", "h", "w", "ph", "pw"]
FORMATS = {"float32": "rgba32float", "float16": "rgba16float"}


@dataclass(frozen=True)
class TextureLayout:
    """Where the specialised kernel reads. The input: each image plane zero-padded to `hp` rows of `width`
    texels (4 padded columns each, column 0 at -PW), plane after plane in flat rows. The weights: flat row
    (group block, ic // icw) holds input channels ic of that row's `icw` times KH * KW taps, one texel
    (4 output channels) per tap. Every read of the kernel lands inside, so it needs no bounds checks."""

    width: int  # input texels per padded row
    hp: int  # padded rows per plane
    rows: int  # input flat rows (n * C_in * hp)
    icw: int  # input channels per weight row
    icr: int  # weight rows per block of 4 output channels
    w_rows: int  # weight flat rows

    @staticmethod
    def shape(rows: int) -> tuple[int, int]:
        """(height, layers) of a texture holding `rows` flat rows."""
        return min(rows, TEX_DIM), ceil_div(rows, TEX_DIM)


def span(p, tile: RegisterTile) -> int:
    """Input columns one row of the tile's windows covers."""
    return (tile.tn - 1) * p.stride[1] + (p.kw - 1) * p.dilation[1] + 1


def texture_layout(p, tile: RegisterTile, n: int) -> TextureLayout | None:
    """The textures' layout at batch n, or None where they would pass WebGPU's guaranteed texture limits."""
    tiles = grid(p, tile, n)
    step = tile.tn * p.stride[1] // 4
    width = (tiles["tiles_n"] - 1) * step + ceil_div(span(p, tile), 4)
    hp = (tiles["tiles_r"] * tile.tr - 1) * p.stride[0] + (p.kh - 1) * p.dilation[0] + 1
    khw, cin_g = p.kh * p.kw, p.c_in // p.groups
    icw = min(cin_g, TEX_DIM // khw)
    if icw < 1 or width > TEX_DIM:
        return None
    icr = ceil_div(cin_g, icw)
    layout = TextureLayout(width, hp, n * p.c_in * hp, icw, icr, p.groups * tiles["tiles_m"] * tile.tm // 4 * icr)
    if max(TextureLayout.shape(layout.rows)[1], TextureLayout.shape(layout.w_rows)[1]) > TEX_LAYERS:
        return None
    return layout


def weight_texels(weight: np.ndarray, p, tile: RegisterTile, layout: TextureLayout) -> np.ndarray:
    """[C_out, C_in/g, KH, KW] -> the weight texture's texels [layers, height, icw * KH * KW, 4], zeros in the
    padding (output channels past C_out/groups, input channels past C_in/groups)."""
    g, khw = p.groups, p.kh * p.kw
    cout_g, cin_g = p.c_out // g, p.c_in // g
    bpg = layout.w_rows // (g * layout.icr)
    w = np.zeros((g, bpg * 4, layout.icr * layout.icw, khw), np.float32)
    w[:, :cout_g, :cin_g] = weight.reshape(g, cout_g, cin_g, khw)
    w = w.reshape(g, bpg, 4, layout.icr, layout.icw, khw).transpose(0, 1, 3, 4, 5, 2)
    height, layers = TextureLayout.shape(layout.w_rows)
    flat = np.zeros((layers * height, layout.icw * khw, 4), np.float32)
    flat[:layout.w_rows] = w.reshape(layout.w_rows, layout.icw * khw, 4)
    return flat.reshape(layers, height, layout.icw * khw, 4)


def read_texture(binding: int, name: str, fmt: str) -> str:
    """The declaration of a texture array the CPU paths read: a read-only storage texture, whose textureLoad
    (no mip level) costs lavapipe a third of a sampled texture's (0.66 vs 2.2 ns a texel per invocation,
    NOTES session 9)."""
    return f"@group(0) @binding({binding}) var {name}: texture_storage_2d_array<{fmt}, read>;"


def input_texture(gpu, layout, fmt: str, what: str):
    """The texture the repack pass writes: `layout.rows` flat rows of `layout.width` texels."""
    height, layers = TextureLayout.shape(layout.rows)
    return gpu.texture_array(layout.width, height, layers, fmt, what)


def repack_dispatch(kernel, source: str, x, xt, layout) -> Dispatch:
    """`kernel`'s repack pass (`source`, from repack_shader) of its input `x` into `xt`: `layout.rows` rows of
    `layout.width` texels, `layout.hp` padded rows per plane."""
    p = kernel.p
    values = dict(total=layout.rows, width=layout.width, hp=layout.hp, h=p.h, w=p.w, ph=p.padding[0],
                  pw=p.padding[1])
    return kernel.gpu.dispatch(source, [kernel.param_buffer(REPACK_PARAMS, values), x, xt], layout.rows, WG)


def repack_shader(header: str, fmt: str) -> str:
    """Copies NCHW planes into the input texture, zero in the padding: an invocation per padded row (no division
    per texel) walking its texels. A workgroup per row left most lanes idle on narrow rows and paid lavapipe's
    cost per workgroup 8 times over: EfficientNet's 5x5 depthwise at 2x2 (1152 channels) repacked in 1.8 ms,
    now 0.3 ms; rows of 28 texels gain too (NOTES, session 18)."""
    buffers = storage("x") + f"\n@group(0) @binding(2) var xo: texture_storage_2d_array<{fmt}, write>;"
    return storage_frame(header, REPACK_PARAMS, buffers, "", WG) + f"""
  let r = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (r >= p.total) {{ return; }}
  let ih = i32(r % p.hp) - i32(p.ph);
  let row_ok = ih >= 0 && ih < i32(p.h);
  let base = (r / p.hp) * p.h * p.w + select(0u, u32(ih), row_ok) * p.w;
  let row = r & {TEX_DIM - 1}u;
  let layer = r >> {ROW_BITS}u;
  for (var t = 0u; t < p.width; t++) {{
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {{
      let iw = i32(4u * t + e) - i32(p.pw);
      let ok = row_ok && iw >= 0 && iw < i32(p.w);
      v[e] = select(0.0, f32(x[base + select(0u, u32(iw), ok)]), ok);
    }}
    textureStore(xo, vec2<u32>(t, row), layer, v);
  }}
}}"""


def store_lines(tile: RegisterTile, residual: bool) -> list[str]:
    """The epilogue: bias, residual and activation per stored element; channels past C_out/groups and pixels
    past the output's edges are not stored."""
    rg, tn, tr = tile.tm // 4, tile.tn, tile.tr
    out = [f"  let oc0 = tmi * {tile.tm}u;", "  let obase = n * p.c_out + g * p.cout_g;"]
    # the tile's biases once (each serves tr * tn stores)
    out += [f"  let b{k} = vec4<f32>(" + ", ".join(f"bias[min(g * p.cout_g + oc0 + {4 * k + e}u, p.c_out - 1u)]"
                                                  for e in range(4)) + ");" for k in range(rg)]
    for i in range(tr):
        out.append(f"  if (oh0 + {i}u < p.ho) {{")
        for j in range(tn):
            stores = []
            for k in range(rg):
                for e, comp in enumerate("xyzw"):
                    index = f"((obase + oc0 + {4 * k + e}u) * p.ho + oh0 + {i}u) * p.wo + ow0 + {j}u"
                    value = f"s{i}_{j}_{k}.{comp} + b{k}.{comp}" + (f" + f32(res[{index}])" if residual else "")
                    stores.append(f"    if (oc0 + {4 * k + e}u < p.cout_g) {{ y[{index}] = ST(act({value})); }}")
            out += [f"  if (ow0 + {j}u < p.wo) {{", *stores, "  }"]
        out.append("  }")
    return out


def generate(p, tile: RegisterTile, header: str, fmt: str, act: str, residual: bool = False) -> str:
    """The specialised kernel for `p`'s geometry (constants; every tap unrolled), reading the textures of
    TextureLayout. Per input channel it loads the tile's KH * KW * tm/4 weight texels and, per input row its
    windows read, ceil(span / 4) input texels; each input value serves every tap and pixel that reads it."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    rg, tn, tr = tile.tm // 4, tile.tn, tile.tr
    khw = p.kh * p.kw
    texels = ceil_div(span(p, tile), 4)
    textures = read_texture(1, "xt", fmt) + "\n" + read_texture(2, "wt", fmt)
    buffers = textures + "\n" + storage("bias:f32", "y!", *(["res"] if residual else []), first=3)
    mask = f"{TEX_DIM - 1}u"
    digits = [("tni", "p.tiles_n"), ("tri", "p.tiles_r"), ("tmi", "p.tiles_m"), ("g", "p.groups")]
    out = [storage_frame(header, TEX_PARAMS, buffers, act, WG),
           f"""  let t = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (t >= p.total) {{ return; }}""",
           split_index("t", digits, "n"),
           f"""  let ow0 = tni * {tn}u;
  let oh0 = tri * {tr}u;
  let tx0 = tni * {tn * sw // 4}u;
  var rb = (n * p.c_in + g * p.cin_g) * p.hp + oh0 * {sh}u;
  let wb = (g * p.bpg + tmi * {rg}u) * p.icr;
  var wx = 0u;
  var wq = 0u;"""]
    emit = out.append
    out += [f"  var s{i}_{j}_{g} = vec4<f32>(0.0);" for i in range(tr) for j in range(tn) for g in range(rg)]
    emit("  for (var ic = 0u; ic < p.cin_g; ic++) {")
    for g in range(rg):
        emit(f"    let wr{g} = wb + {g}u * p.icr + wq;")
    out += [f"    let a{kh}_{kw}_{g} = textureLoad(wt, vec2<u32>(wx + {kh * p.kw + kw}u, wr{g} & {mask}), "
            f"wr{g} >> {ROW_BITS}u);" for kh in range(p.kh) for kw in range(p.kw) for g in range(rg)]
    # all loads first, then every sum's taps back to back: a sum stays in registers for its KH * KW FMAs (the
    # tile's sums do not fit llvmpipe's registers; interleaved by kernel row, each FMA reloaded and stored its sum)
    for off in input_rows(p, tile):
        emit(f"    let r{off} = rb + {off}u;")
        out += [f"    let u{off}_{k} = textureLoad(xt, vec2<u32>(tx0 + {k}u, r{off} & {mask}), "
                f"r{off} >> {ROW_BITS}u);" for k in range(texels)]
    for i in range(tr):
        for j in range(tn):
            for g in range(rg):
                for kh in range(p.kh):
                    off = i * sh + kh * dh
                    for kw in range(p.kw):
                        q = j * sw + kw * dw
                        emit(f"    s{i}_{j}_{g} = fma(a{kh}_{kw}_{g}, vec4<f32>(u{off}_{q // 4}.{'xyzw'[q % 4]}), "
                             f"s{i}_{j}_{g});")
    emit(f"""    rb += p.hp;
    wx += {khw}u;
    let wrap = wx == p.wrow;
    wx = select(wx, 0u, wrap);
    wq += select(0u, 1u, wrap);
  }}""")
    out += store_lines(tile, residual)
    emit("}")
    return "\n".join(out)


def generate_generic(p, tile: RegisterTile, header: str, act: str, residual: bool = False) -> str:
    """The kernel any geometry shares (the parameters' kh ... dw steer it), reading the NCHW input and the
    packed weights [groups, blocks, C_in/groups, KH, KW, 4] from storage buffers; with `residual` the store
    adds `res`, laid out as the output."""
    buffers = storage("x", "wt:ST4", "bias:f32", "y!", *(["res"] if residual else []))
    out = [storage_frame(header, PARAMS, buffers, act, WG),
           f"""  let t = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (t >= p.total) {{ return; }}""",
           split_index("t", [("tni", "p.tiles_n"), ("tri", "p.tiles_r"), ("tmi", "p.tiles_m"), ("g", "p.groups")],
                       "n"),
           *[f"  let {k} = p.{k.lower()};" for k in ("KH", "KW", "SH", "SW", "DH", "DW")],
           *[f"  let {k} = i32(p.{k.lower()});" for k in ("PH", "PW")],
           f"""  let ow0 = tni * {tile.tn}u;
  let oh0 = tri * {tile.tr}u;
  let ih0 = i32(oh0 * SH) - PH;
  let iw0 = i32(ow0 * SW) - PW;
  let wi = i32(p.w);
  let hw = p.h * p.w;
  let xg = (n * p.c_in + g * p.cin_g) * hw;
  let bstride = p.cin_pad * KH * KW;
  let wb = (g * p.bpg + tmi * {tile.tm // 4}u) * bstride;"""]
    out += [f"  var s{i}_{j}_{g} = vec4<f32>(0.0);"
            for i in range(tile.tr) for j in range(tile.tn) for g in range(tile.tm // 4)]
    out += generic_body(p, tile)
    out += store_lines(tile, residual)
    out.append("}")
    return "\n".join(out)


def generic_body(p, tile: RegisterTile) -> list[str]:
    """The channel loop over runtime kernel rows and taps: per tap its weights and one input value per pixel
    (rows past the image skipped, columns masked)."""
    rg, tn, tr = tile.tm // 4, tile.tn, tile.tr
    out = ["""  let hi = i32(p.h);
  let stride = i32(SW);
  for (var ic = 0u; ic < p.cin_g; ic++) {
    let xc = xg + ic * hw;
    let wc = wb + ic * KH * KW;
    for (var kh = 0u; kh < KH; kh++) {
      let wk = wc + kh * KW;"""]
    emit = out.append
    for i in range(tr):
        emit(f"      let ihr{i} = ih0 + i32({i}u * SH + kh * DH);")
        emit(f"      let rok{i} = ihr{i} >= 0 && ihr{i} < hi;")
        emit(f"      let row{i} = xc + select(0u, u32(ihr{i}) * p.w, rok{i});")
    if tr == 1:
        emit("      if (!rok0) { continue; }")
    emit("""      for (var kw = 0u; kw < KW; kw++) {
        let iwk = iw0 + i32(kw * DW);""")
    out += [f"        let a{g} = ld4(wt[wk + {g}u * bstride + kw]);" for g in range(rg)]
    for j in range(tn):
        emit(f"        let c{j} = iwk + {j} * stride;")
        emit(f"        let m{j} = c{j} >= 0 && c{j} < wi;")
        emit(f"        let col{j} = select(0u, u32(c{j}), m{j});")
    for i in range(tr):
        ok = "" if tr == 1 else f" && rok{i}"
        for j in range(tn):
            emit(f"        let v{i}_{j} = select(0.0, f32(x[row{i} + col{j}]), m{j}{ok});")
            out += [f"        s{i}_{j}_{g} = fma(a{g}, vec4<f32>(v{i}_{j}), s{i}_{j}_{g});" for g in range(rg)]
    emit("      }\n    }\n  }")
    return out


def grid(p, tile: RegisterTile, n: int) -> dict:
    tiles_m, tiles_n = ceil_div(p.c_out // p.groups, tile.tm), ceil_div(p.wo, tile.tn)
    tiles_r = ceil_div(p.ho, tile.tr)
    return dict(tiles_m=tiles_m, tiles_n=tiles_n, tiles_r=tiles_r, total=n * p.groups * tiles_m * tiles_r * tiles_n)

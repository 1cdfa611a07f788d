"""`direct` on CPU adapters (gemm_style "registers"): one register tile per invocation, no workgroup memory.

Each invocation computes TM output channels x TN neighbouring output pixels of one row. Per input channel and
kernel row it loads the input row segment its pixels' windows cover once ((TN - 1) * stride + (KW - 1) *
dilation + 1 scalars, zero outside the image) and TM/4 * KW weight vec4s, then does TM/4 * KW * TN vec4 FMAs:
every input value serves up to KW taps and every weight TN pixels, straight from the storage buffers (on
llvmpipe the CPU caches do the staging; see gemm_cpu). Kernel size, stride, dilation and padding are WGSL
constants, so the tap loop unrolls; channel and spatial sizes come from a parameter buffer, so one pipeline per
(kernel geometry, tile) serves every layer that shares it. One invocation loops C_in/groups * (1 + KH) times.

lavapipe compiles a pipeline at its first dispatch (0.3 s for a 4x4 tile, seconds for the large ones), which
small layers (a few MFLOPs, run in milliseconds) would pay again for every new geometry. Those get the generic
kernel: the geometry comes from the parameters too, so one pipeline per (tile, activation, dtype) serves every
small layer; per tap it loads the weights and one input value per pixel (no segment shared between taps: about
2.4x slower than the specialised kernel on ResNet's 3x3 layers). It loops C_in/groups * (1 + KH * (1 + KW))
times.
"""

from __future__ import annotations

from dataclasses import dataclass

from convroute.kernels.base import CPU_LOOP_LIMIT
from convroute.kernels.common import ceil_div, constants, split_index, storage, storage_frame

WG = 8  # one llvmpipe SIMD vector (see gemm_cpu.WG)
PARAMS = ["n", "c_in", "h", "w", "c_out", "ho", "wo", "cin_g", "cout_g", "groups", "bpg", "cin_pad", "tiles_m",
          "tiles_n", "tiles_r", "total", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw"]  # the last: the generic's
SPECIALISE_FLOPS = 20_000_000  # per image: smaller layers take the generic kernel
MAX_FMAS = 256  # vec4 FMAs unrolled per kernel row: bounds compile time on lavapipe


@dataclass(frozen=True)
class RegisterTile:
    tm: int  # output channels per invocation, a multiple of 4
    tn: int  # neighbouring output pixels of a row per invocation
    tr: int = 1  # output rows per invocation

    def __str__(self) -> str:
        return f"{self.tm}x{self.tr}x{self.tn}"


# Few tiles: lavapipe compiles a pipeline at its first dispatch, seconds for the big ones, once per tile and
# kernel geometry (calibration meets dozens of geometries).
TILES = (RegisterTile(8, 16, 2), RegisterTile(4, 8, 2), RegisterTile(8, 16), RegisterTile(8, 8), RegisterTile(4, 4))
MAX_WEIGHTS = 36  # weight vec4s a multi-row tile keeps per input channel (all its taps)


def input_rows(p, tile: RegisterTile) -> list[int]:
    """Offsets of the input rows an invocation reads, from its first window's top row."""
    return sorted({i * p.stride[0] + k * p.dilation[0] for i in range(tile.tr) for k in range(p.kh)})


def unrolled_fmas(p, tile: RegisterTile) -> int:
    """vec4 FMAs in the shader's straight-line code: per kernel row (one row), per input channel (several)."""
    per_row = tile.tm // 4 * tile.tn * p.kw
    return per_row if tile.tr == 1 else per_row * p.kh * tile.tr


def fits(p, tile: RegisterTile) -> bool:
    if tile.tr == 1:
        return unrolled_fmas(p, tile) <= MAX_FMAS
    return unrolled_fmas(p, tile) <= 3 * MAX_FMAS and tile.tm // 4 * p.kh * p.kw <= MAX_WEIGHTS


def tile_cost(p, tile: RegisterTile) -> float:
    """Relative time: per input channel an invocation does tm/4 * KH * KW * tn * tr vec4 FMAs and loads
    tm * KH * KW weight components and `span` input components per input row it reads; on llvmpipe a loaded
    component costs about what a vec4 FMA does. Times the invocations, which pad C_out/groups and the output
    rows and columns to whole tiles."""
    span = (tile.tn - 1) * p.stride[1] + (p.kw - 1) * p.dilation[1] + 1
    step = tile.tm // 4 * p.kh * p.kw * tile.tn * tile.tr + tile.tm * p.kh * p.kw + span * len(input_rows(p, tile))
    return (step * ceil_div(p.c_out // p.groups, tile.tm) * ceil_div(p.wo, tile.tn)
            * ceil_div(p.ho, tile.tr) / tile.tr)


def choose_tile(p) -> RegisterTile:
    """The cheapest tile by tile_cost among those whose unrolled code stays small."""
    return min([t for t in TILES if fits(p, t)] or [RegisterTile(4, 4)],
               key=lambda t: (tile_cost(p, t), -t.tm * t.tn * t.tr))


def loop_trips(p) -> int:
    """The specialised kernel's trips (the fewer: the generic one is used only where its own fit)."""
    return (p.c_in // p.groups) * (1 + p.kh)


def generic_trips(p) -> int:
    return (p.c_in // p.groups) * (1 + p.kh * (1 + p.kw))


def specialised(p) -> bool:
    """Whether `p` gets a pipeline of its own (geometry as constants, taps unrolled): for layers large enough
    that its faster run pays for the compile, or whose channels would loop the generic kernel too often."""
    return p.flops // p.n >= SPECIALISE_FLOPS or generic_trips(p) > CPU_LOOP_LIMIT


def generate(p, tile: RegisterTile, header: str, act: str, special: bool = True, residual: bool = False) -> str:
    """The kernel for `p` (special) or for any geometry (the parameters' kh ... dw steer it); with `residual`
    the store adds `res`, laid out as the output."""
    rg, tn, tr = tile.tm // 4, tile.tn, tile.tr
    geometry = dict(KH=p.kh, KW=p.kw, SH=p.stride[0], SW=p.stride[1], DH=p.dilation[0], DW=p.dilation[1])
    pads = dict(PH=p.padding[0], PW=p.padding[1])
    helpers, lets = act, [f"  let {k} = p.{k.lower()};" for k in geometry]
    lets += [f"  let {k} = i32(p.{k.lower()});" for k in pads]
    if special:
        helpers, lets = act + constants(geometry, pads), []
    buffers = storage("x", "wt:ST4", "bias:f32", "y!", *(["res"] if residual else []))
    out = [storage_frame(header, PARAMS, buffers, helpers, WG),
           f"""  let t = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (t >= p.total) {{ return; }}""",
           split_index("t", [("tni", "p.tiles_n"), ("tri", "p.tiles_r"), ("tmi", "p.tiles_m"), ("g", "p.groups")],
                       "n"), *lets,
           f"""  let ow0 = tni * {tn}u;
  let oh0 = tri * {tr}u;
  let ih0 = i32(oh0 * SH) - PH;
  let iw0 = i32(ow0 * SW) - PW;
  let wi = i32(p.w);
  let hw = p.h * p.w;
  let xg = (n * p.c_in + g * p.cin_g) * hw;
  let bstride = p.cin_pad * KH * KW;
  let wb = (g * p.bpg + tmi * {rg}u) * bstride;"""]
    out += [f"  var s{i}_{j}_{g} = vec4<f32>(0.0);" for i in range(tr) for j in range(tn) for g in range(rg)]
    out += (special_body if special else generic_body)(p, tile)
    emit = out.append
    emit(f"  let oc0 = tmi * {tile.tm}u;")
    emit("  let obase = n * p.c_out + g * p.cout_g;")
    # the tile's biases once (each serves tr * tn stores; channels past C_out/groups are never stored)
    out += [f"  let b{k} = vec4<f32>(" + ", ".join(f"bias[min(g * p.cout_g + oc0 + {4 * k + e}u, p.c_out - 1u)]"
                                                   for e in range(4)) + ");" for k in range(rg)]
    for i in range(tr):
        emit(f"  if (oh0 + {i}u < p.ho) {{")
        for j in range(tn):
            stores = []
            for k in range(rg):
                for e, comp in enumerate("xyzw"):
                    index = f"((obase + oc0 + {4 * k + e}u) * p.ho + oh0 + {i}u) * p.wo + ow0 + {j}u"
                    value = f"s{i}_{j}_{k}.{comp} + b{k}.{comp}" + (f" + f32(res[{index}])" if residual else "")
                    stores.append(f"    if (oc0 + {4 * k + e}u < p.cout_g) {{ y[{index}] = ST(act({value})); }}")
            out += [f"  if (ow0 + {j}u < p.wo) {{", *stores, "  }"]
        emit("  }")
    emit("}")
    return "\n".join(out)


def special_body(p, tile: RegisterTile) -> list[str]:
    """The channel loop with the geometry unrolled: per input row its segment of `span` values is read once and
    serves every tap and pixel that reads it."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    rg, tn, tr = tile.tm // 4, tile.tn, tile.tr
    span = (tn - 1) * sw + (p.kw - 1) * dw + 1
    out = []
    emit = out.append
    for q in range(span):  # the segment's columns: clamped index and in-image mask, fixed per invocation
        emit(f"  let m{q} = iw0 + {q} >= 0 && iw0 + {q} < wi;")
        emit(f"  let col{q} = select(0u, u32(iw0 + {q}), m{q});")
    sums = [(i, j, g) for i in range(tr) for j in range(tn) for g in range(rg)]
    emit("""  for (var ic = 0u; ic < p.cin_g; ic++) {
    let xc = xg + ic * hw;
    let wc = wb + ic * KH * KW;""")
    if tr == 1:  # one output row: a loop over the kernel rows, their weights loaded where used
        emit("""    for (var kh = 0u; kh < KH; kh++) {
      let ih = ih0 + i32(kh * DH);
      if (ih < 0 || ih >= i32(p.h)) { continue; }
      let row = xc + u32(ih) * p.w;
      let wk = wc + kh * KW;""")
        out += [f"      let v{q} = select(0.0, f32(x[row + col{q}]), m{q});" for q in range(span)]
        for kw in range(p.kw):
            out += [f"      let a{kw}_{g} = ld4(wt[wk + {g}u * bstride + {kw}u]);" for g in range(rg)]
            out += [f"      s0_{j}_{g} = fma(a{kw}_{g}, vec4<f32>(v{j * sw + kw * dw}), s0_{j}_{g});"
                    for _, j, g in sums]
        emit("    }")
    else:  # several output rows: every tap's weights once per channel, each input row read once
        out += [f"    let a{kh}_{kw}_{g} = ld4(wt[wc + {g}u * bstride + {kh * p.kw + kw}u]);"
                for kh in range(p.kh) for kw in range(p.kw) for g in range(rg)]
        for off in input_rows(p, tile):
            emit(f"    if (ih0 + {off} >= 0 && ih0 + {off} < i32(p.h)) {{")
            emit(f"      let row = xc + u32(ih0 + {off}) * p.w;")
            out += [f"      let v{q} = select(0.0, f32(x[row + col{q}]), m{q});" for q in range(span)]
            for i in range(tr):
                for kh in range(p.kh):
                    if i * sh + kh * dh != off:
                        continue
                    out += [f"      s{i}_{j}_{g} = fma(a{kh}_{kw}_{g}, vec4<f32>(v{j * sw + kw * dw}), s{i}_{j}_{g});"
                            for kw in range(p.kw) for j in range(tn) for g in range(rg)]
            emit("    }")
    emit("  }")
    return out


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

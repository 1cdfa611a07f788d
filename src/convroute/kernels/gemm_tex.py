"""GEMM for CPU adapters reading textures: gemm_cpu's register tiles with A and B as rgba texels.

On lavapipe a storage-buffer load costs ~6 ns per value and an rgba32float textureLoad ~0.55 ns per value
(direct_cpu's text), so here A (the weights, packed once) and B (a column matrix that a gather writes into a
storage texture each run) are textures: A's texel (k, m4) holds rows 4 * m4 .. +3 at column k, B's texel
(j4, k) columns 4 * j4 .. +3 at row k, each image's columns padded to whole texels. Both have flat rows folded
into the layers of a texture array (direct_cpu.TEX_DIM rows a layer). Each K step of the loop unrolls `u`
rows: all of their texels first, then each sum's u FMAs back to back, so a sum (the tile's do not fit
llvmpipe's registers) is loaded and stored once per u FMAs, not once per FMA.

Out[b] = A x B[b] + bias for every image b in one launch; Out is the conv output (NCHW) in the storage type,
finished by the activation (and a residual). The store loads the tile's biases once (a storage load per stored
value doubled the time of 16@112 -> 96 1x1, K 16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import CPU_LOOP_LIMIT, residual_buffers, storage_params
from convroute.kernels.common import FP32, Precision, ceil_div, storage, storage_frame
from convroute.kernels.direct_cpu import FORMATS, ROW_BITS, TEX_DIM, TEX_LAYERS, TextureLayout, read_texture
from convroute.kernels.gemm_cpu import WG

PARAMS = ["m", "k", "cols", "pp4", "tiles_m", "tiles_n", "total", "bn"]
K_STEP = 8  # K is padded to a multiple of this (every tile's `u` divides it), with zero weights and columns
M_STEP = 32  # rows padded to a multiple of every tile's tm
CACHE_BYTES = 8 << 20  # a CPU's last-level cache, roughly (this box's EPYC: 8 MiB L3)


@dataclass(frozen=True)
class TexTile:
    tm: int  # rows (output channels) per invocation, a multiple of 4
    tn: int  # columns (output pixels) per invocation, a multiple of 4
    u: int  # K rows per loop trip
    per_fma: float = field(default=1.0, compare=False)  # relative time per FMA (measured on lavapipe)
    min_k: int = field(default=0, compare=False)  # shorter K loops do not pay for the tile's sums and stores
    min_macs: int = field(default=0, compare=False)  # per image: smaller products do not pay for its compile

    def __str__(self) -> str:
        return f"{self.tm}x{self.tn}x{self.u}"


# Time per FMA relative to 16x16x8 on lavapipe (128@28 3x3, K 1152, 784 columns: 16x16x8 15.3 ms, 16x28x4 15.4,
# 16x20x8 15.6 with 2 % padding, 32x16x4 15.4, 32x32x2 16.0, 16x12x8 16.8 with 1 %, 16x8x8 19.2, 8x8x8 23.9;
# 512@7, 49 columns: 16x28x4 16.4, 16x20x8 17.6, 16x16x8 18.6, as their padding predicts). On larger layers
# 16x28x4 (fewer loads per FMA) gained: 256@56 261 vs 288 ms, 512@14 119 vs 134 (6 % of it padding), 128@112
# even; so it wins ties. Since the textures are read as storage textures (a third of the load's cost; session 9)
# 32x28x4 is 0.84-0.96x 16x28x4 on VGG-16's im2col layers and 128@28, but loses where K is short (1x1s with
# K 16-64: 1.16-1.27x the best) or the launch has under 12 workgroups (1024@14 -> 256 1x1: 7, 1.39x). lavapipe
# compiles it in ~14 s (16x28x4 ~4 s, 32x28x2 ~11: the time grows with the sums), so only products of 50 M
# multiply-adds per image (a run of ~20 ms or more there) take it.
TILES = (TexTile(32, 28, 4, 0.86, min_k=256, min_macs=50_000_000), TexTile(16, 28, 4, 0.95), TexTile(16, 16, 8),
         TexTile(16, 20, 8), TexTile(16, 12, 8, 1.08), TexTile(16, 8, 8, 1.26), TexTile(8, 8, 8, 1.5),
         TexTile(8, 4, 8, 2.5))
BUSY_WORKGROUPS = 12  # fewer leave lavapipe's threads idle part of the time (gemm_cpu wants 64 invocations too)


def tile_cost(m: int, cols: int, batches: int, tile: TexTile) -> float:
    """Relative time: the FMAs of every invocation (rows and columns padded to whole tiles) times the tile's
    time per FMA, more when the launch has too few workgroups to keep the CPU busy."""
    tiles = batches * ceil_div(m, tile.tm) * ceil_div(cols, tile.tn)
    return tiles * tile.tm * tile.tn * tile.per_fma / min(1.0, ceil_div(tiles, WG) / BUSY_WORKGROUPS)


def choose_tile(m: int, cols: int, batches: int, k: int) -> TexTile:
    """The cheapest tile by tile_cost (the first of equals) among those for a K of `k` and this much work."""
    usable = [t for t in TILES if k >= t.min_k and m * cols * k >= t.min_macs]
    return min(usable, key=lambda t: tile_cost(m, cols, batches, t))


def padded_k(k: int) -> int:
    return ceil_div(k, K_STEP) * K_STEP


def fits(m: int, k: int, texels: int) -> bool:
    """Whether A ([m, k]) and a B of `texels` texels per row fit WebGPU's guaranteed texture limits and the K
    loop lavapipe's loop limit."""
    k_pad = padded_k(k)
    a_rows = ceil_div(m, M_STEP) * M_STEP // 4
    layers = max(TextureLayout.shape(k_pad)[1], TextureLayout.shape(a_rows)[1])
    return k_pad <= TEX_DIM and 0 < texels <= TEX_DIM and layers <= TEX_LAYERS and k_pad // K_STEP <= CPU_LOOP_LIMIT


def column_block(a_bytes: int, b_bytes: int, tiles_n: int) -> int:
    """Column tiles per block of the invocation order (see generate): all of them (neighbouring invocations
    take neighbouring column tiles, sharing A's texels while B streams past) unless B is past the CPU's
    cache and A well inside it, then one (neighbouring row tiles share B's texels, A streams). On lavapipe
    (8 MiB L3): 256@56 3x3 (A 2.4 MB, B 29 MB) 263 -> 230 ms, 128@112 292 -> 240; 512@14 (A 9.4 MB, B 3.6 MB)
    71 -> 77 and 128@28 15.4 -> 16.0 the other way."""
    return 1 if b_bytes > CACHE_BYTES and 2 * a_bytes < CACHE_BYTES else tiles_n


def generate(tile: TexTile, precision: Precision = FP32, act: str = "", residual: bool = False) -> str:
    """The WGSL: act(sum + bias (+ res)) stored as ST (the conv's output, column j of image `batch` at
    (batch * M + m) * cols + j). Per image the invocations run through blocks of p.bn column tiles (the last
    block narrower), each block row tile by row tile, column tiles fastest."""
    rg, cg, u = tile.tm // 4, tile.tn // 4, tile.u
    mask = f"{TEX_DIM - 1}u"
    fmt = FORMATS[precision.dtype]
    buffers = (read_texture(1, "wa", fmt) + "\n" + storage("bias:f32", "y!", first=2) + "\n"
               + read_texture(4, "bt", fmt)
               + (f"\n{storage('res', first=5)}" if residual else ""))
    out = [storage_frame(precision.wgsl(), PARAMS, buffers, act, WG),
           f"""  let g = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;
  if (g >= p.total) {{ return; }}
  let per_image = p.tiles_m * p.tiles_n;
  let batch = g / per_image;
  let gi = g - batch * per_image;
  let block = gi / (p.bn * p.tiles_m);
  let rem = gi - block * p.bn * p.tiles_m;
  let width = min(p.bn, p.tiles_n - block * p.bn);
  let tmi = rem / width;
  let tni = block * p.bn + rem - tmi * width;"""]
    for r in range(rg):
        out.append(f"  let ar{r} = tmi * {rg}u + {r}u;")
    for c in range(cg):  # columns past the image's are never stored: clamp their loads into its texels
        out.append(f"  let bx{c} = batch * p.pp4 + min(tni * {cg}u + {c}u, p.pp4 - 1u);")
    sums = [(j, r) for j in range(tile.tn) for r in range(rg)]
    out += [f"  var s{j}_{r} = vec4<f32>(0.0);" for j, r in sums]
    out.append(f"  for (var k = 0u; k < p.k; k += {u}u) {{")
    for q in range(u):
        out.append(f"    let k{q} = k + {q}u;")
        out += [f"    let a{q}_{r} = textureLoad(wa, vec2<u32>(k{q}, ar{r} & {mask}), ar{r} >> {ROW_BITS}u);"
                for r in range(rg)]
        out += [f"    let b{q}_{c} = textureLoad(bt, vec2<u32>(bx{c}, k{q} & {mask}), k{q} >> {ROW_BITS}u);"
                for c in range(cg)]
    for j, r in sums:
        for q in range(u):
            out.append(f"    s{j}_{r} = fma(a{q}_{r}, vec4<f32>(b{q}_{j // 4}.{'xyzw'[j % 4]}), s{j}_{r});")
    out.append("  }")
    out += store_lines(tile, act, residual)
    out.append("}")
    return "\n".join(out)


def store_lines(tile: TexTile, act: str, residual: bool) -> list[str]:
    """act(sum + bias (+ res)) of rows below p.m and columns below p.cols, stored as ST."""
    rg = tile.tm // 4
    out = [f"  let m0 = tmi * {tile.tm}u;", "  let obase = batch * p.m + m0;"]
    out += [f"  let bv{r} = vec4<f32>(" + ", ".join(f"bias[min(m0 + {4 * r + e}u, p.m - 1u)]" for e in range(4)) + ");"
            for r in range(rg)]
    for j in range(tile.tn):
        out.append(f"  {{ let j = tni * {tile.tn}u + {j}u; if (j < p.cols) {{")
        for r in range(rg):
            for e, comp in enumerate("xyzw"):
                index = f"(obase + {4 * r + e}u) * p.cols + j"
                value = f"s{j}_{r}.{comp} + bv{r}.{comp}" + (f" + f32(res[{index}])" if residual else "")
                out.append(f"    if (m0 + {4 * r + e}u < p.m) {{ y[{index}] = ST(act({value})); }}")
        out.append("  } }")
    return out


class TexGemm:
    """A conv's weights [M, K] packed once into a texture; `dispatch` runs one launch over all images."""

    def __init__(self, gpu: Gpu, weights: np.ndarray, bias: np.ndarray, precision: Precision, act: str,
                 residual: bool = False):
        self.gpu, self.precision, self.act, self.residual = gpu, precision, act, residual
        self.m, k = weights.shape
        self.k_pad = padded_k(k)
        rows = ceil_div(self.m, M_STEP) * M_STEP // 4
        height, layers = TextureLayout.shape(rows)
        a = np.zeros((layers * height * 4, self.k_pad), np.float32)
        a[:self.m, :k] = weights
        texels = a.reshape(layers, height, 4, self.k_pad).transpose(0, 1, 3, 2)
        self.fmt = FORMATS[precision.dtype]
        self.w_tex = gpu.texture_of(np.ascontiguousarray(texels, precision.numpy), self.fmt, "packed weight texels")
        self.b_buf = gpu.upload(np.asarray(bias, np.float32), "bias")

    def columns(self, texels: int, what: str):
        """A writable texture for a B of `texels` texels per row and k_pad rows."""
        height, layers = TextureLayout.shape(self.k_pad)
        return self.gpu.texture_array(texels, height, layers, self.fmt, what)

    def dispatch(self, out, b_tex, batches: int, cols: int, pp4: int, residual=None,
                 tile: TexTile | None = None) -> Dispatch:
        """Out[b][:, :cols] for b < batches, image b's columns from texel b * pp4 of B's rows."""
        res = residual_buffers("a texture GEMM", self.residual, residual)
        tile = tile or choose_tile(self.m, cols, batches, self.k_pad)
        tiles_m, tiles_n = ceil_div(self.m, tile.tm), ceil_div(cols, tile.tn)
        total = batches * tiles_m * tiles_n
        values = dict(m=self.m, k=self.k_pad, cols=cols, pp4=pp4, tiles_m=tiles_m, tiles_n=tiles_n, total=total)
        texel = 4 * self.precision.itemsize
        values["bn"] = column_block(self.w_tex.texture.size[1] * self.w_tex.texture.size[2] * self.k_pad * texel,
                                    b_tex.texture.size[0] * self.k_pad * texel, tiles_n)
        u = storage_params(self.gpu, PARAMS, values, "texture GEMM parameters")
        return self.gpu.dispatch(generate(tile, self.precision, self.act, self.residual),
                                 [u, self.w_tex, self.b_buf, out, b_tex, *res], total, WG)

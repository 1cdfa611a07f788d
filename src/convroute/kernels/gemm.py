"""Register-tiled GEMM shared by `im2col`, `pointwise` and `implicit_gemm`: Out[C_out, cols] = W x B.

Column j of a launch is output pixel `col0 + j` of the batch: image (col0 + j) // P, pixel (col0 + j) % P,
so the result lands in NCHW directly. The WGSL is generated per tile shape by gemm_tiles.py; the tile is
chosen per launch, among those whose workgroups fit the device's limits, so that the device gets enough
workgroups, and when even the smallest tile leaves it idle (few channels x few pixels, deep K: late ResNet
layers at batch 1) K is split across workgroups and a reduction dispatch adds the partial sums (split 0
carries the bias) and applies the activation. On GPUs a small split product takes K slices within its
workgroups instead (slice_plan): one launch, the slices' sums meeting in workgroup memory. Without an
activation, and with f32 atomics, the splits add into the output zeroed just before (Gemm.adds_splits).

The B operand is a template: a caller supplies its bindings (from binding 4 on), per-invocation setup (run
once, for the four columns starting at `bcol` that this invocation loads) and a vec4 load expression for
row `k`. Weights are prepacked K-major, [K_pad, M_pad] with zeros past C_out and K, so weight loads need no
bounds checks; B rows past K must read as zero (0 * NaN would poison the sum). With a float16 Precision the
weights and the output are f16 (ST); split-K partial sums and BatchedGemm's sums stay f32.
"""

from __future__ import annotations

import math

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import Scratch, residual_buffers
from convroute.kernels.common import FP32, Epilogue, Precision, ceil_div, pack, storage, sum_splits, uniform_block
from convroute.kernels.flat import flat_shader, launch, zeros
from convroute.kernels.gemm_tiles import NARROW, SIZED, TILES, Tile, fitting, generate
from convroute.settings import env_flag

M_ALIGN = max(t.bm for t in TILES)
K_ALIGN = max(t.bk for t in TILES)
TILE = max(t.bn for t in TILES)  # column chunks are whole multiples of this
GEMM_PARAMS = ["m", "k", "k_pad", "m4", "tiles_m", "tiles", "cols", "col0", "p", "splits", "kt_split"]
MIN_KT_PER_SPLIT = 4
SMALL_MACS, LARGE_MACS = 1 << 24, 1 << 27  # sized_plan's bounds on M x K x columns
SPREAD = 1.5  # sized_plan splits K until a launch has this many times the device's busy workgroups
SLICE_MACS, SLICE_STEPS = 1 << 25, 4  # slice_plan: products it slices, K steps per slice
ADD_SPLITS_MAX = 1 << 20  # Gemm.adds_splits: most atomic adds (splits x outputs) of one launch

OUT_INDEX = "(gj / P.p) * P.m * P.p + gj % P.p + m * P.p"  # column gj's pixel of output channel m, NCHW
STORE_OUTPUT = f"let gj = P.col0 + j; y[{OUT_INDEX}] = ST(act(v + bias[m]));"
STORE_PARTIAL = "y[(split * P.m + m) * P.cols + j] = v + select(0.0, bias[m], split == 0u);"  # bias once
# The same with four neighbouring columns at once (gemm_tiles `quads`): pixels, col0 and cols multiples of 4.
STORE_OUTPUT4 = ("let gj = P.col0 + j; let o = v + bias[m]; "
                 f"y[({OUT_INDEX}) / 4u] = "
                 "st4(vec4<f32>(act(o.x), act(o.y), act(o.z), act(o.w)));")
STORE_PARTIAL4 = "y[((split * P.m + m) * P.cols + j) / 4u] = v + select(0.0, bias[m], split == 0u);"
# With a residual (`res`, laid out as y): y = act(sum + bias + res) at the same index.
STORE_RESIDUAL = (f"let gj = P.col0 + j; let ro = {OUT_INDEX}; "
                  "y[ro] = ST(act(v + bias[m] + f32(res[ro])));")
# Splits adding into a zeroed f32 output (Gemm.adds_splits): split 0 brings the bias (and the residual).
STORE_ADD = f"let gj = P.col0 + j; atomicAdd(&y[{OUT_INDEX}], v + select(0.0, bias[m], split == 0u));"
STORE_ADD_RESIDUAL = (f"let gj = P.col0 + j; let ro = {OUT_INDEX}; "
                      "atomicAdd(&y[ro], v + select(0.0, bias[m] + f32(res[ro]), split == 0u));")
STORE_RESIDUAL4 = (f"let gj = P.col0 + j; let ro = ({OUT_INDEX}) / 4u; let rv = v + bias[m] + ld4(res[ro]); "
                   "y[ro] = st4(vec4<f32>(act(rv.x), act(rv.y), act(rv.z), act(rv.w)));")

REDUCE_PARAMS = ["m", "cols", "col0", "p", "splits", "total"]
REDUCE_SUM = """
  let m = t / P.cols;
  let j = t % P.cols;
  var v = 0.0;""" + sum_splits("v", "m * P.cols + j", "P.m * P.cols") + """
  let gj = P.col0 + j;"""
REDUCE = REDUCE_SUM + f"\n  y[{OUT_INDEX}] = ST(act(v));"
REDUCE_RESIDUAL = REDUCE_SUM + f"\n  let ro = {OUT_INDEX};\n  y[ro] = ST(act(v + f32(res[ro])));"
# REDUCE over quads of columns: `total` counts quads, cols is a multiple of 4.
REDUCE4_SUM = """
  let c4 = P.cols / 4u;
  let m = t / c4;
  let j4 = t % c4;
  var v = vec4<f32>(0.0);""" + sum_splits("v", "m * c4 + j4", "P.m * c4") + """
  let gj = P.col0 + j4 * 4u;"""
REDUCE4 = REDUCE4_SUM + f"\n  y[({OUT_INDEX}) / 4u] = st4(vec4<f32>(act(v.x), act(v.y), act(v.z), act(v.w)));"
REDUCE4_RESIDUAL = REDUCE4_SUM + f"""
  let ro = ({OUT_INDEX}) / 4u;
  let rv = v + ld4(res[ro]);
  y[ro] = st4(vec4<f32>(act(rv.x), act(rv.y), act(rv.z), act(rv.w)));"""
REDUCE_BUFFERS = (storage("part:f32", "y!"), storage("part:vec4<f32>", "y!:vec4<ST>"))
REDUCE_RESIDUAL_BUFFERS = (storage("part:f32", "y!", "res"), storage("part:vec4<f32>", "y!:vec4<ST>", "res:ST4"))


def padded_k(k: int) -> int:
    """Rows of the packed weight matrix (and of B operands laid out for it): K rounded up to whole K tiles."""
    return ceil_div(k, K_ALIGN) * K_ALIGN


def pack_weights(weight_oc_first: np.ndarray) -> tuple[np.ndarray, int, int]:
    """[C_out, ...] -> K-major [K_pad, M_pad] float32 with zero padding; returns (matrix, K, K_pad)."""
    m = weight_oc_first.shape[0]
    a = weight_oc_first.reshape(m, -1)
    k = a.shape[1]
    k_pad, m_pad = padded_k(k), ceil_div(m, M_ALIGN) * M_ALIGN
    packed = np.zeros((k_pad, m_pad), np.float32)
    packed[:k, :m] = a.T
    return packed, k, k_pad


def choose_tile(m: int, cols: int, k_pad: int, busy: int, batches: int = 1,
                tiles: tuple[Tile, ...] = TILES) -> tuple[Tile, int]:
    """Tile rows: 64 when a 128-row tile would leave half of its last rows empty (C_out = 64, 192, ...);
    then the widest tile giving >= `busy` workgroups (over all `batches`); failing that the last (smallest)
    tile, with K split."""
    small = tiles[-1]
    tall = m % 128 == 0 or m % 128 > 64
    for tile in tiles:
        if (tile.bm == 128) != tall and tile is not small:
            continue
        if ceil_div(m, tile.bm) * ceil_div(cols, tile.bn) * batches >= busy:
            return tile, 1
    groups = ceil_div(m, small.bm) * ceil_div(cols, small.bn) * batches
    ktiles = k_pad // small.bk
    splits = max(1, min(ceil_div(busy, groups), ktiles // MIN_KT_PER_SPLIT))
    return small, ceil_div(ktiles, ceil_div(ktiles, splits))


def sized_plan(m: int, cols: int, k_pad: int, busy: int, profile=None,
               precision: Precision = FP32) -> tuple[Tile, int] | None:
    """GPUs' tile and K splits for launches wider than the NARROW tiles: the tile by the size of the product
    (gemm_tiles.SIZED: 32x32 for at most 48 rows or under SMALL_MACS multiply-adds, 64x64 under LARGE_MACS,
    else an 8x8-per-invocation tile of 128 or 64 rows), K split until SPREAD x `busy` workgroups. Measured on
    the H100 over the suites' GEMM layers at batch 1 and 8 (NOTES, session 5): the first-busy rule's plans
    took 1.30x / 1.51x the best plan's time in total (too few workgroups of 256 invocations); these 1.14x /
    1.22x with SPREAD 2 and about 1.10x with 1.5.
    None when the launch is narrow or the tile does not fit `profile` (choose_tile then decides)."""
    if cols <= max(NARROW):
        return None
    macs = m * k_pad * cols
    if m <= 48 or macs < SMALL_MACS:
        tile = SIZED["small"]
    elif macs < LARGE_MACS:
        tile = SIZED["middle"]
    else:
        tile = SIZED["large"] if m % 128 == 0 or m % 128 > 64 else SIZED["large64"]
    if profile is not None and tile.unfit(profile, precision) is not None:
        return None
    groups = ceil_div(m, tile.bm) * ceil_div(cols, tile.bn)
    ktiles = k_pad // tile.bk
    splits = max(1, min(ceil_div(math.ceil(SPREAD * busy), groups), ktiles // MIN_KT_PER_SPLIT))
    return tile, ceil_div(ktiles, ceil_div(ktiles, splits))


def slice_plan(tile: Tile, splits: int, m: int, cols: int, k_pad: int, profile,
               precision: Precision = FP32) -> tuple[Tile, int]:
    """GPUs' small products split across workgroups (under SLICE_MACS multiply-adds) become one launch of
    32x32 tiles whose workgroups hold K slices (gemm_tiles) of at least SLICE_STEPS K steps each, as many as
    fit the device's workgroup limits: no partial sums in memory, no second dispatch. Measured on the H100
    (NOTES, session 10) over the suites' split GEMM layers, slices won where K is shallow (2-4 steps a slice)
    and lost on large products, where fewer workgroups do the work. Where the slices for 4 steps did not fit
    (deep K), the plan stayed split until session 30: slicing those too took 1-24 dispatches off six of seven
    host-bound models, the GPU pass moving -21 % to +3 % in fp32 and +1 % to +10 % in fp16 (NOTES), each loss
    less than the removed dispatches' host encoding (router.refine.DISPATCH_MS)."""
    if splits == 1 or m * k_pad * cols >= SLICE_MACS:
        return tile, splits
    small = SIZED["small"]
    if k_pad % small.bk:
        return tile, splits
    for ks in range(ceil_div(k_pad // small.bk, SLICE_STEPS), 1, -1):
        sliced = small.sliced(ks)
        if sliced.unfit(profile, precision) is None:
            return sliced, 1
    return tile, splits


def tiles_for(cols: int, profile=None, precision: Precision = FP32) -> tuple[Tile, ...]:
    """Candidate tiles for a launch of `cols` columns: narrow ones where a 64-column tile would be mostly
    padding (late layers at batch 1, linear layers, Winograd on small maps); with a DeviceProfile, only those
    whose workgroups fit its limits (gemm_tiles.fitting)."""
    narrow = [w for w in sorted(NARROW) if cols <= w]
    tiles = NARROW[narrow[0]] if narrow else TILES
    return tiles if profile is None else fitting(tiles, profile, precision)


def launch_plan(profile, m: int, cols: int, k_pad: int, precision: Precision = FP32,
                own_store: bool = False) -> tuple[Tile, int]:
    """Tile and K splits of one launch of `cols` columns (Gemm.plan), a pure function of the device profile (the
    cost model reads it without a GPU): on GPUs sized_plan, else choose_tile, then slice_plan. `own_store` (an
    output not in NCHW order) never splits K; fewer splits while their partial sums would exceed one binding."""
    sized = profile.gemm_style == "workgroup" and sized_plan(m, cols, k_pad, profile.busy_workgroups, profile,
                                                              precision)
    tile, splits = sized or choose_tile(m, cols, k_pad, profile.busy_workgroups,
                                        tiles=tiles_for(cols, profile, precision))
    if own_store:
        return tile, 1
    if profile.gemm_style == "workgroup":
        tile, splits = slice_plan(tile, splits, m, cols, k_pad, profile, precision)
    while splits > 1 and 4 * splits * m * cols > profile.max_binding_bytes:
        splits -= 1
    return tile, splits


class Gemm:
    """Prepacked weights + B template; `dispatches` builds the launches for one output and B binding set."""

    def __init__(self, gpu: Gpu, weight_oc_first: np.ndarray, bias: np.ndarray, epilogue: Epilogue | str,
                 b_decl: str, b_setup: str, b_load: str, extra_params: list[str], precision: Precision = FP32,
                 residual: bool = False, b_bindings: int = 1, store: str | None = None):
        """`epilogue`: an Epilogue, or the WGSL of `fn act` for activations Epilogue lacks (linear's gelu).
        The B template sees the aliases ST and AT (see gemm_tiles) and takes `b_bindings` bindings from 4 on.
        `residual`: the output store adds a tensor laid out as the output (bound after the B buffers).
        `store`: WGSL in place of STORE_OUTPUT, for outputs not in NCHW order (transposed's depth-to-space);
        such a Gemm never splits K nor stores quads, whose stores assume NCHW."""
        if store is not None and residual:
            raise ValueError("a GEMM with its own output store cannot add a residual")
        self.gpu, self.precision, self.residual, self.store = gpu, precision, residual, store
        self.res_binding = 4 + b_bindings
        self.scratch = Scratch(gpu)
        act = epilogue if isinstance(epilogue, str) else epilogue.wgsl()
        a, self.k, self.k_pad = pack_weights(weight_oc_first)
        self.m = weight_oc_first.shape[0]
        self.m4 = a.shape[1] // 4
        self.w_buf = gpu.upload(a, "packed weight matrix", precision.numpy)
        self.b_buf = gpu.upload(bias, "bias")
        self.params = GEMM_PARAMS + extra_params
        self.template = dict(b_decl=b_decl, b_setup=b_setup, b_load=b_load, params=uniform_block(self.params),
                             act=act, precision=precision)
        self.linear = act == Epilogue().wgsl()
        self.reduce_wg = min(64, gpu.profile.max_invocations)
        reduces = zip((REDUCE_RESIDUAL, REDUCE4_RESIDUAL), REDUCE_RESIDUAL_BUFFERS, strict=True) if residual else \
            zip((REDUCE, REDUCE4), REDUCE_BUFFERS, strict=True)
        self.reduce_sources = [flat_shader(REDUCE_PARAMS, buffers, body, act, precision, self.reduce_wg)
                               for body, buffers in reduces]

    def source(self, tile: Tile, splits: int, quads: bool = False, adds: bool = False) -> str:
        if adds:
            return generate(tile, store=STORE_ADD_RESIDUAL if self.residual else STORE_ADD, out_type="atomic<f32>",
                            **self.residual_template(quads=False))
        if splits > 1:
            return generate(tile, store=STORE_PARTIAL4 if quads else STORE_PARTIAL, out_type="f32", quads=quads,
                            **self.template)
        if self.store is not None:
            return generate(tile, store=self.store, **self.template)
        if not self.residual:
            return generate(tile, store=STORE_OUTPUT4 if quads else STORE_OUTPUT, quads=quads, **self.template)
        return generate(tile, store=STORE_RESIDUAL4 if quads else STORE_RESIDUAL, quads=quads,
                        **self.residual_template(quads))

    def residual_template(self, quads: bool) -> dict:
        """The template with the residual's binding declared (as quads or single values), for a Gemm that has
        one; the template itself otherwise."""
        if not self.residual:
            return self.template
        return self.template | dict(b_decl=self.template["b_decl"] + "\n" + storage(
            "res:ST4" if quads else "res", first=self.res_binding))

    def plan(self, cols: int) -> tuple[Tile, int]:
        return launch_plan(self.gpu.profile, self.m, cols, self.k_pad, self.precision, self.store is not None)

    def adds_splits(self, splits: int, cols: int, col0: int, pixels: int) -> bool:
        """K splits may add their sums straight into the output, zeroed by a dispatch just before, instead of
        storing them for a reduce dispatch: f32 atomics on the device, float32 storage, no activation (the sum
        of the splits must be the output), NCHW stores over whole images (the zeroed span is then one range),
        and at most ADD_SPLITS_MAX atomic adds. On the H100 (NOTES, session 11) that took MobileNetV2's ten
        split projections from 514 to 481 us of GPU time; ResNet-50's downsample convs, 1.2-1.6 M adds each,
        ran 8 us slower each than partial sums and a reduce. Sums then add in a different order from run to
        run (last-bit differences). CONVROUTE_ADD_SPLITS=0 keeps the reduce."""
        return (self.gpu.profile.float_atomics and self.linear and self.store is None
                and self.precision.dtype == "float32" and col0 % pixels == 0 and cols % pixels == 0
                and splits * self.m * cols <= ADD_SPLITS_MAX and env_flag("CONVROUTE_ADD_SPLITS", True))

    def dispatches(self, y, b_buffers: list, cols: int, col0: int, pixels: int, extra: dict,
                   residual=None) -> list[Dispatch]:
        """`residual`: the buffer added in the store, for a Gemm built with residual=True."""
        res = residual_buffers("a GEMM", self.residual, residual)
        tile, splits = self.plan(cols)
        if self.k_pad % tile.bk:
            raise ValueError(f"GEMM tile {tile}: K steps of {tile.bk} do not divide the packed K ({self.k_pad})")
        ktiles = self.k_pad // tile.bk
        kt_split = ceil_div(ktiles, splits)
        tiles_m = ceil_div(self.m, tile.bm)
        tiles = tiles_m * ceil_div(cols, tile.bn)
        values = dict(m=self.m, k=self.k, k_pad=self.k_pad, m4=self.m4, tiles_m=tiles_m, tiles=tiles, cols=cols,
                      col0=col0, p=pixels, splits=splits, kt_split=kt_split) | extra
        u = self.gpu.uniform(pack(self.params, values))
        threads = tiles * splits * tile.threads
        quads = pixels % 4 == 0 and col0 % 4 == 0 and cols % 4 == 0
        if splits == 1:
            return [self.gpu.dispatch(self.source(tile, 1, quads),
                                      [u, self.w_buf, self.b_buf, y, *b_buffers, *res], threads, tile.threads)]
        if self.adds_splits(splits, cols, col0, pixels):
            return [zeros(self.gpu, y, col0 * self.m, cols * self.m),
                    self.gpu.dispatch(self.source(tile, splits, adds=True),
                                      [u, self.w_buf, self.b_buf, y, *b_buffers, *res], threads, tile.threads)]
        part = self.scratch.get(4 * splits * self.m * cols, "split-K partial sums")
        reduce = dict(m=self.m, cols=cols, col0=col0, p=pixels, splits=splits,
                      total=self.m * cols // (4 if quads else 1))
        return [self.gpu.dispatch(self.source(tile, splits, quads), [u, self.w_buf, self.b_buf, part, *b_buffers],
                                  threads, tile.threads),
                launch(self.gpu, self.reduce_sources[quads], REDUCE_PARAMS, reduce, [part, y, *res], self.reduce_wg)]


BATCH_PARAMS = ["batches", "a_stride"]
STORE_BATCHED = ("y[((split * P.batches + batch) * P.m + m) * P.cols + j] = "
                 "v + select(0.0, bias[batch * P.m + m], split == 0u);")


class BatchedGemm:
    """Out[b] = A[b] x B[b] + bias[b] for every b < batches in one launch (Winograd's transform positions).

    The batch index is folded into the flat workgroup index above split and tile (gemm_tiles BATCHED_LOCATE),
    so small per-batch GEMMs still fill the device. Out is a plain [splits, batches, M, cols] buffer of sums:
    no activation, no NCHW scatter; with K split, each split stores its partial sums (split 0 with the bias)
    and the consumer adds the splits. The B template sees `batch` besides `bcol`.
    """

    def __init__(self, gpu: Gpu, weights: np.ndarray, bias: np.ndarray | None, b_decl: str, b_setup: str,
                 b_load: str, extra_params: list[str], precision: Precision = FP32):
        """weights: [batches, M, K] (stored as `precision`'s dtype); bias: [batches, M] or None."""
        self.gpu, self.precision = gpu, precision
        self.batches, self.m = weights.shape[:2]
        packed = [pack_weights(w) for w in weights]
        a = np.stack([mat for mat, _, _ in packed])
        _, self.k, self.k_pad = packed[0]
        self.m4 = a.shape[2] // 4
        self.a_stride = a.shape[1] * self.m4
        self.w_buf = gpu.upload(a, "packed weight matrices", precision.numpy)
        bias = np.zeros((self.batches, self.m), np.float32) if bias is None else bias
        self.b_buf = gpu.upload(np.asarray(bias, np.float32).reshape(self.batches, self.m), "bias")
        self.params = GEMM_PARAMS + BATCH_PARAMS + extra_params
        self.template = dict(b_decl=b_decl, b_setup=b_setup, b_load=b_load, params=uniform_block(self.params),
                             act="", store=STORE_BATCHED, batched=True, precision=precision, out_type="f32")

    def plan(self, cols: int, max_out_bytes: int) -> tuple[Tile, int]:
        """Tile and K splits for `cols` columns; fewer splits while the output would exceed max_out_bytes."""
        tile, splits = choose_tile(self.m, cols, self.k_pad, self.gpu.profile.busy_workgroups, self.batches,
                                   tiles_for(cols, self.gpu.profile, self.precision))
        while splits > 1 and self.out_bytes(cols, splits) > max_out_bytes:
            splits -= 1
        return tile, splits

    def out_bytes(self, cols: int, splits: int) -> int:
        return 4 * splits * self.batches * self.m * cols

    def dispatch(self, out, b_buffers: list, cols: int, plan: tuple[Tile, int], extra: dict) -> Dispatch:
        tile, splits = plan
        ktiles = self.k_pad // tile.bk
        tiles_m = ceil_div(self.m, tile.bm)
        tiles = tiles_m * ceil_div(cols, tile.bn)
        values = dict(m=self.m, k=self.k, k_pad=self.k_pad, m4=self.m4, tiles_m=tiles_m, tiles=tiles, cols=cols,
                      col0=0, p=1, splits=splits, kt_split=ceil_div(ktiles, splits), batches=self.batches,
                      a_stride=self.a_stride) | extra
        u = self.gpu.uniform(pack(self.params, values))
        source = generate(tile, **self.template)
        return self.gpu.dispatch(source, [u, self.w_buf, self.b_buf, out, *b_buffers],
                                 self.batches * tiles * splits * tile.threads, tile.threads)

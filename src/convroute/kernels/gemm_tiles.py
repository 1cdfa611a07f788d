"""WGSL generator for the register-tiled GEMM: Out[M, cols] = A[M, K] x B[K, cols], per tile shape.

A workgroup of (bm/tm) x (bn/tn) invocations computes a bm x bn tile, each invocation tm x tn outputs held in
named vec4 registers (the inner loop is unrolled in the generated source, so nothing spills to an array).
K advances bk at a time through double-buffered workgroup tiles: the next tile's global loads are issued
before the current tile is multiplied. An invocation's tm rows are tm/4 groups of four spaced bm/(tm/4)
apart, and the same for columns, so neighbouring invocations read neighbouring vec4s of workgroup memory.

A is prepacked K-major ([K_pad, M_pad], zero padded) so its loads need no guard. The B operand is a
template (see gemm.py): vec4s of four columns starting at `bcol` (the same columns for all of an
invocation's loads), row `k`; one per invocation per K step, or several when bk * bn / 4 is a multiple of
the invocation count (deep K tiles: fewer K steps, each waiting once for memory, for small layers).
With split-K (splits > 1), workgroup g works on K steps [s * kt_split, (s + 1) * kt_split) of its tile and
stores raw partial sums; a reduction dispatch adds the splits, the bias and the activation. K slices
(Tile.ks) split a workgroup's K steps among groups of its invocations instead (see generate).
Precision: A and the output are stored as ST (f32 or f16), the workgroup tiles and the sums are AT; the B
load may give any vec4 (it is converted to AT), and `v` in the store is f32 whatever AT is. With f16 sums
(AT = f16) each K tile is summed in f16 from zero and then added to f32 totals: bk products per f16 sum
keep the error near fp32-accumulation's on deep layers, for one f32 add per bk f16 FMAs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from convroute.kernels.common import FP32, Precision


@dataclass(frozen=True)
class Tile:
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    ks: int = 1  # K slices: groups of `lanes` invocations, each summing its own share of the K steps

    @property
    def lanes(self) -> int:
        """Invocations of one K slice (one per tm x tn register tile)."""
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def threads(self) -> int:
        return self.lanes * self.ks

    def sliced(self, ks: int) -> Tile:
        return replace(self, ks=ks)

    @property
    def a_loads(self) -> int:
        """vec4 loads of one A tile."""
        return self.bm * self.bk // 4

    def workgroup_bytes(self, precision: Precision = FP32) -> int:
        """Workgroup memory of the double-buffered A and B tiles (vec4<AT> each) of every K slice, and of the
        f32 sums that slices after the first hand to the first."""
        vec4 = 4 * (2 if precision.accumulate == "float16" else 4)
        tiles = 2 * (self.bm // 4 * self.bk) * vec4 + 2 * (self.bn // 4 * self.bk) * vec4
        return self.ks * tiles + (self.ks - 1) * self.bm * self.bn * 4

    def unfit(self, profile, precision: Precision = FP32) -> str | None:
        """None when this tile's workgroup fits `profile`'s limits, else why not."""
        return profile.workgroup_problem((self.threads, 1, 1), self.workgroup_bytes(precision))

    @property
    def b_loads(self) -> int:
        """vec4 loads of one B tile."""
        return self.bk * self.bn // 4

    def check(self) -> None:
        if self.b_loads % self.lanes or self.lanes % (self.bn // 4):
            raise ValueError(f"{self}: each invocation loads whole B vec4s of one column group: bk*bn/4 must be "
                             f"a multiple of the invocation count, and that a multiple of bn/4")
        if self.a_loads % self.lanes and self.lanes % self.a_loads:
            raise ValueError(f"{self}: A tile loads must divide or be divided by the invocation count")
        if self.tm % 4 or self.tn % 4:
            raise ValueError(f"{self}: tm and tn must be multiples of 4")

    def __str__(self) -> str:
        slices = f" k{self.ks}" if self.ks > 1 else ""
        return f"{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}{slices}"


TILES = (Tile(128, 128, 8, 8, 8), Tile(64, 128, 8, 4, 8), Tile(128, 64, 16, 8, 4), Tile(64, 64, 16, 4, 4))
# For GEMMs with few columns (Winograd tiles of a small layer), by column count; last one the split-K fallback.
NARROW = {8: (Tile(64, 8, 16, 4, 4),),
          16: (Tile(128, 16, 16, 8, 4), Tile(64, 16, 16, 4, 4)),
          32: (Tile(128, 32, 16, 8, 4), Tile(64, 32, 16, 4, 4)),
          64: (Tile(128, 64, 16, 8, 4), Tile(64, 64, 16, 4, 4))}
# GPUs' tiles by the size of the product (gemm.sized_plan): few rows or little work, middling work, and
# large work with 128 or 64 rows per tile.
SIZED = {"small": Tile(32, 32, 8, 4, 4), "middle": Tile(64, 64, 16, 4, 4), "large": Tile(128, 64, 8, 8, 8),
         "large64": Tile(64, 64, 8, 8, 4)}
# For devices where none of a launch's candidates fits (below WebGPU's 16 KiB, e.g. wgpu's GLES 16352 bytes).
FALLBACK = (Tile(32, 32, 8, 4, 4), Tile(16, 16, 4, 4, 4))


def fitting(tiles: tuple[Tile, ...], profile, precision: Precision = FP32) -> tuple[Tile, ...]:
    """The tiles among `tiles` whose workgroups fit `profile` (a DeviceProfile), in order; when none does, the
    FALLBACK tiles that fit; ValueError when not even those fit."""
    fit = tuple(t for t in tiles if t.unfit(profile, precision) is None)
    fit = fit or tuple(t for t in FALLBACK if t.unfit(profile, precision) is None)
    if not fit:
        raise ValueError(f"no GEMM tile fits {profile.name or profile.family}: the smallest, {FALLBACK[-1]}, "
                         f"{FALLBACK[-1].unfit(profile, precision)}")
    return fit

LOCATE = """  if (g >= P.tiles * P.splits) { return; }
  let split = g / P.tiles;
  let tile_mn = g % P.tiles;"""
BATCHED_LOCATE = """  if (g >= P.tiles * P.splits * P.batches) { return; }
  let batch = g / (P.tiles * P.splits);
  let split = (g / P.tiles) % P.splits;
  let tile_mn = g % P.tiles;
  let abase = batch * P.a_stride;"""


def generate(tile: Tile, *, b_decl: str, b_setup: str, b_load: str, params: str, act: str, store: str,
             batched: bool = False, precision: Precision = FP32, out_type: str = "ST", quads: bool = False) -> str:
    """The WGSL source. `store` is WGSL run per output (m, j) with `v` the sum (see gemm.STORE_*).

    `quads`: the four columns j..j+3 an invocation holds per row are stored at once (`v` a vec4<f32>, j a
    multiple of 4, `y` an array of quads: vec4<ST> or vec4<f32>); the caller guarantees they are contiguous in `y`.

    `batched`: P.batches independent GEMMs in one launch (gemm.BatchedGemm): the batch index is the outermost
    part of the flat workgroup index, A of batch b starts at b * P.a_stride vec4s, and `batch` is in scope
    for the B template and the store. `out_type`: the element type of `y` (ST, or f32 for raw sums).

    K slices (tile.ks > 1): the workgroup is ks groups of `lanes` invocations; slice s multiplies its own
    share of the workgroup's K steps through its own A and B tiles, then slices 1.. hand their sums to slice 0
    through workgroup memory and slice 0 stores. The loop runs the same trip count in every slice (barriers
    stay in uniform control flow); a slice past its share skips loads and products.
    """
    tile.check()
    tx_n, ty_n = tile.bn // tile.tn, tile.bm // tile.tm
    rg, cg = tile.tm // 4, tile.tn // 4
    a_rows4, b_cols4 = tile.bm // 4, tile.bn // 4
    lanes, ks, accs = tile.lanes, tile.ks, rg * 4 * cg
    if quads:
        out_type = f"vec4<{out_type}>"
    locate = BATCHED_LOCATE if batched else LOCATE
    a_base = "abase + " if batched else ""
    slices = ks > 1
    hand_over = f"var<workgroup> Red: array<vec4<f32>, {(ks - 1) * lanes * accs}>;\n" if slices else ""
    lane = f"  let slice = lix / {lanes}u;\n  let lid = lix % {lanes}u;" if slices else "  let lid = lix;"
    out = [f"""{precision.wgsl()}
{params}
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> wa: array<ST4>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<{out_type}>;
{b_decl}
var<workgroup> As: array<array<vec4<AT>, {a_rows4 * tile.bk}>, {2 * ks}>;
var<workgroup> Bs: array<array<vec4<AT>, {b_cols4 * tile.bk}>, {2 * ks}>;
{hand_over}{act}
@compute @workgroup_size({tile.threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lix: u32) {{
  let g = wid.x + wid.y * nwg.x;
{locate}
{lane}
  let tmi = tile_mn % P.tiles_m;
  let tni = tile_mn / P.tiles_m;
  let tx = lid % {tx_n}u;
  let ty = lid / {tx_n}u;
  let b_row = lid / {b_cols4}u;
  let bcol = tni * {tile.bn}u + (lid % {b_cols4}u) * 4u;
  {b_setup}
  let kt0 = split * P.kt_split;
  let kt1 = min(kt0 + P.kt_split, P.k_pad / {tile.bk}u);"""]
    emit = out.append
    if slices:  # this slice's K steps [s0, s1); `per` is the same in every slice
        emit(f"  let per = (select(0u, kt1 - kt0, kt1 > kt0) + {ks - 1}u) / {ks}u;")
        emit("  let s0 = kt0 + slice * per;")
        emit("  let s1 = min(s0 + per, kt1);")
    first, last = ("s0", "s1") if slices else ("kt0", "kt1")

    def buf(index: str) -> str:
        return f"slice * 2u + {index}" if slices else index

    a_per = max(tile.a_loads // lanes, 1)
    a_guard = tile.a_loads < lanes
    for i in range(a_per):
        emit(f"  var ra{i}: vec4<AT>;")
    b_per, b_rows = tile.b_loads // lanes, lanes // b_cols4
    emit("  var rb: vec4<AT>;")
    for i in range(1, b_per):
        emit(f"  var rb{i}: vec4<AT>;")
    blocked = precision.accumulate == "float16"
    total = "sum" if blocked else "acc"
    for i in range(accs):
        emit(f"  var acc{i}: vec4<AT>;")
        if blocked:
            emit(f"  var sum{i}: vec4<f32>;")

    def load(kt: str) -> None:
        for i in range(a_per):
            e = f"lid + {i * lanes}u" if i else "lid"
            guard = f"if (lid < {tile.a_loads}u) " if a_guard else ""
            emit(f"    {guard}{{ let e = {e}; ra{i} = vec4<AT>(ld4(wa[{a_base}({kt} * {tile.bk}u + e / {a_rows4}u) "
                 f"* P.m4 + tmi * {a_rows4}u + e % {a_rows4}u])); }}")
        emit(f"    {{ let k = {kt} * {tile.bk}u + b_row; rb = vec4<AT>({b_load}); }}")
        for i in range(1, b_per):
            emit(f"    {{ let k = {kt} * {tile.bk}u + b_row + {i * b_rows}u; rb{i} = vec4<AT>({b_load}); }}")

    def stash(index: str) -> None:
        b = buf(index)
        for i in range(a_per):
            e = f"lid + {i * lanes}u" if i else "lid"
            guard = f"if (lid < {tile.a_loads}u) " if a_guard else ""
            emit(f"    {guard}{{ As[{b}][{e}] = ra{i}; }}")
        emit(f"    Bs[{b}][lid] = rb;")
        for i in range(1, b_per):
            emit(f"    Bs[{b}][lid + {i * lanes}u] = rb{i};")

    emit(f"  if ({first} < {last}) {{")
    load(first)
    stash("0u")
    emit("  }")
    emit("  workgroupBarrier();")
    if slices:
        emit("  for (var i = 0u; i < per; i++) {")
        emit("    let kt = s0 + i;")
        emit("    let cur = i % 2u;")
    else:
        emit("  for (var kt = kt0; kt < kt1; kt++) {")
        emit("    let cur = (kt - kt0) % 2u;")
    emit(f"    let more = kt + 1u < {last};")
    emit("    if (more) {")
    load("(kt + 1u)")
    emit("    }")
    if slices:
        emit("    if (kt < s1) {")
    if blocked:
        for i in range(accs):
            emit(f"    acc{i} = vec4<AT>(0.0);")
    emit(f"    for (var kk = 0u; kk < {tile.bk}u; kk++) {{")
    for r in range(rg):
        emit(f"      let a{r} = As[{buf('cur')}][kk * {a_rows4}u + ty + {r * ty_n}u];")
    for c in range(cg):
        emit(f"      let b{c} = Bs[{buf('cur')}][kk * {b_cols4}u + tx + {c * tx_n}u];")
    # acc[(c * 4 + q) * rg + r] holds rows (ty + r*ty_n)*4 .. +3 of column (tx + c*tx_n)*4 + q
    for c in range(cg):
        for q, comp in enumerate("xyzw"):
            for r in range(rg):
                i = (c * 4 + q) * rg + r
                emit(f"      acc{i} = fma(a{r}, vec4<AT>(b{c}.{comp}), acc{i});")
    emit("    }")
    if blocked:
        for i in range(accs):
            emit(f"    sum{i} += vec4<f32>(acc{i});")
    if slices:
        emit("    }")
    emit("    if (more) {")
    stash("1u - cur")
    emit("    }")
    emit("    workgroupBarrier();")
    emit("  }")
    if slices:
        hand_sums(emit, lanes, ks, accs, total)
        emit("  if (slice == 0u) {")
    (store_quads if quads else store_columns)(emit, tile, store, total)
    if slices:
        emit("  }")
    emit("}")
    return "\n".join(out)


def hand_sums(emit, lanes: int, ks: int, accs: int, total: str) -> None:
    """Slices 1..ks-1 write their f32 sums to workgroup memory; slice 0 adds them in slice order."""
    emit("  if (slice > 0u) {")
    emit(f"    let r0 = (slice - 1u) * {accs * lanes}u + lid;")
    for i in range(accs):
        emit(f"    Red[r0 + {i * lanes}u] = vec4<f32>({total}{i});")
    emit("  }")
    emit("  workgroupBarrier();")
    emit("  if (slice == 0u) {")
    for s in range(ks - 1):
        for i in range(accs):
            emit(f"    {total}{i} += Red[{(s * accs + i) * lanes}u + lid];")
    emit("  }")


def store_columns(emit, tile: Tile, store: str, total: str) -> None:
    """Each output (m, j) the invocation holds, one at a time (`v` an f32)."""
    tx_n, ty_n = tile.bn // tile.tn, tile.bm // tile.tm
    rg, cg = tile.tm // 4, tile.tn // 4
    for c in range(cg):
        for q in range(4):
            emit(f"  {{ let j = tni * {tile.bn}u + (tx + {c * tx_n}u) * 4u + {q}u;")
            emit("    if (j < P.cols) {")
            for r in range(rg):
                i = (c * 4 + q) * rg + r
                emit(f"      {{ let m0 = tmi * {tile.bm}u + (ty + {r * ty_n}u) * 4u; let acc = {total}{i};")
                emit("        for (var i = 0u; i < 4u; i++) {")
                emit("          let m = m0 + i;")
                emit(f"          if (m < P.m) {{ let v = f32(acc[i]); {store} }}")
                emit("        }")
                emit("      }")
            emit("    }")
            emit("  }")


def store_quads(emit, tile: Tile, store: str, total: str) -> None:
    """Per row, the invocation's four neighbouring columns as one vec4 `v` (see generate's `quads`).

    The four rows of a register group are unrolled with constant components: a loop indexing four vec4
    registers by a variable made NVIDIA's compiler move the 8x8 tile's accumulators to local memory (6x
    slower on the H100)."""
    tx_n, ty_n = tile.bn // tile.tn, tile.bm // tile.tm
    rg, cg = tile.tm // 4, tile.tn // 4
    for c in range(cg):
        emit(f"  {{ let j = tni * {tile.bn}u + (tx + {c * tx_n}u) * 4u;")
        emit("    if (j < P.cols) {")
        for r in range(rg):
            q = [f"{total}{(c * 4 + q) * rg + r}" for q in range(4)]
            emit(f"      {{ let m0 = tmi * {tile.bm}u + (ty + {r * ty_n}u) * 4u;")
            for i, comp in enumerate("xyzw"):
                emit(f"        {{ let m = m0 + {i}u; if (m < P.m) {{ "
                     f"let v = vec4<f32>({q[0]}.{comp}, {q[1]}.{comp}, {q[2]}.{comp}, {q[3]}.{comp}); {store} }} }}")
            emit("      }")
        emit("    }")
        emit("  }")

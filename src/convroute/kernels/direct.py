"""`direct`: the sliding-window conv. Any stride, padding, dilation, groups, kernel shape.

GPUs (gemm_style "workgroup"): a workgroup computes BO output channels x a BR x BC block of output pixels of
one image. Per chunk of CK input channels it stages the input patch the block reads (the block plus its halo,
zero outside the image) in workgroup memory, then each invocation adds RO vec4s of output channels x RP
neighbouring pixels of one column: per channel and kernel column it reads its column segment of the patch once
(each value serves up to KH taps) and RO * KH weight vec4s (each serves RP pixels). Neighbouring invocations own
neighbouring columns, so output stores coalesce and patch reads hit distinct banks. When an invocation loads
few patch values per chunk, the patch is double-buffered: chunk k + 1's loads are in flight while chunk k's
sums run, one barrier per chunk. Kernel size, stride, dilation, padding and the tile are WGSL constants (taps
unrolled); channel and spatial sizes are parameters, so a network compiles one pipeline per (kernel geometry,
tile). When the blocks leave the device idle (few pixels, many channels: late ResNet layers at batch 1) the
input channels are split across workgroups, each writing f32 partial sums, and a second dispatch adds them, the
bias and the activation.

Dilated blocks stage only the input their taps read. Along each axis the block's outputs may be `phases` apart
(outputs congruent mod phases, each phase its own blocks), and the staged rows lie on the lattice of input rows
that block can touch (every gcd(phases x stride, dilation)-th row): with dilation 4 at stride 1 and 4 phases,
an 8-row block reads a dense 10-row patch of every 4th input row, as an undilated conv would. Where the taps'
row segments still leave gaps (dilation 24 on an 11-row output, which phases would pad), the patch holds only
the KH segments. CONVROUTE_DIRECT_PHASES=0 stages the whole window instead (the kernel before this).

CPU adapters (gemm_style "registers") get direct_cpu's register tiles instead.

Weights are prepacked [groups, blocks, C_in/groups padded to the chunk, KH, KW, 4]: four output channels per
vec4, zero past C_out/groups and C_in/groups, so no weight load needs a bounds check. Sums are f32 in every
precision (accumulate="float16" runs with f32 sums here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from convroute.kernels import direct_cpu
from convroute.kernels.base import CPU_LOOP_LIMIT, ConvKernel
from convroute.kernels.common import ceil_div, constants, split_index, storage, storage_frame, sum_splits
from convroute.kernels.flat import flat_shader, launch
from convroute.settings import env_flag

PARAMS = ["n", "c_in", "h", "w", "c_out", "ho", "wo", "cin_g", "cout_g", "groups", "bpg", "cin_pad", "tiles_m",
          "tiles_r", "tiles_c", "splits", "chunks", "total"]
REDUCE_PARAMS = ["c_out", "plane", "count", "splits", "total"]
MAX_SPLITS = 32


@dataclass(frozen=True)
class Tile:
    bo: int  # output channels per workgroup
    br: int  # output rows per workgroup
    bc: int  # output columns per workgroup
    ro: int  # vec4s of output channels per invocation
    rp: int  # pixels of one column per invocation (neighbouring rows)

    @property
    def threads(self) -> int:
        return self.bo // (4 * self.ro) * (self.br // self.rp * self.bc)

    def __str__(self) -> str:
        return f"{self.bo}x{self.br}x{self.bc}/{4 * self.ro}x{self.rp}"


# (tile, relative time per FMA once the device is busy); with BUSY, FILL and SPLIT below fitted on the H100 to the
# sliding-window layers of the shipped suites, timing every tile x chunk x split on each; the last two serve few
# output channels.
TILES = (
    (Tile(64, 8, 8, 2, 8), 0.9),
    (Tile(64, 14, 8, 2, 7), 0.95),
    (Tile(64, 8, 16, 2, 8), 0.95),
    (Tile(64, 7, 8, 2, 7), 1.0),
    (Tile(32, 8, 8, 1, 4), 1.1),
    (Tile(32, 8, 16, 1, 4), 1.1),
    (Tile(16, 8, 8, 1, 4), 1.6),
    (Tile(4, 16, 16, 1, 4), 3.0),
)
CHUNKS = (16, 8, 4)  # input channels per workgroup-memory stage, largest first
LOADS = 8  # patch values an invocation has in flight at once
AHEAD = 8  # double-buffer the patch when an invocation loads at most this many values per chunk
BUSY = 3  # launches want this many times the device's busy workgroup count
FILL = 0.5  # time ~ 1 / (share of a busy device filled) ** FILL
SPLIT = 64  # cost of one partial sum written and read back, in FMAs
LOAD = 4  # cost of one staged value past an undilated block's patch, in FMAs of each output channel (a guess)
SPARSE = env_flag("CONVROUTE_DIRECT_PHASES", True)  # dilated blocks stage only what their taps read
PHASED = (True, True)  # whether a block's rows, columns may be phases apart (else contiguous, on the taps' lattice)


@dataclass(frozen=True)
class Axis:
    """How one axis (rows or columns) of an output block maps onto the patch it stages. The block's i-th output
    is phase + phases * (block index * size + i); its tap k reads patch row k * pitch + i * stride, and patch
    row q holds input row start + step * ((q // segment) * dilation + q % segment) (segment 0: step * q)."""
    phases: int = 1
    step: int = 1  # input rows between lattice rows
    stride: int = 1  # lattice rows between neighbouring outputs
    dilation: int = 1  # lattice rows between neighbouring taps
    segment: int = 0  # patch rows per tap where the taps' segments leave gaps; 0: one dense run
    rows: int = 1  # patch rows staged

    @property
    def pitch(self) -> int:
        return self.segment or self.dilation

    def blocks(self, out: int, size: int) -> int:
        """Blocks of `size` outputs over `out` outputs: every phase has as many as the largest needs."""
        return self.phases * ceil_div(ceil_div(out, self.phases), size)

    def input_row(self, q: str) -> str:
        """WGSL: the input row offset (from the block's first) of patch row `q`."""
        if self.segment:
            return f"{self.step}u * ((({q}) / {self.segment}u) * {self.dilation}u + ({q}) % {self.segment}u)"
        return f"{self.step}u * ({q})" if self.step > 1 else q


def axis_plan(size: int, stride: int, dilation: int, kernel: int, phases: int, sparse: bool) -> Axis:
    """The patch of `size` outputs along an axis; `sparse` puts it on the taps' lattice and cuts its gaps."""
    step = math.gcd(phases * stride, dilation) if sparse and kernel > 1 else 1
    stride, dilation = phases * stride // step, dilation // step
    span = (size - 1) * stride + 1
    if sparse and kernel > 1 and dilation > span:
        return Axis(phases, step, stride, dilation, span, kernel * span)
    return Axis(phases, step, stride, dilation, 0, span + (kernel - 1) * dilation)


def choose_axis(size: int, out: int, stride: int, dilation: int, kernel: int, phased: bool = True) -> Axis:
    """The phases (divisors of dilation / gcd(stride, dilation)) that least pad outputs x patch rows."""
    if not (SPARSE and phased) or kernel == 1 or dilation == 1:
        return axis_plan(size, stride, dilation, kernel, 1, SPARSE)
    free = dilation // math.gcd(stride, dilation)
    axes = [axis_plan(size, stride, dilation, kernel, phases, True)
            for phases in range(1, free + 1) if free % phases == 0]
    return min(axes, key=lambda a: (a.blocks(out, size) * size * a.rows, a.phases))


@dataclass(frozen=True)
class Plan:
    tile: Tile
    chunk: int  # input channels per workgroup-memory stage
    splits: int  # workgroups sharing one output block, each over its own chunks
    rows: Axis = field(default_factory=Axis)
    cols: Axis = field(default_factory=Axis)

    def __str__(self) -> str:
        phases = f" phases{self.rows.phases}x{self.cols.phases}" if self.rows.phases * self.cols.phases > 1 else ""
        return f"{self.tile} ck{self.chunk} split{self.splits}{phases} patch{self.rows.rows}x{self.cols.rows}"

    @property
    def patch(self) -> tuple[int, int]:
        """Rows and columns of the input patch a block stages per input channel."""
        return self.rows.rows, self.cols.rows

    def tiles(self, p) -> tuple[int, int]:
        """Output blocks along the rows and the columns of one image."""
        return self.rows.blocks(p.ho, self.tile.br), self.cols.blocks(p.wo, self.tile.bc)

    def blocks(self, p, n: int) -> int:
        """Output blocks over n images and every group: the workgroups of one split."""
        tiles_r, tiles_c = self.tiles(p)
        return n * p.groups * ceil_div(p.c_out // p.groups, self.tile.bo) * tiles_r * tiles_c

    def chunks_per_split(self, p) -> int:
        """Chunks of input channels each split's workgroup sums."""
        return ceil_div(ceil_div(p.c_in // p.groups, self.chunk), self.splits)


def patch_size(p, tile: Tile) -> tuple[int, int]:
    """The whole window a block of `tile` spans (what it staged with CONVROUTE_DIRECT_PHASES=0)."""
    (sh, sw), (dh, dw) = p.stride, p.dilation
    return (tile.br - 1) * sh + (p.kh - 1) * dh + 1, (tile.bc - 1) * sw + (p.kw - 1) * dw + 1


def choose_plan(profile, p, n: int) -> Plan:
    """Tile, chunk and split for `p` at batch n on a device: a pure function of the two.

    Estimated time: the padded work (channels past C_out/groups, pixels past the output's edges) times the
    tile's cost per FMA, divided by the share of a busy device the launch fills to the power FILL, plus SPLIT
    FMAs per partial sum when the input channels are split across workgroups (1, 2, 4, ... ways, up to half the
    chunks, so each split keeps two or more), and LOAD FMAs per output channel for each value a dilated block
    stages past what the undilated block would. A chunk's patch must fit the device's workgroup memory, the tile
    its invocation limit."""
    cout_g, cin_g = p.c_out // p.groups, p.c_in // p.groups
    memory = profile.max_workgroup_storage
    threads = profile.max_invocations
    target = BUSY * profile.busy_workgroups
    out_bytes = 4 * n * p.c_out * p.ho * p.wo
    (sh, sw), (dh, dw) = p.stride, p.dilation
    best, best_cost = None, None
    for tile, per_fma in TILES:
        if tile.threads > threads:
            continue
        rows = choose_axis(tile.br, p.ho, sh, dh, p.kh, PHASED[0])
        cols = choose_axis(tile.bc, p.wo, sw, dw, p.kw, PHASED[1])
        shape = Plan(tile, 1, 1, rows, cols)
        tiles_r, tiles_c = shape.tiles(p)
        padded = ceil_div(cout_g, tile.bo) * tile.bo * tiles_r * tile.br * tiles_c * tile.bc
        blocks = shape.blocks(p, n)
        dense = axis_plan(tile.br, sh, 1, p.kh, 1, False).rows * axis_plan(tile.bc, sw, 1, p.kw, 1, False).rows
        extra = max(0, rows.rows * cols.rows - dense) if SPARSE else 0
        per_fma += LOAD * extra / (tile.br * tile.bc * p.kh * p.kw)
        per_channel = 8 * rows.rows * cols.rows  # two chunks' patches
        for chunk in sorted({min(c, cin_g, memory // per_channel) for c in CHUNKS}, reverse=True):
            if chunk < 1:
                continue
            most = max(1, min(MAX_SPLITS, ceil_div(cin_g, chunk) // 2, profile.max_binding_bytes // out_bytes))
            splits = 1
            while splits <= most:
                filled = min(1.0, blocks * splits / target)
                partial = SPLIT * splits / (cin_g * p.kh * p.kw) if splits > 1 else 0.0
                cost = padded * (per_fma / filled ** FILL + partial)
                if best_cost is None or cost < best_cost * 0.999:
                    best, best_cost = Plan(tile, chunk, splits, rows, cols), cost
                splits *= 2
    if best is None:
        raise ValueError(f"direct: no tile's input patch of {p.describe()} fits the device's {memory}-byte "
                         f"workgroup memory")
    return best


def double_buffered(plan: Plan, patch: int) -> bool:
    """Whether the kernel holds two chunks' patches (few loads per invocation each)."""
    return ceil_div(plan.chunk * patch, plan.tile.threads) <= AHEAD


def load_batch(plan: Plan, patch: int) -> int:
    """Patch values each invocation loads before storing any (the loads of a batch are in flight together)."""
    return min(LOADS, ceil_div(plan.chunk * patch, plan.tile.threads))


def patch_loads(plan: Plan, ks, channel: str, indent: str, base: str = "lid_x") -> list[str]:
    """WGSL reading patch values q_k = base + k * WG of the chunk from input channel `channel` into v_k (zero
    outside the image and past the group's channels)."""
    lines = []
    for k in ks:
        lines += [f"let q{k} = {base} + {k}u * WG;",
                  f"let qc{k} = q{k} / (PR * PC);",
                  f"let qr{k} = q{k} % (PR * PC);",
                  f"let qh{k} = ih0 + i32({plan.rows.input_row(f'qr{k} / PC')});",
                  f"let qw{k} = iw0 + i32({plan.cols.input_row(f'qr{k} % PC')});",
                  f"let ok{k} = q{k} < PATCH && {channel} + qc{k} < p.cin_g && qh{k} >= 0 && qh{k} < hi && qw{k} >= 0"
                  f" && qw{k} < wi;",
                  f"let at{k} = select(0u, xg + (({channel} + qc{k}) * p.h + u32(qh{k})) * p.w + u32(qw{k}), ok{k});",
                  f"let v{k} = select(0.0, f32(x[at{k}]), ok{k});"]
    return [indent + line for line in lines]


def block_origin(plan: Plan, sh: int, sw: int, ph: int, pw: int) -> str:
    """WGSL: the block's first output (oh0, ow for this invocation) and first input row and column (ih0, iw0).
    Without phases it is the undilated kernel's text, unchanged (the one the GPU fuzz has run)."""
    rows, cols, tile = plan.rows, plan.cols, plan.tile
    if rows.phases == cols.phases == 1:
        return f"""  let oh0 = tr * {tile.br}u + prow;
  let ow = tc * {tile.bc}u + pcol;
  let ih0 = i32(tr * {tile.br * sh}u) - {ph};
  let iw0 = i32(tc * {tile.bc * sw}u) - {pw};"""
    return f"""  let rh = tr % {rows.phases}u;
  let rw = tc % {cols.phases}u;
  let oh0 = rh + {rows.phases}u * ((tr / {rows.phases}u) * {tile.br}u + prow);
  let ow = rw + {cols.phases}u * ((tc / {cols.phases}u) * {tile.bc}u + pcol);
  let ih0 = i32(rh * {sh}u + (tr / {rows.phases}u) * {tile.br * rows.phases * sh}u) - {ph};
  let iw0 = i32(rw * {sw}u + (tc / {cols.phases}u) * {tile.bc * cols.phases * sw}u) - {pw};"""


def generate(p, plan: Plan, header: str, act: str, partial: bool, residual: bool = False) -> str:
    """The workgroup kernel; with `partial` it writes raw f32 sums to [splits, n, C_out, Ho, Wo]; with `residual`
    (and not partial) the store adds `res`, laid out as the output.

    Neighbouring invocations own neighbouring output columns (coalesced stores, conflict-free patch reads);
    each holds `rp` rows of its column, so a patch value read once serves up to KH taps."""
    tile, ck, rows, cols = plan.tile, plan.chunk, plan.rows, plan.cols
    (sh, sw), (ph, pw) = p.stride, p.padding
    pr, pc = plan.patch
    ro, rp = tile.ro, tile.rp
    tpx = tile.br // rp * tile.bc  # invocations along the pixels
    khw = p.kh * p.kw
    buffers = storage("x", "wt:ST4", "y!:f32") if partial else storage("x", "wt:ST4", "bias:f32", "y!",
                                                                        *(["res"] if residual else []))
    helpers = act + constants(dict(WG=tile.threads, PR=pr, PC=pc, PATCH=ck * pr * pc, KHW=khw, CK=ck))
    shared = f"var<workgroup> tileX: array<f32, {(2 if double_buffered(plan, pr * pc) else 1) * ck * pr * pc}>;"
    out = [storage_frame(header, PARAMS, buffers, helpers + shared, tile.threads),
           """  let b = wid.x + wid.y * nwg.x;
  if (b >= p.total) { return; }""",
           split_index("b", [("tc", "p.tiles_c"), ("tr", "p.tiles_r"), ("tm", "p.tiles_m"), ("g", "p.groups"),
                             ("n", "p.n")], "split"),
           f"""  let tp = lid_x % {tpx}u;
  let to = lid_x / {tpx}u;
  let pcol = tp % {tile.bc}u;
  let prow = (tp / {tile.bc}u) * {rp}u;
{block_origin(plan, sh, sw, ph, pw)}
  let hi = i32(p.h);
  let wi = i32(p.w);
  let xg = (n * p.c_in + g * p.cin_g) * p.h * p.w;
  let bstride = p.cin_pad * KHW;
  let wb = (g * p.bpg + tm * {tile.bo // 4}u + to * {ro}u) * bstride;
  let own = (prow * {rows.stride}u) * PC + pcol * {cols.stride}u;"""]
    emit = out.append
    sums = [(j, o) for j in range(rp) for o in range(ro)]
    out += [f"  var s{j}_{o} = vec4<f32>(0.0);" for j, o in sums]
    loads = ceil_div(ck * pr * pc, tile.threads)
    ahead = double_buffered(plan, pr * pc)
    if ahead:  # chunk k + 1's patch loads while chunk k's sums run: one barrier per chunk
        emit(f"  {{\n    let first = split * p.chunks * {ck}u;")
        out += patch_loads(plan, range(loads), "first", "    ")
        out += [f"    if (q{k} < PATCH) {{ tileX[q{k}] = v{k}; }}" for k in range(loads)]
        emit("  }")
    emit(f"""  for (var ch = 0u; ch < p.chunks; ch++) {{
    let ic0 = (split * p.chunks + ch) * {ck}u;
    if (ic0 >= p.cin_g) {{ break; }}""")
    if ahead:
        emit("""    workgroupBarrier();
    let cur = (ch & 1u) * PATCH;
    let next = ic0 + CK;""")
        out += patch_loads(plan, range(loads), "next", "    ")
    else:
        emit("    workgroupBarrier();")
        batch = min(LOADS, loads)
        emit(f"    for (var base = lid_x; base < PATCH; base += {batch}u * WG) {{")
        out += patch_loads(plan, range(batch), "ic0", "      ", "base")  # a batch's loads issue before its stores wait
        out += [f"      if (q{k} < PATCH) {{ tileX[q{k}] = v{k}; }}" for k in range(batch)]
        emit("    }\n    workgroupBarrier();\n    let cur = 0u;")
    emit(f"""    for (var c = 0u; c < {ck}u; c++) {{
      let pbase = cur + c * (PR * PC) + own;""")
    emit("      let wc = wb + (ic0 + c) * KHW;")
    read = sorted({j * rows.stride + kh * rows.pitch for j in range(rp) for kh in range(p.kh)})
    for kw in range(p.kw):
        out += [f"      let v{kw}_{q} = tileX[pbase + {q * pc + kw * cols.pitch}u];" for q in read]
        for kh in range(p.kh):
            tap = kh * p.kw + kw
            out += [f"      let a{kh}_{kw}_{o} = ld4(wt[wc + {o}u * bstride + {tap}u]);" for o in range(ro)]
            out += [f"      s{j}_{o} = fma(a{kh}_{kw}_{o}, vec4<f32>(v{kw}_{j * rows.stride + kh * rows.pitch}), "
                    f"s{j}_{o});" for j, o in sums]
    emit("    }")
    if ahead:
        out += [f"    if (q{k} < PATCH) {{ tileX[PATCH - cur + q{k}] = v{k}; }}" for k in range(loads)]
    emit("  }")
    emit(f"""  if (ow >= p.wo) {{ return; }}
  let oc0 = tm * {tile.bo}u + to * {4 * ro}u;
  let obase = ((split * p.n + n) * p.c_out + g * p.cout_g) * p.ho * p.wo + ow;""")
    for j in range(rp):
        emit(f"  if (oh0 + {j * rows.phases}u < p.ho) {{")
        for o in range(ro):  # components by name: a vec4 indexed by a loop variable can land in local memory
            for e, comp in enumerate("xyzw"):
                index = f"obase + (oc0 + {4 * o + e}u) * p.ho * p.wo + (oh0 + {j * rows.phases}u) * p.wo"
                value = f"s{j}_{o}.{comp}"
                if not partial:
                    value = f"{value} + bias[g * p.cout_g + oc0 + {4 * o + e}u]"
                    value = f"ST(act({value} + f32(res[{index}])))" if residual else f"ST(act({value}))"
                emit(f"    if (oc0 + {4 * o + e}u < p.cout_g) {{ y[{index}] = {value}; }}")
        emit("  }")
    emit("}")
    return "\n".join(out)


REDUCE = """
  var v = bias[(t / P.plane) % P.c_out];""" + sum_splits("v", "t", "P.count") + """
  y[t] = ST(act(v));"""
REDUCE_RESIDUAL = REDUCE.replace("act(v)", "act(v + f32(res[t]))")


def pack_weights(weight: np.ndarray, groups: int, blocks_per_group: int, cin_pad: int) -> np.ndarray:
    """[C_out, C_in/g, KH, KW] -> [groups, blocks, cin_pad, KH, KW, 4], zeros in the padding."""
    c_out, cin_g, kh, kw = weight.shape
    cout_g = c_out // groups
    w = np.zeros((groups, blocks_per_group * 4, cin_pad, kh, kw), np.float32)
    w[:, :cout_g, :cin_g] = weight.reshape(groups, cout_g, cin_g, kh, kw)
    w = w.reshape(groups, blocks_per_group, 4, cin_pad, kh, kw)
    return np.ascontiguousarray(np.moveaxis(w, 2, -1))


class Direct(ConvKernel):
    name = "direct"
    fuses_residual = True
    reads_float32_input = True

    @classmethod
    def loop_trips(cls, p):
        return direct_cpu.loop_trips(p)  # what CPU adapters run

    def prepare(self, weight, bias):
        p = self.p
        self.cpu = self.gpu.profile.gemm_style == "registers"
        self.bias_buf = self.gpu.upload(bias, "bias")
        self.header = self.precision.wgsl()
        self.act = self.epilogue.wgsl()
        self.weight = weight
        self._weights: dict[tuple, object] = {}
        if self.cpu:
            self.tile = direct_cpu.choose_tile(p)
            self._textures: dict[int, tuple | None] = {}
            self._weight_texture = None
            self.special = (self.gpu.profile.texture_paths and direct_cpu.specialised(p)
                            and direct_cpu.texture_layout(p, self.tile, p.n) is not None)
            if self.special:
                self.source = direct_cpu.generate(p, self.tile, self.header, direct_cpu.FORMATS[self.dtype], self.act,
                                                  self.residual)
                self.gpu.pipeline(self.repack_source())
            else:
                self.source = self.generic_source(p.n)
            self.gpu.pipeline(self.source)
        else:
            self._plans: dict[int, Plan] = {}
            plan = self.plan(p.n)
            self.gpu.pipeline(generate(p, plan, self.header, self.act, plan.splits > 1, self.residual))

    def plan(self, n: int) -> Plan:
        """The workgroup plan at batch n, fixed for the kernel's life once chosen."""
        if n not in self._plans:
            self._plans[n] = choose_plan(self.gpu.profile, self.p, n)
        return self._plans[n]

    def weights(self, blocks: int, chunk: int):
        """Packed weights with output channels padded to `blocks` vec4s per group, input channels to `chunk`."""
        p = self.p
        cin_pad = ceil_div(p.c_in // p.groups, chunk) * chunk
        key = (blocks, cin_pad)
        if key not in self._weights:
            self._weights[key] = self.upload(pack_weights(self.weight, p.groups, blocks, cin_pad), "packed weights")
        return self._weights[key], cin_pad

    def params(self, names: list[str], n: int, bpg: int, cin_pad: int, **grid):
        """Both variants' parameter blocks: the layer's shape, the batch, weight blocks per group and padded
        input channels, the launch grid."""
        return self.param_buffer(names, self.shape_values(n=n, groups=self.p.groups, bpg=bpg, cin_pad=cin_pad,
                                                          **grid))

    def bind(self, x, y, n, residual=None):
        res = self.residual_buffers(residual)
        if self.cpu:
            return self._bind_cpu(x, y, n, res)
        p = self.p
        plan = self.plan(n)
        tile = plan.tile
        tiles_m = ceil_div(p.c_out // p.groups, tile.bo)
        w_buf, cin_pad = self.weights(tiles_m * tile.bo // 4, plan.chunk)
        tiles_r, tiles_c = plan.tiles(p)
        chunks = plan.chunks_per_split(p)
        total = plan.splits * plan.blocks(p, n)
        if self.gpu.profile.family == "cpu":
            patch = int(np.prod(plan.patch))
            trips = chunks * (ceil_div(plan.chunk * patch, load_batch(plan, patch) * tile.threads) + plan.chunk)
            if trips > CPU_LOOP_LIMIT:
                raise ValueError(f"direct (workgroup tiles) would loop {trips} times on {p.describe()}, past "
                                 f"lavapipe's {CPU_LOOP_LIMIT}")
        params = self.params(PARAMS, n, tiles_m * tile.bo // 4, cin_pad, tiles_m=tiles_m, tiles_r=tiles_r,
                             tiles_c=tiles_c, splits=plan.splits, chunks=chunks, total=total)
        partial = plan.splits > 1
        source = generate(p, plan, self.header, self.act, partial, self.residual)
        if not partial:
            return [self.gpu.dispatch(source, [params, x, w_buf, self.bias_buf, y, *res], total * tile.threads,
                                      tile.threads)]
        count = n * p.c_out * p.ho * p.wo
        part = self.scratch.get(4 * plan.splits * count, "direct partial sums")
        reduce = flat_shader(REDUCE_PARAMS, storage("part:f32", "bias:f32", "y!", *(["res"] if res else [])),
                             REDUCE_RESIDUAL if res else REDUCE, self.act, self.precision)
        rvalues = dict(c_out=p.c_out, plane=p.ho * p.wo, count=count, splits=plan.splits, total=count)
        return [self.gpu.dispatch(source, [params, x, w_buf, part], total * tile.threads, tile.threads),
                launch(self.gpu, reduce, REDUCE_PARAMS, rvalues, [part, self.bias_buf, y, *res])]

    def generic_source(self, n: int) -> str:
        """The buffer kernel of direct_cpu (small layers; batches whose textures pass the limits)."""
        trips = direct_cpu.generic_trips(self.p)
        if self.gpu.profile.family == "cpu" and trips > CPU_LOOP_LIMIT:
            raise ValueError(f"direct at batch {n} on {self.p.describe()} takes the buffer kernel (no register "
                             f"tile keeps the unrolled taps small, or the textures would pass WebGPU's limits), "
                             f"which would loop {trips} times, past lavapipe's {CPU_LOOP_LIMIT}; use a smaller "
                             f"batch or a GEMM algorithm")
        return direct_cpu.generate_generic(self.p, self.tile, self.header, self.act, self.residual)

    def repack_source(self) -> str:
        return direct_cpu.repack_shader(self.header, direct_cpu.FORMATS[self.dtype])

    def textures(self, n: int):
        """The layout, the input texture (written by each run's repack pass) and the packed weight texture at
        batch n, or None where they would pass WebGPU's texture limits."""
        if n not in self._textures:
            p, tile = self.p, self.tile
            layout = direct_cpu.texture_layout(p, tile, n)
            if layout is None:
                self._textures[n] = None
                return None
            fmt = direct_cpu.FORMATS[self.dtype]
            xt = direct_cpu.input_texture(self.gpu, layout, fmt, "direct's padded input")
            if self._weight_texture is None:  # the same at every batch
                texels = direct_cpu.weight_texels(self.weight, p, tile, layout)
                self._weight_texture = self.gpu.texture_of(texels.astype(self.precision.numpy), fmt,
                                                           "direct's weights")
            self._textures[n] = (layout, xt, self._weight_texture)
        return self._textures[n]

    def _bind_cpu(self, x, y, n, res):
        p, tile = self.p, self.tile
        grid = direct_cpu.grid(p, tile, n)
        bpg = grid["tiles_m"] * tile.tm // 4
        textures = self.textures(n) if self.special else None
        if textures is None:
            source = self.generic_source(n) if self.special else self.source
            w_buf, cin_pad = self.weights(bpg, 1)
            params = self.params(direct_cpu.PARAMS, n, bpg, cin_pad, **grid)
            return [self.gpu.dispatch(source, [params, x, w_buf, self.bias_buf, y, *res], grid["total"],
                                      direct_cpu.WG)]
        layout, xt, wt = textures
        values = self.shape_values(n=n, groups=p.groups, bpg=bpg, hp=layout.hp, wrow=layout.icw * p.kh * p.kw,
                                   icr=layout.icr, **grid)
        return [direct_cpu.repack_dispatch(self, self.repack_source(), x, xt, layout),
                self.gpu.dispatch(self.source, [self.param_buffer(direct_cpu.TEX_PARAMS, values), xt, wt,
                                                self.bias_buf, y, *res], grid["total"], direct_cpu.WG)]

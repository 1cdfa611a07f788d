"""Reductions over any dims of a dense tensor (sum, mean, amax, amin) and softmax / log_softmax along one dim.

Both read "rows": the elements of x that one output (a reduction) or one softmax row gathers. `rows_of` splits
the input's dims into kept and reduced ones and merges neighbours of the same kind, so any set of dims of a
tensor up to rank 6 becomes at most three kept and three reduced (size, stride) pairs; a row starts at
kept(o) and its r-th element is kept(o) + reduced(r). Short rows take one invocation each; long ones (past
pool.COOP_WINDOW_GPU elements on GPUs, COOP_WINDOW on CPU adapters, as for pooling) a workgroup each, split
across its lanes and combined in workgroup memory. f32 arithmetic in either storage; NaN propagates through
amax / amin as in torch. Softmax subtracts the row's max before exp (no overflow).
"""

from __future__ import annotations

import math

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import ENTRY_ARGS, FLAT_INDEX, FP32, Precision, pack, storage, uniform_block
from convroute.kernels.flat import WG
from convroute.kernels.pool import COOP_WINDOW, COOP_WINDOW_GPU, MAX_LOOP

GROUPS = 3  # kept and reduced (size, stride) pairs after merging: enough for any dims of a rank-6 tensor
PARAMS = (["total", "count"] + [f"k{i}" for i in range(GROUPS)] + [f"ks{i}" for i in range(GROUPS)]
          + [f"r{i}" for i in range(GROUPS)] + [f"rs{i}" for i in range(GROUPS)])
SECOND_OPERAND = [f"kbs{i}" for i in range(GROUPS)] + [f"rbs{i}" for i in range(GROUPS)]

# Per reduction: start value, combine(a, v), finish(a) (P.count is the row's length).
REDUCTIONS = {
    "sum": ("0.0", "a + v", "a"),
    "mean": ("0.0", "a + v", "a / f32(P.count)"),
    "amax": ("neg_inf()", "select(a, v, !is_nan(a) && (v > a || is_nan(v)))", "a"),
    "amin": ("pos_inf()", "select(a, v, !is_nan(a) && (v < a || is_nan(v)))", "a"),
}
SOFTMAX_OUT = {"softmax": "exp(v - m) / s", "log_softmax": "v - m - log(s)"}

HELPERS = """
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
fn neg_inf() -> f32 { let bits = 0xff800000u; return bitcast<f32>(bits); }
fn pos_inf() -> f32 { let bits = 0x7f800000u; return bitcast<f32>(bits); }
fn max_nan(a: f32, v: f32) -> f32 { return select(a, v, !is_nan(a) && (v > a || is_nan(v))); }
fn add(a: f32, v: f32) -> f32 { return a + v; }
fn kept(o: u32) -> u32 {
  let i2 = o % P.k2;
  let i1 = (o / P.k2) % P.k1;
  let i0 = o / (P.k2 * P.k1);
  return i0 * P.ks0 + i1 * P.ks1 + i2 * P.ks2;
}
fn reduced(r: u32) -> u32 {
  let i2 = r % P.r2;
  let i1 = (r / P.r2) % P.r1;
  let i0 = r / (P.r2 * P.r1);
  return i0 * P.rs0 + i1 * P.rs1 + i2 * P.rs2;
}
"""


def _all(name: str, coop: bool) -> str:
    """`fn all_<name>(v, lane)`: `name` over the workgroup's lanes (every lane gets the result), or v alone."""
    if not coop:
        return f"fn all_{name}(v: f32, lane: u32) -> f32 {{ return v; }}\n"
    return f"""fn all_{name}(v: f32, lane: u32) -> f32 {{
  part[lane] = v;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h = h / 2u) {{
    if (lane < h) {{ part[lane] = {name}(part[lane], part[lane + h]); }}
    workgroupBarrier();
  }}
  let total = part[0];
  workgroupBarrier();
  return total;
}}
"""


SECOND_HELPERS = """
fn kept_b(o: u32) -> u32 {
  return (o / (P.k2 * P.k1)) * P.kbs0 + ((o / P.k2) % P.k1) * P.kbs1 + (o % P.k2) * P.kbs2;
}
fn reduced_b(r: u32) -> u32 {
  return (r / (P.r2 * P.r1)) * P.rbs0 + ((r / P.r2) % P.r1) * P.rbs1 + (r % P.r2) * P.rbs2;
}
"""


def _shader(precision: Precision, coop: bool, helpers: str, body: str, second: bool = False) -> str:
    """`second`: a second operand b, bound after x, with its own strides (kept_b, reduced_b, base_b)."""
    if second:
        helpers = SECOND_HELPERS + helpers
        head_b = "  let base_b = kept_b(select(0u, o, live));\n"
    else:
        head_b = ""
    if coop:  # a workgroup per row; no early return (the barriers need uniform control flow)
        head = "  let o = wid.x + wid.y * nwg.x;\n  let live = o < P.total;\n  let lane = lid_x;\n"
        lanes, shared = "WG", f"var<workgroup> part: array<f32, {WG}>;"
    else:
        head = f"  let o = {FLAT_INDEX};\n  if (o >= P.total) {{ return; }}\n  let live = true;\n  let lane = 0u;\n"
        lanes, shared = "1u", ""
    return precision.wgsl() + f"""
const WG: u32 = {WG}u;
const LANES: u32 = {lanes};
{uniform_block(PARAMS + SECOND_OPERAND if second else PARAMS)}
@group(0) @binding(0) var<uniform> P: Params;
{storage("x", "b", "y!") if second else storage("x", "y!")}
{shared}
{HELPERS}
{helpers}
@compute @workgroup_size({WG})
fn main({ENTRY_ARGS}) {{
{head}  let base = kept(select(0u, o, live));
{head_b}{body}
}}
"""


def dense_strides(shape) -> tuple:
    strides, step = [0] * len(shape), 1
    for i in reversed(range(len(shape))):
        strides[i], step = step, step * shape[i]
    return tuple(strides)


def rows_of(shape, dims, strides=None) -> tuple[list, list]:
    """(kept, reduced): the (size, (stride per operand)) pairs of `shape`'s kept and reduced `dims`, neighbours of
    one kind merged and size-1 dims dropped, each padded to GROUPS pairs with (1, zeros) in front. `strides`: one
    stride tuple per operand read in this index space (default: one dense tensor); neighbours merge only where
    every operand's strides allow it."""
    dims = {d % len(shape) for d in dims} if shape else set()
    operands = [dense_strides(shape)] if strides is None else [tuple(s) for s in strides]
    groups = {True: [], False: []}
    last = None
    for i, size in enumerate(shape):
        if size == 1:
            continue
        kind = i in dims
        here = tuple(s[i] for s in operands)
        if kind == last and groups[kind] and all(prev == s * size for prev, s in zip(groups[kind][-1][1], here,
                                                                                       strict=True)):
            prev_size, _ = groups[kind][-1]  # merge: the previous dim of this kind is its outer neighbour
            groups[kind][-1] = (prev_size * size, here)
        else:
            groups[kind].append((size, here))
        last = kind
    for kind, pairs in groups.items():
        if len(pairs) > GROUPS:
            raise ValueError(f"reducing dims {sorted(dims)} of a {tuple(shape)} tensor needs more than {GROUPS} "
                             f"{'reduced' if kind else 'kept'} dim groups")
        groups[kind] = [(1, (0,) * len(operands))] * (GROUPS - len(pairs)) + pairs
    return groups[False], groups[True]


def row_problem(shape, dims, strides=None) -> str | None:
    """Why the row kernels cannot take `shape` reduced over `dims` (operands' `strides` as rows_of's), or None;
    a pure function, so that graph passes can ask before fusing."""
    if len(shape) > 2 * GROUPS:
        return f"row kernels take tensors of rank up to {2 * GROUPS}, got {tuple(shape)}"
    if math.prod(shape) >= 2**32:
        return f"a {tuple(shape)} tensor exceeds u32 indexing"
    try:
        _, reduced = rows_of(shape, dims, strides)
    except ValueError as exc:
        return str(exc)
    count = math.prod(s for s, _ in reduced)
    if count > MAX_LOOP * WG:  # rows past the window take a workgroup each: WG lanes of at most MAX_LOOP
        return f"a row of {count} elements is more than the GPU kernel handles"
    return None


class _Rows:
    """The shared launch: one output (or softmax row) per kept index, a row of `count` elements each. `strides`:
    per operand its strides in `shape`'s index space (default: x, dense); a second operand's pairs are the
    uniforms kbs*/rbs*, read by `kept_b` / `reduced_b`."""

    def __init__(self, gpu: Gpu, shape, dims, make_source, precision: Precision, strides=None):
        problem = row_problem(shape, dims, strides)
        if problem:
            raise ValueError(problem)
        kept, reduced = rows_of(shape, dims, strides)
        self.gpu = gpu
        self.total, count = math.prod(s for s, _ in kept), math.prod(s for s, _ in reduced)
        self.coop = count > (COOP_WINDOW_GPU if gpu.profile.gemm_style == "workgroup" else COOP_WINDOW)
        self.values = dict(total=self.total, count=count)
        for i, ((ks, kst), (rs, rst)) in enumerate(zip(kept, reduced, strict=True)):
            self.values.update({f"k{i}": ks, f"ks{i}": kst[0], f"r{i}": rs, f"rs{i}": rst[0]})
            if len(kst) > 1:
                self.values.update({f"kbs{i}": kst[1], f"rbs{i}": rst[1]})
        self.params = PARAMS + SECOND_OPERAND if len(kept[0][1]) > 1 else PARAMS
        self.source = make_source(self.coop)
        gpu.pipeline(self.source)

    def bind(self, *buffers) -> list[Dispatch]:
        """Dispatches reading the operands and writing y, the last of `buffers`."""
        if not self.total:
            return []
        u = self.gpu.uniform(pack(self.params, self.values))
        threads = self.total * WG if self.coop else self.total
        return [self.gpu.dispatch(self.source, [u, *buffers], threads, WG)]


class Reduce(_Rows):
    """y = `kind` (sum, mean, amax, amin) of x over `dims`; y is dense in the kept dims' order (keepdim or not
    is only y's shape). `scale` (sum only): y = the sum times it (a mean over a chain of reductions)."""

    def __init__(self, gpu: Gpu, kind: str, shape, dims, precision: Precision = FP32, scale: float = 1.0):
        if kind not in REDUCTIONS:
            raise ValueError(f"unknown reduction {kind!r}; known: {', '.join(REDUCTIONS)}")
        start, combine, finish = REDUCTIONS[kind]
        if scale != 1.0:
            if kind != "sum":
                raise ValueError(f"a scale applies to sums only, not to {kind!r}")
            finish = f"a * {_literal(scale)}"
        combine_fn = f"fn combine(a: f32, v: f32) -> f32 {{ return {combine}; }}\n"
        body = f"""  var a = {start};
  for (var r = lane; live && r < P.count; r += LANES) {{ a = combine(a, f32(x[base + reduced(r)])); }}
  a = all_combine(a, lane);
  if (live && lane == 0u) {{ y[o] = ST({finish}); }}"""
        super().__init__(gpu, shape, dims, lambda coop: _shader(precision, coop, combine_fn + _all("combine", coop),
                                                                 body), precision)


class WeightedSum(_Rows):
    """y = scale * the sum over `dims` of a * b, a and b broadcasting to `shape` (a's and b's shapes right-aligned
    as in torch): a squeeze-excitation-style product and its reduction in one pass (split attention's weighted
    sum over its paths). `softmax_b`: b's row holds logits, weighted by their softmax along the one reduced dim
    (split attention's softmax over its paths in the same pass)."""

    def __init__(self, gpu: Gpu, a_shape, b_shape, shape, dims, precision: Precision = FP32, scale: float = 1.0,
                 softmax_b: bool = False):
        strides = [broadcast_strides(a_shape, shape), broadcast_strides(b_shape, shape)]
        if softmax_b and len(set(dims)) != 1:
            raise ValueError(f"a softmax-weighted sum reduces one dim, not {sorted(dims)}")
        body = _SOFTMAX_WEIGHTED_BODY if softmax_b else _WEIGHTED_BODY
        body = body.replace("SCALE", _literal(scale))
        helpers = ("max_nan", "add") if softmax_b else ("add",)
        super().__init__(gpu, shape, dims, lambda coop: _shader(precision, coop, "".join(
            _all(h, coop) for h in helpers), body, True), precision, strides)


_WEIGHTED_BODY = """  var a = 0.0;
  for (var r = lane; live && r < P.count; r += LANES) {
    a = a + f32(x[base + reduced(r)]) * f32(b[base_b + reduced_b(r)]);
  }
  a = all_add(a, lane);
  if (live && lane == 0u) { y[o] = ST(a * SCALE); }"""
_SOFTMAX_WEIGHTED_BODY = """  var m = neg_inf();
  for (var r = lane; live && r < P.count; r += LANES) { m = max_nan(m, f32(b[base_b + reduced_b(r)])); }
  m = all_max_nan(m, lane);
  var s = 0.0;
  var a = 0.0;
  for (var r = lane; live && r < P.count; r += LANES) {
    let e = exp(f32(b[base_b + reduced_b(r)]) - m);
    s = s + e;
    a = a + f32(x[base + reduced(r)]) * e;
  }
  s = all_add(s, lane);
  a = all_add(a, lane);
  if (live && lane == 0u) { y[o] = ST(a / s * SCALE); }"""


def broadcast_strides(shape, to) -> tuple:
    """Dense `shape`'s strides in the index space of `to`, which it broadcasts to (0 along broadcast dims)."""
    shape = tuple(shape)
    if len(shape) > len(to) or any(s not in (1, t) for s, t in zip(shape[::-1], to[::-1], strict=False)):
        raise ValueError(f"a {shape} tensor does not broadcast to {tuple(to)}")
    padded = (1,) * (len(to) - len(shape)) + shape
    return tuple(0 if s == 1 else st for s, st in zip(padded, dense_strides(padded), strict=True))


def _literal(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"a reduction's scale must be finite, got {value}")
    return repr(float(value))


class Softmax(_Rows):
    """y = softmax or log_softmax of x along `dim` (y has x's shape)."""

    def __init__(self, gpu: Gpu, kind: str, shape, dim: int, precision: Precision = FP32):
        if kind not in SOFTMAX_OUT:
            raise ValueError(f"unknown softmax kind {kind!r}; known: {', '.join(SOFTMAX_OUT)}")
        body = f"""  var m = neg_inf();
  for (var r = lane; live && r < P.count; r += LANES) {{ m = max_nan(m, f32(x[base + reduced(r)])); }}
  m = all_max_nan(m, lane);
  var s = 0.0;
  for (var r = lane; live && r < P.count; r += LANES) {{ s = s + exp(f32(x[base + reduced(r)]) - m); }}
  s = all_add(s, lane);
  for (var r = lane; live && r < P.count; r += LANES) {{
    let i = base + reduced(r);
    let v = f32(x[i]);
    y[i] = ST({SOFTMAX_OUT[kind]});
  }}"""
        super().__init__(gpu, shape, [dim], lambda coop: _shader(precision, coop, _all("max_nan", coop)
                                                                 + _all("add", coop), body), precision)


class Variance(_Rows):
    """y = the variance of x over `dims` with `correction` taken from the count (torch's var), or with `root` its
    square root (torch's std): two passes over each row, the mean and then the squared deviations from it (no
    cancellation as in E[x^2] - E[x]^2)."""

    def __init__(self, gpu: Gpu, shape, dims, correction: float = 1.0, root: bool = False,
                 precision: Precision = FP32):
        value = f"q / (f32(P.count) - {float(correction)!r})"
        body = f"""  var s = 0.0;
  for (var r = lane; live && r < P.count; r += LANES) {{ s = s + f32(x[base + reduced(r)]); }}
  let m = all_add(s, lane) / f32(P.count);
  var q = 0.0;
  for (var r = lane; live && r < P.count; r += LANES) {{
    let d = f32(x[base + reduced(r)]) - m;
    q = q + d * d;
  }}
  q = all_add(q, lane);
  if (live && lane == 0u) {{ y[o] = ST({f"sqrt({value})" if root else value}); }}"""
        super().__init__(gpu, shape, dims, lambda coop: _shader(precision, coop, _all("add", coop), body), precision)
        count = self.values["count"]
        if count - correction <= 0:
            raise ValueError(f"a variance over {count} elements with correction {correction} divides by "
                             f"{count - correction}")

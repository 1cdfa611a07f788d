"""The routing model `calibrated` uses: one cost model per algorithm, fitted on the calibration grid.

Each algorithm's run time is a fixed cost per call (its launches and synchronisation: the same for every
shape) plus a part that grows with the work. The fixed cost is taken as FLOOR_SHARE of the algorithm's fastest
grid measurement; the log of the rest is predicted in two steps:
1. a robust (Huber) ridge regression, linear in log-scale shape features: work (MACs), memory traffic
   (input, output, weight), channels per group, output pixels, kernel area, stride, groups, dilation, batch,
   plus how much of a GEMM tile or a 4-wide block the shape wastes at tile sizes 4, 64 and 128, how much of
   2x2 / 4x4 output-plane tiles, the share of the input a stride longer than the window skips, how far dilation
   spreads the window and how far past the input it reaches (window_features), and how many
   tiles/threads it offers (parallelism, with hinges at 16 and 64 work items: a device with too little work
   idles, with enough it does not speed up further), and, given the calibrated device's profile, two features
   of the launch plan the algorithm's own kernel makes for the shape (plan_features: log2 of workgroups launched
   and of K steps per workgroup, for the GEMM algorithms and direct; for direct also the input patch a block
   stages against its output pixels, which dilation multiplies): the jumps where a plan changes, which no
   smooth shape feature sees (on the H100 they took calibrated's picks from 1.054x to 1.019x the per-layer best
   on ResNet-18 and the grid's leave-one-out regret from 1.4 % to 1.0 %). Linear terms
   extrapolate smoothly to shapes larger or smaller than the grid's; the Huber weights keep a measurement hit
   by a load spike from bending the fit; standard deviations are floored (MIN_SCALE) so that a feature
   nearly constant on the grid cannot dominate a prediction.
2. plus the distance-weighted mean residual of that regression at the k nearest grid shapes (in the
   standardised space of the basic features): the local corrections the global trend misses. A neighbour
   counts by distance only: the Huber weights tell the trend to ignore a shape that does not follow it,
   and exactly such a shape's residual is the local correction a nearby shape needs.
Without the fixed cost, a log-linear model must bend its trend to fit times of 10-40 us that are mostly
launch overhead (8-16 us on an H100 depending on the algorithm's dispatch count) next to times of 100+ us
that are mostly work.
The algorithm with the smallest predicted time wins. Fitting takes ~0.2 s (the plans), so it is redone whenever a
profile is loaded; `loo_report` measures how well the choice generalises (leave-one-out over the grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convroute.device.profile import DeviceProfile
from convroute.kernels import direct, gemm, im2col
from convroute.kernels.common import Precision, ceil_div
from convroute.params import ConvParams

RIDGE = 5e-3  # 1e-2 before the fixed cost: log(time - fixed cost) spans a wider range; chosen on fp32 + fp16 LOO
HUBER = 0.3  # residuals beyond this (natural log units, ~35 %) get a smaller weight
NEIGHBOURS = 4
FLOOR_SHARE = 0.75  # an algorithm's fixed cost per call, as a share of its fastest grid time (0.6-0.8 all fit)
PARALLEL_LEVELS = (4, 6)  # log2 of the work-item counts where the parallelism hinges sit


def base_features(p: ConvParams) -> dict[str, float]:
    """log2 of the quantities run time depends on."""
    cin_g, cout_g = p.c_in // p.groups, p.c_out // p.groups
    pixels = p.ho * p.wo
    values = {"macs": p.flops / 2, "input": p.n * p.c_in * p.h * p.w, "output": p.n * p.c_out * pixels,
              "weight": cin_g * p.c_out * p.kh * p.kw, "cin_g": cin_g, "cout_g": cout_g, "pixels": pixels,
              "kernel": p.kh * p.kw, "stride": p.stride[0] * p.stride[1], "groups": p.groups,
              "dilation": p.dilation[0] * p.dilation[1], "batch": p.n}
    return {k: math.log2(v) for k, v in values.items()}


def tiling_features(p: ConvParams) -> dict[str, float]:
    """log2 of the work a tiled kernel wastes on partial tiles, and of the parallelism the shape offers.

    Rows = output channels per group, columns = output pixels (x batch), depth = reduction length: the
    GEMM view every algorithm shares, whatever tiles a kernel happens to use on this device."""
    rows, cols = p.c_out // p.groups, p.n * p.ho * p.wo
    depth = (p.c_in // p.groups) * p.kh * p.kw
    f = {}
    for t in (4, 64, 128):
        f[f"rows_waste{t}"] = math.log2(-(-rows // t) * t / rows)
        f[f"cols_waste{t}"] = math.log2(-(-cols // t) * t / cols)
    f["depth_waste16"] = math.log2(-(-depth // 16) * 16 / depth)
    f["width_waste4"] = math.log2(-(-p.wo // 4) * 4 / p.wo)
    for t in (2, 4):  # the output plane cut in t x t tiles (Winograd F(2x2)/F(4x4), 2-D register blocks)
        tiles = -(-p.ho // t) * -(-p.wo // t)
        f[f"plane_waste{t}"] = math.log2(tiles * t * t / (p.ho * p.wo))
        f[f"plane_tiles{t}"] = math.log2(p.n * tiles)
    f["input_skipped"] = 0.0 if p.transposed else math.log2(_skip(p.stride[0], p.kh, p.dilation[0])
                                                            * _skip(p.stride[1], p.kw, p.dilation[1]))
    f |= window_features(p)
    f["tiles128"] = math.log2(-(-rows // 128) * -(-cols // 128) * p.groups)
    f["blocks1024"] = math.log2(max(1.0, p.n * p.c_out * p.ho * p.wo / 1024))
    for key in ("plane_tiles2", "plane_tiles4", "tiles128", "blocks1024"):
        for level in PARALLEL_LEVELS:  # hinges: below ~16 / ~64 work items a device idles, above it does not
            f[f"{key}_below{level}"] = max(0.0, level - f[key])
    return f


def window_features(p: ConvParams) -> dict[str, float]:
    """log2 of how far dilation spreads the kernel's window (its span (K-1)*d+1 against K, both axes) and of
    how far that span outruns the input (ASPP's dilation 24 on a 32x32 map: most taps read padding). A kernel
    staging the window's input (direct) pays for the span, a GEMM gathering taps (implicit_gemm) barely does:
    each algorithm's regression finds its own weight."""
    if p.transposed:
        return {"window_spread": 0.0, "window_outside": 0.0}
    span_h, span_w = ((p.kh - 1) * p.dilation[0] + 1), ((p.kw - 1) * p.dilation[1] + 1)
    return {"window_spread": math.log2(span_h * span_w / (p.kh * p.kw)),
            "window_outside": math.log2(max(1.0, span_h / p.h) * max(1.0, span_w / p.w))}


def _skip(stride: int, kernel: int, dilation: int) -> float:
    """How many input rows (columns) per one read when the stride outruns the window, as in a 1x1 stride-2 conv:
    the input it never reads still costs kernels that stage whole input tiles, and costs GEMM kernels nothing."""
    return max(1.0, stride / ((kernel - 1) * dilation + 1))


def plan_record(workgroups: int, steps: float) -> dict[str, float]:
    """A launch plan as features: log2 of the workgroups launched and of the K steps (direct: input channels)
    one workgroup sums, its share of K after splits and slices. Other plan quantities tried on the H100
    (log2 of splits, of slices, of the tile, of dispatches, a reduce dispatch) made the leave-one-out check worse."""
    return {"plan_workgroups": math.log2(max(1, workgroups)), "plan_steps": math.log2(max(1.0, steps))}


def gemm_plan(profile: DeviceProfile, precision: Precision, p: ConvParams, name: str) -> dict[str, float]:
    """im2col, pointwise and implicit_gemm: gemm.launch_plan for one GEMM of C_out rows, N x Ho x Wo columns
    and K = C_in x Kh x Kw (im2col: in column chunks; the first chunk's plan)."""
    k_pad = gemm.padded_k(p.c_in * p.kh * p.kw)
    cols = p.n * p.ho * p.wo
    if name == "im2col":
        cols = im2col.column_chunk(profile, precision, k_pad, cols, p)
    tile, splits = gemm.launch_plan(profile, p.c_out, cols, k_pad, precision)
    workgroups = ceil_div(p.c_out, tile.bm) * ceil_div(cols, tile.bn) * splits
    return plan_record(workgroups, ceil_div(k_pad // tile.bk, splits) / tile.ks)


def direct_plan(profile: DeviceProfile, p: ConvParams) -> dict[str, float]:
    """direct.choose_plan: output blocks, each over input channels split across workgroups; and the input
    patch a block stages per channel against the block's output pixels (the block's halo, and under dilation
    what its phases and tap segments stage: loads the kernel pays for whether or not they are padding)."""
    plan = direct.choose_plan(profile, p, p.n)
    rows, cols = plan.patch
    return (plan_record(plan.blocks(p, p.n) * plan.splits, plan.chunks_per_split(p) * plan.chunk)
            | {"plan_patch": math.log2(rows * cols / (plan.tile.br * plan.tile.bc))})


GEMM_ALGORITHMS = ("im2col", "pointwise", "implicit_gemm")


def plan_features(profile: DeviceProfile | None, precision: Precision, p: ConvParams, name: str) -> dict[str, float]:
    """Features of the launch plan `name`'s kernel makes for `p` on `profile`: jumps in run time where a plan
    changes (a GEMM past gemm.SLICE_MACS split across workgroups instead of sliced within them, direct splitting
    its input channels) that no smooth shape feature sees. For GPUs' workgroup kernels of the GEMM algorithms
    and direct; none for the others (winograd's BatchedGemm plan made the leave-one-out check worse on the
    H100), without a profile or on CPU adapters (register tiles)."""
    if profile is None or profile.gemm_style != "workgroup" or p.transposed:
        return {}
    if name in GEMM_ALGORITHMS and p.groups == 1:
        return gemm_plan(profile, precision, p, name)
    if name == "direct":
        return direct_plan(profile, p)
    return {}


def feature_vector(p: ConvParams, name: str = "", profile: DeviceProfile | None = None,
                   precision: Precision | None = None) -> np.ndarray:
    """The regression's features of `p` for algorithm `name`: shape, tiling and (with a profile) launch plan."""
    plan = plan_features(profile, precision or Precision.parse(), p, name)
    return np.array(list(base_features(p).values()) + list(tiling_features(p).values()) + list(plan.values()),
                    np.float64)


def distance_vector(p: ConvParams) -> np.ndarray:
    return np.array(list(base_features(p).values()), np.float64)


MIN_SCALE = 0.5  # log2 units: a feature nearly constant on the grid must not look extreme on a new shape


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.maximum(x.std(axis=0), MIN_SCALE)


@dataclass
class AlgorithmModel:
    floor_ms: float  # the fixed cost per call; the regression models log(time - floor_ms)
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    d_mean: np.ndarray
    d_scale: np.ndarray
    points: np.ndarray  # standardised distance features of the grid shapes
    residuals: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, d: np.ndarray, times_ms: np.ndarray) -> AlgorithmModel:
        floor = FLOOR_SHARE * float(times_ms.min())
        log_t = np.log(times_ms - floor)
        mean, scale = _standardise(x)
        a = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
        penalty = RIDGE * len(x) * np.eye(a.shape[1])
        penalty[0, 0] = 0.0
        w = np.ones(len(log_t))
        for _ in range(3):  # iteratively reweighted least squares for the Huber loss
            coef = np.linalg.solve(a.T @ (a * w[:, None]) + penalty, a.T @ (w * log_t))
            r = np.abs(log_t - a @ coef)
            w = np.where(r <= HUBER, 1.0, HUBER / np.maximum(r, 1e-12))
        d_mean, d_scale = _standardise(d)
        return cls(floor, mean, scale, coef, d_mean, d_scale, (d - d_mean) / d_scale, log_t - a @ coef)

    def predict_ms(self, x: np.ndarray, d: np.ndarray) -> float:
        trend = float(self.coef[0] + ((x - self.mean) / self.scale) @ self.coef[1:])
        dist = np.sqrt((((d - self.d_mean) / self.d_scale - self.points) ** 2).sum(axis=1))
        near = np.argsort(dist)[:NEIGHBOURS]
        weights = 1.0 / (dist[near] + 0.25)
        return self.floor_ms + math.exp(trend + float(weights @ self.residuals[near] / weights.sum()))


@dataclass
class CostModel:
    models: dict[str, AlgorithmModel]
    counts: dict[str, int]
    profile: DeviceProfile | None = None  # the device whose kernels' launch plans are features (plan_features)
    precision: Precision = Precision()

    @classmethod
    def fit(cls, samples, excluded: dict[str, str] | None = None, profile: DeviceProfile | None = None,
            dtype: str = "float32") -> CostModel:
        precision = Precision.parse(dtype)
        return cls.from_rows(training_rows(samples, excluded, profile, precision), profile, precision)

    @classmethod
    def from_rows(cls, rows: list[list[tuple]], profile: DeviceProfile | None, precision: Precision) -> CostModel:
        """The model fitted on training_rows' rows (loo_report reuses them for every fit)."""
        by_name: dict[str, list] = {}
        for sample_rows in rows:
            for name, x, d, t in sample_rows:
                by_name.setdefault(name, []).append((x, d, t))
        models, counts = {}, {}
        for name, data in by_name.items():
            if len(data) < 3:
                continue
            x, d, y = (np.array([r[i] for r in data]) for i in range(3))
            models[name], counts[name] = AlgorithmModel.fit(x, d, y), len(data)
        return cls(models, counts, profile, precision)

    def predict_ms(self, p: ConvParams, name: str) -> float | None:
        """Predicted time of `name` on `p`, None when the algorithm was not calibrated or its kernel makes no
        launch plan for `p` on the calibrated device (direct's patch past the workgroup memory, say)."""
        model = self.models.get(name)
        if model is None:
            return None
        try:
            features = feature_vector(p, name, self.profile, self.precision)
        except ValueError:
            return None
        return model.predict_ms(features, distance_vector(p))


def training_rows(samples, excluded: dict[str, str] | None, profile: DeviceProfile | None,
                  precision: Precision) -> list[list[tuple]]:
    """Per sample, (algorithm, features, distance features, ms) of each measured, not excluded algorithm: the
    launch plans behind the features take most of a fit's time, so they are computed once."""
    excluded = excluded or {}
    rows = []
    for s in samples:
        d = distance_vector(s.params)
        rows.append([(name, feature_vector(s.params, name, profile, precision), d, t)
                     for name, t in s.times_ms.items() if name not in excluded and t > 0])
    return rows


def loo_report(samples, excluded: dict[str, str] | None = None, profile: DeviceProfile | None = None,
               dtype: str = "float32") -> dict:
    """Leave-one-out over the grid: for each shape with 2+ measured algorithms, fit without it, choose, and
    compare with the measured fastest. Returns accuracy, mean regret, the worst case (regret, chosen and best
    ms, shape), the time-weighted regret (the share of total grid time lost to wrong choices) and the median
    error of a prediction (|log(predicted / measured)| over every algorithm of every shape, as a ratio minus 1)."""
    hits, regrets, chosen_total, best_total, log_errors = 0, [], 0.0, 0.0, []
    worst = (0.0, 0.0, 0.0, "")
    precision = Precision.parse(dtype)
    rows = training_rows(samples, excluded, profile, precision)
    for i, sample in enumerate(samples):
        times = sample.times_ms
        if len(times) < 2:
            continue
        model = CostModel.from_rows(rows[:i] + rows[i + 1:], profile, precision)
        predicted = {n: t for n in times if (t := model.predict_ms(sample.params, n)) is not None}
        if not predicted:
            continue
        log_errors += [abs(np.log(t / times[n])) for n, t in predicted.items()]
        choice = min(predicted, key=predicted.get)
        best = min(times.values())
        hits += times[choice] == best
        regrets.append(times[choice] / best - 1)
        if regrets[-1] > worst[0]:
            worst = (regrets[-1], times[choice], best, sample.params.describe())
        chosen_total += times[choice]
        best_total += best
    n = len(regrets)
    return {"shapes": n, "accuracy": hits / n if n else 1.0, "mean_regret": float(np.mean(regrets)) if n else 0.0,
            "worst_regret": worst[0], "worst_ms": worst[1:3], "worst_shape": worst[3],
            "total_regret": chosen_total / best_total - 1 if best_total else 0.0,
            "median_error": float(np.expm1(np.median(log_errors))) if log_errors else 0.0}

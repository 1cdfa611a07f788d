"""`convroute calibrate`: time and check every applicable algorithm on every shape of the grid, on this device
and in one dtype, then on coverage-pool shapes picked where the model knows least (calibration.active); the
result is a calibration profile (calibration.profile)."""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime

from convroute.cache import warn_once
from convroute.calibration.active import ActiveSampler
from convroute.calibration.grid import grid_shapes, pool_shapes
from convroute.calibration.profile import Calibration, Sample, calibrated_device, stored_profile
from convroute.device.gpu import Gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import ConvParams, params_key
from convroute.report.progress import progress_bar

SETTINGS = TimingSettings(warmup=1, repeats=15, min_repeats=3, budget_s=0.25, prune=3.0)
POOL_SHARE = 0.2  # of the budget kept for the coverage pool when the base grid would use it all


class _Shapes:
    """The base grid in order, then pool shapes as the sampler picks them; stops the base part at
    `base_budget_s` and the pool after as long as the base took (at least POOL_SHARE of `budget_s`), within
    `budget_s` (seconds since `start`): a GPU that measured the base grid in two minutes spends at most two more
    on the pool, not the whole budget."""

    def __init__(self, base, sampler: ActiveSampler, start: float, base_budget_s: float, budget_s: float):
        self.base, self.sampler, self.start = base, sampler, start
        self.base_budget_s, self.budget_s = base_budget_s, budget_s
        self.cut = ""  # what the budget cut short, if it did

    def __len__(self) -> int:
        return len(self.base) + len(self.sampler)

    def __iter__(self):
        for i, p in enumerate(self.base):
            if time.perf_counter() - self.start > self.base_budget_s:
                self.cut = f"{i} of {len(self.base)} base shapes"
                break
            yield p
        measured, base_s = 0, time.perf_counter() - self.start
        end_s = min(self.budget_s, base_s + max(base_s, POOL_SHARE * self.budget_s))
        while len(self.sampler):
            if time.perf_counter() - self.start > end_s:
                self.cut += (", " if self.cut else "") + f"{measured} of {measured + len(self.sampler)} pool shapes"
                return
            measured += 1
            yield self.sampler.pick()


def run_calibration(gpu: Gpu, grid: str = "full", *, settings: TimingSettings = SETTINGS, budget_s: float = 540.0,
                    progress: bool = True, algorithms: dict | None = None, dtype: str = "float32") -> Calibration:
    """Time and check every applicable algorithm on every base grid shape (in a fixed shuffled order, so a run
    cut short by its budget still spans the grid), then on pool shapes picked one by one (calibration.active),
    with activations and weights stored as `dtype`. The base grid gets `budget_s` less POOL_SHARE of it, or
    less where it finishes sooner; the pool as long again as the base took, within the budget (_Shapes)."""
    precision = Precision.parse(dtype)
    precision.require(gpu.profile)
    algorithms = ALGORITHMS if algorithms is None else algorithms
    algorithms = {n: cls for n, cls in algorithms.items() if cls.unsupported_precision(precision) is None}
    excluded: dict[str, str] = {}
    samples: list[Sample] = []
    pool = pool_shapes(grid, gpu.profile)
    sampler = ActiveSampler(pool, samples, excluded, calibrated_device_profile(gpu), precision.dtype)
    base = grid_shapes(grid, gpu.profile)
    start = time.perf_counter()
    shapes = _Shapes(base, sampler, start, budget_s * (1 - POOL_SHARE if pool else 1), budget_s)
    timing = ""
    bar = progress_bar(shapes, "calibrating", "shape", progress)
    for p in bar:
        bar.set_postfix_str(p.describe()[:60], refresh=False)
        sample, timing = measure_shape(gpu, p, algorithms, excluded, settings, precision)
        samples.append(sample)
    bar.close()
    if shapes.cut and grid != "quick":
        warn_once(f"convroute calibrate: time budget of {budget_s:.0f} s spent after {shapes.cut}; the model is "
                  f"fitted on those")
    return Calibration(gpu.profile.key, calibrated_device(gpu.profile), grid, timing, samples, excluded,
                       datetime.now(UTC).isoformat(timespec="seconds"), round(time.perf_counter() - start, 1),
                       not shapes.cut, precision.dtype)


def calibrated_device_profile(gpu: Gpu):
    """The profile the fitted model will see: the device as the calibration file stores it."""
    return stored_profile(calibrated_device(gpu.profile))


def measure_shape(gpu: Gpu, p: ConvParams, algorithms: dict, excluded: dict[str, str],
                  settings: TimingSettings, precision: Precision = FP32) -> tuple[Sample, str]:
    """Check each applicable, not yet excluded algorithm on `p`, then time the correct ones together; a wrong
    result (relative error at or above the dtype's tolerance) or a failure excludes the algorithm for this
    device and dtype (recorded in `excluded`)."""
    tolerance = TOLERANCES[precision.dtype]
    work = Workload(gpu, p, seed=zlib.crc32(params_key(p).encode()), rotations=settings.rotations,
                    precision=precision)
    kernels, errors, failed = {}, {}, {}
    try:
        for name, cls in algorithms.items():
            if cls.unsupported(p) or name in excluded:
                continue
            try:
                kernel = work.kernel(cls)
                errors[name] = work.error(kernel)
            except ValueError as err:  # this shape is beyond the algorithm here (a size limit): skip the shape
                failed[name] = str(err)
                continue
            except Exception as err:  # a driver or compiler failure: exclude, but never end the calibration
                excluded[name] = f"failed on {p.describe()}: {type(err).__name__}: {err}"
                continue
            if errors[name] < tolerance:
                kernels[name] = kernel
            else:
                excluded[name] = (f"wrong result on {p.describe()} in {precision.dtype}: relative error "
                                  f"{errors[name]:.3g} (tolerance {tolerance:g})")
        timings = work.time_all(kernels, settings) if kernels else {}
    finally:
        work.release()
    method = min((t.method for t in timings.values()), key=len, default="")
    return Sample(p, {n: t.median_ms for n, t in timings.items()}, errors, failed), method

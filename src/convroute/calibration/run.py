"""`convroute calibrate`: time and check every applicable algorithm on every shape of the grid, on this device
and in one dtype; the result is a calibration profile (calibration.profile)."""

from __future__ import annotations

import random
import time
import zlib
from datetime import UTC, datetime

from convroute.cache import warn_once
from convroute.calibration.grid import grid_shapes
from convroute.calibration.profile import Calibration, Sample, calibrated_device
from convroute.device.gpu import Gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import ConvParams, params_key
from convroute.report.progress import progress_bar

SETTINGS = TimingSettings(warmup=1, repeats=15, min_repeats=3, budget_s=0.25, prune=3.0)


def run_calibration(gpu: Gpu, grid: str = "full", *, settings: TimingSettings = SETTINGS, budget_s: float = 540.0,
                    progress: bool = True, algorithms: dict | None = None, dtype: str = "float32") -> Calibration:
    """Time and check every applicable algorithm on every grid shape (in a fixed shuffled order, so a run cut
    short by `budget_s` still spans the grid), with activations and weights stored as `dtype`."""
    precision = Precision.parse(dtype)
    precision.require(gpu.profile)
    algorithms = ALGORITHMS if algorithms is None else algorithms
    algorithms = {n: cls for n, cls in algorithms.items() if cls.unsupported_precision(precision) is None}
    shapes = grid_shapes(grid, gpu.profile)
    random.Random(1).shuffle(shapes)
    excluded: dict[str, str] = {}
    samples: list[Sample] = []
    timing = ""
    start = time.perf_counter()
    bar = progress_bar(shapes, "calibrating", "shape", progress)
    for p in bar:
        if time.perf_counter() - start > budget_s:
            warn_once(f"convroute calibrate: time budget of {budget_s:.0f} s spent after {len(samples)} of "
                      f"{len(shapes)} shapes; the model is fitted on those")
            break
        bar.set_postfix_str(p.describe()[:60], refresh=False)
        sample, timing = measure_shape(gpu, p, algorithms, excluded, settings, precision)
        samples.append(sample)
    bar.close()
    return Calibration(gpu.profile.key, calibrated_device(gpu.profile), grid, timing, samples, excluded,
                       datetime.now(UTC).isoformat(timespec="seconds"), round(time.perf_counter() - start, 1),
                       len(samples) == len(shapes), precision.dtype)


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

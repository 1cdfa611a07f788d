"""Calibration: time and check every applicable algorithm on the grid, and keep the result per device.

The profile file holds the raw measurements (times and errors per grid shape), the algorithms excluded for
wrong results, and how it was measured; the routing model is fitted from the samples when the file is
loaded (milliseconds), so a better model needs no re-measurement.

One profile per device and dtype: `convroute calibrate --dtype float16` measures the grid with f16 storage
(f32 sums) and keeps it in its own file; exclusions and the correctness bound are per dtype.
"""

from __future__ import annotations

import random
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from convroute.device.gpu import Gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision, dtype_name
from convroute.measure.cache import device_file, file_header, read_json, warn_once, write_json
from convroute.measure.grid import GRIDS, params_from_dict, params_key, params_to_dict
from convroute.measure.model import CostModel
from convroute.measure.timing import TimingSettings, Workload
from convroute.params import ConvParams

FORMAT, VERSION = "convroute-calibration", 1
# relative error above which an algorithm is wrong on this device (fp32 gives ~1e-6, fp16 storage ~1e-3)
TOLERANCES = {"float32": 1e-4, "float16": 1e-2}
TOLERANCE = TOLERANCES["float32"]
SETTINGS = TimingSettings(warmup=1, repeats=15, min_repeats=3, budget_s=0.25, prune=3.0)


@dataclass
class Sample:
    params: ConvParams
    times_ms: dict[str, float]
    errors: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)  # algorithm -> why it could not run this shape


@dataclass
class Calibration:
    device_key: str
    device: dict
    grid: str
    timing: str
    samples: list[Sample]
    excluded: dict[str, str] = field(default_factory=dict)  # algorithm -> why (a wrong result, an error)
    created: str = ""
    seconds: float = 0.0
    complete: bool = True
    dtype: str = "float32"  # storage of activations and weights during the measurements
    _model: object = None

    @property
    def model(self):
        """The fitted routing model (measure.model.CostModel), fitted on first use."""
        if self._model is None:
            self._model = CostModel.fit(self.samples, self.excluded)
        return self._model

    def to_json(self) -> dict:
        return file_header(FORMAT, VERSION, self.device_key, self.dtype) | {
            "device": self.device, "grid": self.grid, "timing": self.timing, "created": self.created,
            "seconds": self.seconds, "complete": self.complete, "excluded": self.excluded,
            "samples": [{"params": params_to_dict(s.params), "times_ms": s.times_ms, "errors": s.errors,
                         "failed": s.failed} for s in self.samples]}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        samples = []
        for item in data["samples"]:
            times = {str(k): float(v) for k, v in item["times_ms"].items()}
            if any(not v > 0 for v in times.values()):
                raise ValueError("a sample has a non-positive time")
            errors = {str(k): float(v) for k, v in item.get("errors", {}).items()}
            failed = {str(k): str(v) for k, v in item.get("failed", {}).items()}
            samples.append(Sample(params_from_dict(item["params"]), times, errors, failed))
        excluded = {str(k): str(v) for k, v in data.get("excluded", {}).items()}
        return cls(str(data["device_key"]), dict(data.get("device", {})), str(data.get("grid", "")),
                   str(data.get("timing", "")), samples, excluded, str(data.get("created", "")),
                   float(data.get("seconds", 0.0)), bool(data.get("complete", True)),
                   dtype_name(data.get("dtype", "float32")))


def device_record(profile: DeviceProfile) -> dict:
    return {"name": profile.name, "driver": profile.driver, "backend": profile.backend, "family": profile.family,
            "vendor_id": profile.vendor_id, "adapter_type": profile.adapter_type}


def profile_path(profile: DeviceProfile, dtype: str = "float32") -> Path:
    return device_file("calibration", profile.key, dtype_name(dtype))


def calibrate_command(dtype: str = "float32") -> str:
    return "convroute calibrate" + ("" if dtype == "float32" else f" --dtype {dtype}")


def run_calibration(gpu: Gpu, grid: str = "full", *, settings: TimingSettings = SETTINGS, budget_s: float = 540.0,
                    progress: bool = True, algorithms: dict | None = None, dtype: str = "float32") -> Calibration:
    """Time and check every applicable algorithm on every grid shape (in a fixed shuffled order, so a run cut
    short by `budget_s` still spans the grid), with activations and weights stored as `dtype`."""
    precision = Precision.parse(dtype)
    precision.require(gpu.profile)
    algorithms = ALGORITHMS if algorithms is None else algorithms
    algorithms = {n: cls for n, cls in algorithms.items() if cls.unsupported_precision(precision) is None}
    shapes = GRIDS[grid]()
    random.Random(1).shuffle(shapes)
    excluded: dict[str, str] = {}
    samples: list[Sample] = []
    timing = ""
    start = time.perf_counter()
    bar = _progress(len(shapes), progress)
    for p in shapes:
        if time.perf_counter() - start > budget_s:
            warn_once(f"convroute calibrate: time budget of {budget_s:.0f} s spent after {len(samples)} of "
                      f"{len(shapes)} shapes; the model is fitted on those")
            break
        bar.set_postfix_str(p.describe()[:60], refresh=False)
        sample, timing = measure_shape(gpu, p, algorithms, excluded, settings, precision)
        samples.append(sample)
        bar.update(1)
    bar.close()
    return Calibration(gpu.profile.key, device_record(gpu.profile), grid, timing, samples, excluded,
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


def save_calibration(cal: Calibration) -> Path | None:
    path = device_file("calibration", cal.device_key, cal.dtype)
    return path if write_json(path, cal.to_json()) else None


_LOADED: dict[tuple[str, str], tuple[tuple, Calibration | None]] = {}


def load_calibration(profile: DeviceProfile, dtype: str = "float32") -> Calibration | None:
    """This device's calibration in `dtype` from the cache directory, or None (with a warning when a file
    exists but is corrupt, from another device, in another dtype or of another format). Memoised on the
    file's mtime and size."""
    dtype = dtype_name(dtype)
    path = profile_path(profile, dtype)
    try:
        stat = path.stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
    except OSError:
        return None
    cached = _LOADED.get((profile.key, dtype))
    if cached and cached[0] == stamp:
        return cached[1]
    data = read_json(path, FORMAT, VERSION, profile.key, dtype, remedy=f"run `{calibrate_command(dtype)}`")
    cal = None
    if data is not None:
        try:
            cal = Calibration.from_json(data)
            if not cal.samples:
                raise ValueError("it holds no measurements")
        except Exception as err:  # whatever is wrong inside the file, refuse it rather than crash
            warn_once(f"convroute: ignoring {path}: malformed calibration ({type(err).__name__}: {err})")
            cal = None
    _LOADED[(profile.key, dtype)] = (stamp, cal)
    return cal


def calibration_for(profile: DeviceProfile, dtype: str = "float32") -> Calibration | None:
    """The calibration that routing in `dtype` uses: this dtype's, else the float32 one (its `.dtype` says
    which; callers must say so when it differs), else None."""
    dtype = dtype_name(dtype)
    cal = load_calibration(profile, dtype)
    if cal is None and dtype != "float32":
        cal = load_calibration(profile, "float32")
    return cal


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the [report] extra; without it, no bar
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc="calibrating", unit="shape", dynamic_ncols=True)


class _NoBar:
    def set_postfix_str(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass

"""Measuring candidates on the adapter in use and keeping the results: the autotune file (one per device +
driver and dtype, in the cache directory), which the `autotune` policy fills for every shape it routes and the
`calibrated` policy for the convs outside its calibration (router.refine)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from convroute.cache import device_file, file_header, read_json, warn_once, write_json
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import ConvParams, params_key

FORMAT, VERSION = "convroute-autotune", 1
TUNING = threading.Lock()  # threads take turns: they share the cache, and timings must not overlap
SETTINGS = TimingSettings(warmup=1, repeats=20, min_repeats=3, budget_s=0.3, prune=3.0)


def tune(gpu, p: ConvParams, candidates: list[str], precision: Precision = FP32,
         settings: TimingSettings = SETTINGS) -> dict:
    """Check each candidate against the float64 reference, time the correct ones together: an entry of the
    autotune file."""
    tolerance = TOLERANCES[precision.dtype]
    work = Workload(gpu, p, seed=1, precision=precision)
    kernels, wrong, cannot = {}, {}, {}
    try:
        for name in candidates:
            try:
                kernel = work.kernel(ALGORITHMS[name])
            except ValueError as err:  # beyond the algorithm here (a size limit): not a candidate
                cannot[name] = str(err)
                continue
            error = work.error(kernel)
            if error < tolerance:
                kernels[name] = kernel
            else:
                wrong[name] = error
        timings = work.time_all(kernels, settings) if kernels else {}
        dispatches = {name: work.dispatches(kernel) for name, kernel in kernels.items()}
    finally:
        work.release()
    times = {n: t.median_ms for n, t in timings.items()}
    method = min((t.method for t in timings.values()), key=len, default="")
    best = min(times, key=times.get) if times else None
    return {"algorithm": best, "times_ms": times, "dispatches": dispatches, "wrong": wrong, "cannot": cannot,
            "method": method, "when": datetime.now(UTC).isoformat(timespec="seconds")}


def wrong_note(entry: dict) -> str:
    return ", ".join(f"{n} gave a wrong result (relative error {e:.2g})" for n, e in entry.get("wrong", {}).items())


def measured_names(entry: dict) -> set[str]:
    """Every algorithm the entry says something about: timed, wrong, or unable to run the shape."""
    return set(entry.get("times_ms", {})) | set(entry.get("wrong", {})) | set(entry.get("cannot", {}))


class AutotuneCache:
    """{params key: entry} for one device and dtype, on disk; entries from other processes are merged on
    write."""

    _memory: dict[str, dict] = {}  # file path -> entries, also kept when the cache directory is unwritable

    def __init__(self, device_key: str, dtype: str = "float32"):
        self.device_key, self.dtype = device_key, dtype
        self.path = device_file("autotune", device_key, dtype)

    def _load(self) -> dict:
        data = read_json(self.path, FORMAT, VERSION, self.device_key, self.dtype,
                         remedy="its shapes are tuned again as they come")
        entries = data.get("entries") if data else None
        if data is not None and not isinstance(entries, dict):
            warn_once(f"convroute: ignoring {self.path}: malformed autotune cache")
            entries = None
        return {k: v for k, v in (entries or {}).items() if valid_entry(v)}

    def get(self, p: ConvParams) -> dict | None:
        key = params_key(p)
        memory = self._memory.setdefault(str(self.path), {})
        if key not in memory:
            memory.update({k: v for k, v in self._load().items() if k not in memory})
        return memory.get(key)

    def put(self, p: ConvParams, entry: dict) -> None:
        memory = self._memory.setdefault(str(self.path), {})
        memory[params_key(p)] = entry
        entries = self._load() | memory
        write_json(self.path, file_header(FORMAT, VERSION, self.device_key, self.dtype) | {"entries": entries})


def valid_entry(entry) -> bool:
    try:
        times = entry["times_ms"]
        return (isinstance(entry["algorithm"], str | None) and isinstance(times, dict)
                and all(isinstance(t, int | float) and t > 0 for t in times.values())
                and isinstance(entry.get("wrong", {}), dict) and isinstance(entry.get("cannot", {}), dict)
                and isinstance(entry["method"], str)
                and isinstance(entry["when"], str) and (entry["algorithm"] is None or entry["algorithm"] in times))
    except (KeyError, TypeError):
        return False

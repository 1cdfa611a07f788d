"""The `autotune` policy (like cudnn.benchmark): the first time a shape is routed on the adapter in use, every
applicable, allowed algorithm is checked against the host reference and timed; the fastest correct one is
kept in an on-disk cache (one file per device + driver and dtype) and reused by later calls and later
processes. In float16 the candidates run with f16 storage and the correctness bound is 1e-2.

Unlike seed and calibrated, it needs the GPU: asked about another device (a family stand-in, say), it routes
as `calibrated` and says so.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from convroute.cache import device_file, file_header, read_json, warn_once, write_json
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import ConvParams, params_key
from convroute.router.calibrated import calibrated_route, ms, seed_fallback
from convroute.router.exclusions import applicable

FORMAT, VERSION = "convroute-autotune", 1
_TUNING = threading.Lock()  # threads take turns: they share the cache, and timings must not overlap
SETTINGS = TimingSettings(warmup=1, repeats=20, min_repeats=3, budget_s=0.3, prune=3.0)


def autotune_route(p: ConvParams, device: DeviceProfile, blocked: dict[str, str],
                   dtype: str = "float32") -> tuple[str, str]:
    gpu = get_gpu()
    if gpu.profile.key != device.key:
        algorithm, reason = calibrated_route(p, device, blocked, dtype)
        return algorithm, (f"autotune measures only the adapter in use ({gpu.profile.name}), not "
                           f"{device.name or device.family} -> {reason}")
    candidates = [n for n in applicable(p) if n not in blocked]
    if not candidates:
        return seed_fallback(p, device, blocked, "autotune has no allowed candidate")
    if len(candidates) == 1:
        return candidates[0], f"autotune: {candidates[0]} is the only allowed applicable algorithm (nothing to time)"
    precision = Precision.parse(dtype)
    precision.require(gpu.profile)
    with _TUNING:
        cache = AutotuneCache(device.key, precision.dtype)
        entry, origin = cache.get(p), "cached"
        if not usable(entry, candidates):
            entry, origin = tune(gpu, p, candidates, precision), "tuned now"
            cache.put(p, entry)
    times = entry["times_ms"]
    if entry["algorithm"] is None:
        return seed_fallback(p, device, blocked, f"autotune found no correct candidate ({wrong_note(entry)})")
    ranked = sorted(times, key=times.get)
    label = "autotune" if precision.dtype == "float32" else f"autotune ({precision.dtype})"
    reason = f"{label}: {ranked[0]} measured {ms(times[ranked[0]])}"
    if len(ranked) > 1:
        reason += " vs " + ", ".join(f"{n} {ms(times[n])}" for n in ranked[1:])
    if entry.get("wrong"):
        reason += f", {wrong_note(entry)}"
    reason += "".join(f", {n} cannot run it ({why})" for n, why in entry.get("cannot", {}).items())
    return entry["algorithm"], f"{reason} ({origin}, {entry['method']}, {entry['when']})"


def usable(entry, candidates: list[str]) -> bool:
    """A cached entry is reused when its winner is still allowed and it measured every current candidate."""
    if not isinstance(entry, dict):
        return False
    measured = set(entry.get("times_ms", {})) | set(entry.get("wrong", {})) | set(entry.get("cannot", {}))
    return entry.get("algorithm") in candidates and set(candidates) <= measured


def tune(gpu, p: ConvParams, candidates: list[str], precision: Precision = FP32) -> dict:
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
        timings = work.time_all(kernels, SETTINGS) if kernels else {}
    finally:
        work.release()
    times = {n: t.median_ms for n, t in timings.items()}
    method = min((t.method for t in timings.values()), key=len, default="")
    best = min(times, key=times.get) if times else None
    return {"algorithm": best, "times_ms": times, "wrong": wrong, "cannot": cannot, "method": method,
            "when": datetime.now(UTC).isoformat(timespec="seconds")}


def wrong_note(entry: dict) -> str:
    return ", ".join(f"{n} gave a wrong result (relative error {e:.2g})" for n, e in entry.get("wrong", {}).items())


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

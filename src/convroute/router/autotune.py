"""The `autotune` policy (like cudnn.benchmark): the first time a shape is routed on the adapter in use, every
applicable, allowed algorithm is checked against the host reference and timed; the fastest correct one is
kept in an on-disk cache (one file per device + driver and dtype) and reused by later calls and later
processes. In float16 the candidates run with f16 storage and the correctness bound is 1e-2.

Unlike seed and calibrated, it needs the GPU: asked about another device (a family stand-in, say), it routes
as `calibrated` and says so.
"""

from __future__ import annotations

from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import Precision
from convroute.params import ConvParams
from convroute.router.calibrated import calibrated_route, ms, seed_fallback
from convroute.router.exclusions import applicable
from convroute.router.measured import SETTINGS, TUNING, AutotuneCache, measured_names, tune, wrong_note


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
    with TUNING:
        cache = AutotuneCache(device.key, precision.dtype)
        entry, origin = cache.get(p), "cached"
        if not usable(entry, candidates):
            entry, origin = tune(gpu, p, candidates, precision, SETTINGS), "tuned now"
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
    return entry.get("algorithm") in candidates and set(candidates) <= measured_names(entry)

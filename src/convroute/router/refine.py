"""Online refinement for `calibrated`: a conv outside what the calibration measured (calibration.coverage) has
its top predicted candidates checked and timed once on the adapter in use, within a small budget, and the
result goes to the autotune file (router.measured), where later routings of the same conv, in this process,
later ones and on identical machines sharing CONVROUTE_CACHE_DIR, find it and time nothing.

Off with CONVROUTE_REFINE=0 or `refine=False` (pure prediction). A profile other than the adapter in use (a
family stand-in, another device's calibration) is only predicted: nothing here can time it.
"""

from __future__ import annotations

from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import Precision
from convroute.measure.timing import TimingSettings
from convroute.params import ConvParams
from convroute.router.measured import TUNING, AutotuneCache, measured_names, tune
from convroute.settings import env_flag

TOP = 3  # candidates timed: the best predicted ones
SETTINGS = TimingSettings(warmup=1, repeats=10, min_repeats=3, budget_s=0.1, prune=3.0)  # per candidate
CONFIRM = 1.2  # a measurement that overturns the prediction by less than this is timed again before it counts
DISPATCH_MS = 0.007  # host time to encode one dispatch (wgpu-py), charged per dispatch when measured times compete


def env_refine() -> bool:
    return env_flag("CONVROUTE_REFINE", True)


def cannot_measure(device: DeviceProfile, precision: Precision) -> str | None:
    """Why refinement cannot time convs for `device` here, or None."""
    gpu = get_gpu()
    if gpu.profile.key != device.key:
        return f"{device.name or device.family} is not the adapter in use ({gpu.profile.name})"
    try:
        precision.require(gpu.profile)
    except ValueError:
        return f"{gpu.profile.name} has no {precision.dtype} kernels"
    return None


def measure_top(p: ConvParams, device: DeviceProfile, ranked: list[str], allowed: list[str],
                precision: Precision) -> tuple[dict, str]:
    """(entry, origin): the autotune file's entry for `p` when it already measured the TOP best predicted of
    `ranked` (origin "measured before"), else one with those timed now and merged into it ("measured now")."""
    top = ranked[:TOP]
    with TUNING:
        cache = AutotuneCache(device.key, precision.dtype)
        entry = cache.get(p)
        if (entry is not None and set(top) <= measured_names(entry) and _winner(entry, allowed)
                and set(entry["times_ms"]) <= set(entry.get("dispatches", {}))):
            return entry, "measured before"
        new = confirm(p, tune(get_gpu(), p, top, precision, SETTINGS), top[0], precision)
        if entry is not None:  # keep what an earlier measurement (autotune's, say) found about the others
            new = new | {k: entry.get(k, {}) | new[k] for k in ("times_ms", "dispatches", "wrong", "cannot")}
            new["algorithm"] = _winner(new, allowed)
        cache.put(p, new)
        return new, "measured now"


def confirm(p: ConvParams, entry: dict, predicted: str, precision: Precision) -> dict:
    """`entry` with the predicted best and the measured winner timed a second time and each one's two medians
    averaged, when the winner beats the prediction by less than CONFIRM: one noisy timing (seen on lavapipe: a
    conv's im2col measured 0.208 vs pointwise 0.239 ms once, then 0.25-0.35 vs 0.18-0.23 ms six times) must not
    overturn the model on a close call for good."""
    times = entry["times_ms"]
    winner = entry["algorithm"]
    if winner in (None, predicted) or predicted not in times or times[predicted] >= times[winner] * CONFIRM:
        return entry
    again = tune(get_gpu(), p, [predicted, winner], precision, SETTINGS)["times_ms"]
    times = times | {n: (times[n] + again[n]) / 2 for n in (predicted, winner) if n in again}
    return entry | {"times_ms": times, "algorithm": min(times, key=times.get), "confirmed": sorted(again)}


def _winner(entry: dict, allowed: list[str]) -> str | None:
    return next(iter(allowed_times(entry, allowed)), None)


def allowed_times(entry: dict, allowed: list[str]) -> dict[str, float]:
    """The entry's times of the algorithms allowed now, fastest first."""
    times = {n: t for n, t in entry["times_ms"].items() if n in allowed}
    return dict(sorted(times.items(), key=lambda item: item[1]))


def charged_times(entry: dict, allowed: list[str]) -> dict[str, float]:
    """allowed_times ordered by time plus DISPATCH_MS per dispatch. A conv timed alone pays its dispatches' GPU
    cost but not the host's encoding of them, which a model's call pays too (the H100, session 29: shufflenet's
    fp16 plan took a two-dispatch direct measured 7 % faster alone on eight convs, and its calls ran 6-10 %
    slower than fp32's one-dispatch picks). Entries from before dispatches were counted charge nothing."""
    counts = entry.get("dispatches", {})
    times = allowed_times(entry, allowed)
    return dict(sorted(times.items(), key=lambda item: item[1] + DISPATCH_MS * counts.get(item[0], 1)))

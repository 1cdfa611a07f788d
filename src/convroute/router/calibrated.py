"""The `calibrated` policy: the algorithm this device's calibration predicts fastest.

Without a calibration profile for the device (run `convroute calibrate`) it warns once and routes as seed.
Routing in float16 uses the float16 calibration (`convroute calibrate --dtype float16`); without one it uses
the float32 calibration, warns once and says so in every reason.

A conv outside what the calibration measured (calibration.coverage: dilation 24 when the grid went to 4, a
1x7 kernel, 2048 channels per group) is not left to the prediction: its top predicted candidates are timed
once on the adapter in use and the result kept in the autotune file (router.refine); the reason says so. So is
a close call, where candidates are predicted closer than the model's typical error (Calibration.close_call,
from calibrate's leave-one-out check: on a sparse or noisy calibration, such as `calibrate --quick`'s, more
convs are close calls).
"""

from __future__ import annotations

from convroute.cache import warn_once
from convroute.calibration.profile import calibration_for
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import Precision
from convroute.params import ConvParams
from convroute.router.exclusions import applicable, avoid_blocked
from convroute.router.measured import wrong_note
from convroute.router.refine import DISPATCH_MS, TOP, cannot_measure, charged_times, env_refine, measure_top
from convroute.router.seed import seed_route
from convroute.settings import env_flag

SEED_TIE = 1.1  # with $CONVROUTE_SEED_TIE on: seed's pick kept when measured within this of the fastest


def calibrated_route(p: ConvParams, device: DeviceProfile, blocked: dict[str, str],
                     dtype: str = "float32", calibration=None, refine: bool | None = None) -> tuple[str, str]:
    """`calibration` defaults to the device's own (from the cache directory); `derive-rule` passes the one it
    scores. `refine`: measure convs outside the calibration (default: CONVROUTE_REFINE, on, when routing with
    the device's own calibration; off with a calibration passed in)."""
    if refine is None:
        refine = calibration is None and env_refine()
    calibration = calibration or calibration_for(device, dtype)
    who = device.name or device.family
    command = "convroute calibrate" + ("" if dtype == "float32" else f" --dtype {dtype}")
    if calibration is None:
        warn_once(f"convroute: no calibration profile for {who} (run `{command}` on it); policy 'calibrated' "
                  f"routes as 'seed'")
        return seed_fallback(p, device, blocked, "no calibration profile for this device")
    label = "calibrated" if dtype == "float32" else f"calibrated ({dtype})"
    if calibration.dtype != dtype:
        warn_once(f"convroute: no {dtype} calibration profile for {who} (run `{command}` on it); policy "
                  f"'calibrated' uses its float32 calibration for {dtype}")
        label = f"calibrated (float32 profile: no {dtype} calibration for this device, run `{command}`)"
    predicted, notes = {}, []
    allowed = [n for n in applicable(p) if n not in blocked]
    for name, kernel in ALGORITHMS.items():
        if kernel.unsupported(p):
            notes.append(f"{name} n/a")
        elif name in blocked:
            notes.append(f"{name} excluded ({blocked[name]})")
        elif len(allowed) > 1 and (t := calibration.model.predict_ms(p, name)) is not None:
            predicted[name] = t
        elif len(allowed) > 1 and name in calibration.model.models:
            notes.append(f"{name} has no launch plan for it on the calibrated device")
        elif len(allowed) > 1:
            notes.append(f"{name} not calibrated (recalibrate to include it)")
    if len(allowed) == 1:
        only = f"{label}: {allowed[0]} is the only allowed applicable algorithm"
        return allowed[0], only + "".join(f", {note}" for note in notes if "n/a" not in note)
    if not predicted:
        return seed_fallback(p, device, blocked, f"{label}: no calibrated algorithm can run this conv")
    ranked = sorted(predicted, key=predicted.get)
    notes_text = "".join(f", {note}" for note in notes)
    prediction = f"{ranked[0]} predicted {ms(predicted[ranked[0]])}"
    if len(ranked) > 1:
        prediction += " vs " + ", ".join(f"{n} {ms(predicted[n])}" for n in ranked[1:])
    doubt = doubt_about(calibration, p, predicted, ranked)
    if doubt is None:
        return ranked[0], f"{label}: {prediction}{notes_text}"
    why, candidates = doubt
    why_not = "refinement is off" if not refine else cannot_measure(device, Precision.parse(dtype))
    if why_not is None:
        entry, origin = measure_top(p, device, candidates, allowed, Precision.parse(dtype))
        times = charged_times(entry, allowed)
        if times:
            wrong = f", {wrong_note(entry)}" if entry.get("wrong") else ""
            counts = entry.get("dispatches", {})
            measured = ", ".join(f"{n} {ms(t)}" + (f" in {counts[n]} dispatches" if counts.get(n, 1) > 1 else "")
                                 for n, t in times.items())
            if any(count > 1 for count in counts.values()):
                measured += f" (each dispatch charged {ms(DISPATCH_MS)} of host encoding)"
            choice, kept = tie_to_seed(p, device, blocked, times)
            return choice, (f"{label}: {why}: measured {measured}{wrong} ({origin}, {entry['method']}, "
                            f"{entry['when']}; {prediction}){kept}{notes_text}")
        why_not = f"no candidate measured correctly ({wrong_note(entry) or 'none could run'})"
    return ranked[0], f"{label}: {prediction}{notes_text}; {why}, not measured: {why_not}"


def refined_route(p: ConvParams, device: DeviceProfile, blocked: dict[str, str], calibration,
                  times_ms: dict[str, float]) -> str:
    """calibrated's pick for `p` where its algorithms' times are already known (`times_ms`, a bench's or the
    held-out score's): the prediction, or, where compiling would measure (outside the calibrated range, a close
    call), the fastest of the candidates it would time, as measured in `times_ms`."""
    allowed = [n for n in applicable(p) if n not in blocked]
    predicted = {n: t for n in allowed if (t := calibration.model.predict_ms(p, n)) is not None}
    ranked = sorted(predicted, key=predicted.get)
    doubt = doubt_about(calibration, p, predicted, ranked) if len(allowed) > 1 else None
    timed = [n for n in doubt[1][:TOP] if n in times_ms] if doubt else []
    if not timed:
        return calibrated_route(p, device, blocked, calibration.dtype, calibration, refine=False)[0]
    return tie_to_seed(p, device, blocked, {n: times_ms[n] for n in sorted(timed, key=times_ms.get)})[0]


def doubt_about(calibration, p: ConvParams, predicted: dict[str, float],
                ranked: list[str]) -> tuple[str, list[str]] | None:
    """Why the prediction alone will not do for `p`, with the candidates worth timing (best predicted first), or
    None: outside the calibrated range (the top candidates), or a close call (those predicted within the
    model's typical error of the best)."""
    if len(ranked) < 2:
        return None
    verdict = calibration.coverage.verdict(p)
    if not verdict.covered:
        return f"outside the calibrated range ({verdict.why()})", ranked
    margin = host_margin()
    close = [n for n in ranked if predicted[n] < predicted[ranked[0]] * calibration.close_call + margin]
    if len(close) < 2:
        return None
    within = f"{100 * (calibration.close_call - 1):.0f}%" + (f" + {ms(margin)}" if margin else "")
    return f"a close call (predicted within {within}, the model's typical error here)", close


def host_margin() -> float:
    """With $CONVROUTE_HOST_CLOSE_CALLS on (off: on trial), candidates predicted within two dispatches' host
    encoding (2 x DISPATCH_MS) of the best are a close call too, so they are measured and each one's dispatches
    charged (refine.charged_times): a small conv's split GEMM or im2col predicted a few us ahead of a
    one-dispatch candidate is then not taken on its GPU time alone."""
    return 2 * DISPATCH_MS if env_flag("CONVROUTE_HOST_CLOSE_CALLS", False) else 0.0


def tie_to_seed(p: ConvParams, device: DeviceProfile, blocked: dict[str, str],
                times: dict[str, float]) -> tuple[str, str]:
    """(algorithm, note): the measured fastest, or seed's pick where $CONVROUTE_SEED_TIE is on and seed's pick
    measured within SEED_TIE of it (a margin that small, measured on the conv alone, need not hold inside a
    model)."""
    fastest = next(iter(times))
    if not env_flag("CONVROUTE_SEED_TIE", False):
        return fastest, ""
    seed = avoid_blocked(p, *seed_route(p, device), blocked)[0]
    if seed == fastest or seed not in times or times[seed] > times[fastest] * SEED_TIE:
        return fastest, ""
    return seed, f"; kept seed's {seed}, measured within {100 * (SEED_TIE - 1):.0f}% of {fastest}"


def seed_fallback(p: ConvParams, device: DeviceProfile, blocked: dict[str, str], why: str) -> tuple[str, str]:
    algorithm, reason = avoid_blocked(p, *seed_route(p, device), blocked)
    return algorithm, f"{why} -> seed: {reason}"


def ms(t: float) -> str:
    return f"{t:.3g} ms"

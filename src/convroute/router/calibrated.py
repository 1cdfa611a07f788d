"""The `calibrated` policy: the algorithm this device's calibration predicts fastest.

Without a calibration profile for the device (run `convroute calibrate`) it warns once and routes as seed.
"""

from __future__ import annotations

from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.measure.cache import warn_once
from convroute.measure.calibration import load_calibration
from convroute.params import ConvParams
from convroute.router.exclusions import applicable, avoid_blocked
from convroute.router.seed import seed_route


def calibrated_route(p: ConvParams, device: DeviceProfile, blocked: dict[str, str]) -> tuple[str, str]:
    calibration = load_calibration(device)
    if calibration is None:
        warn_once(f"convroute: no calibration profile for {device.name or device.family} "
                  f"(run `convroute calibrate` on it); policy 'calibrated' routes as 'seed'")
        return seed_fallback(p, device, blocked, "no calibration profile for this device")
    predicted, notes = {}, []
    allowed = [n for n in applicable(p) if n not in blocked]
    for name, kernel in ALGORITHMS.items():
        if kernel.unsupported(p):
            notes.append(f"{name} n/a")
        elif name in blocked:
            notes.append(f"{name} excluded ({blocked[name]})")
        elif len(allowed) > 1 and (t := calibration.model.predict_ms(p, name)) is not None:
            predicted[name] = t
        elif len(allowed) > 1:
            notes.append(f"{name} not calibrated (recalibrate to include it)")
    if len(allowed) == 1:
        only = f"calibrated: {allowed[0]} is the only allowed applicable algorithm"
        return allowed[0], only + "".join(f", {note}" for note in notes if "n/a" not in note)
    if not predicted:
        return seed_fallback(p, device, blocked, "no calibrated algorithm can run this conv")
    ranked = sorted(predicted, key=predicted.get)
    best = ranked[0]
    reason = f"calibrated: {best} predicted {ms(predicted[best])}"
    if len(ranked) > 1:
        reason += " vs " + ", ".join(f"{n} {ms(predicted[n])}" for n in ranked[1:])
    return best, reason + "".join(f", {note}" for note in notes)


def seed_fallback(p: ConvParams, device: DeviceProfile, blocked: dict[str, str], why: str) -> tuple[str, str]:
    algorithm, reason = avoid_blocked(p, *seed_route(p, device), blocked)
    return algorithm, f"{why} -> seed: {reason}"


def ms(t: float) -> str:
    return f"{t:.3g} ms"

"""Algorithms a device must not run: the denylist's matches, those without kernels for the dtype, those
calibration found wrong there (in the dtype's calibration, else the float32 one), those that could not
size a calibration shape with weights as large, and those the device's self-test found wrong on the conv's
shape class (calibration.selftest_results).

Every policy routes around them; seed falls back to the next applicable algorithm in FALLBACK order.
"""

from __future__ import annotations

from convroute.calibration.denylist import denied
from convroute.calibration.profile import calibration_for
from convroute.calibration.selftest_results import selftest_exclusions
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.base import CPU_LOOP_LIMIT
from convroute.kernels.common import Precision
from convroute.params import ConvParams

FALLBACK = ("direct", "im2col", "pointwise", "depthwise", "transposed")  # then any other, in registry order


def blocked_algorithms(p: ConvParams, device: DeviceProfile, dtype: str = "float32") -> dict[str, str]:
    """{algorithm: why it is excluded on this device for p in `dtype`}."""
    precision = Precision.parse(dtype)
    blocked = denied(device, p)
    for name in applicable(p):
        why = ALGORITHMS[name].unsupported_precision(precision)
        if why:
            blocked.setdefault(name, f"no {precision.dtype} kernels: {why}")
    if device.family == "cpu":
        for name in applicable(p):
            trips = ALGORITHMS[name].loop_trips(p)
            if trips > CPU_LOOP_LIMIT:
                blocked.setdefault(name, f"one invocation would loop {trips} times; lavapipe stops loops "
                                         f"silently after {CPU_LOOP_LIMIT}")
    calibration = calibration_for(device, precision.dtype)
    if calibration is not None:
        if calibration.dtype != precision.dtype:
            which = f"float32 calibration (it has no {precision.dtype} one)"
        else:
            which = "calibration" if precision.dtype == "float32" else f"{precision.dtype} calibration"
        for name, why in calibration.excluded.items():
            blocked.setdefault(name, f"excluded by this device's {which}: {why}")
        for name, why in size_failures(p, calibration).items():
            blocked.setdefault(name, why)
    for name, why in selftest_exclusions(device, p, precision.dtype).items():
        blocked.setdefault(name, why)
    return blocked


def size_failures(p: ConvParams, calibration) -> dict[str, str]:
    """Algorithms that could not size (ValueError) a grid shape whose weights were no larger than p's: on this
    device they would fail on p too (packed weights grow with the weight tensor), so route elsewhere."""
    out = {}
    for sample in calibration.samples:
        q = sample.params
        for name, why in sample.failed.items():
            if name not in out and q.transposed == p.transposed and weight_size(q) <= weight_size(p):
                out[name] = f"could not run a calibration shape with weights as large ({q.describe()}: {why})"
    return out


def weight_size(p: ConvParams) -> int:
    return p.c_out * (p.c_in // p.groups) * p.kh * p.kw


def applicable(p: ConvParams) -> list[str]:
    order = [n for n in FALLBACK if n in ALGORITHMS] + [n for n in ALGORITHMS if n not in FALLBACK]
    return [n for n in order if ALGORITHMS[n].unsupported(p) is None]


def avoid_blocked(p: ConvParams, algorithm: str, reason: str, blocked: dict[str, str]) -> tuple[str, str]:
    """(algorithm, reason) unchanged when allowed, else the next applicable allowed algorithm, saying why."""
    if algorithm not in blocked:
        return algorithm, reason
    for name in applicable(p):
        if name not in blocked:
            return name, (f"{reason}; but {algorithm} is excluded on this device ({blocked[algorithm]}) "
                          f"-> {name}, the next applicable algorithm")
    raise RuntimeError(f"every algorithm that can run {p.describe()} is excluded on this device: "
                       + "; ".join(f"{n}: {why}" for n, why in blocked.items()))

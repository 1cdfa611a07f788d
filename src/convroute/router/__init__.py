"""The router: one entry point, `route`, that picks an algorithm per layer, per device and per dtype (the
storage of activations and weights: float32 or float16) and says why."""

from __future__ import annotations

import os
from dataclasses import dataclass

from convroute.device.profile import DeviceProfile, resolve_profile
from convroute.kernels.common import dtype_name
from convroute.params import ConvParams, make_params
from convroute.router.autotune import autotune_route
from convroute.router.calibrated import calibrated_route
from convroute.router.exclusions import avoid_blocked, blocked_algorithms
from convroute.router.seed import seed_route

POLICIES = ("seed", "calibrated", "autotune")


@dataclass(frozen=True)
class Decision:
    algorithm: str
    reason: str
    policy: str
    device: str
    dtype: str = "float32"

    def __str__(self) -> str:
        dtype = "" if self.dtype == "float32" else f", dtype {self.dtype}"
        return f"{self.algorithm}: {self.reason} [policy {self.policy}, device {self.device}{dtype}]"


def env_force_direct() -> bool:
    return os.environ.get("CONVROUTE_FORCE_DIRECT", "") not in ("", "0", "false", "False")


def default_policy() -> str:
    return os.environ.get("CONVROUTE_POLICY", "seed")


def route_params(p: ConvParams, device: DeviceProfile, policy: str | None = None,
                 force_direct: bool | None = None, dtype="float32") -> Decision:
    """The decision for `p` on `device` with activations and weights stored as `dtype` ("float32",
    "float16"; numpy/torch dtypes accepted). Seed ignores the dtype except for algorithms without kernels
    for it; calibrated and autotune use that dtype's measurements."""
    dtype = dtype_name(dtype)
    policy = policy or default_policy()
    if force_direct is None:
        force_direct = env_force_direct()
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    # denylist, missing kernels for the dtype, calibration's wrong results: every policy avoids them
    blocked = blocked_algorithms(p, device, dtype)
    if force_direct or policy == "seed":
        algorithm, reason = avoid_blocked(p, *seed_route(p, device, force_direct), blocked)
    elif policy == "calibrated":
        algorithm, reason = calibrated_route(p, device, blocked, dtype)
    else:
        algorithm, reason = autotune_route(p, device, blocked, dtype)
    return Decision(algorithm, reason, policy, device.family, dtype)


def route(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, transposed=False,
          output_padding=0, device=None, policy=None, force_direct=None, dtype="float32") -> Decision:
    """Pick the algorithm for one conv; pure (no GPU work) unless `device` is None (the adapter in use)."""
    p = make_params(input_shape, weight_shape, stride, padding, dilation, groups, transposed=transposed,
                    output_padding=output_padding)
    return route_params(p, resolve_profile(device), policy, force_direct, dtype)

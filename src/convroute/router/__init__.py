"""The router: one entry point, `route`, that picks an algorithm per layer, per device and per dtype (the
storage of activations and weights: float32 or float16) and says why.

Policies: `seed` (ET-VK PR #20059), `etvk` (ET-VK's follow-up rule, PR #22782), `calibrated` (this device's
measurements), `autotune` (measure on first use) and `derived` (a small rule fitted by `convroute derive-rule`).
`force_direct` works as in ET-VK, under every policy: sliding-window convs take the direct path; 1x1,
depthwise and transposed convs keep the policy's choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from convroute.device.gpu import resolve_profile
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import dtype_name
from convroute.params import ConvParams, make_params
from convroute.router.autotune import autotune_route
from convroute.router.calibrated import calibrated_route
from convroute.router.derived import derived_route
from convroute.router.etvk import etvk_route
from convroute.router.exclusions import avoid_blocked, blocked_algorithms
from convroute.router.seed import is_sliding_window, seed_route
from convroute.settings import env_flag

POLICIES = ("seed", "etvk", "calibrated", "autotune", "derived")
FORCE_DIRECT_REASON = ("force_direct is set: sliding-window conv -> direct path, whatever the policy would choose "
                       "(1x1, depthwise and transposed convs keep their paths)")
FORCE_DIRECT_SPARED = "; force_direct leaves it alone (not a sliding-window conv)"


@dataclass(frozen=True)
class Decision:
    algorithm: str
    reason: str
    policy: str
    device: str
    dtype: str = "float32"
    force_direct: bool = False  # the override was on (the reason says whether it decided this conv)

    def __str__(self) -> str:
        dtype = "" if self.dtype == "float32" else f", dtype {self.dtype}"
        override = " + force_direct" if self.force_direct else ""
        return f"{self.algorithm}: {self.reason} [policy {self.policy}{override}, device {self.device}{dtype}]"


def env_force_direct() -> bool:
    return env_flag("CONVROUTE_FORCE_DIRECT", False)


def default_policy() -> str:
    return os.environ.get("CONVROUTE_POLICY", "seed")


def route_params(p: ConvParams, device: DeviceProfile, policy: str | None = None,
                 force_direct: bool | None = None, dtype="float32", refine: bool | None = None) -> Decision:
    """The decision for `p` on `device` with activations and weights stored as `dtype` ("float32",
    "float16"; numpy/torch dtypes accepted). Seed, etvk and derived ignore the dtype except for algorithms
    without kernels for it; calibrated and autotune use that dtype's measurements. `force_direct` (default:
    CONVROUTE_FORCE_DIRECT) sends sliding-window convs to direct whatever the policy. `refine` (default:
    CONVROUTE_REFINE, on): `calibrated` times a conv outside its calibration on the adapter in use (router.refine);
    False keeps it to the prediction."""
    dtype = dtype_name(dtype)
    policy = policy or default_policy()
    if force_direct is None:
        force_direct = env_force_direct()
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    # denylist, missing kernels for the dtype, calibration's wrong results: every policy avoids them
    blocked = blocked_algorithms(p, device, dtype)
    if force_direct and is_sliding_window(p):
        algorithm, reason = avoid_blocked(p, "direct", FORCE_DIRECT_REASON, blocked)
    else:
        algorithm, reason = policy_route(p, device, policy, blocked, dtype, refine)
        reason += FORCE_DIRECT_SPARED if force_direct else ""
    return Decision(algorithm, reason, policy, device.family, dtype, bool(force_direct))


def policy_route(p: ConvParams, device: DeviceProfile, policy: str, blocked: dict[str, str],
                 dtype: str, refine: bool | None = None) -> tuple[str, str]:
    if policy == "seed":
        return avoid_blocked(p, *seed_route(p, device), blocked)
    if policy == "etvk":
        return avoid_blocked(p, *etvk_route(p, device), blocked)
    if policy == "calibrated":
        return calibrated_route(p, device, blocked, dtype, refine=refine)
    if policy == "derived":
        return derived_route(p, device, blocked)
    return autotune_route(p, device, blocked, dtype)


def route(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *, transposed=False,
          output_padding=0, device=None, policy=None, force_direct=None, dtype="float32") -> Decision:
    """Pick the algorithm for one conv; pure (no GPU work) unless `device` is None (the adapter in use)."""
    p = make_params(input_shape, weight_shape, stride, padding, dilation, groups, transposed=transposed,
                    output_padding=output_padding)
    return route_params(p, resolve_profile(device), policy, force_direct, dtype)

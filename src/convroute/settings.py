"""Switches read from the environment: the on/off ones (CONVROUTE_FORCE_DIRECT, CONVROUTE_FUSE_RESIDUAL,
CONVROUTE_RAISE_CLOCKS, CONVROUTE_POISON, CONVROUTE_ADD_SPLITS, CONVROUTE_REFINE, CONVROUTE_DIRECT_PHASES,
CONVROUTE_DEPTHWISE_CONSTANTS, CONVROUTE_DEPTHWISE_F32_SUMS, and the planner's CONVROUTE_CONCAT_SLABS,
CONVROUTE_SLICE_VIEWS, CONVROUTE_LAYER_SCALE, CONVROUTE_CONCAT_BN, CONVROUTE_CHANNEL_ATTENTION,
CONVROUTE_SQUEEZE_EXCITE, CONVROUTE_CONCAT_VIEW, CONVROUTE_FUSE_REDUCTIONS) with one spelling rule for all,
CONVROUTE_WEBGPU (which WebGPU implementation runs the kernels) and CONVROUTE_SHADER_CHECKS
(which run-time checks shaders keep)."""

from __future__ import annotations

import functools
import os

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


def env_flag(name: str, default: bool) -> bool:
    """$name as a boolean: 1/true/yes/on or 0/false/no/off (any case); unset or empty gives `default`;
    anything else is a ValueError naming the variable."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ON:
        return True
    if value in OFF:
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use one of {', '.join(ON)} or {', '.join(OFF)}")


WEBGPU_IMPLEMENTATIONS = {"wgpu-native": "wgpu", "dawn": "wgpudawn"}  # name -> the Python package that provides it


def webgpu_implementation() -> str:
    """CONVROUTE_WEBGPU: "wgpu-native" (wgpu-py, the default) or "dawn" (the wgpudawn package: the same API on
    Google's Dawn); anything else is a ValueError naming the variable."""
    value = os.environ.get("CONVROUTE_WEBGPU", "").strip().lower() or "wgpu-native"
    if value not in WEBGPU_IMPLEMENTATIONS:
        raise ValueError(f"CONVROUTE_WEBGPU={os.environ['CONVROUTE_WEBGPU']!r}: use one of "
                         f"{', '.join(WEBGPU_IMPLEMENTATIONS)}")
    return value


@functools.cache
def process_webgpu_implementation() -> str:
    """The implementation this process runs on: CONVROUTE_WEBGPU as first read (device.webgpu imports one
    module for good, so measurement files must keep naming that one even if the variable changes later)."""
    return webgpu_implementation()


SHADER_CHECK_NAMES = ("all", "bounds", "none")


def shader_checks() -> str:
    """CONVROUTE_SHADER_CHECKS: the run-time checks naga adds to every shader (device.webgpu.SHADER_CHECKS).
    "bounds" (the default on wgpu-native) keeps its index clamping and drops the counter it adds to every loop
    to stop infinite ones: every convroute loop ends (a counter stepping up to a bound from the parameter
    block), and on the H100 the counters cost 12-15 % of every model's GPU time (NOTES, session 11). "all"
    keeps both (the only choice on Dawn); "none" drops the clamping too, where an out-of-range index is
    undefined behaviour. Read at each pipeline's creation and each measurement file's build stamp
    (cache.webgpu_version)."""
    default = "bounds" if process_webgpu_implementation() == "wgpu-native" else "all"
    value = os.environ.get("CONVROUTE_SHADER_CHECKS", "").strip().lower() or default
    if value not in SHADER_CHECK_NAMES:
        raise ValueError(f"CONVROUTE_SHADER_CHECKS={value!r}: use one of {', '.join(SHADER_CHECK_NAMES)}")
    return value

"""Switches read from the environment: the on/off ones (CONVROUTE_FORCE_DIRECT, CONVROUTE_FUSE_RESIDUAL,
CONVROUTE_RAISE_CLOCKS, CONVROUTE_POISON,
CONVROUTE_ADD_SPLITS) with one spelling rule for all of them, and CONVROUTE_WEBGPU (which
WebGPU implementation runs the kernels)."""

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

"""The WebGPU implementation convroute runs on, chosen once per process by CONVROUTE_WEBGPU.

"wgpu-native" (default): wgpu-py. "dawn": the wgpudawn package, wgpu-py's API on Google's Dawn (not on
lavapipe 22.3, which lacks a feature Dawn requires). `wgpu` is the module either way; `RAW` is the
(lib, ffi) pair of its C API, which both implementations name after webgpu.h, for recording dispatches
without the Python wrappers (None where it cannot be loaded). Dawn's device toggles (comma-separated names
in CONVROUTE_DAWN_TOGGLES, e.g. skip_validation) are set before its first adapter is requested.
"""

from __future__ import annotations

import os

from convroute.settings import process_webgpu_implementation

IMPLEMENTATION = process_webgpu_implementation()

if IMPLEMENTATION == "dawn":
    try:
        import wgpudawn as wgpu
    except ImportError as exc:
        raise ImportError("CONVROUTE_WEBGPU=dawn needs the wgpudawn package (pip install wgpudawn)") from exc
    from wgpudawn.backends.dawn._ffi import ffi as _ffi
    from wgpudawn.backends.dawn._ffi import lib as _lib

    RAW = (_lib, _ffi)
    from wgpudawn.backends.dawn.extras import set_instance_extras

    DAWN_TOGGLES = tuple(t.strip() for t in os.environ.get("CONVROUTE_DAWN_TOGGLES", "").split(",") if t.strip())
    # timestamps at full resolution (Dawn rounds them for browsers); a ValueError names an unknown toggle
    set_instance_extras(enable_toggles=list(DAWN_TOGGLES), disable_toggles=["timestamp_quantization"])
else:
    import wgpu

    DAWN_TOGGLES = ()
    try:
        from wgpu.backends.wgpu_native._ffi import ffi as _ffi
        from wgpu.backends.wgpu_native._ffi import lib as _lib

        RAW = (_lib, _ffi)
    except ImportError:
        RAW = None

TICKS_ARE_NANOSECONDS = IMPLEMENTATION == "dawn"  # wgpu-native resolves timestamps to raw ticks

# settings.shader_checks' names -> the run-time checks naga adds to shaders (wgpu.h's WGPUShaderRuntimeChecks:
# BoundsChecks 0x1, ForceLoopBounding 0x2).
SHADER_CHECKS = {"all": 0x1 | 0x2, "bounds": 0x1, "none": 0x0}


def shader_module(device, code: str, checks: str = "all"):
    """A WGSL module: device.create_shader_module, or with `checks` other than "all" on wgpu-native
    wgpuDeviceCreateShaderModuleTrusted with only those run-time checks (SHADER_CHECKS). Dawn has no such
    call (its toggles do this per device): there `checks` must be "all"."""
    if checks == "all":
        return device.create_shader_module(code=code)
    if IMPLEMENTATION != "wgpu-native":
        raise ValueError(f"shader checks {checks!r} need wgpu-native (CONVROUTE_WEBGPU={IMPLEMENTATION})")
    from wgpu.backends.wgpu_native import _api

    source = _api.new_struct_p("WGPUShaderSourceWGSL *", code=_api.to_c_string_view(code))
    source[0].chain.next = _api.ffi.NULL
    source[0].chain.sType = _api.lib.WGPUSType_ShaderSourceWGSL
    descriptor = _api.new_struct_p("WGPUShaderModuleDescriptor *",
                                   nextInChain=_api.ffi.cast("WGPUChainedStruct *", source),
                                   label=_api.to_c_string_view(""))
    handle = _api.libf.wgpuDeviceCreateShaderModuleTrusted(device._internal, descriptor, SHADER_CHECKS[checks])
    if handle == _api.ffi.NULL:
        raise RuntimeError("shader module creation failed")
    return _api.GPUShaderModule("", handle, device)


__all__ = ["DAWN_TOGGLES", "IMPLEMENTATION", "RAW", "SHADER_CHECKS", "TICKS_ARE_NANOSECONDS", "shader_module", "wgpu"]

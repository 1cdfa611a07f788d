"""convroute: 2-D convolution on any GPU through WebGPU/Vulkan compute shaders, routed per layer and device."""

from convroute.api import Conv2d, conv2d
from convroute.device.profile import DeviceProfile
from convroute.params import ConvParams, make_params
from convroute.router import Decision, route

__all__ = ["CompileError", "Conv2d", "ConvParams", "Decision", "DeviceProfile", "ExportError", "Program", "compile",
           "conv2d", "make_params", "route"]

FRONTEND = ("compile", "Program", "CompileError", "ExportError")  # need torch: imported on first use


def __getattr__(name):
    if name in FRONTEND:
        from convroute import frontend

        return getattr(frontend, name)
    raise AttributeError(f"module 'convroute' has no attribute {name!r}")

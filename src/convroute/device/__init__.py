"""The device layer: adapters, the device profile routing reads, the wgpu device wrapper and its errors."""

from convroute.device.errors import DeviceLost, GpuError, GpuOutOfMemory
from convroute.device.gpu import resolve_profile
from convroute.device.profile import DeviceProfile

__all__ = ["DeviceLost", "DeviceProfile", "GpuError", "GpuOutOfMemory", "resolve_profile"]

"""The device layer: adapters, the device profile routing reads, and the wgpu device wrapper."""

from convroute.device.profile import DeviceProfile, resolve_profile

__all__ = ["DeviceProfile", "resolve_profile"]

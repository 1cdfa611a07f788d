"""DeviceProfile: what routing needs to know about a GPU. Pure data, buildable without the hardware."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

VENDOR_FAMILIES = {
    0x13B5: "mali",
    0x5143: "adreno",
    0x10DE: "nvidia",
    0x1002: "amd",
    0x8086: "intel",
    0x106B: "apple",
    0x1010: "powervr",
    0x10005: "cpu",  # Mesa's software rasterisers
}
GEMM_STYLES = ("workgroup", "registers")
FAMILIES = ("mali", "adreno", "nvidia", "amd", "intel", "apple", "powervr", "cpu", "unknown")

# WebGPU's guaranteed defaults: what a profile built for a family without hardware assumes, and the least a
# WebGPU device offers (WEBGPU_MIN_LIMITS, to test that kernels fit any device).
DEFAULT_LIMITS = {
    "max-storage-buffer-binding-size": 128 << 20,
    "max-buffer-size": 256 << 20,
    "max-compute-workgroups-per-dimension": 65535,
    "max-compute-workgroup-storage-size": 16384,
    "max-compute-invocations-per-workgroup": 256,
    "max-compute-workgroup-size-x": 256,
    "max-compute-workgroup-size-y": 256,
    "max-compute-workgroup-size-z": 64,
}
WEBGPU_MIN_LIMITS = dict(DEFAULT_LIMITS)
WORKGROUP_SIZE_KEYS = tuple(f"max-compute-workgroup-size-{axis}" for axis in "xyz")


def family_of(vendor_id: int, adapter_type: str = "") -> str:
    if adapter_type.lower() == "cpu":
        return "cpu"
    return VENDOR_FAMILIES.get(vendor_id, "unknown")


@dataclass(frozen=True)
class DeviceProfile:
    family: str
    name: str = ""
    driver: str = ""
    vendor_id: int = 0
    backend: str = ""
    adapter_type: str = ""
    limits: dict = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    features: frozenset = frozenset()
    storage_textures: bool = True  # CPU-style kernels may read weights and inputs as storage textures
    # columns a register tile gathers from the NCHW input per K step (implicit GEMM): Chromium's SwiftShader
    # compiles 4 in 0.1 s, 8 in 7.5 s, and 16 in over 100 s, when its GPU process is killed
    max_gathered_columns: int = 16

    @classmethod
    def for_family(cls, family: str) -> DeviceProfile:
        """A stand-in profile for a family, to ask 'what would a Mali choose?' without one."""
        family = family.lower()
        if family not in FAMILIES:
            raise ValueError(f"unknown device family {family!r}; known: {', '.join(FAMILIES)}")
        vendor = next((v for v, f in VENDOR_FAMILIES.items() if f == family), 0)
        return cls(family=family, name=f"<{family} profile>", vendor_id=vendor)

    @classmethod
    def from_adapter_info(cls, info: dict, limits: dict, features) -> DeviceProfile:
        vendor_id = int(info.get("vendor_id", 0))
        adapter_type = str(info.get("adapter_type", ""))
        return cls(
            family=family_of(vendor_id, adapter_type),
            name=str(info.get("device", "")),
            driver=str(info.get("description", "")),
            vendor_id=vendor_id,
            backend=str(info.get("backend_type", "")),
            adapter_type=adapter_type,
            limits={k: limits[k] for k in DEFAULT_LIMITS if k in limits},
            features=frozenset(features),
        )

    @property
    def max_binding_bytes(self) -> int:
        return int(self.limits["max-storage-buffer-binding-size"])

    @property
    def max_workgroups_per_dim(self) -> int:
        return int(self.limits["max-compute-workgroups-per-dimension"])

    def limit(self, name: str) -> int:
        """A limit by its WebGPU name; WebGPU's default where the profile does not know it."""
        return int(self.limits.get(name, DEFAULT_LIMITS[name]))

    @property
    def max_workgroup_storage(self) -> int:
        """Bytes of var<workgroup> memory one workgroup may use (maxComputeWorkgroupStorageSize)."""
        return self.limit("max-compute-workgroup-storage-size")

    @property
    def max_invocations(self) -> int:
        """Invocations in one workgroup (maxComputeInvocationsPerWorkgroup)."""
        return self.limit("max-compute-invocations-per-workgroup")

    @property
    def max_workgroup_size(self) -> tuple[int, int, int]:
        """Largest @workgroup_size per axis (maxComputeWorkgroupSizeX/Y/Z)."""
        return tuple(self.limit(k) for k in WORKGROUP_SIZE_KEYS)

    def workgroup_problem(self, size: tuple[int, ...], storage_bytes: int = 0) -> str | None:
        """None when a workgroup of `size` (x[, y[, z]]) invocations using `storage_bytes` of workgroup memory
        fits this device, else what exceeds which limit. Kernels choose their tiles with it; Gpu.pipeline
        checks every shader with it before compiling."""
        size = tuple(size) + (1,) * (3 - len(size))
        invocations = size[0] * size[1] * size[2]
        who = self.name or self.family
        if storage_bytes > self.max_workgroup_storage:
            return (f"needs {storage_bytes} bytes of workgroup memory; {who} allows "
                    f"{self.max_workgroup_storage} (maxComputeWorkgroupStorageSize)")
        if invocations > self.max_invocations:
            return (f"needs {invocations} invocations per workgroup; {who} allows {self.max_invocations} "
                    f"(maxComputeInvocationsPerWorkgroup)")
        for axis, n, most in zip("XYZ", size, self.max_workgroup_size, strict=True):
            if n > most:
                return (f"needs a workgroup size of {n} along {axis}; {who} allows {most} "
                        f"(maxComputeWorkgroupSize{axis})")
        return None

    def with_limits(self, caps: dict) -> DeviceProfile:
        """This profile with each limit in `caps` lowered to at most the given value (a device capped at
        WEBGPU_MIN_LIMITS, say); routing and tile choice follow it."""
        limits = dict(self.limits)
        for name, cap in caps.items():
            limits[name] = min(self.limit(name), int(cap))
        return replace(self, limits=limits)

    @property
    def float_atomics(self) -> bool:
        """Kernels may atomicAdd f32 in storage buffers (wgpu's shader-float32-atomic feature)."""
        return "shader-float32-atomic" in self.features

    @property
    def busy_workgroups(self) -> int:
        """Workgroups a launch needs to keep the device busy (GEMM tile and split-K choice).

        CONVROUTE_BUSY_WORKGROUPS overrides it, for tuning a new device."""
        override = os.environ.get("CONVROUTE_BUSY_WORKGROUPS")
        if override:
            return max(1, int(override))
        return 1 if self.family == "cpu" else 256

    @property
    def gemm_style(self) -> str:
        """How the GEMM-based kernels tile: "workgroup" (tiles staged through workgroup memory between barriers,
        for GPUs) or "registers" (each invocation a register tile reading storage directly: CPU adapters, where
        workgroup memory is plain memory and a barrier a coroutine switch). CONVROUTE_GEMM_STYLE overrides it."""
        override = os.environ.get("CONVROUTE_GEMM_STYLE")
        if override:
            if override not in GEMM_STYLES:
                raise ValueError(f"CONVROUTE_GEMM_STYLE={override!r}; use one of {', '.join(GEMM_STYLES)}")
            return override
        return "registers" if self.family == "cpu" else "workgroup"

    @property
    def texture_paths(self) -> bool:
        """Whether the register-tile kernels read textures where they fit (lavapipe: a texel load costs a tenth of
        a buffer load) rather than the storage buffers. Browser plans bind buffers only, and on Chromium's
        SwiftShader a buffer load is the faster one anyway."""
        return self.gemm_style == "registers" and self.storage_textures

    @property
    def key(self) -> str:
        """Identifies this device + driver for on-disk caches."""
        return f"{self.name} | {self.driver} | {self.backend}"

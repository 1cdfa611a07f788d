"""The device layer: pick a wgpu adapter, open a device, compile and cache pipelines, run dispatches."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import wgpu

from convroute.device.profile import DeviceProfile
from convroute.device.workgroup import check_workgroup

BACKEND_RANK = {"Vulkan": 0, "Metal": 0, "D3D12": 1, "OpenGL": 3}
TYPE_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}
OPTIONAL_FEATURES = ("timestamp-query", "timestamp-query-inside-passes", "shader-f16", "subgroup")
STORAGE = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST


def list_adapters() -> list:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return list(wgpu.gpu.enumerate_adapters_sync())


def _rank(adapter) -> tuple:
    info = adapter.info
    return (BACKEND_RANK.get(info["backend_type"], 2), TYPE_RANK.get(info["adapter_type"], 3))


def choose_adapter(adapters: list):
    """Vulkan (or Metal) first, real GPUs before CPU; CONVROUTE_ADAPTER=<substring> picks by name."""
    if not adapters:
        raise RuntimeError("no WebGPU adapter found: install a Vulkan driver (on Debian: mesa-vulkan-drivers)")
    wanted = os.environ.get("CONVROUTE_ADAPTER")
    if wanted:
        hits = [a for a in adapters if wanted.lower() in f"{a.info['device']} {a.info['backend_type']}".lower()]
        if not hits:
            names = "; ".join(f"{a.info['device']} ({a.info['backend_type']})" for a in adapters)
            raise RuntimeError(f"CONVROUTE_ADAPTER={wanted!r} matches no adapter; found: {names}")
        adapters = hits
    return min(adapters, key=_rank)


@dataclass
class Dispatch:
    """One recorded compute dispatch: everything is built at prepare time, nothing per call."""

    pipeline: object
    bind_group: object
    grid: tuple[int, int, int]


class Gpu:
    """A wgpu device with the limits convroute needs, a pipeline cache and small helpers."""

    def __init__(self, adapter):
        self.adapter = adapter
        features = [f for f in OPTIONAL_FEATURES if f in adapter.features]
        limits = {k: adapter.limits[k] for k in (
            "max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
            "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
            "max-storage-buffers-per-shader-stage")}
        self.device = adapter.request_device_sync(required_features=features, required_limits=limits)
        self.profile = DeviceProfile.from_adapter_info(adapter.info, self.device.limits, features)
        self._pipelines: dict[tuple, object] = {}
        self._staging: dict[int, object] = {}

    # -- pipelines -----------------------------------------------------------------------------
    def pipeline(self, source: str, constants: dict | None = None):
        check_workgroup(self.profile, source)  # a ValueError naming the limit, before the driver sees it
        key = (source, tuple(sorted((constants or {}).items())))
        pipe = self._pipelines.get(key)
        if pipe is None:
            module = self.device.create_shader_module(code=source)
            stage = {"module": module, "entry_point": "main"}
            if constants:
                stage["constants"] = constants
            pipe = self.device.create_compute_pipeline(layout="auto", compute=stage)
            self._pipelines[key] = pipe
        return pipe

    def bind(self, pipeline, buffers: list) -> object:
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                   for i, b in enumerate(buffers)]
        return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)

    def dispatch(self, source: str, buffers: list, threads: int, workgroup: int,
                 constants: dict | None = None) -> Dispatch:
        """A 1-D launch of `threads` invocations, folded into 2-D when it exceeds the per-dimension limit.

        Shaders recover the flat index with `wid.x + wid.y * nwg.x` (see kernels.common.FLAT_INDEX).
        """
        pipe = self.pipeline(source, constants)
        return Dispatch(pipe, self.bind(pipe, buffers), self.grid(-(-threads // workgroup)))

    def grid(self, groups: int) -> tuple[int, int, int]:
        limit = self.profile.max_workgroups_per_dim
        if groups <= limit:
            return (max(groups, 1), 1, 1)
        rows = -(-groups // limit)
        if rows > limit:
            raise ValueError(f"{groups} workgroups exceed the device's {limit}x{limit} dispatch grid")
        return (limit, rows, 1)

    # -- buffers ---------------------------------------------------------------------------------
    def check_binding(self, nbytes: int, what: str) -> None:
        limit = self.profile.max_binding_bytes
        if nbytes > limit:
            raise ValueError(f"{what} needs {nbytes} bytes, more than this device's largest storage binding "
                             f"({limit} bytes on {self.profile.name})")

    def upload(self, array: np.ndarray, what: str = "tensor", dtype=np.float32):
        """A storage buffer holding `array` as `dtype` (float32, or float16 for fp16 kernels)."""
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype))
        self.check_binding(data.nbytes, what)
        return self.device.create_buffer_with_data(data=data, usage=STORAGE)

    def write(self, buffer, array: np.ndarray, dtype=np.float32) -> None:
        """Copy `array` as `dtype` to the start of `buffer` (odd float16 counts padded to whole words)."""
        self.device.queue.write_buffer(buffer, 0, padded_bytes(np.ascontiguousarray(array, dtype=dtype)))

    def uniform(self, values) -> object:
        data = np.asarray(values, dtype=np.uint32)
        return self.device.create_buffer_with_data(data=data, usage=wgpu.BufferUsage.UNIFORM)

    def empty(self, nbytes: int, what: str = "tensor"):
        self.check_binding(nbytes, what)
        return self.device.create_buffer(size=max(word_align(nbytes), 4), usage=STORAGE)

    def fill(self, buffer, value: float, dtype=np.float32) -> None:
        """Poison a buffer so that elements no kernel writes are visible in tests (`dtype`: its element type)."""
        itemsize = np.dtype(dtype).itemsize
        self.device.queue.write_buffer(buffer, 0, np.full(buffer.size // itemsize, value, dtype))

    def read(self, buffer, shape, dtype=np.float32) -> np.ndarray:
        return self.run_and_read([], buffer, shape, dtype)

    def run_and_read(self, dispatches: list[Dispatch], buffer, shape, dtype=np.float32) -> np.ndarray:
        """Run `dispatches`, then copy `buffer` to a kept staging buffer in the same submission and map it:
        one command buffer and no buffer creation per call (queue.read_buffer makes a new one each time)."""
        return Recording(self, dispatches, (buffer, shape, dtype), ahead=False).run()

    def staging(self, nbytes: int):
        """A kept MAP_READ buffer of `nbytes` (shared by every read of that size; reads are synchronous)."""
        staging = self._staging.get(nbytes)
        if staging is None:
            staging = self._staging[nbytes] = self.device.create_buffer(
                size=max(nbytes, 4), usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
        return staging

    # -- running ---------------------------------------------------------------------------------
    def encode(self, dispatches: list[Dispatch], encoder=None, timestamp_writes=None):
        encoder = encoder or self.device.create_command_encoder()
        kwargs = {"timestamp_writes": timestamp_writes} if timestamp_writes else {}
        cpass = encoder.begin_compute_pass(**kwargs)
        for d in dispatches:
            cpass.set_pipeline(d.pipeline)
            cpass.set_bind_group(0, d.bind_group)
            cpass.dispatch_workgroups(*d.grid)
        cpass.end()
        return encoder

    def run(self, dispatches: list[Dispatch]) -> None:
        """Record all dispatches in one compute pass and submit once."""
        self.device.queue.submit([self.encode(dispatches).finish()])

    def wait(self, buffer) -> None:
        """Block until submitted work is done (on_submitted_work_done_sync is broken in wgpu-py 0.32)."""
        self.device.queue.read_buffer(buffer, 0, 4)


class Recording:
    """A fixed list of dispatches, optionally followed by a read-back of one buffer, run again and again.

    WebGPU command buffers are single-use, and encoding costs the host ~7 us per dispatch. With `ahead`,
    the command buffer for the next run is encoded right after this run's submit, while the GPU works, so
    repeated calls (a compiled model) do not wait for the host to encode. `read`: (buffer, shape, dtype).
    """

    def __init__(self, gpu: Gpu, dispatches: list[Dispatch], read=None, ahead: bool = True):
        self.gpu, self.dispatches, self.ahead = gpu, dispatches, ahead
        self.read = None
        if read is not None:
            buffer, shape, dtype = read
            dtype = np.dtype(dtype)
            count = int(np.prod(shape))
            nbytes = word_align(dtype.itemsize * count)  # copies move whole 4-byte words
            self.read = (buffer, tuple(shape), dtype, count, nbytes, gpu.staging(nbytes))
        self._ready = None

    def _encode(self):
        encoder = self.gpu.encode(self.dispatches) if self.dispatches else self.gpu.device.create_command_encoder()
        if self.read:
            buffer, *_, nbytes, staging = self.read
            encoder.copy_buffer_to_buffer(buffer, 0, staging, 0, nbytes)
        return encoder.finish()

    def run(self) -> np.ndarray | None:
        """Submit once; the read-back array when the recording has one."""
        command, self._ready = self._ready or self._encode(), None
        self.gpu.device.queue.submit([command])
        if self.ahead:
            self._ready = self._encode()
        if not self.read:
            return None
        _, shape, dtype, count, nbytes, staging = self.read
        staging.map_sync(wgpu.MapMode.READ, 0, nbytes)
        try:
            return np.frombuffer(staging.read_mapped(0, nbytes, copy=False), dtype, count).reshape(shape).copy()
        finally:
            staging.unmap()


def word_align(nbytes: int) -> int:
    """Buffer sizes, bindings and copies are whole 4-byte words (float16 tensors may have an odd length)."""
    return -(-int(nbytes) // 4) * 4


def padded_bytes(data: np.ndarray) -> np.ndarray:
    """`data` as raw bytes, zero-padded to a whole, non-zero number of 4-byte words."""
    raw = data.reshape(-1).view(np.uint8)
    size = max(word_align(raw.size), 4)
    return raw if raw.size == size else np.concatenate([raw, np.zeros(size - raw.size, np.uint8)])


_GPU: Gpu | None = None


def get_gpu() -> Gpu:
    """The process-wide device, opened on first use."""
    global _GPU
    if _GPU is None:
        _GPU = Gpu(choose_adapter(list_adapters()))
    return _GPU

"""The device layer: pick a wgpu adapter, open a device, compile and cache pipelines, run dispatches."""

from __future__ import annotations

import os
import threading
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from convroute.device import mapping
from convroute.device.errors import AFTER_LOSS, WGPU_ERRORS, DeviceLost, GpuError, is_loss, translate
from convroute.device.profile import DeviceProfile
from convroute.device.webgpu import IMPLEMENTATION, shader_module, wgpu
from convroute.device.webgpu import RAW as _RAW
from convroute.device.workgroup import check_workgroup
from convroute.settings import shader_checks

BACKEND_RANK = {"Vulkan": 0, "Metal": 0, "D3D12": 1, "OpenGL": 3}
TYPE_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "Unknown": 3, "CPU": 4}
OPTIONAL_FEATURES = ("timestamp-query", "timestamp-query-inside-passes", "shader-f16", "subgroup",
                     "shader-float32-atomic")
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
        if IMPLEMENTATION == "dawn":
            raise RuntimeError("Dawn (CONVROUTE_WEBGPU=dawn) found no adapter it accepts (it refuses lavapipe 22.3); "
                               "unset CONVROUTE_WEBGPU to use wgpu-native")
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
    zeroes: object = None  # the buffer this dispatch only zeroes, for a later one to add into (flat.zeros)


@dataclass(frozen=True)
class BufferView:
    """`size` bytes of `buffer` from byte `offset` (a multiple of the device's min-storage-buffer-offset-alignment),
    bound in place of a whole buffer: a value planned inside another value's buffer (frontend/views.py)."""

    buffer: object
    offset: int
    size: int


class Gpu:
    """A wgpu device with the limits convroute needs, a pipeline cache and small helpers.

    Thread-safe: the pipeline cache and the pool of read-back buffers are shared under a lock; everything
    else a call touches is its own (or its caller's, who serializes use of its buffers). wgpu's errors
    come out as `GpuError`, `GpuOutOfMemory` or `DeviceLost` (convroute.device.errors) naming the operation
    and its sizes. `lost` is None while the device works, else why it was found lost; `get_gpu()` then
    opens a new one.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        features = [f for f in OPTIONAL_FEATURES if f in adapter.features]
        limits = {k: adapter.limits[k] for k in (
            "max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
            "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x",
            "max-storage-buffers-per-shader-stage")}
        self.device = adapter.request_device_sync(required_features=features, required_limits=limits)
        self.profile = DeviceProfile.from_adapter_info(adapter.info, self.device.limits, features)
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._pipelines: dict[tuple, object] = {}
        self._staging: dict[int, list] = {}  # nbytes -> free MAP_READ buffers
        self._spins = self.profile.family != "cpu" and hasattr(self.device, "_poll")  # see map_read
        # the per-call maps through the C API where it can (mapping.py), else through wgpu-py (Dawn)
        self._maps = mapping.Maps(self.device, spin=self._spins) if mapping.available() else None
        self._quiet = QuietPoller.install(self.device) if self._spins and self._maps is None else None
        self._premaps = weakref.WeakKeyDictionary()  # buffer -> its wgpu-py map in flight (premap, or a wait)

    # -- errors ----------------------------------------------------------------------------------
    def checked(self, op: str) -> Checked:
        """A context for the wgpu calls of `op` ("uploading weight (4096 bytes)") that turns wgpu's errors into
        GpuError, GpuOutOfMemory or DeviceLost, and refuses at once on a device already found lost."""
        return Checked(self, op)

    def translate(self, err: BaseException, op: str) -> GpuError:
        lost = is_loss(str(err)) or self._found_lost()
        if lost:
            self.lost = self.lost or str(err).strip().splitlines()[-1].strip()
        return translate(err, op, self.profile.name, lost)

    def _found_lost(self) -> bool:
        """After an error: does the device still accept work? (A lost device refuses every call.)"""
        try:
            self.device.create_command_encoder().finish()
            return False
        except WGPU_ERRORS as err:
            return is_loss(str(err))

    # -- pipelines -----------------------------------------------------------------------------
    def pipeline(self, source: str, constants: dict | None = None):
        check_workgroup(self.profile, source)  # a ValueError naming the limit, before the driver sees it
        checks = shader_checks()
        key = (source, tuple(sorted((constants or {}).items())), checks)
        with self._lock:
            pipe = self._pipelines.get(key)
        if pipe is None:  # compiled outside the lock: two threads may both compile it, the first one is kept
            with self.checked(f"compiling a compute pipeline ({len(source)} characters of WGSL"
                              f"{f', constants {constants}' if constants else ''})"):
                module = shader_module(self.device, source, checks)
                stage = {"module": module, "entry_point": "main"}
                if constants:
                    stage["constants"] = constants
                pipe = self.device.create_compute_pipeline(layout="auto", compute=stage)
            with self._lock:
                pipe = self._pipelines.setdefault(key, pipe)
        return pipe

    def bind(self, pipeline, buffers: list) -> object:
        """A bind group of `buffers` (storage buffers, or texture views) at bindings 0, 1, ..."""
        entries = [{"binding": i, "resource": b if isinstance(b, wgpu.GPUTextureView) else
                    {"buffer": b.buffer, "offset": b.offset, "size": b.size} if isinstance(b, BufferView) else
                    {"buffer": b, "offset": 0, "size": b.size}} for i, b in enumerate(buffers)]
        sizes = ", ".join(str(getattr(b, "size", "texture")) for b in buffers)
        with self.checked(f"binding {len(buffers)} resources ({sizes} bytes)"):
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

    def check_buffer(self, nbytes: int, what: str) -> None:
        limit = int(self.profile.limits["max-buffer-size"])
        if nbytes > limit:
            raise ValueError(f"{what} needs a {nbytes}-byte buffer, more than this device's largest buffer "
                             f"({limit} bytes on {self.profile.name})")

    def upload(self, array: np.ndarray, what: str = "tensor", dtype=np.float32):
        """A storage buffer holding `array` as `dtype` (float32, or float16 for fp16 kernels)."""
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype))
        self.check_binding(data.nbytes, what)
        self.check_buffer(data.nbytes, what)
        with self.checked(f"uploading {what} ({data.nbytes} bytes)"):
            return self.device.create_buffer_with_data(data=data, usage=STORAGE)

    def write(self, buffer, array: np.ndarray, dtype=np.float32) -> None:
        """Copy `array` as `dtype` to the start of `buffer` (odd float16 counts padded to whole words)."""
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype))
        with self.checked(f"writing {data.nbytes} bytes to a {buffer.size}-byte buffer"):
            self.device.queue.write_buffer(buffer, 0, data)

    def uniform(self, values) -> object:
        data = np.asarray(values, dtype=np.uint32)
        with self.checked(f"creating a uniform block ({data.nbytes} bytes)"):
            return self.device.create_buffer_with_data(data=data, usage=wgpu.BufferUsage.UNIFORM)

    def empty(self, nbytes: int, what: str = "tensor"):
        self.check_binding(nbytes, what)
        return self.buffer(nbytes, STORAGE, what)

    def buffer(self, nbytes: int, usage, what: str):
        """A new buffer of `nbytes` (rounded up to whole words) for `what`."""
        size = max(word_align(nbytes), 4)
        self.check_buffer(size, what)
        with self.checked(f"allocating {what} ({size} bytes)"):
            return self.device.create_buffer(size=size, usage=usage)

    def texture_array(self, width: int, height: int, layers: int, fmt: str, what: str):
        """A view of a new 2-D array texture of `layers` `fmt` images, bound as a storage texture: kernels read
        it read-only (direct_cpu.read_texture) or write it."""
        usage = wgpu.TextureUsage.STORAGE_BINDING | wgpu.TextureUsage.COPY_DST
        with self.checked(f"allocating {what} ({width} x {height} x {layers} {fmt} texels)"):
            texture = self.device.create_texture(size=(width, height, layers), format=fmt, usage=usage)
            return texture.create_view(dimension="2d-array")

    def texture_of(self, array: np.ndarray, fmt: str, what: str):
        """A texture array holding `array` [layers, height, width, channels] (numpy's dtype for `fmt`)."""
        view = self.texture_array(array.shape[2], array.shape[1], array.shape[0], fmt, what)
        self.write_texture(view, array)
        return view

    def write_texture(self, view, array: np.ndarray) -> None:
        """Copy `array` [layers, height, width, channels] (the texture's format in numpy) into the texture."""
        layers, height, width = array.shape[:3]
        data = np.ascontiguousarray(array)
        with self.checked(f"writing {data.nbytes} bytes to a texture"):
            self.device.queue.write_texture({"texture": view.texture}, data,
                                            {"bytes_per_row": data.nbytes // (layers * height),
                                             "rows_per_image": height}, (width, height, layers))

    def fill(self, buffer, value: float, dtype=np.float32) -> None:
        """Poison a buffer so that elements no kernel writes are visible in tests (`dtype`: its element type)."""
        itemsize = np.dtype(dtype).itemsize
        self.write(buffer, np.full(buffer.size // itemsize, value, dtype), dtype)

    def read(self, buffer, shape, dtype=np.float32) -> np.ndarray:
        return self.run_and_read([], buffer, shape, dtype)

    def run_and_read(self, dispatches: list[Dispatch], buffer, shape, dtype=np.float32) -> np.ndarray:
        """Run `dispatches`, then copy `buffer` to a pooled staging buffer in the same submission and map it:
        one command buffer and no buffer creation per call (queue.read_buffer makes a new one each time)."""
        return Recording(self, dispatches, (buffer, shape, dtype), ahead=False).run()

    def take_staging(self, nbytes: int):
        """A MAP_READ buffer of `nbytes` for one read-back at a time: from the pool, or new when every one
        of that size is in use (by other threads); `give_staging` returns it."""
        with self._lock:
            free = self._staging.get(nbytes)
            if free:
                return free.pop()
        return self.buffer(nbytes, wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST, "a read-back buffer")

    def give_staging(self, nbytes: int, staging) -> None:
        with self._lock:
            self._staging.setdefault(nbytes, []).append(staging)

    def read_staging(self, staging, nbytes: int, dtype, count: int, shape) -> np.ndarray:
        """Map `staging` once the work that fills it is done, copy out `count` `dtype` elements, unmap."""
        with self.checked(f"reading back {nbytes} bytes"):
            if self._maps:
                return self._maps.read(staging, nbytes, dtype, count, shape)
            self.map_read(staging, nbytes)
            try:
                return np.frombuffer(staging.read_mapped(0, nbytes, copy=False), dtype, count).reshape(shape).copy()
            finally:
                staging.unmap()

    def upload_buffer(self, nbytes: int):
        """A MAP_WRITE buffer for `write_staged`: kept by its owner and copied from by its recordings."""
        return self.buffer(nbytes, wgpu.BufferUsage.MAP_WRITE | wgpu.BufferUsage.COPY_SRC, "an upload buffer")

    def write_staged(self, staging, array: np.ndarray, dtype=np.float32) -> None:
        """Copy `array` as `dtype` into the upload buffer `staging` (mapped, written, unmapped), for a
        recording to copy on the GPU. queue.write_buffer instead takes a new staging buffer from wgpu per call:
        on the H100 that cost a whole model ~0.12 ms a call and made most of its latency bursts (NOTES)."""
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype))
        with self.checked(f"writing {data.nbytes} bytes through a {staging.size}-byte upload buffer"):
            if self._maps:
                return self._maps.write(staging, data)
            with self._lock:
                promise = self._premaps.pop(staging, None)
            if promise is None:
                self._map(staging, "WRITE", staging.size)
            else:
                self._wait_map(promise)
            try:
                staging.write_mapped(data, 0)
            finally:
                staging.unmap()

    def premap(self, staging) -> None:
        """On GPUs, ask now for the upload buffer's next WRITE map, right after submitting the work that
        copies from it: the map resolves during that work's read-back polls, so the next write_staged finds
        it mapped instead of waiting a round trip (on every adapter with mapping.py's maps)."""
        if self._maps:
            with self.checked("mapping an upload buffer ahead"):
                self._maps.request(staging, "WRITE", staging.size)
        elif self._spins and hasattr(staging, "_map_state"):
            quiet = self._quiet.spinning() if self._quiet else nullcontext()
            with self.checked("mapping an upload buffer ahead"), quiet:
                promise = staging.map_async("WRITE", 0, staging.size)
            with self._lock:
                self._premaps[staging] = promise

    def map_in_flight(self, buffer) -> bool:
        """Has `buffer` a map in flight: asked for ahead (premap) and not yet consumed by write_staged, or left by
        an interrupted wait?"""
        if self._maps:
            return self._maps.in_flight(buffer)
        with self._lock:
            return buffer in self._premaps

    def settle_map(self, buffer) -> None:
        """Wait for a map of `buffer` left in flight (an interrupted wait) and undo it."""
        with self.checked("settling an interrupted map"):
            if self._maps:
                self._maps.settle(buffer)
                return
            with self._lock:
                promise = self._premaps.pop(buffer, None)
            if promise is None:
                return
            try:
                self._wait_map(promise)
            except WGPU_ERRORS:
                return  # the map failed: nothing to undo
            buffer.unmap()

    def map_read(self, staging, nbytes: int) -> None:
        """Map `staging` for reading once the submitted work that fills it is done, through wgpu-py (where
        mapping.py's C API maps are not available: Dawn).

        wgpu-py's map_sync submits an empty command buffer first (a workaround for reads mapped before their
        copy was submitted; ours always is) and waits for its polling thread. On GPUs the calling thread
        polls the device itself until the map is done: on the H100 that cut whole-model latency by 1-7 %
        (tools/latency_probe.py), and leaving wgpu-py's poll thread asleep meanwhile (QuietPoller) 3-5 % more.
        CPU adapters wait without spinning: a spinning thread takes a core from the rasterizer. Without wgpu-py
        0.32's internals (`_poll`, `_poller`, `_state`) it waits as map_sync does.
        """
        self._map(staging, "READ_NOSYNC", nbytes)

    def _map(self, buffer, mode: str, nbytes: int) -> None:
        """map_async `buffer` and wait as map_read describes."""
        quiet = self._quiet
        with quiet.spinning() if quiet else nullcontext():
            promise = buffer.map_async(mode, 0, nbytes)
        with self._lock:
            self._premaps[buffer] = promise  # until waited for: settle_map finds it after an interrupted wait
        self._wait_map(promise)
        with self._lock:
            self._premaps.pop(buffer, None)

    def _wait_map(self, promise) -> None:
        quiet = self._quiet
        token = None
        if self._spins and hasattr(promise, "_state"):
            while promise._state == "pending":
                self.device._poll(False)
        elif quiet:  # no way to tell when it resolves: the poll thread resolves it after all
            token = quiet.real()
        try:
            promise.sync_wait()
        finally:
            if token is not None:
                token.set_done()  # else the poll thread would go on polling for good

    # -- running ---------------------------------------------------------------------------------
    def encode(self, dispatches: list[Dispatch], encoder=None, timestamp_writes=None):
        with self.checked(f"encoding {len(dispatches)} dispatches"):
            encoder = encoder or self.device.create_command_encoder()
            kwargs = {"timestamp_writes": timestamp_writes} if timestamp_writes else {}
            cpass = encoder.begin_compute_pass(**kwargs)
            record = _record_raw if _RAW is not None and hasattr(cpass, "_internal") else _record
            record(cpass, dispatches)
            cpass.end()
            return encoder

    def submit(self, command, what: str) -> None:
        """Submit one finished command buffer (refused, not aborted, on a device found lost)."""
        with self.checked(f"submitting {what}"):
            self.device.queue.submit([command])

    def run(self, dispatches: list[Dispatch]) -> None:
        """Record all dispatches in one compute pass and submit once."""
        encoder = self.encode(dispatches)
        with self.checked(f"encoding {len(dispatches)} dispatches"):
            command = encoder.finish()
        self.submit(command, f"{len(dispatches)} dispatches")

    def wait(self, buffer) -> None:
        """Block until submitted work is done (on_submitted_work_done_sync is broken in wgpu-py 0.32)."""
        with self.checked("waiting for the GPU"):
            self.device.queue.read_buffer(buffer, 0, 4)


def _record(cpass, dispatches: list[Dispatch]) -> None:
    for d in dispatches:
        cpass.set_pipeline(d.pipeline)
        cpass.set_bind_group(0, d.bind_group)
        cpass.dispatch_workgroups(*d.grid)


class DispatchList(list):
    """Dispatches encoded again and again (a Recording's, fixed once made): their C handles and grids are
    flattened once for _record_raw (on lavapipe 0.86 -> 0.70 us a dispatch of host time)."""

    __slots__ = ("_handles",)

    def handles(self) -> list[tuple]:
        if getattr(self, "_handles", None) is None:
            self._handles = _handles(self)
        return self._handles


def _handles(dispatches) -> list[tuple]:
    return [(d.pipeline._internal, d.bind_group._internal, *d.grid) for d in dispatches]


def _record_raw(cpass, dispatches: list[Dispatch]) -> None:
    """The same calls straight into the C API: on wgpu-native about half the host time of wgpu-py's wrappers,
    which capture errors around every call (a pass's errors surface at the encoder's finish, which keeps the
    wrapper)."""
    lib, null, handle = _RAW[0], _RAW[1].NULL, cpass._internal
    set_pipeline, set_bind_group = lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup
    dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
    commands = dispatches.handles() if isinstance(dispatches, DispatchList) else _handles(dispatches)
    for pipeline, group, x, y, z in commands:
        set_pipeline(handle, pipeline)
        set_bind_group(handle, 0, group, 0, null)
        dispatch(handle, x, y, z)


class QuietPoller:
    """For wgpu-py's maps (Dawn; mapping.py's maps never wake the poll thread). wgpu-py wakes its poll thread
    for every map_async, and that thread then blocks in wgpuDevicePoll until the map is done, beside the
    thread that spins on it (Gpu.map_read). Installed as the device poller's
    get_token, this hands a thread inside `spinning()` a token that wakes nothing; other threads get the real
    one. On the H100 whole models ran 3-5 % faster at the median with it (NOTES, session 9 call 4)."""

    def __init__(self, get_token):
        self.real = get_token
        self.local = threading.local()

    @classmethod
    def install(cls, device) -> QuietPoller | None:
        """Installed on `device` (whose `_poll` the caller spins on), or None without wgpu-py's poll thread."""
        poller = getattr(device, "_poller", None)
        if poller is None or not hasattr(poller, "get_token"):
            return None
        quiet = cls(poller.get_token)
        poller.get_token = quiet
        return quiet

    def __call__(self):
        return _SLEEPING_TOKEN if getattr(self.local, "active", False) else self.real()

    @contextmanager
    def spinning(self):
        self.local.active = True
        try:
            yield
        finally:
            self.local.active = False


class _SleepingToken:
    """What wgpu-py's callbacks expect of a poll token."""

    def set_done(self) -> None:
        pass


_SLEEPING_TOKEN = _SleepingToken()


class Checked:
    """See Gpu.checked (a plain class: it wraps every wgpu call of a conv, so it must cost little)."""

    __slots__ = ("gpu", "op")

    def __init__(self, gpu: Gpu, op: str):
        self.gpu, self.op = gpu, op

    def __enter__(self):
        if self.gpu.lost is not None:
            raise DeviceLost(f"{self.op}: the GPU device {self.gpu.profile.name} was lost ({self.gpu.lost}); "
                             f"get_gpu() opens a new one ({AFTER_LOSS})")

    def __exit__(self, kind, err, traceback):
        if err is not None and isinstance(err, WGPU_ERRORS) and not isinstance(err, GpuError):
            raise self.gpu.translate(err, self.op) from err
        return False


class Recording:
    """A fixed list of dispatches, optionally preceded by copies from upload buffers (`writes`: (source,
    target, nbytes), see Gpu.write_staged) and followed by a read-back of one buffer, run again and again.

    WebGPU command buffers are single-use, and encoding costs the host ~7 us per dispatch. With `ahead`,
    the command buffer for the next run is encoded right after this run's submit, while the GPU works, so
    repeated calls (a compiled model) do not wait for the host to encode; such a recording keeps its own
    staging buffer, others take one from the device's pool per run. `read`: (buffer, shape, dtype).
    One recording is run by one thread at a time (its owner serializes calls); different recordings of
    one Gpu may run concurrently.
    """

    def __init__(self, gpu: Gpu, dispatches: list[Dispatch], read=None, ahead: bool = True, writes=()):
        self.gpu, self.dispatches, self.ahead = gpu, DispatchList(dispatches), ahead
        self.writes = tuple(writes)
        self.read = None
        self._staging = None
        if read is not None:
            buffer, shape, dtype = read
            dtype = np.dtype(dtype)
            count = int(np.prod(shape))
            nbytes = word_align(dtype.itemsize * count)  # copies move whole 4-byte words
            self.read = (buffer, tuple(shape), dtype, count, nbytes)
            if ahead:
                self._staging = gpu.take_staging(nbytes)
        self._ready = None

    def _encode(self, staging):
        gpu = self.gpu
        encoder = None
        if self.writes:
            with gpu.checked(f"encoding {len(self.writes)} upload copies"):
                encoder = gpu.device.create_command_encoder()
                for source, target, nbytes in self.writes:
                    encoder.copy_buffer_to_buffer(source, 0, target, 0, nbytes)
        encoder = gpu.encode(self.dispatches, encoder) if self.dispatches else encoder
        with gpu.checked(f"encoding {len(self.dispatches)} dispatches and a read-back"):
            encoder = encoder or gpu.device.create_command_encoder()
            if self.read:
                buffer, *_, nbytes = self.read
                encoder.copy_buffer_to_buffer(buffer, 0, staging, 0, nbytes)
            return encoder.finish()

    def run(self) -> np.ndarray | None:
        """Submit once; the read-back array when the recording has one."""
        gpu = self.gpu
        staging = self._staging
        if self.read and staging is None:
            staging = gpu.take_staging(self.read[-1])
        command, self._ready = self._ready or self._encode(staging), None
        # wgpu-native aborts the process on a submit that uses a buffer with a map in flight
        for source, _, _ in self.writes:
            if gpu.map_in_flight(source):
                raise RuntimeError("an upload buffer is still mapped: write_staged it before running its recording")
        if staging is not None and gpu.map_in_flight(staging):  # a read-back's wait was interrupted (Ctrl-C)
            gpu.settle_map(staging)
        gpu.submit(command, f"{len(self.dispatches)} dispatches" + (" and a read-back" if self.read else ""))
        for source, _, _ in self.writes:
            gpu.premap(source)
        if self.ahead:
            self._ready = self._encode(staging)
        if not self.read:
            return None
        _, shape, dtype, count, nbytes = self.read
        result = gpu.read_staging(staging, nbytes, dtype, count, shape)
        if staging is not self._staging:  # back to the pool only after a clean read (a failed map may linger)
            gpu.give_staging(nbytes, staging)
        return result


def word_align(nbytes: int) -> int:
    """Buffer sizes, bindings and copies are whole 4-byte words (float16 tensors may have an odd length)."""
    return -(-int(nbytes) // 4) * 4


def padded_bytes(data: np.ndarray) -> np.ndarray:
    """`data` as raw bytes, zero-padded to a whole, non-zero number of 4-byte words."""
    raw = data.reshape(-1).view(np.uint8)
    size = max(word_align(raw.size), 4)
    return raw if raw.size == size else np.concatenate([raw, np.zeros(size - raw.size, np.uint8)])


_GPU: Gpu | None = None
_OPENING = threading.Lock()


def get_gpu() -> Gpu:
    """The process-wide device, opened on first use and opened again after a call found it lost."""
    global _GPU
    gpu = _GPU
    if gpu is not None and gpu.lost is None:
        return gpu
    with _OPENING:
        if _GPU is None or _GPU.lost is not None:
            _GPU = Gpu(choose_adapter(list_adapters()))
        return _GPU


def resolve_profile(device) -> DeviceProfile:
    """None -> the adapter in use; a family name -> a stand-in profile; a profile -> itself."""
    if device is None:
        return get_gpu().profile
    if isinstance(device, DeviceProfile):
        return device
    if isinstance(device, str):
        return DeviceProfile.for_family(device)
    raise TypeError(f"device must be None, a DeviceProfile or a family name, got {device!r}")

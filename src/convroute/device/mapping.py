"""Buffer maps through wgpu-native's C API: the per-call read-back and upload maps of a compiled model.

wgpu-py's `map_async` makes a cffi callback, a promise with its threading events and a poll-thread token per map,
and wraps every C call in an error-capturing proxy: a 1-conv model's whole call took 322 us that way and 200 us
this way on lavapipe (NOTES, session 16), where a whole MobileNetV2 call on the H200 is ~0.6 ms. Here one
process-wide callback stores each map's status under a request number, and the caller polls the device itself:
spinning on GPUs (wakes at once), blocking on CPU adapters (a spinning thread would take a core from lavapipe's
rasterizer). Only `Gpu` maps its read-back and upload
buffers, and only through this module when it is available (wgpu-native; Dawn keeps wgpu-py's maps).
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref

import numpy as np

from convroute.device.webgpu import IMPLEMENTATION, RAW

WAIT_LIMIT_S = 120.0  # a map that never resolves (a hung device) ends in an error, not a hang

_RESULTS: dict[int, tuple[int, str]] = {}  # request number -> (WGPUMapAsyncStatus, message), set by the callback
_NUMBERS = itertools.count(1)

if RAW is not None and IMPLEMENTATION == "wgpu-native":
    _lib, _ffi = RAW

    @_ffi.callback("void(WGPUMapAsyncStatus, WGPUStringView, void *, void *)")
    def _on_mapped(status, message, userdata1, _userdata2):
        text = ""
        if status != _lib.WGPUMapAsyncStatus_Success and message.data != _ffi.NULL:
            text = _ffi.string(message.data, message.length).decode("utf-8", "replace")
        _RESULTS[int(_ffi.cast("uintptr_t", userdata1))] = (status, text)
else:
    _lib = _ffi = None

MODES = {"READ": 1, "WRITE": 2}  # webgpu.h's WGPUMapMode_Read / _Write


def available() -> bool:
    return _lib is not None


class Maps:
    """Maps of one device's buffers: `request` (asynchronous), then `read` or `write` (wait, copy, unmap).

    A buffer has at most one map in flight; different buffers may be mapped by different threads at once. A map
    left in flight by an interrupted wait (Ctrl-C lands in the wait, where a call spends its time) is settled by
    the buffer's next request: waited for and undone, so the program goes on."""

    def __init__(self, device, spin: bool):
        self.device_handle, self.spin = device._internal, spin
        self._pending = weakref.WeakKeyDictionary()  # buffer -> request number of its map in flight
        self._lock = threading.Lock()

    def in_flight(self, buffer) -> bool:
        with self._lock:
            return buffer in self._pending

    def request(self, buffer, mode: str, nbytes: int) -> None:
        """Ask for `buffer`'s first `nbytes` to be mapped once the submitted work using it is done."""
        number = next(_NUMBERS)
        info = _ffi.new("WGPUBufferMapCallbackInfo *")
        info.mode = _lib.WGPUCallbackMode_AllowProcessEvents
        info.callback = _on_mapped
        info.userdata1 = _ffi.cast("void *", number)
        if self.in_flight(buffer):  # abandoned
            self.settle(buffer)
        with self._lock:
            self._pending[buffer] = number
        _lib.wgpuBufferMapAsync(buffer._internal, MODES[mode], 0, nbytes, info[0])

    def read(self, buffer, nbytes: int, dtype, count: int, shape) -> np.ndarray:
        """Map `buffer` for reading (once the work filling it is done), copy out `count` elements, unmap."""
        self.request(buffer, "READ", nbytes)
        self._wait(buffer)
        try:
            pointer = _lib.wgpuBufferGetConstMappedRange(buffer._internal, 0, nbytes)
            if pointer == _ffi.NULL:
                raise RuntimeError(f"the mapped range of a {buffer.size}-byte read-back buffer is not readable")
            return np.frombuffer(_ffi.buffer(pointer, nbytes), dtype, count).reshape(shape).copy()
        finally:
            _lib.wgpuBufferUnmap(buffer._internal)

    def write(self, buffer, data: np.ndarray) -> None:
        """Copy `data` (contiguous bytes) to the start of `buffer`: waits for its map in flight (`request`ed
        ahead), or maps it now, then unmaps."""
        if not self.in_flight(buffer):
            self.request(buffer, "WRITE", buffer.size)
        self._wait(buffer)
        try:
            pointer = _lib.wgpuBufferGetMappedRange(buffer._internal, 0, buffer.size)
            if pointer == _ffi.NULL:
                raise RuntimeError(f"the mapped range of a {buffer.size}-byte upload buffer is not writable")
            _ffi.memmove(pointer, data, data.nbytes)
        finally:
            _lib.wgpuBufferUnmap(buffer._internal)

    def _wait(self, buffer) -> None:
        """Until `buffer`'s map in flight resolves; raises if it failed."""
        status, message = self._resolve(buffer)
        if status != _lib.WGPUMapAsyncStatus_Success:
            raise RuntimeError(f"could not map a {buffer.size}-byte buffer (status {status}: {message})")

    def settle(self, buffer) -> None:
        """Wait for an abandoned map of `buffer` and undo it."""
        status, _ = self._resolve(buffer)
        if status == _lib.WGPUMapAsyncStatus_Success:
            _lib.wgpuBufferUnmap(buffer._internal)

    def _resolve(self, buffer) -> tuple[int, str]:
        with self._lock:
            number = self._pending[buffer]
        poll, handle, block = _lib.wgpuDevicePoll, self.device_handle, not self.spin
        deadline = None
        while number not in _RESULTS:
            poll(handle, block, _ffi.NULL)
            if number in _RESULTS:
                break
            now = time.monotonic()
            deadline = deadline or now + WAIT_LIMIT_S
            if now > deadline:
                raise RuntimeError(f"a buffer map did not resolve within {WAIT_LIMIT_S:.0f} s")
        with self._lock:
            del self._pending[buffer]
        return _RESULTS.pop(number)

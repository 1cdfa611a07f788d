"""A stand-in GPU that records, instead of running, what kernels build: buffers (their bytes where the kernel
uploads some), pipelines (WGSL source and override constants) and bind groups. Planning a model on it gives
the dispatches of a browser plan without a device (the export's WGSL is compiled by the browser's own
compiler)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convroute.device.gpu import Gpu, padded_bytes, word_align
from convroute.device.profile import DeviceProfile
from convroute.device.workgroup import check_workgroup


@dataclass(eq=False)
class TracedBuffer:
    size: int
    kind: str  # "storage" or "uniform"
    what: str
    data: bytes | None = None  # initial contents (weights, uniform blocks); None: zeros

    @property
    def id(self) -> int:
        return id(self)


@dataclass(eq=False)
class TracedPipeline:
    source: str
    constants: tuple  # sorted (name, value) pairs


@dataclass(eq=False)
class TracedBindGroup:
    pipeline: TracedPipeline
    buffers: list


@dataclass
class TraceGpu(Gpu):
    """Gpu's planning surface (dispatch, grid, the checks) over recorded objects; nothing touches a device."""

    profile: DeviceProfile
    buffers: list = field(default_factory=list)
    _pipelines: dict = field(default_factory=dict)

    def __post_init__(self):
        self.lost = None

    def pipeline(self, source: str, constants: dict | None = None):
        check_workgroup(self.profile, source)
        key = (source, tuple(sorted((constants or {}).items())))
        return self._pipelines.setdefault(key, TracedPipeline(*key))

    def bind(self, pipeline, buffers: list):
        for b in buffers:
            if not isinstance(b, TracedBuffer):
                raise ValueError(f"a browser plan binds buffers only, got {type(b).__name__} (a texture path: "
                                 f"plan for a GPU family other than 'cpu')")
        return TracedBindGroup(pipeline, list(buffers))

    def _new(self, nbytes: int, kind: str, what: str, data: bytes | None = None) -> TracedBuffer:
        size = max(word_align(nbytes), 4)
        self.check_buffer(size, what)
        buf = TracedBuffer(size, kind, what, data)
        self.buffers.append(buf)
        return buf

    def upload(self, array: np.ndarray, what: str = "tensor", dtype=np.float32):
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype))
        self.check_binding(data.nbytes, what)
        return self._new(data.nbytes, "storage", what, data.tobytes())

    def write(self, buffer, array: np.ndarray, dtype=np.float32) -> None:
        data = padded_bytes(np.ascontiguousarray(array, dtype=dtype)).tobytes()
        old = buffer.data or b""
        buffer.data = data + old[len(data):]

    def uniform(self, values):
        data = np.asarray(values, dtype=np.uint32)
        return self._new(data.nbytes, "uniform", "uniform block", data.tobytes())

    def empty(self, nbytes: int, what: str = "tensor"):
        self.check_binding(nbytes, what)
        return self._new(nbytes, "storage", what)

    def buffer(self, nbytes: int, usage, what: str):
        return self._new(nbytes, "storage", what)

    def texture_array(self, width, height, layers, fmt, what):
        raise ValueError(f"{what}: a texture path has no place in a browser plan")

    def fill(self, buffer, value: float, dtype=np.float32) -> None:
        pass  # poison is for tests on a device

    def upload_buffer(self, nbytes: int):
        raise ValueError("a browser plan uploads its inputs itself")

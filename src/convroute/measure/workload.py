"""The workload every timed conv runs on: random weights, bias and rotated input/output buffers for one
ConvParams, the kernels built on them, their times (measure.timing) and their error against the float64
reference (measure.reference)."""

from __future__ import annotations

import math

import numpy as np

from convroute.chunking import batch_chunk
from convroute.device.gpu import Gpu
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import FP32, Epilogue, Precision
from convroute.measure.reference import norm_relative_error, reference_conv
from convroute.measure.timing import Timing, TimingSettings, time_candidates
from convroute.params import ConvParams

ROTATION_BYTES = 256 << 20  # at most this much memory for the rotated inputs and outputs together
SETTINGS = TimingSettings()


def random_inputs(p: ConvParams, rng: np.random.Generator, bias: bool = True):
    """Fresh float32 input, weight and bias (None without `bias`) for `p`, never zeros; the weight is scaled by
    1/sqrt(fan-in), so outputs stay near the inputs' size and a chain of layers neither explodes nor vanishes."""
    x = rng.uniform(-1.0, 1.0, p.input_shape).astype(np.float32)
    fan_in = (p.c_out // p.groups if p.transposed else p.c_in // p.groups) * p.kh * p.kw
    w = (rng.uniform(-1.0, 1.0, p.weight_shape) / math.sqrt(fan_in)).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, p.c_out).astype(np.float32) if bias else None
    return x, w, b


class Workload:
    """Random weights, bias and rotated input/output buffers for one ConvParams, shared by every algorithm
    timed on it, plus the float64 host reference of the first input.

    `precision`: the buffers hold `precision.dtype` and kernels are built with it; the reference is computed
    from the float32 values, so an fp16 error includes rounding the inputs and weights to f16.

    A batch whose input or output exceeds one storage binding runs in chunks of images (as Conv2d does):
    the workload then holds one chunk, and its times are scaled by batch / chunk."""

    def __init__(self, gpu: Gpu, p: ConvParams, seed: int = 0, rotations: int = 4, precision: Precision = FP32):
        precision.require(gpu.profile)
        self.precision = precision
        rng = np.random.default_rng(seed)
        size, dtype = precision.itemsize, precision.numpy
        chunk = batch_chunk(p, gpu.profile.max_binding_bytes, size)
        self.scale = p.n / chunk
        self.gpu, self.p = gpu, p.with_batch(chunk)
        p = self.p
        self.x_first, self.weight, self.bias = random_inputs(p, rng)
        in_bytes, out_bytes = size * math.prod(p.input_shape), size * math.prod(p.output_shape)
        count = max(1, min(rotations, ROTATION_BYTES // (in_bytes + out_bytes)))
        self.x_bufs = [gpu.upload(self.x_first if i == 0 else rng.uniform(-1, 1, p.input_shape).astype(np.float32),
                                  "input", dtype) for i in range(count)]
        self.y_bufs = [gpu.empty(out_bytes, "output") for _ in range(count)]
        self._reference: np.ndarray | None = None

    def kernel(self, cls: type[ConvKernel]) -> ConvKernel:
        """Prepack + compile (outside any timing)."""
        return cls(self.gpu, self.p, self.weight, self.bias, Epilogue(), self.precision.dtype,
                   self.precision.accumulate)

    def time(self, kernel: ConvKernel, settings: TimingSettings = SETTINGS) -> Timing:
        return self.time_all({"kernel": kernel}, settings)["kernel"]

    def time_all(self, kernels: dict[str, ConvKernel], settings: TimingSettings = SETTINGS) -> dict:
        """{name: Timing} of several kernels on this workload, measured interleaved (see time_candidates)."""
        runs = {name: [k.bind(x, y, self.p.n) for x, y in zip(self.x_bufs, self.y_bufs, strict=True)]
                for name, k in kernels.items()}
        timings = time_candidates(self.gpu, runs, settings)
        if self.scale == 1:
            return timings
        note = f", {self.p.n}-image chunks x {self.scale:.3g}"
        return {n: Timing(t.median_ms * self.scale, tuple(v * self.scale for v in t.samples_ms), t.method + note)
                for n, t in timings.items()}

    def dispatches(self, kernel: ConvKernel) -> int:
        """How many dispatches one call of the kernel records (each costs the host its encoding in a model)."""
        return len(kernel.bind(self.x_bufs[0], self.y_bufs[0], self.p.n))

    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = reference_conv(self.p, self.x_first, self.weight, self.bias)
        return self._reference

    def error(self, kernel: ConvKernel) -> float:
        """Relative error of the kernel's result on the first input against the float64 host reference;
        the output is poisoned with NaN first, so unwritten elements give inf."""
        y, dtype = self.y_bufs[0], self.precision.numpy
        self.gpu.fill(y, np.nan, dtype)
        self.gpu.run(kernel.bind(self.x_bufs[0], y, self.p.n))
        return norm_relative_error(self.gpu.read(y, self.p.output_shape, dtype), self.reference())

    def release(self) -> None:
        for buf in self.x_bufs + self.y_bufs:
            buf.destroy()
        self.x_bufs, self.y_bufs = [], []

"""Public conv API: `Conv2d` (a prepacked layer) and `conv2d` (one call)."""

from __future__ import annotations

import math
import threading

import numpy as np

from convroute.chunking import band_rows, batch_chunk, image_bytes
from convroute.device.errors import DeviceLost, GpuError
from convroute.device.gpu import Gpu, get_gpu, resolve_profile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import Epilogue, Precision
from convroute.params import ConvParams, make_params
from convroute.router import Decision, route_params
from convroute.settings import env_flag

FLOAT_KINDS = ("float16", "float32", "float64")


def as_array(value, name: str) -> np.ndarray:
    """numpy array or (CPU/GPU) torch tensor -> float32 numpy; TypeError for non-float data."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if value.dtype.name not in FLOAT_KINDS:
        raise TypeError(f"{name} must be a floating-point tensor (float16/32/64), got dtype {value.dtype}")
    return np.ascontiguousarray(value, dtype=np.float32)


def check_algorithm(algorithm: str, p: ConvParams, precision: Precision | None = None) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: auto, {', '.join(ALGORITHMS)}")
    why = ALGORITHMS[algorithm].unsupported(p)
    if why:
        raise ValueError(f"algorithm {algorithm!r} cannot run {p.describe()}: {why}")
    why = precision and ALGORITHMS[algorithm].unsupported_precision(precision)
    if why:
        raise ValueError(f"algorithm {algorithm!r} cannot run dtype={precision.dtype!r}: {why}")


class Conv2d:
    """A conv layer whose weights are prepacked once per input size; calling it only dispatches.

    `decision` tells which algorithm runs and why for the latest call's input shape (None until an input
    shape is known); the routing is per full input shape, batch included.
    `dtype`: "float32" (default) or "float16": the element type of the tensors on the GPU (input, output,
    prepacked weights); inputs of any float dtype are converted on upload and the result is a numpy array
    of this dtype. float16 needs the adapter feature shader-f16. `accumulate`: the type of the running
    sums, by default the storage type (float16 sums are added to f32 totals per block of products);
    "float32" with dtype="float16" keeps f32 sums (more accurate, slower on the H100 at batch 1).
    `input_dtype="float32"` with dtype="float16": the input goes to the GPU as float32 and the kernel reads it
    (no conversion on the host) where the algorithm can (ConvKernel.reads_float32_input: all but depthwise and
    transposed) and the whole input fits one storage binding; otherwise it is converted on upload.

    Thread-safe: calls from many threads give each its own result; calls on one layer take turns on the GPU
    (they share its prepacked weights and I/O buffers). GPU failures raise convroute.device.errors.GpuError
    (GpuOutOfMemory, DeviceLost) naming the conv. When the device is lost, a layer that opened the device
    itself (no `gpu=` given) re-prepares on a newly opened device and retries the call once, so the caller
    sees DeviceLost only if that fails too; a layer given `gpu=` raises DeviceLost: build it again with a
    working Gpu (`convroute.device.gpu.get_gpu()` opens a new one once the old one is found lost).
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, transposed=False,
                 output_padding=0, activation=None, algorithm="auto", policy=None, device=None,
                 force_direct=None, input_shape=None, gpu: Gpu | None = None, dtype="float32", accumulate=None,
                 input_dtype=None):
        self.precision = Precision.parse(dtype, accumulate, input_dtype)
        self.dtype = self.precision.dtype
        self.weight = as_array(weight, "weight")
        if self.weight.ndim != 4:
            raise ValueError(f"weight must be 4-D, got shape {self.weight.shape}")
        c_out = self.weight.shape[1] * groups if transposed else self.weight.shape[0]
        self.bias = None if bias is None else as_array(bias, "bias")
        if self.bias is not None and self.bias.shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) to match the output channels, "
                             f"got {self.bias.shape}")
        if algorithm != "auto" and algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; known: auto, {', '.join(ALGORITHMS)}")
        self.conv_args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                              transposed=transposed, output_padding=output_padding)
        self.epilogue = Epilogue.parse(activation)
        self.algorithm, self.policy, self.device, self.force_direct = algorithm, policy, device, force_direct
        self.gpu, self._gpu_given = gpu, gpu is not None
        self.decision: Decision | None = None
        self._lock = threading.Lock()  # one call at a time uses the caches and the I/O buffers below
        self._reset()
        if input_shape is not None:
            p = make_params(input_shape, self.weight.shape, **self.conv_args)
            self._kernel_for(p, self._float32_input(p))

    def _float32_input(self, p: ConvParams) -> bool:
        """Whether this layer's input of `p`'s shape goes to the GPU as float32 (input_dtype="float32", where it
        fits one binding), for kernels that read it so."""
        self.gpu = self.gpu or get_gpu()
        return bool(self.precision.input) and 4 * math.prod(p.input_shape) <= self.gpu.profile.max_binding_bytes

    def _reset(self) -> None:
        """Forget everything prepared on the device (after it was lost)."""
        if not self._gpu_given:
            self.gpu = None
        self._decisions: dict[tuple, Decision] = {}  # (n, h, w) -> decision
        self._kernels: dict[tuple, object] = {}  # (algorithm, h, w, reads float32) -> prepared kernel (any batch)
        self._io: dict[tuple, tuple] = {}  # (algorithm, n, h, w, reads float32) -> input, output, dispatches
        self._band: Conv2d | None = None

    def _kernel_for(self, p: ConvParams, float32_input: bool):
        gpu = self.gpu = self.gpu or get_gpu()
        decision = self._decisions.get((p.n, p.h, p.w))
        if decision is None:
            self.precision.require(gpu.profile)
            if self.algorithm == "auto":
                profile = gpu.profile if self.device is None else resolve_profile(self.device)
                decision = route_params(p, profile, self.policy, self.force_direct, self.precision.dtype)
            else:
                check_algorithm(self.algorithm, p, self.precision)
                decision = Decision(self.algorithm, "forced by the caller", "forced", gpu.profile.family,
                                    self.precision.dtype)
            self._decisions[(p.n, p.h, p.w)] = decision
        reads_float32 = float32_input and ALGORITHMS[decision.algorithm].reads_float32_input
        key = (decision.algorithm, p.h, p.w, reads_float32)  # kernels take the batch at bind time: one prepack
        if key not in self._kernels:
            self._kernels[key] = ALGORITHMS[decision.algorithm](gpu, p, self.weight, self.bias, self.epilogue,
                                                                self.precision.dtype, self.precision.accumulate,
                                                                input_dtype="float32" if reads_float32 else None)
        self.decision = decision
        return self._kernels[key]

    def __call__(self, x) -> np.ndarray:
        x = as_array(x, "input")
        p = make_params(x.shape, self.weight.shape, **self.conv_args)
        with self._lock:
            try:
                try:
                    return self._run(x, p)
                except DeviceLost:
                    if self._gpu_given:
                        raise
                    self._reset()
                    return self._run(x, p)
            except GpuError as err:
                decision = self._decisions.get((p.n, p.h, p.w))
                what = f"conv {p.describe()}" + (f" ({decision.algorithm})" if decision else "")
                raise type(err)(f"{what}: {err}") from err

    def _run(self, x: np.ndarray, p: ConvParams) -> np.ndarray:
        self.gpu = self.gpu or get_gpu()
        if not p.transposed and image_bytes(p, self.precision.itemsize) > self.gpu.profile.max_binding_bytes:
            return self._in_bands(x, p)
        kernel = self._kernel_for(p, self._float32_input(p))
        gpu, dtype = self.gpu, self.precision.numpy
        x_dtype = np.float32 if kernel.precision.input else dtype
        out = np.empty(p.output_shape, dtype)
        chunk = batch_chunk(p, gpu.profile.max_binding_bytes, self.precision.itemsize)
        for n0 in range(0, p.n, chunk):
            n = min(chunk, p.n - n0)
            x_buf, y_buf, dispatches = self._buffers(kernel, p.with_batch(n), self.decision.algorithm)
            gpu.write(x_buf, x[n0:n0 + n], x_dtype)
            if POISON:
                gpu.fill(y_buf, np.nan, dtype)
            out[n0:n0 + n] = gpu.run_and_read(dispatches, y_buf, (n,) + p.output_shape[1:], dtype)
        return out

    def _in_bands(self, x: np.ndarray, p: ConvParams) -> np.ndarray:
        """One image exceeds a storage binding: run bands of output rows, each as a conv with no vertical
        padding over the input rows it reads (zero rows standing in for the padding)."""
        rows = band_rows(p, self.gpu.profile.max_binding_bytes, self.precision.itemsize)
        if self._band is None:
            args = dict(self.conv_args, padding=(0, p.padding[1]))
            self._band = Conv2d(self.weight, self.bias, **args, activation=self.epilogue, algorithm=self.algorithm,
                                policy=self.policy, device=self.device, force_direct=self.force_direct,
                                dtype=self.precision.dtype, accumulate=self.precision.accumulate, gpu=self.gpu,
                                input_dtype=self.precision.input or None)
        (sh, _), (ph, _), (dh, _) = p.stride, p.padding, p.dilation
        out = np.empty(p.output_shape, self.precision.numpy)
        for r0 in range(0, p.ho, rows):
            r1 = min(p.ho, r0 + rows)
            lo, hi = r0 * sh - ph, (r1 - 1) * sh - ph + (p.kh - 1) * dh + 1
            band = np.zeros((p.n, p.c_in, hi - lo, p.w), np.float32)
            band[:, :, max(lo, 0) - lo:min(hi, p.h) - lo] = x[:, :, max(lo, 0):min(hi, p.h)]
            out[:, :, r0:r1] = self._band(band)
        self.decision = self._band.decision
        return out

    def _buffers(self, kernel, p: ConvParams, algorithm: str):
        key = (algorithm, p.n, p.h, p.w, bool(kernel.precision.input))
        if key not in self._io:
            size = self.precision.itemsize
            x_size = 4 if kernel.precision.input else size
            x_buf = self.gpu.empty(x_size * int(np.prod(p.input_shape)), "input")
            y_buf = self.gpu.empty(size * int(np.prod(p.output_shape)), "output")
            self._io[key] = (x_buf, y_buf, kernel.bind(x_buf, y_buf, p.n))
        return self._io[key]


POISON = env_flag("CONVROUTE_POISON", False)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, transposed=False,
           output_padding=0, activation=None, algorithm="auto", policy=None, device=None,
           force_direct=None, dtype="float32", accumulate=None, input_dtype=None) -> np.ndarray:
    """One conv2d (or conv_transpose2d with transposed=True) on the GPU; returns NCHW numpy of `dtype`:
    float32 by default, float16 for dtype="float16" (see Conv2d for dtype, accumulate, input_dtype, threads and
    GPU errors)."""
    precision = Precision.parse(dtype, accumulate, input_dtype)
    x = as_array(input, "input")
    w = as_array(weight, "weight")
    make_params(x.shape, w.shape, stride, padding, dilation, groups, transposed=transposed,
                output_padding=output_padding)
    layer = Conv2d(w, bias, stride, padding, dilation, groups, transposed=transposed,
                   output_padding=output_padding, activation=activation, algorithm=algorithm, policy=policy,
                   device=device, force_direct=force_direct, dtype=precision.dtype,
                   accumulate=precision.accumulate, input_dtype=precision.input or None)
    return layer(x)

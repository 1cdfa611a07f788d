"""The one timing function every measurement uses (calibrate, autotune, bench, conv, suite):
`time_candidates`, and the workload it times.

GPU timestamp queries around each compute pass when the device has `timestamp-query` (raw ticks times the
queue's timestamp period = nanoseconds), else submit-and-wait wall clock. Warm-up first, then rounds that
run every candidate once (interleaved, so drifting load hits all alike) until the count or the time budget
runs out, and the median per candidate. Each repeat reads a different input buffer (and writes a different
output buffer) so caches do not flatter; prepacking happens before, outside the timing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import wgpu

from convroute.chunking import batch_chunk
from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import FP32, Epilogue, Precision
from convroute.measure.reference import norm_relative_error, reference_conv
from convroute.params import ConvParams

MAX_QUERIES = 4096  # WebGPU's largest query set
ROTATION_BYTES = 256 << 20  # at most this much memory for the rotated inputs and outputs together


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 2
    repeats: int = 30  # at most
    min_repeats: int = 3  # at least, whatever the budget says
    budget_s: float = 1.0  # per measurement, warm-up included
    rotations: int = 4  # input/output buffer pairs cycled through
    method: str = "auto"  # "auto", "timestamp" or "wall"; CONVROUTE_TIMING overrides "auto"
    prune: float | None = None  # candidates whose warm-up is this many times the best's get no more runs


@dataclass(frozen=True)
class Timing:
    median_ms: float
    samples_ms: tuple[float, ...]
    method: str  # "gpu timestamps" or "wall clock"


def timing_method(gpu: Gpu, settings: TimingSettings) -> str:
    method = settings.method
    if method == "auto":
        method = os.environ.get("CONVROUTE_TIMING", "auto")
    if method not in ("auto", "timestamp", "wall"):
        raise ValueError(f"timing method must be auto, timestamp or wall, got {method!r}")
    has_timestamps = "timestamp-query" in gpu.device.features
    if method == "timestamp" and not has_timestamps:
        raise ValueError(f"{gpu.profile.name} has no timestamp-query feature; use wall-clock timing")
    return "timestamp" if method == "timestamp" or (method == "auto" and has_timestamps) else "wall"


def time_candidates(gpu: Gpu, candidates: dict[str, list[list[Dispatch]]],
                    settings: TimingSettings = TimingSettings()) -> dict[str, Timing]:
    """The timing function: median time of each candidate's run, measured interleaved.

    Each candidate is a list of runs (one per rotated input buffer); repeat i uses run i % len. After the
    warm-up, round r runs every candidate once, so load that drifts during the measurement (another process
    on the CPU, clocks ramping) hits every candidate alike. The number of rounds fits the time budget
    (settings.budget_s per candidate) within [min_repeats, repeats]. Timestamp samples are GPU time of the
    compute pass; wall-clock samples include the submit and a 4-byte read back.
    """
    names = list(candidates)
    start = time.perf_counter()
    estimate = {}
    for name in names:
        warm = []
        for i in range(max(1, settings.warmup)):
            t0 = time.perf_counter()
            _submit_and_wait(gpu, candidates[name][i % len(candidates[name])])
            warm.append(time.perf_counter() - t0)
            if sum(warm) > settings.budget_s / 2:
                break
        estimate[name] = min(warm)
    pruned = {}
    if settings.prune is not None:
        for name in names:  # a load spike in one warm-up run must not prune the winner: confirm with another
            if estimate[name] > settings.prune * min(estimate.values()):
                t0 = time.perf_counter()  # on the warm-up's first run: a run's first use of its buffers is slow
                _submit_and_wait(gpu, candidates[name][0])
                estimate[name] = min(estimate[name], time.perf_counter() - t0)
        fastest = min(estimate.values())
        pruned = {n: Timing(t * 1e3, (t * 1e3,), "wall clock, warm-up only (pruned: clearly slower)")
                  for n, t in estimate.items() if t > settings.prune * fastest}
        names = [n for n in names if n not in pruned]
    left = max(settings.budget_s * len(names) - (time.perf_counter() - start), 0.0)
    round_s = sum(estimate[n] for n in names)
    rounds = int(min(settings.repeats, max(settings.min_repeats, left // max(round_s, 1e-6))))
    schedule = [(name, candidates[name][r % len(candidates[name])]) for r in range(rounds) for name in names]
    samples, method = None, "gpu timestamps"
    if timing_method(gpu, settings) == "timestamp":
        samples = _timestamps(gpu, schedule, len(names))
    if samples is None:
        samples, method = _wall_clock(gpu, schedule), "wall clock"
    timed = {name: Timing(float(np.median(samples[name])), tuple(samples[name]), method) for name in names}
    return {name: timed.get(name) or pruned[name] for name in candidates}


def _wall_clock(gpu: Gpu, schedule: list) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for name, run in schedule:
        t0 = time.perf_counter()
        _submit_and_wait(gpu, run)
        samples.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
    return samples


def _submit_and_wait(gpu: Gpu, dispatches: list[Dispatch]) -> None:
    gpu.run(dispatches)
    gpu.wait(_fence(gpu))


def _fence(gpu: Gpu):
    """A tiny buffer to read back: the queue runs in order, so the read waits for all earlier work."""
    buf = _FENCES.get(id(gpu))
    if buf is None:
        buf = _FENCES[id(gpu)] = gpu.empty(16, "timing fence")
    return buf


_FENCES: dict[int, object] = {}


def _timestamps(gpu: Gpu, schedule: list, per_submit: int) -> dict[str, list[float]] | None:
    """GPU time in ms of each scheduled pass from timestamp queries, one submission per `per_submit` passes
    (a round); None when the device returns nonsense (a zero or negative interval)."""
    count = len(schedule)
    samples: dict[str, list[float]] = {}
    for first in range(0, count, MAX_QUERIES // 2):
        part = schedule[first:first + MAX_QUERIES // 2]
        queries = gpu.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * len(part))
        resolved = gpu.device.create_buffer(size=16 * len(part),
                                            usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        for r in range(0, len(part), per_submit):
            encoder = gpu.device.create_command_encoder()
            for i in range(r, min(r + per_submit, len(part))):
                gpu.encode(part[i][1], encoder, {"query_set": queries, "beginning_of_pass_write_index": 2 * i,
                                                 "end_of_pass_write_index": 2 * i + 1})
            if r + per_submit >= len(part):
                encoder.resolve_query_set(queries, 0, 2 * len(part), resolved, 0)
            gpu.device.queue.submit([encoder.finish()])
        ticks = np.frombuffer(gpu.device.queue.read_buffer(resolved), dtype=np.uint64).astype(np.int64)
        queries.destroy()
        resolved.destroy()
        deltas = (ticks[1::2] - ticks[0::2]) * timestamp_period(gpu) / 1e6
        if (deltas <= 0).any():
            return None
        for (name, _), delta in zip(part, deltas, strict=True):
            samples.setdefault(name, []).append(float(delta))
    return samples


def pass_times(gpu: Gpu, dispatches: list[Dispatch], runs: int) -> list[float]:
    """GPU ms of `runs` runs of one compute pass over `dispatches` (timestamp queries at its start and end),
    each submitted and read back before the next; a zero or negative value means the device's timestamps
    are nonsense."""
    queries = gpu.device.create_query_set(type=wgpu.QueryType.timestamp, count=2)
    resolved = gpu.device.create_buffer(size=16, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
    times = []
    try:
        for _ in range(runs):
            encoder = gpu.encode(dispatches, timestamp_writes={
                "query_set": queries, "beginning_of_pass_write_index": 0, "end_of_pass_write_index": 1})
            encoder.resolve_query_set(queries, 0, 2, resolved, 0)
            gpu.device.queue.submit([encoder.finish()])
            ticks = np.frombuffer(gpu.device.queue.read_buffer(resolved), np.uint64).astype(np.int64)
            times.append(float(ticks[1] - ticks[0]) * timestamp_period(gpu) / 1e6)
    finally:
        queries.destroy()
        resolved.destroy()
    return times


def timestamp_period(gpu: Gpu) -> float:
    """Nanoseconds per timestamp tick (wgpu-native returns raw ticks; WebGPU's unit is the nanosecond)."""
    try:
        from wgpu.backends.wgpu_native._ffi import lib

        period = float(lib.wgpuQueueGetTimestampPeriod(gpu.device.queue._internal))
    except (ImportError, AttributeError):
        period = 1.0
    return period if math.isfinite(period) and period > 0 else 1.0


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
        fan_in = (p.c_out // p.groups if p.transposed else p.c_in // p.groups) * p.kh * p.kw
        self.weight = (rng.uniform(-1, 1, p.weight_shape) / math.sqrt(fan_in)).astype(np.float32)
        self.bias = rng.uniform(-0.5, 0.5, p.c_out).astype(np.float32)
        in_bytes, out_bytes = size * math.prod(p.input_shape), size * math.prod(p.output_shape)
        count = max(1, min(rotations, ROTATION_BYTES // (in_bytes + out_bytes)))
        self.x_first = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
        self.x_bufs = [gpu.upload(self.x_first if i == 0 else rng.uniform(-1, 1, p.input_shape).astype(np.float32),
                                  "input", dtype) for i in range(count)]
        self.y_bufs = [gpu.empty(out_bytes, "output") for _ in range(count)]
        self._reference: np.ndarray | None = None

    def kernel(self, cls: type[ConvKernel]) -> ConvKernel:
        """Prepack + compile (outside any timing)."""
        return cls(self.gpu, self.p, self.weight, self.bias, Epilogue(), self.precision.dtype,
                   self.precision.accumulate)

    def time(self, kernel: ConvKernel, settings: TimingSettings = TimingSettings()) -> Timing:
        return self.time_all({"kernel": kernel}, settings)["kernel"]

    def time_all(self, kernels: dict[str, ConvKernel], settings: TimingSettings = TimingSettings()) -> dict:
        """{name: Timing} of several kernels on this workload, measured interleaved (see time_candidates)."""
        runs = {name: [k.bind(x, y, self.p.n) for x, y in zip(self.x_bufs, self.y_bufs, strict=True)]
                for name, k in kernels.items()}
        timings = time_candidates(self.gpu, runs, settings)
        if self.scale == 1:
            return timings
        note = f", {self.p.n}-image chunks x {self.scale:.3g}"
        return {n: Timing(t.median_ms * self.scale, tuple(v * self.scale for v in t.samples_ms), t.method + note)
                for n, t in timings.items()}

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

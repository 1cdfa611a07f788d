"""GPU passes timed by timestamp queries (`pass_times`, the one reader of GPU timestamps) and the
submit-and-wait every wall-clock measurement uses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.device.webgpu import RAW, TICKS_ARE_NANOSECONDS, wgpu

MAX_QUERIES = 4096  # WebGPU's largest query set


def submit_and_wait(gpu: Gpu, dispatches: list[Dispatch]) -> None:
    gpu.run(dispatches)
    gpu.wait(fence(gpu))


def fence(gpu: Gpu):
    """A tiny buffer to read back: the queue runs in order, so the read waits for all earlier work."""
    buf = FENCES.get(id(gpu))
    if buf is None:
        buf = FENCES[id(gpu)] = gpu.empty(16, "timing fence")
    return buf


FENCES: dict[int, object] = {}


def pass_times(gpu: Gpu, passes: Sequence[list[Dispatch]], per_submit: int = 1) -> list[float]:
    """GPU ms of each pass in `passes`, in order, from timestamp queries at its start and end (ticks times the
    queue's timestamp period), `per_submit` passes per submission; a zero or negative value means the
    device's timestamps are nonsense."""
    times: list[float] = []
    ms_per_tick = timestamp_period(gpu) / 1e6
    for first in range(0, len(passes), MAX_QUERIES // 2):
        part = passes[first:first + MAX_QUERIES // 2]
        queries = gpu.device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * len(part))
        resolved = gpu.device.create_buffer(size=16 * len(part),
                                            usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        try:
            for r in range(0, len(part), per_submit):
                encoder = gpu.device.create_command_encoder()
                for i in range(r, min(r + per_submit, len(part))):
                    gpu.encode(part[i], encoder, {"query_set": queries, "beginning_of_pass_write_index": 2 * i,
                                                  "end_of_pass_write_index": 2 * i + 1})
                if r + per_submit >= len(part):
                    encoder.resolve_query_set(queries, 0, 2 * len(part), resolved, 0)
                gpu.device.queue.submit([encoder.finish()])
            ticks = np.frombuffer(gpu.device.queue.read_buffer(resolved), dtype=np.uint64).astype(np.int64)
        finally:
            queries.destroy()
            resolved.destroy()
        times += [float(t) * ms_per_tick for t in ticks[1::2] - ticks[0::2]]
    return times


def timestamp_period(gpu: Gpu) -> float:
    """Nanoseconds per timestamp tick (wgpu-native returns raw ticks; WebGPU's unit, and Dawn's, is the
    nanosecond)."""
    if TICKS_ARE_NANOSECONDS or RAW is None:
        return 1.0
    try:
        period = float(RAW[0].wgpuQueueGetTimestampPeriod(gpu.device.queue._internal))
    except AttributeError:
        period = 1.0
    return period if math.isfinite(period) and period > 0 else 1.0

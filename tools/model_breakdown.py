"""Where a compiled model's latency goes: host encoding, GPU execution, upload and read-back.

usage: python tools/model_breakdown.py MODEL [POLICY]   (torchvision architecture, random weights, batch 1)
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
import wgpu

import convroute.frontend as frontend
from convroute.frontend.plan import Segment
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times, timestamp_period


def median_ms(fn, reps=50) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    import torchvision  # after convroute.frontend (see frontend/__init__)

    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v2"
    policy = sys.argv[2] if len(sys.argv) > 2 else "calibrated"
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    prog = frontend.compile(model, (x,), policy=policy)
    gpu, plan = prog.gpu, prog.plan
    segs = [s for s in plan.segments if isinstance(s, Segment)]
    dispatches = [d for s in segs for d in s.dispatches]
    dev = gpu.device
    fence = gpu.empty(16)
    raise_clocks(gpu)
    pass_times(gpu, [dispatches] * 20)  # warm-up
    gpu_ms = statistics.median(pass_times(gpu, [dispatches] * 50))

    def encode_submit():
        dev.queue.submit([gpu.encode(dispatches).finish()])

    def encode_submit_wait():
        encode_submit()
        gpu.wait(fence)

    per_dispatch = dispatch_times(gpu, dispatches) if "timestamp-query-inside-passes" in dev.features else None
    rows = {
        "dispatches": len(dispatches),
        "GPU time of the one compute pass (timestamps)": gpu_ms,
        "encode + finish + submit (host)": median_ms(encode_submit),
        "encode + submit + wait": median_ms(encode_submit_wait),
        "whole call: upload, run, read back": median_ms(lambda: prog(x)),
    }
    print(f"{name}, policy {policy}, on {gpu.profile.name}")
    for k, v in rows.items():
        print(f"  {k:45s} {v:.3f}" if isinstance(v, float) else f"  {k:45s} {v}")
    if per_dispatch is not None:
        labels = [(step.node.name, i) for s in segs for step in s.steps for i, _ in enumerate(step.dispatches)]
        print(f"  per dispatch inside the one pass (timestamps), sum {sum(per_dispatch):.3f} ms:")
        for (node, i), t in zip(labels, per_dispatch, strict=True):
            print(f"    {node:28s} #{i} {t * 1e3:8.1f} us")


def dispatch_times(gpu, dispatches, runs: int = 20) -> list[float]:
    """ms of each dispatch inside one compute pass: a timestamp before each dispatch and after the last."""
    from wgpu.backends.wgpu_native.extras import write_timestamp

    dev = gpu.device
    count = len(dispatches) + 1
    qs = dev.create_query_set(type="timestamp", count=count)
    qb = dev.create_buffer(size=8 * count, usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
    samples = []
    for _ in range(runs):
        enc = dev.create_command_encoder()
        cpass = enc.begin_compute_pass()
        for i, d in enumerate(dispatches):
            write_timestamp(cpass, qs, i)
            cpass.set_pipeline(d.pipeline)
            cpass.set_bind_group(0, d.bind_group)
            cpass.dispatch_workgroups(*d.grid)
        write_timestamp(cpass, qs, len(dispatches))
        cpass.end()
        enc.resolve_query_set(qs, 0, count, qb, 0)
        dev.queue.submit([enc.finish()])
        ticks = np.frombuffer(dev.queue.read_buffer(qb), np.uint64).astype(np.int64)
        samples.append(np.diff(ticks) * timestamp_period(gpu) / 1e6)
    return list(np.median(np.array(samples), axis=0))


if __name__ == "__main__":
    main()

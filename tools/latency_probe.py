"""Why a compiled model's latency swings: the read-back wait strategies side by side, in interleaved rounds.

usage: python tools/latency_probe.py MODEL [POLICY] [ROUNDS] [DTYPE]

Per call the program uploads the input, submits one command buffer and maps a staging buffer for the output.
wgpu-py's `map_sync` submits an extra empty command buffer first (wgpu-native#305) and waits on a Python event
that its polling thread sets after a blocking `wgpuDevicePoll`. The strategies:
- map_sync: as wgpu-py does it (what convroute did up to session 3);
- nosync-event: skip the empty submission, wait on the polling thread as before;
- nosync-block: skip it, block in `wgpuDevicePoll(wait=True)` on the calling thread;
- nosync-spin: skip it, call `wgpuDevicePoll(wait=False)` on the calling thread until the map is done.
Each round runs every strategy 20 times, in turn, so clock changes hit all alike; prints p10/p50/p90 per
strategy and a per-call breakdown (upload, submit, wait) for the last one.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import wgpu

import convroute.frontend as frontend
from convroute.device.gpu import Gpu
from convroute.report.latency import Latency
from convroute.report.table import format_table

ORIGINAL = Gpu.read_staging


def _copy_out(staging, nbytes, dtype, count, shape):
    try:
        return np.frombuffer(staging.read_mapped(0, nbytes, copy=False), dtype, count).reshape(shape).copy()
    finally:
        staging.unmap()


def nosync_event(self, staging, nbytes, dtype, count, shape):
    staging.map_async("READ_NOSYNC", 0, nbytes).sync_wait()
    return _copy_out(staging, nbytes, dtype, count, shape)


def polling(block: bool):
    """Map without the empty submission and poll the device on the calling thread (blocking or not)."""
    def read(self, staging, nbytes, dtype, count, shape):
        promise = staging.map_async("READ_NOSYNC", 0, nbytes)
        while promise._state == "pending":
            self.device._poll(block)
        promise.sync_wait()
        return _copy_out(staging, nbytes, dtype, count, shape)
    return read


STRATEGIES = {"map_sync": ORIGINAL, "nosync-event": nosync_event, "nosync-block": polling(True),
              "nosync-spin": polling(False)}


def main():
    import torchvision  # after convroute.frontend (see frontend/__init__)

    name = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    policy = sys.argv[2] if len(sys.argv) > 2 else "seed"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    dtype = sys.argv[4] if len(sys.argv) > 4 else "float32"
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    prog = frontend.compile(model, (x,), policy=policy, dtype=dtype)
    with torch.no_grad():
        ref = model(x)
    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for s, fn in STRATEGIES.items():  # warm-up and a correctness check of each strategy
        Gpu.read_staging = fn
        err = float((prog(x) - ref).abs().max() / ref.abs().max())
        print(f"{s}: rel. err {err:.2e}")
    for _ in range(rounds):
        for s, fn in STRATEGIES.items():
            Gpu.read_staging = fn
            for _ in range(20):
                t = time.perf_counter()
                prog(x)
                times[s].append(time.perf_counter() - t)
    Gpu.read_staging = ORIGINAL
    rows = [[s, *(f"{v:.3f}" for v in (lat.p10_ms, lat.median_ms, lat.p90_ms)), f"{lat.p90_ms / lat.median_ms:.2f}"]
            for s, lat in ((s, Latency.of(ts)) for s, ts in times.items())]
    print(f"{name} {policy} {dtype}, {rounds} rounds x 20 calls per strategy, device {prog.gpu.profile.name}")
    print(format_table(["read-back wait", "p10 ms", "p50 ms", "p90 ms", "p90/p50"], rows))
    print(f"wgpu {wgpu.__version__}")


if __name__ == "__main__":
    main()

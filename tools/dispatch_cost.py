"""GPU-side cost of a dispatch inside one compute pass: K small elementwise dispatches, timed by pass
timestamps, in four arrangements: a dependent chain on one pipeline, independent dispatches on one pipeline,
a dependent chain over K distinct pipelines, and one pipeline over one buffer pair (ping-pong).

usage: python tools/dispatch_cost.py [K=84] [ELEMENTS=18816]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from convroute.device.gpu import get_gpu
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times

SHADER = """
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i < arrayLength(&y)) { y[i] = x[i] * 0.5 + OFFSET; }
}
"""


def pass_ms(gpu, dispatches, reps=30) -> tuple[float, float]:
    """(GPU ms of the pass by timestamps, median wall ms of encode + submit + wait)."""
    fence = gpu.empty(16)
    wall = []
    for _ in range(reps):
        t = time.perf_counter()
        gpu.device.queue.submit([gpu.encode(dispatches).finish()])
        gpu.wait(fence)
        wall.append((time.perf_counter() - t) * 1e3)
    raise_clocks(gpu)
    return min(pass_times(gpu, [dispatches] * reps)), statistics.median(wall[5:])


def main():
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 84
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 18816
    gpu = get_gpu()
    src = SHADER.replace("OFFSET", "1.0")
    bufs = [gpu.upload(np.random.rand(n).astype(np.float32)) for _ in range(k + 1)]
    cases = {
        "chain, one pipeline": [gpu.dispatch(src, [bufs[i], bufs[i + 1]], n, 64) for i in range(k)],
        "independent, one pipeline": [gpu.dispatch(src, [bufs[0], bufs[i + 1]], n, 64) for i in range(k)],
        "chain, K pipelines": [gpu.dispatch(SHADER.replace("OFFSET", f"{i}.0"), [bufs[i], bufs[i + 1]], n, 64)
                               for i in range(k)],
        "ping-pong, one pipeline": [gpu.dispatch(src, [bufs[i % 2], bufs[1 - i % 2]], n, 64) for i in range(k)],
        "empty pass": [],
    }
    print(f"device: {gpu.profile.name} | {gpu.profile.driver}; K={k} dispatches of {n} elements")
    for name, ds in cases.items():
        pass_ms(gpu, ds, 10)
        g, w = pass_ms(gpu, ds)
        per = f"{g / k * 1e3:6.2f} us/dispatch" if ds else ""
        print(f"  {name:28s} GPU {g:7.3f} ms {per}   encode+submit+wait {w:7.3f} ms")


if __name__ == "__main__":
    main()

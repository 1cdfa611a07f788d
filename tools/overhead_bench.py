"""Per-call and per-dispatch overhead of the wgpu path: what a whole-model run pays besides the kernels.

usage: python tools/overhead_bench.py  -> median microseconds of each step, on the adapter convroute picks.
"""

from __future__ import annotations

import time

import numpy as np
import wgpu

from convroute.device.gpu import get_gpu

TINY = """
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < arrayLength(&y)) { y[g.x] = y[g.x] + 1.0; } }
"""


def median_us(fn, reps=200) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def main():
    gpu = get_gpu()
    dev = gpu.device
    print("device:", gpu.profile.name, "|", gpu.profile.driver)
    buf = gpu.empty(4 * 1024)
    staging = dev.create_buffer(size=4 * 1024, usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)
    host = np.ones(1024, np.float32)
    d1 = gpu.dispatch(TINY, [buf], 1024, 64)
    rows = {}
    rows["write_buffer 4 KiB"] = median_us(lambda: dev.queue.write_buffer(buf, 0, host))
    rows["empty submit + read_buffer 4 B"] = median_us(lambda: (gpu.run([]), gpu.wait(buf)))
    rows["read_buffer 4 KiB"] = median_us(lambda: dev.queue.read_buffer(buf))

    def staged():
        enc = gpu.encode([d1])
        enc.copy_buffer_to_buffer(buf, 0, staging, 0, 4 * 1024)
        dev.queue.submit([enc.finish()])
        staging.map_sync(wgpu.MapMode.READ)
        staging.read_mapped()
        staging.unmap()

    rows["1 dispatch + copy to a kept staging buffer + map"] = median_us(staged)
    rows["create_command_encoder"] = median_us(lambda: dev.create_command_encoder())

    def pass_only():
        enc = dev.create_command_encoder()
        enc.begin_compute_pass().end()
        return enc

    rows["encoder + empty compute pass"] = median_us(pass_only)
    rows["encoder + empty compute pass + finish"] = median_us(lambda: pass_only().finish())
    rows["encoder + empty pass + finish + submit"] = median_us(lambda: dev.queue.submit([pass_only().finish()]))

    def chunked(ds, per):
        for i in range(0, len(ds), per):
            gpu.run(ds[i:i + per])
        gpu.wait(buf)

    for n in (1, 20, 100):
        ds = [d1] * n
        rows[f"{n} dispatches: encode + submit + wait"] = median_us(lambda ds=ds: (gpu.run(ds), gpu.wait(buf)))
        rows[f"{n} dispatches: encode only"] = median_us(lambda ds=ds: gpu.encode(ds).finish())
        rows[f"{n} dispatches: 10 per submit + wait"] = median_us(lambda ds=ds: chunked(ds, 10))
        rows[f"{n} dispatches: run + read_buffer 4 KiB"] = median_us(
            lambda ds=ds: (gpu.run(ds), dev.queue.read_buffer(buf)))
        rows[f"{n} dispatches: run_and_read 4 KiB"] = median_us(lambda ds=ds: gpu.run_and_read(ds, buf, (1024,)))
    for name, us in rows.items():
        print(f"{us:10.1f} us  {name}")


if __name__ == "__main__":
    main()

"""Direct vs the oracle on the sliding-window layers of the shipped suites (non-1x1, non-depthwise).

    python tools/direct_bench.py [--suites resnet18,...] [--budget 0.3] [--json OUT] [--tiles] [--check N]

Each distinct layer shape is measured once (every applicable algorithm, checked against the float64 host
reference, timed interleaved as `convroute bench` does); per suite it prints direct's total / the oracle's total
(weighted by counts) and the worst layer ratio. --tiles also times every workgroup tile of direct on each layer
(GPUs), or every register tile that fits (CPU adapters). --check N first runs direct on N random shapes
(grouped, dilated, strided, odd sizes, batch 1-2, bias + relu) against torch float64 and counts the wrong results.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch  # noqa: F401  (before the GPU opens: LLVM clash on lavapipe)

from convroute.bench import suite as bench
from convroute.bench.suite import LayerResult, measure_layer
from convroute.bench.suites import SUITES, load_suite
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS, direct, direct_cpu
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload


def relevant(p) -> bool:
    return p.kh * p.kw > 1 and not (p.groups > 1 and p.groups == p.c_in) and not p.transposed


def random_check(count: int, seed: int = 0) -> tuple[int, list[str]]:
    import torch.nn.functional as F

    from convroute import conv2d

    rng = np.random.default_rng(seed)
    wrong = []
    for _ in range(count):
        groups = int(rng.choice([1, 1, 2, 3, 4]))
        cin_g, cout_g = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        k = (int(rng.choice([1, 2, 3, 5, 7])), int(rng.choice([1, 3, 5])))
        s = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        pad = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        h = int(rng.integers((k[0] - 1) * d[0] + 1, 40)) + 0
        w = int(rng.integers((k[1] - 1) * d[1] + 1, 40))
        n = int(rng.integers(1, 3))
        x = rng.uniform(-1, 1, (n, cin_g * groups, h, w)).astype(np.float32)
        wt = (rng.uniform(-1, 1, (cout_g * groups, cin_g) + k) / math.sqrt(cin_g * k[0] * k[1])).astype(np.float32)
        b = rng.uniform(-0.5, 0.5, cout_g * groups).astype(np.float32)
        y = conv2d(x, wt, b, s, pad, d, groups, activation="relu", algorithm="direct")
        ref = torch.relu(F.conv2d(*(torch.from_numpy(a).double() for a in (x, wt, b)), s, pad, d, groups)).numpy()
        err = np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30)
        if not err < 1e-4:
            wrong.append(f"{x.shape} w={wt.shape} s={s} p={pad} d={d} g={groups}: {err:.3g}")
    return count - len(wrong), wrong


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--json")
    ap.add_argument("--tiles", action="store_true")
    ap.add_argument("--check", type=int, default=0)
    ap.add_argument("--algorithms", help="time only these (comma-separated; default all applicable)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--min-repeats", type=int, default=3)
    args = ap.parse_args()
    if args.algorithms:
        bench.ALGORITHMS = {k: v for k, v in ALGORITHMS.items() if k in args.algorithms.split(",")}
    gpu = get_gpu()
    print(gpu.profile.name, gpu.profile.gemm_style)
    if args.check:
        t0 = time.time()
        ok, wrong = random_check(args.check)
        print(f"random shapes: {ok}/{args.check} correct ({time.time() - t0:.0f} s)", *wrong, sep="\n  ")
    settings = TimingSettings(warmup=args.warmup, repeats=10, min_repeats=args.min_repeats, budget_s=args.budget)
    shapes, suites = {}, {}
    for name in args.suites.split(","):
        for layer in load_suite(name).layers:
            p = layer.params(1)
            if relevant(p):
                shapes.setdefault(p, layer.name)
                suites.setdefault(name, []).append((p, layer.count))
    results, tiles = {}, {}
    for p, name in shapes.items():
        t0 = time.time()
        result = LayerResult(name, 1, p)
        measure_layer(gpu, result, settings, True)
        results[p] = result
        line = "  ".join(f"{k} {v:.3f}" for k, v in sorted(result.times_ms.items(), key=lambda kv: kv[1]))
        print(f"{p.c_in}x{p.h}x{p.w}->{p.c_out} k{p.kh} s{p.stride[0]}: {line} "
              f"(direct/oracle {result.algorithm_ms('direct') / result.oracle_ms:.2f}, {time.time() - t0:.0f} s)"
              + (f" failures {result.failures}" if result.failures else ""), flush=True)
        if args.tiles:
            timer = time_tiles if gpu.profile.gemm_style == "workgroup" else time_register_tiles
            tiles[p] = timer(gpu, p, settings)
            print("   tiles:", "  ".join(f"{k} {v:.3f}" for k, v in sorted(tiles[p].items(), key=lambda kv: kv[1])))
    report = {}
    for name, layers in suites.items():
        d = sum(c * results[p].algorithm_ms("direct") for p, c in layers)
        o = sum(c * results[p].oracle_ms for p, c in layers)
        worst = max(results[p].algorithm_ms("direct") / results[p].oracle_ms for p, _ in layers)
        report[name] = dict(direct_ms=d, oracle_ms=o, ratio=d / o, worst=worst)
        print(f"{name}: direct {d:.3f} ms, oracle {o:.3f} ms, direct/oracle {d / o:.3f}, worst layer {worst:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=gpu.profile.name, suites=report,
                           layers=[dict(name=r.name, params=str(p), times_ms=r.times_ms, failures=r.failures,
                                        tiles={k: v for k, v in tiles.get(p, {}).items()})
                                   for p, r in results.items()]), f, indent=1)


def time_register_tiles(gpu, p, settings) -> dict:
    """direct's time on a CPU adapter with each register tile that fits forced (same kernel otherwise)."""
    work = Workload(gpu, p, seed=7, rotations=settings.rotations)
    choose, kernels = direct_cpu.choose_tile, {}
    try:
        for tile in direct_cpu.TILES:
            if direct_cpu.fits(p, tile):
                direct_cpu.choose_tile = lambda _, tile=tile: tile
                kernels[str(tile)] = work.kernel(direct.Direct)
        direct_cpu.choose_tile = choose
        wrong = {k: e for k, e in ((k, work.error(v)) for k, v in kernels.items()) if not e < 1e-4}
        for k, e in wrong.items():
            print(f"   WRONG tile {k}: relative error {e:.3g}")
        timings = work.time_all({k: v for k, v in kernels.items() if k not in wrong}, settings)
    finally:
        direct_cpu.choose_tile = choose
        work.release()
    return {k: t.median_ms for k, t in timings.items()}


def time_tiles(gpu, p, settings) -> dict:
    """direct's time with each workgroup tile forced, then each chunk size (same plan function otherwise). Each
    kernel packs its own weights, so none finds another's in the L2 cache."""
    work = Workload(gpu, p, seed=7, rotations=settings.rotations)
    kernels, original, chunks = {}, direct.TILES, direct.CHUNKS
    try:
        for tile, cost in original:
            direct.TILES = ((tile, cost),)
            try:
                kernels[str(direct.choose_plan(gpu.profile, p, p.n))] = work.kernel(direct.Direct)
            except ValueError:
                continue
        direct.TILES = original
        for chunk in chunks:
            direct.CHUNKS = (chunk,)
            kernels[str(direct.choose_plan(gpu.profile, p, p.n))] = work.kernel(direct.Direct)
            direct.CHUNKS = chunks
        wrong = {k: work.error(v) for k, v in kernels.items()}
        wrong = {k: e for k, e in wrong.items() if not e < 1e-4}
        kernels = {k: v for k, v in kernels.items() if k not in wrong}
        timings = work.time_all(kernels, settings)
        for k, e in wrong.items():
            print(f"   WRONG tile {k}: relative error {e:.3g}")
    finally:
        direct.TILES, direct.CHUNKS = original, chunks
        work.release()
    return {k: t.median_ms for k, t in timings.items()}


if __name__ == "__main__":
    main()

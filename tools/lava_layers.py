"""Per-layer race: every applicable convroute algorithm vs ncnn's Vulkan, `bench --compare`'s chained method.

For each shape-preserving layer of the given suites (the layers ncnn can chain), each candidate runs as a chain
of L copies (one submission, wall clock incl. upload + download, bench/compare_layers.py's time_chain); candidates
are timed in interleaved rounds and the per-candidate minimum over rounds is printed, with the GPU time of the
pass in brackets for convroute. Lets one see where convroute loses on a device (lavapipe) and by how much.
usage: python tools/lava_layers.py [--suites resnet18,...] [--chain 3] [--rounds 2] [--algorithms a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np

from convroute.bench.compare_layers import ConvrouteEngine, time_chain
from convroute.bench.suites import load_suite
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS
from convroute.measure.workload import random_inputs
from convroute.peers import shape_preserving
from convroute.peers.ncnn_engines import NcnnLayerEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", default="resnet18,resnet50,vgg16")
    ap.add_argument("--chain", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--algorithms", default="")
    ap.add_argument("--layers", default="", help="comma-separated C@side filters, e.g. 64@56,512@7")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    gpu = get_gpu()
    ours = ConvrouteEngine(gpu, "seed")
    ncnn = NcnnLayerEngine("fp32")
    print(f"device: {gpu.profile.name} | {gpu.profile.driver}; load {os.getloadavg()[0]:.2f}")
    wanted = [a for a in args.algorithms.split(",") if a]
    seen, rows = set(), []
    for suite_name in args.suites.split(","):
        for layer in load_suite(suite_name).layers:
            p = layer.params(1)
            key = (p.c_in, p.h, p.kh, p.groups)
            if not shape_preserving(p) or key in seen:
                continue
            if args.layers and f"{p.c_in}@{p.h}" not in args.layers.split(","):
                continue
            seen.add(key)
            algos = [a for a in (wanted or ALGORITHMS) if a in ALGORITHMS and not ALGORITHMS[a].unsupported(p)]
            x, weight, bias = random_inputs(p, np.random.default_rng(0))
            runs, best = {}, {}
            for a in algos:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        runs[a] = ours.prepare(p, x, weight, bias, args.chain, algorithm=a)
                except ValueError as err:
                    print(f"  {a}: {err}")
            runs["ncnn-vk32"] = ncnn.prepare(p, x, weight, bias, args.chain)
            for _ in range(args.rounds):
                for a, (once, _, _) in runs.items():
                    ms, _ = time_chain(once, args.chain, args.budget)
                    best[a] = min(best.get(a, ms), ms)
            gpu_ms = {a: r[1]() for a, r in runs.items() if r[1]}
            for _, _, release in runs.values():
                release()
            ref = best.pop("ncnn-vk32")
            win = min(best, key=best.get)
            cells = "  ".join(f"{a} {best[a]:.2f}" + (f" ({gpu_ms[a]:.2f})" if a in gpu_ms else "") for a in best)
            print(f"{suite_name:9s} {p.c_in:4d}@{p.h:<3d} k{p.kh} g{p.groups} x{layer.count}: ncnn {ref:.2f}  "
                  f"best {win} {best[win]:.2f} ratio {best[win] / ref:.3f} | {cells}", flush=True)
            rows.append(dict(suite=suite_name, layer=layer.name, count=layer.count, shape=[p.c_in, p.h, p.kh, p.groups],
                             ncnn_ms=ref, ms=best, gpu_ms=gpu_ms))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

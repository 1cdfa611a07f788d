"""convroute's side of ../shared/bench/peer_conv_bench.py: the same shapes, the same chained method.

Each shape runs as a chain of L identical convs (C_in == C_out, 'same' padding) over GPU buffers, recorded
in one submission; wall clock includes the input upload and the output download (min of 5 runs / L), as
the peer script does for ncnn. The GPU time per layer (timestamp queries) is printed beside it.
usage: python tools/chain_bench.py [L=20] [N=1] [algorithms=all,routed] [--dtype float16] [--accumulate float16]
(--dtype float16: f16 activations and weights, f32 sums unless --accumulate float16; needs shader-f16)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import DTYPES, FP32, Epilogue, Precision
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times
from convroute.params import make_params
from convroute.router import route_params

SHAPES = [  # (name, C, H, W, k, stride, groups), as in peer_conv_bench.py
    ("r50_3x3_64_56", 64, 56, 56, 3, 1, 1),
    ("r50_3x3_128_28", 128, 28, 28, 3, 1, 1),
    ("r50_3x3_256_14", 256, 14, 14, 3, 1, 1),
    ("r50_3x3_512_7", 512, 7, 7, 3, 1, 1),
    ("r50_1x1_256_56", 256, 56, 56, 1, 1, 1),
    ("r50_1x1_1024_14", 1024, 14, 14, 1, 1, 1),
    ("vgg_3x3_64_224", 64, 224, 224, 3, 1, 1),
    ("mbv2_dw_144_56", 144, 56, 56, 3, 1, 144),
    ("c32_5x5_32_64", 32, 64, 64, 5, 1, 1),
]


def gpu_ms(gpu, dispatches, reps=5) -> float:
    raise_clocks(gpu)
    return min(pass_times(gpu, [dispatches] * reps))


def bench(shape, algorithm, L, n, precision=FP32):
    name, c, h, w, k, s, g = shape
    gpu = get_gpu()
    p = make_params((n, c, h, w), (c, c // g, k, k), s, k // 2, 1, g)
    if algorithm == "routed":
        algorithm = route_params(p, gpu.profile, "seed", False).algorithm
    if ALGORITHMS[algorithm].unsupported(p):
        return None
    rng = np.random.default_rng(0)
    wt = (rng.standard_normal(p.weight_shape) / np.sqrt(c // g * k * k)).astype(np.float32)
    kernel = ALGORITHMS[algorithm](gpu, p, wt, np.zeros(c, np.float32), Epilogue(), precision.dtype,
                                   precision.accumulate)
    x = rng.standard_normal(p.input_shape).astype(precision.numpy)
    bufs = [gpu.empty(x.nbytes), gpu.empty(precision.itemsize * int(np.prod(p.output_shape)))]
    dispatches = []
    for i in range(L):
        dispatches += kernel.bind(bufs[i % 2] if s == 1 else bufs[0], bufs[(i + 1) % 2] if s == 1 else bufs[1], n)
    out_buf = bufs[L % 2] if s == 1 else bufs[1]

    def once():
        gpu.write(bufs[0], x, precision.numpy)
        gpu.run(dispatches)
        return gpu.device.queue.read_buffer(out_buf)

    once()
    once()
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        once()
        walls.append(time.perf_counter() - t)
    return algorithm, min(walls) / L * 1e3, gpu_ms(gpu, dispatches) / L, p.flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("L", nargs="?", type=int, default=20, help="layers per chain")
    parser.add_argument("N", nargs="?", type=int, default=1, help="batch")
    parser.add_argument("algorithms", nargs="?", default=",".join(ALGORITHMS), help="comma-separated, or 'routed'")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="storage of activations and weights")
    parser.add_argument("--accumulate", default=None, choices=DTYPES, help="type of the sums (default float32)")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of the shape names (default all)")
    args = parser.parse_args()
    shapes = SHAPES if args.shapes is None else [s for s in SHAPES if s[0] in args.shapes.split(",")]
    L, n, algos = args.L, args.N, args.algorithms.split(",")
    precision = Precision.parse(args.dtype, args.accumulate)
    gpu = get_gpu()
    precision.require(gpu.profile)
    print("device:", gpu.profile.name, "|", gpu.profile.driver, "|", precision, flush=True)
    for shape in shapes:
        for algo in algos:
            try:
                r = bench(shape, algo, L, n, precision)
            except Exception as e:  # report and carry on with the next
                print(json.dumps({"shape": shape[0], "algorithm": algo, "error": repr(e)[:300]}), flush=True)
                continue
            if r:
                a, wall, gpu_t, fl = r
                print(json.dumps({"shape": shape[0], "algorithm": a, "N": n, "dtype": precision.dtype,
                                  "accumulate": precision.accumulate, "ms": round(wall, 4),
                                  "gpu_ms": round(gpu_t, 4), "gflops": round(fl / gpu_t / 1e6, 1)}), flush=True)


if __name__ == "__main__":
    main()

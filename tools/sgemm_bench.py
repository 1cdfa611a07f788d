"""SGEMM through convroute's own GEMM generator (kernels/gemm_tiles.py): C[M,N] = A[M,K] @ B[K,N], fp32.

A is prepacked K-major once (as conv weights are); B is a dense row-major matrix read as vec4 rows.
usage: python tools/sgemm_bench.py [SIZE ...]  (default 4096) -> TFLOP/s per tile shape, checked vs float64.
"""

from __future__ import annotations

import sys

import numpy as np

from convroute.device.gpu import get_gpu
from convroute.kernels.common import Epilogue, pack, uniform_block
from convroute.kernels.gemm_tiles import TILES, generate
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times

PARAMS = ["m", "k", "k_pad", "m4", "tiles_m", "tiles", "cols", "splits", "kt_split", "ldb4"]
B_DECL = "@group(0) @binding(4) var<storage, read> bm: array<vec4<f32>>;"
B_SETUP = "let bq = min(bcol / 4u, P.ldb4 - 1u);"
B_LOAD = "bm[k * P.ldb4 + bq]"
STORE = "y[m * P.cols + j] = v + bias[m];"


def timed(gpu, dispatches, reps=20, runs=5) -> float:
    """Seconds per GEMM: median over `runs` passes of `reps` back-to-back launches."""
    raise_clocks(gpu)
    return float(np.median(pass_times(gpu, [dispatches * reps] * runs))) * 1e-3 / reps


def main(sizes):
    gpu = get_gpu()
    print("device:", gpu.profile.name, "|", gpu.profile.driver)
    rng = np.random.default_rng(0)
    for size in sizes:
        m = n = k = size
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        a_buf = gpu.upload(np.ascontiguousarray(a.T), "A (K-major)")
        b_buf = gpu.upload(b, "B")
        bias = gpu.upload(np.zeros(m, np.float32), "bias")
        c_buf = gpu.empty(4 * m * n, "C")
        for tile in TILES:
            tiles_m = -(-m // tile.bm)
            tiles = tiles_m * -(-n // tile.bn)
            values = dict(m=m, k=k, k_pad=k, m4=m // 4, tiles_m=tiles_m, tiles=tiles, cols=n, splits=1,
                          kt_split=k // tile.bk, ldb4=n // 4)
            src = generate(tile, b_decl=B_DECL, b_setup=B_SETUP, b_load=B_LOAD, params=uniform_block(PARAMS),
                           act=Epilogue().wgsl(), store=STORE)
            u = gpu.uniform(pack(PARAMS, values))
            d = gpu.dispatch(src, [u, a_buf, bias, c_buf, b_buf], tiles * tile.threads, tile.threads)
            gpu.fill(c_buf, np.nan)
            gpu.run([d])
            err = np.linalg.norm(gpu.read(c_buf, (m, n)) - ref) / np.linalg.norm(ref)
            t = timed(gpu, [d])
            print(f"{size}^3 tile {tile}: {2 * m * n * k / t / 1e12:6.2f} TFLOP/s  {t * 1e3:8.3f} ms  "
                  f"rel.err {err:.1e}", flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [4096])

"""Differential fuzz of the model-op kernels of issue 26's reductions, softmax, norms, gathers and adaptive max
pooling against torch in float64: random shapes (rank 1-6, small and long rows, so both the one-invocation and
the workgroup-per-row paths run), outputs poisoned with NaN first, fp32 (rel. error < 1e-4) and fp16 where the
adapter has shader-f16 (< 1e-2). The error is measure.reference's max_relative_error; a sum or mean that cancels
is measured against the L2 norm of its row (the size of a sum of random-sign terms, which its rounding follows),
so a near-zero result does not count its rounding as wrong while one missing element still does.
Prints the case and wrong counts per kernel; writes JSON to $OUT when set.
usage: python tools/fuzz_ops_reduce.py [cases per kernel and dtype, default 60] [seed, default 0]
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from convroute.device.gpu import get_gpu
from convroute.kernels.common import Precision
from convroute.kernels.gather import Gather
from convroute.kernels.norm import GroupNorm
from convroute.kernels.pool import Pool2d
from convroute.kernels.reduce import Reduce, Softmax
from convroute.measure.reference import max_relative_error

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}


def shape_of(rng, rank: int, long_row: bool) -> tuple:
    shape = [int(s) for s in rng.integers(1, 6, rank)]
    if long_row:
        shape[int(rng.integers(0, rank))] = int(rng.choice([40, 300, 1500]))
    return tuple(shape)


def reduce_case(rng, precision):
    rank = int(rng.integers(1, 7))
    shape = shape_of(rng, rank, rng.random() < 0.5)
    dims = sorted({int(d) for d in rng.integers(0, rank, int(rng.integers(1, rank + 1)))})
    kind = str(rng.choice(["sum", "mean", "amax", "amin"]))
    x = torch.randn(shape, dtype=torch.float64)
    kernel = Reduce(get_gpu(), kind, shape, dims, precision)
    scale = 0.0
    if kind in ("sum", "mean"):
        norms = x.square().sum(dims).sqrt()
        scale = float(norms.max()) / (x.numel() // norms.numel() if kind == "mean" else 1)
    return kernel, x, getattr(torch, kind)(x, dims), f"{kind} {shape} {dims}", scale


def softmax_case(rng, precision):
    rank = int(rng.integers(1, 7))
    shape = shape_of(rng, rank, rng.random() < 0.5)
    dim = int(rng.integers(0, rank))
    kind = str(rng.choice(["softmax", "log_softmax"]))
    x = torch.randn(shape, dtype=torch.float64) * float(rng.choice([1.0, 3.0]))
    kernel = Softmax(get_gpu(), kind, shape, dim, precision)
    return kernel, x, getattr(torch, kind)(x, dim), f"{kind} {shape} {dim}", 0.0


def norm_case(rng, precision):
    n, groups = int(rng.integers(1, 3)), int(rng.integers(1, 5))
    c = groups * int(rng.integers(1, 4))
    h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 2 + 0.5
    weight, bias = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
    kernel = GroupNorm(get_gpu(), n, c, h * w, groups, weight.numpy(), bias.numpy(), 1e-5, None, precision)
    return kernel, x, F.group_norm(x, groups, weight, bias, 1e-5), f"group_norm {(n, c, h, w)} groups {groups}", 0.0


def gather_case(rng, precision):
    shape = tuple(int(s) for s in rng.integers(2, 9, 4))
    ops = {
        "index": lambda t: t[:, :, torch.from_numpy(rng.integers(0, shape[2], 5))],
        "gather": lambda t: torch.gather(t, 3, torch.from_numpy(rng.integers(0, shape[3], shape))),
        "reflect": lambda t: F.pad(t, (1, 1, 1, 0), mode="reflect"),
        "replicate": lambda t: F.pad(t, (2, 0, 1, 3), mode="replicate"),
        "circular": lambda t: F.pad(t, (1, 1, 1, 1), mode="circular"),
        "flip": lambda t: torch.flip(t, [1, 3]),
        "roll": lambda t: torch.roll(t, (1, -2), (0, 2)),
    }
    name = str(rng.choice(list(ops)))
    x = torch.randn(shape, dtype=torch.float64)
    state = rng.bit_generator.state
    offsets = ops[name](torch.arange(1, x.numel() + 1, dtype=torch.float64).reshape(shape)).long().numpy() - 1
    rng.bit_generator.state = state  # the same random indices for the reference
    return Gather(get_gpu(), offsets, precision=precision), x, ops[name](x), f"{name} {shape}", 0.0


def adaptive_max_case(rng, precision):
    planes, h, w = int(rng.integers(1, 9)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
    ho, wo = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    x = torch.randn(planes, h, w, dtype=torch.float64)
    kernel = Pool2d(get_gpu(), "adaptive_max", planes, h, w, ho, wo, precision=precision)
    return kernel, x, F.adaptive_max_pool2d(x, (ho, wo)), f"adaptive_max {(planes, h, w)} -> {(ho, wo)}", 0.0


CASES = {"reduce": reduce_case, "softmax": softmax_case, "group_norm": norm_case, "gather": gather_case,
         "adaptive_max_pool": adaptive_max_case}


def run(kernel, x: torch.Tensor, want: torch.Tensor, precision: Precision, scale: float) -> float:
    gpu = get_gpu()
    stored = precision.numpy
    y = gpu.empty(max(want.numel(), 2) * precision.itemsize)
    gpu.fill(y, np.nan, stored)
    got = gpu.run_and_read(kernel.bind(gpu.upload(x.numpy().reshape(-1), "x", stored), y), y, tuple(want.shape),
                           stored)
    return max_relative_error(got, want.numpy(), scale)


def main() -> None:
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gpu = get_gpu()
    dtypes = ["float32"] + (["float16"] if "shader-f16" in gpu.profile.features else [])
    results, wrong = {}, []
    for dtype in dtypes:
        precision = Precision.parse(dtype)
        for name, make in CASES.items():
            errors = []
            for _ in range(cases):
                kernel, x, want, what, scale = make(rng, precision)
                err = run(kernel, x, want, precision, scale)
                errors.append(err)
                if not err < TOLERANCE[dtype]:
                    wrong.append(f"{dtype} {what}: relative error {err:.3g}")
            bad = sum(not e < TOLERANCE[dtype] for e in errors)
            results[f"{name} {dtype}"] = dict(cases=len(errors), wrong=bad, max_error=max(errors))
            print(f"{name:18s} {dtype}: {len(errors)} cases, {bad} wrong, max rel. error {max(errors):.3g}")
    total = sum(r["cases"] for r in results.values())
    print(f"device {gpu.profile.name}: {total} cases, {len(wrong)} wrong")
    for line in wrong[:20]:
        print("  " + line)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fuzz_ops_reduce.json"), "w") as f:
            json.dump(dict(device=gpu.profile.name, cases=total, wrong=wrong, kernels=results), f, indent=1)


if __name__ == "__main__":
    main()

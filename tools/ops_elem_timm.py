"""Issue 26's CPU-fallback timm models after the elementwise / activation / conv1d work: per model and dtype,
CPU ops by name, relative error against torch float32, and median ms of convroute and of torch's CPU forward.

usage: python tools/ops_elem_timm.py [--models a,b] [--size N] [--runs 30] [--policy seed]
  default: cspdarknet53, tresnet_m, resnest14d, ecaresnet26t, at each model's default input size.
  Results also go to $OUT/ops_elem_timm.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter

import torch

import convroute.frontend  # noqa: F401 (before timm, which may load triton: see frontend/__init__)

MODELS = ("cspdarknet53", "tresnet_m", "resnest14d", "ecaresnet26t")


def median_ms(fn, x, runs: int) -> float:
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    import timm

    import convroute

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--policy", default="seed")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model = timm.create_model(name, pretrained=False).eval()
        size = args.size or model.default_cfg["input_size"][-1]
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ref = model(x)
            torch_ms = median_ms(model, x, args.runs)
        for dtype in ("float32", "float16"):
            start = time.perf_counter()
            program = convroute.compile(model, (x,), policy=args.policy, dtype=dtype)
            compile_s = time.perf_counter() - start
            out = program(x).float()
            s = program.summary()
            row = dict(model=name, size=size, dtype=dtype, compile_s=round(compile_s, 1),
                       rel_error=((out - ref).norm() / ref.norm()).item(),
                       cpu_ops=dict(Counter(op for _, op, _ in s.cpu_ops)), gpu_ops=sum(s.gpu_ops.values()),
                       dispatches=s.dispatches, convroute_ms=round(median_ms(program, x, args.runs), 3),
                       torch_cpu_ms=round(torch_ms, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "ops_elem_timm.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

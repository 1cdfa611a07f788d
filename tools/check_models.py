"""Compile torchvision models with convroute and check them against torch float32 on the CPU: relative error,
ops on the CPU fallback, share of conv FLOPs on the GPU. One process; a model that fails is reported and the
loop goes on. Random weights (weights=None, no network). Exit code 1 when any check fails.

usage: python tools/check_models.py [--models a,b] [--size N] [--batch 1,2] [--json OUT] [--policy P] [--list]
  default: every verified variant (the smallest and the largest of each torchvision CNN family, and three
  segmentation models) at full size: 224 px, inception_v3 299, segmentation 256.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback

import torch

import convroute.frontend as frontend  # before torchvision and before the GPU opens (see frontend/__init__)
from convroute.frontend import zoo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated torchvision names (default: all verified variants)")
    parser.add_argument("--size", type=int, help="input side for every model (default: each model's full size; "
                                                 "raised to a model's minimum)")
    parser.add_argument("--batch", default="1,2", help="batch sizes, comma-separated (default 1,2)")
    parser.add_argument("--policy", default=None, help="routing policy (default: $CONVROUTE_POLICY or seed)")
    parser.add_argument("--json", help="write the rows here (rewritten after every model)")
    parser.add_argument("--list", action="store_true", help="print the default model list and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(",".join(zoo.ALL))
        return 0
    names = args.models.split(",") if args.models else list(zoo.ALL)
    batches = [int(b) for b in args.batch.split(",")]

    header = f"{'model':30s} {'size':>4s} {'b':>2s} {'compile s':>9s} {'rel err':>9s} {'GPU ops':>8s} " \
             f"{'CPU ops':>7s} {'conv GPU':>8s}  result"
    print(header, flush=True)
    rows = []
    start = time.perf_counter()
    for name in names:
        size = max(args.size or zoo.full_size(name), zoo.min_size(name))
        for row in check_model(name, size, batches, args.policy):
            rows.append(row)
            print(format_row(row), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([r.as_dict() for r in rows], f, indent=1)
        gc.collect()
    failed = [r for r in rows if not r.passed]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} passed in {time.perf_counter() - start:.0f} s"
          + (f"; failed: {', '.join(sorted({r.model for r in failed}))}" if failed else ""), flush=True)
    return 1 if failed else 0


def check_model(name: str, size: int, batches: list[int], policy) -> list[zoo.Check]:
    """One row per batch size; a failure becomes a failed row naming the exception (one line)."""
    rows = []
    try:
        model = zoo.build(name)
        torch.manual_seed(0)
        start = time.perf_counter()
        program = frontend.compile(model, (torch.randn(batches[0], 3, size, size),), policy=policy)
        first_compile = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - reported, and the next model runs
        return [zoo.Check(name, size, b, error=one_line(exc)) for b in batches]
    for i, batch in enumerate(batches):
        try:
            row = zoo.check(program, model, torch.randn(batch, 3, size, size), name)
            if i == 0:
                row.compile_s = first_compile
        except Exception as exc:  # noqa: BLE001
            row = zoo.Check(name, size, batch, error=one_line(exc))
        rows.append(row)
    return rows


def one_line(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}{at}"


def format_row(r: zoo.Check) -> str:
    if r.error:
        return f"{r.model:30s} {r.size:4d} {r.batch:2d} {'':>9s} {'':>9s} {'':>8s} {'':>7s} {'':>8s}  FAIL {r.error}"
    result = "pass" if r.passed else "FAIL"
    return (f"{r.model:30s} {r.size:4d} {r.batch:2d} {r.compile_s:9.1f} {r.rel_err:9.2e} {r.gpu_ops:8d} "
            f"{r.cpu_ops:7d} {100 * r.conv_gpu_share:7.1f}%  {result}")


if __name__ == "__main__":
    sys.exit(main())

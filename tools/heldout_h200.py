"""Held-out routing on a GPU (issue 24), one process, after `convroute calibrate` on the same machine:

1. `convroute bench` on the shipped held-out layers (22 networks outside the suites and the grid) with the
   policies calibrated, seed and etvk against the per-layer oracle: totals, worst layer, per network, per
   dilated layer, and how many layers each policy puts over 1.5x and 2x their fastest.
2. deeplabv3_resnet50 and fcn_resnet50 at 512 px, fp32: `convroute.compile` with policy calibrated and with
   autotune, and torch's CUDA graph (TF32 off), in interleaved rounds (bench.compare_model.interleaved: each
   engine's second call in a row timed), median / p10 / p90 and the ratios.

usage: python tools/heldout_h200.py [--suite heldout] [--models deeplabv3_resnet50,fcn_resnet50] [--size 512]
  tables go to stdout and, when $OUT is set, to $OUT/heldout_h200.txt (+ the bench report as heldout_bench.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import convroute.frontend as frontend  # before torchvision and before the GPU opens (see frontend/__init__)
from convroute.bench.compare_model import interleaved, output_error
from convroute.bench.suite import SETTINGS, run_bench, summary
from convroute.bench.suites import load_suite
from convroute.calibration.profile import calibration_for
from convroute.device.gpu import get_gpu
from convroute.frontend import zoo
from convroute.peers import Unavailable, model_engine, peer_settings
from convroute.report.latency import Latency
from convroute.report.table import format_table, shape_text

POLICIES = ("calibrated", "seed", "etvk")
LAYER_SETTINGS = replace(SETTINGS, repeats=7, budget_s=0.1)
ROUNDS = 20

LINES: list[str] = []


def say(text: str = "") -> None:
    """Print, and rewrite $OUT/heldout_h200.txt (what is done survives a timeout)."""
    print(text, flush=True)
    LINES.append(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "heldout_h200.txt").write_text("\n".join(LINES) + "\n")


def bench_heldout(name: str) -> dict:
    start = time.perf_counter()
    report = run_bench(get_gpu(), load_suite(name), 1, POLICIES, settings=LAYER_SETTINGS, progress=False)
    say(f"== held-out layers: {name}, {len(report.layers)} layers, measured in {time.perf_counter() - start:.0f} s")
    say(summary(report))
    head = ["policy", "layers > 1.5x", "layers > 2x"]
    say(format_table(head, [[p, str(sum(x.regret(p) > 0.5 for x in report.layers)),
                             str(sum(x.regret(p) > 1.0 for x in report.layers))] for p in report.policies]))
    say("\ndilated layers (ms per algorithm; each policy's time / the layer's fastest):")
    rows = []
    for x in report.layers:
        if max(x.params.dilation) == 1:
            continue
        times = " ".join(f"{n} {t:.3f}" for n, t in sorted(x.times_ms.items(), key=lambda kv: kv[1]))
        picks = [f"{x.choices[p]} {x.regret(p) + 1:.2f}x" for p in report.policies]
        rows.append([x.name[-46:], shape_text(x.params), *picks, times[:90]])
    say(format_table(["layer", "shape", *report.policies, "measured"], rows, left=2))
    return report.to_json()


def compare_models(names: list[str], size: int) -> None:
    for name in names:
        model = zoo.build(name)
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            reference = model(x)
        runners, errors, notes = {}, {}, []
        for policy in ("calibrated", "autotune"):
            start = time.perf_counter()
            program = frontend.compile(model, (x,), policy=policy)
            errors[policy] = output_error(program(x), reference)
            notes.append(f"{policy}: compiled and routed in {time.perf_counter() - start:.1f} s")
            runners[policy] = functools.partial(program, x)
        with peer_settings():
            engine = None
            try:
                engine = model_engine("torch-cuda-graph", model, x, "fp32", f"{name}-{size}px")
                errors["torch-cuda-graph"] = output_error(engine.once(), reference)
                runners["torch-cuda-graph"] = engine.once
            except Unavailable as err:
                notes.append(f"torch-cuda-graph unavailable: {err}")
            try:
                rounds = interleaved(runners, ROUNDS)
            finally:
                if engine is not None:
                    engine.close()
        lat = {n: Latency.of(t) for n, t in rounds.settled.items()}
        say(f"\n== {name}, 1x3x{size}x{size}, fp32 (TF32 off), {ROUNDS} interleaved rounds, host to host")
        head = ["engine", "median ms", "p10 ms", "p90 ms", "rel. error", "/ autotune", "/ torch-cuda-graph"]
        graph = lat.get("torch-cuda-graph")
        say(format_table(head, [[n, f"{v.median_ms:.2f}", f"{v.p10_ms:.2f}", f"{v.p90_ms:.2f}", f"{errors[n]:.2g}",
                                 f"{v.median_ms / lat['autotune'].median_ms:.3f}",
                                 f"{v.median_ms / graph.median_ms:.3f}" if graph else "-"] for n, v in lat.items()]))
        say("\n".join(f"  {line}" for line in notes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="heldout")
    parser.add_argument("--models", default="deeplabv3_resnet50,fcn_resnet50")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    start = time.perf_counter()
    gpu = get_gpu()
    if calibration_for(gpu.profile, "float32") is None:
        print(f"no calibration for {gpu.profile.name}: run `convroute calibrate` first", file=sys.stderr)
        return 2
    say(f"{gpu.profile.name} ({gpu.profile.driver}, {gpu.profile.backend})")
    data = bench_heldout(args.suite)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "heldout_bench.json").write_text(json.dumps(data, indent=1))
    compare_models([n for n in args.models.split(",") if n], args.size)
    say(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

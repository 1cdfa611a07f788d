"""A planning switch on and off (an environment flag build_plan reads, e.g. CONVROUTE_CHANNELS_LAST), in
interleaved rounds in one process: each model compiled once with the flag at 1 and once at 0, both checked
against torch float64, then called in interleaved rounds after a warm-up (run --compare's: each arm twice in a
row a round, the second call timed).

usage: python tools/flag_ab.py FLAG [MODEL ...] [--size N] [--policy P] [--rounds R] [--dtype D]
       (torchvision names or timm:NAME; default convnext_tiny timm:convnext_atto at 224 px, seed, 100 rounds)

Prints per model the dispatch counts, the relative errors, median (p10-p90) whole-call ms of each and the ratio
of medians (on / off), and the GPU pass alone of each where the adapter has timestamps.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from unittest import mock

import torch
from maps_ab import add_model_arguments  # tools/ is the script's directory

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.bench.compare_model import interleaved
from convroute.frontend import zoo
from convroute.report.latency import Latency
from convroute.report.table import format_table


def flag_arms(flag: str) -> dict:
    """"on" / "off" -> a context that sets `flag` to 1 / 0 while a model compiles."""
    return {state: (lambda value=value: mock.patch.dict(os.environ, {flag: value}))
            for state, value in (("on", "1"), ("off", "0"))}


def compiled(arms: dict, model, x, policy: str, dtype: str) -> dict:
    """Arm name -> `model` compiled inside that arm's context, in the arms' order. An arm is a context factory,
    or (factory, dtype) for an arm of its own dtype."""
    programs = {}
    for state, arm in arms.items():
        factory, arm_dtype = arm if isinstance(arm, tuple) else (arm, dtype)
        with factory():
            programs[state] = frontend.compile(model, (x,), policy=policy, dtype=arm_dtype)
    return programs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("flag")
    add_model_arguments(parser, ["convnext_tiny", "timm:convnext_atto"], rounds=100)
    args = parser.parse_args(argv)
    return compare(args.flag, flag_arms(args.flag), args)


def compare(title: str, arms: dict, args) -> int:
    """Each of args.models compiled in every arm (name -> context factory or (factory, dtype); the first is the
    baseline of the ratios), checked against torch float64 and called in interleaved rounds; prints the table."""
    first, *others = arms
    rows = []
    for name in args.models:
        zoo.check_name(name)
        x = torch.randn(1, 3, args.size, args.size)
        model = zoo.build_any(name, 0)
        programs = compiled(arms, model, x, args.policy, args.dtype)
        with torch.no_grad():
            expected = copy.deepcopy(model).double()(x.double())
        errors = {s: zoo.rel_error(p(x), expected) for s, p in programs.items()}
        stats = alternating(programs, x, args.rounds)
        passes = {s: _gpu_pass(p, x) for s, p in programs.items()}
        rows.append([name] + [f"{programs[s].summary().dispatches} / {errors[s]:.1e} / {stats[s].median_ms:.3f} "
                              f"({stats[s].p10_ms:.3f}-{stats[s].p90_ms:.3f}){passes[s]}" for s in arms]
                    + [f"{stats[first].median_ms / stats[s].median_ms:.3f}" for s in others])
        print(f"{name} done", file=sys.stderr, flush=True)
    print(f"{title}; {programs[first].gpu.profile.name}, {args.size} px, "
          f"policy {args.policy}, {args.dtype}, {args.rounds} interleaved rounds after a warm-up; dispatches / rel. "
          f"error / whole call ms median (p10-p90) [GPU pass ms]")
    print(format_table(["model", *arms, *(f"{first} / {s}" for s in others)], rows))
    return 0


def alternating(programs: dict, x, rounds: int) -> dict[str, Latency]:
    """Whole-call latency of each program called with `x` in `compare_model.interleaved`'s rounds: a warm-up
    that raises the GPU's clocks first (a cold H100 ran these calls 3-5x slow: NOTES, session 31), then each
    program twice in a row a round, the second call timed."""
    rounds_ = interleaved({name: (lambda p=program: p(x)) for name, program in programs.items()}, rounds)
    return {name: Latency.of(t) for name, t in rounds_.settled.items()}


def gpu_pass_ms(program, x) -> float | None:
    """The GPU pass alone after a call with `x` (median ms), or None without timestamps."""
    program(x)
    seconds = program.gpu_pass_times()
    return 1e3 * sorted(seconds)[len(seconds) // 2] if seconds else None


def _gpu_pass(program, x) -> str:
    ms = gpu_pass_ms(program, x)
    return "" if ms is None else f" [{ms:.3f}]"


if __name__ == "__main__":
    sys.exit(main())

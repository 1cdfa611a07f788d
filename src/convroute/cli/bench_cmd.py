"""`convroute bench`: per-layer times of every algorithm on a network's convs, each policy's choice and regret."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from convroute.device.gpu import get_gpu
from convroute.kernels.common import DTYPES
from convroute.measure.bench import DEFAULT_POLICIES, SETTINGS, run_bench
from convroute.measure.compare import DEFAULT_CHAIN, ENGINES, compare_summary, compare_table, plot_compare, run_compare
from convroute.measure.report import plot, summary, table
from convroute.router import POLICIES
from convroute.suites import SUITES, load_suite


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default="resnet50",
                        help=f"a shipped suite ({', '.join(SUITES)}) or a suite JSON file (default resnet50)")
    parser.add_argument("--layers", metavar="FILE.json",
                        help="your own layer list, same format as the shipped suites (overrides --suite)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--policy", default=",".join(DEFAULT_POLICIES),
                        help=f"comma-separated policies to score, of {', '.join(POLICIES)} "
                             f"(default {','.join(DEFAULT_POLICIES)})")
    parser.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="plot per-layer times by algorithm, choices marked")
    parser.add_argument("--repeats", type=int, default=SETTINGS.repeats, help="timed runs per algorithm, at most")
    parser.add_argument("--budget", type=float, default=SETTINGS.budget_s, metavar="SECONDS",
                        help=f"time budget per algorithm and layer (default {SETTINGS.budget_s}); at least 3 "
                             "runs are timed whatever the budget")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="storage of activations and weights: float32 (default) or float16 (f16 kernels with f32 "
                             "sums, routed with the float16 calibration; --compare then runs torch in fp16 and "
                             "reports convroute / ncnn-vk16); float16 needs the adapter's shader-f16")
    parser.add_argument("--no-check", action="store_true", help="skip checking results against the host reference")
    parser.add_argument("--compare", default="", metavar="NAMES",
                        help=f"also time other engines ({','.join(ENGINES)}) where available, all with one chained "
                             "method (see --chain; --budget per engine and layer), beside convroute's routed "
                             "algorithms")
    parser.add_argument("--chain", type=int, default=DEFAULT_CHAIN, metavar="L",
                        help=f"--compare: copies of each layer run back to back per timed run "
                             f"(default {DEFAULT_CHAIN})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.batch < 1:
        print("--batch must be >= 1", file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    missing = [c for c in compare if c not in ENGINES]
    if missing:
        print(f"--compare {', '.join(missing)}: unknown engine (known: {', '.join(ENGINES)})", file=sys.stderr)
        return 2
    if args.chain < 1:
        print("--chain must be >= 1", file=sys.stderr)
        return 2
    try:
        suite = load_suite(args.layers or args.suite)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    settings = replace(SETTINGS, repeats=max(args.repeats, SETTINGS.min_repeats), budget_s=args.budget)
    try:
        report = run_bench(get_gpu(), suite, args.batch, policies, settings=settings, check=not args.no_check,
                           progress=not args.no_progress, dtype=args.dtype)
    except ValueError as err:  # e.g. float16 on an adapter without shader-f16
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(report))
    print()
    print(summary(report))
    compared = None
    if compare:
        compared = run_compare(get_gpu(), suite, args.batch, report.policies or ["seed"], compare, chain=args.chain,
                               budget_s=args.budget, progress=not args.no_progress, dtype=args.dtype)
        print()
        print(compare_table(compared))
        print()
        print(compare_summary(compared))
    if args.json:
        data = report.to_json() | (compared.to_json() if compared else {})
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
        if compared:
            path = Path(args.plot)
            compare_path = str(path.with_name(f"{path.stem}-compare{path.suffix or '.png'}"))
            plot_compare(compared, compare_path)
            print(f"wrote {compare_path}")
    return 0

"""`convroute bench`: per-layer times of every algorithm on a network's convs, each policy's choice and regret."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from convroute.bench.compare_layers import (
    DEFAULT_CHAIN,
    compare_summary,
    compare_table,
    ratio_table,
    run_compare,
)
from convroute.bench.suite import CONFIRM_ABOVE, CONFIRM_ROUNDS, DEFAULT_POLICIES, SETTINGS, run_bench, summary, table
from convroute.bench.suites import HELDOUT, SUITES, load_suite
from convroute.cli.common import check_extras
from convroute.device.gpu import get_gpu
from convroute.kernels.common import DTYPES
from convroute.peers import LAYER_ENGINES, LAYER_NEEDS
from convroute.report.plots import plot_bench, plot_compare
from convroute.report.table import fit_text
from convroute.router import POLICIES


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default="resnet50",
                        help=f"a shipped suite ({', '.join(SUITES)}), held-out layers of networks outside them "
                             f"({' or '.join(HELDOUT)}: scored per network too), a suite JSON file, or several of them "
                             f"comma-separated (or 'all': every shipped suite) benched one after the other, with "
                             f"one table of convroute / peer ratios per suite at the end (default resnet50)")
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
    parser.add_argument("--no-confirm", action="store_true",
                        help=f"report one measurement per layer (default: a layer where a policy's pick measured over "
                             f"{CONFIRM_ABOVE}x the fastest is measured {CONFIRM_ROUNDS} more times, medians kept)")
    parser.add_argument("--compare", default="", metavar="NAMES",
                        help=f"also time other engines ({','.join(LAYER_ENGINES)}) where available, all with one "
                             "chained method (see --chain; --budget per engine and layer), beside convroute's routed "
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
    missing = [c for c in compare if c not in LAYER_ENGINES]
    if missing:
        print(f"--compare {', '.join(missing)}: unknown engine (known: {', '.join(LAYER_ENGINES)})", file=sys.stderr)
        return 2
    if args.chain < 1:
        print("--chain must be >= 1", file=sys.stderr)
        return 2
    names = [args.layers] if args.layers else suite_names(args.suite)
    try:
        suites = [load_suite(name) for name in names]
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if args.plot and not check_extras({"report": ("matplotlib",)}, "convroute bench --plot"):
        return 2
    if not args.no_progress:
        check_extras({"report": ("tqdm",)}, "the progress bar", required=False)
    for name in compare:  # a missing peer is listed as unavailable in the comparison
        check_extras(LAYER_NEEDS[name], f"--compare {name}", required=False)
    settings = replace(SETTINGS, repeats=max(args.repeats, SETTINGS.min_repeats), budget_s=args.budget)
    results, compared = [], []
    for suite in suites:
        if len(suites) > 1:
            print(f"== {suite.name} ==")
        try:
            report = run_bench(get_gpu(), suite, args.batch, policies, settings=settings, check=not args.no_check,
                               progress=not args.no_progress, dtype=args.dtype, confirm=not args.no_confirm)
        except ValueError as err:  # e.g. float16 on an adapter without shader-f16
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(table(report))
        print()
        print(fit_text(summary(report)))
        data, other = report.to_json(), None
        if compare:
            other = run_compare(get_gpu(), suite, args.batch, report.policies or ["seed"], compare, chain=args.chain,
                                budget_s=args.budget, progress=not args.no_progress, dtype=args.dtype)
            print()
            print(compare_table(other))
            print()
            print(fit_text(compare_summary(other)))
            data |= other.to_json()
            compared.append(other)
        print()
        results.append(data)
        if args.plot:
            write_plots(report, other, args.plot, suite.name if len(suites) > 1 else None)
    if len(compared) > 1:
        print(f"convroute / peer per suite, batch {args.batch}, convroute {args.dtype} (below 1: convroute faster):")
        print(ratio_table(compared))
    if args.json:
        data = results[0] if len(results) == 1 else {"suites": results}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def suite_names(text: str) -> list[str]:
    """'resnet50' / 'resnet50,vgg16' / 'all' -> suite names or files."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return list(SUITES) if names == ["all"] else names


def write_plots(report, compared, path_text: str, suffix: str | None) -> None:
    """OUT.png (and OUT-compare.png); with several suites OUT-<suite>.png and OUT-<suite>-compare.png."""
    path = Path(path_text)
    if suffix:
        path = path.with_name(f"{path.stem}-{suffix}{path.suffix or '.png'}")
    plot_bench(report, str(path))
    print(f"wrote {path}")
    if compared:
        compare_path = str(path.with_name(f"{path.stem}-compare{path.suffix or '.png'}"))
        plot_compare(compared, compare_path)
        print(f"wrote {compare_path}")

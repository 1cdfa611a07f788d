"""`convroute calibrate`: measure every algorithm on the calibration grid and save this device's profile
(one per dtype: `--dtype float16` measures f16 kernels and keeps them in their own file), then run the
self-test (`convroute selftest`) in the same dtype with what is left of the time budget."""

from __future__ import annotations

import sys

from convroute.bench.heldout_score import default_file, heldout_text, score_heldout
from convroute.calibration.grid import GRIDS
from convroute.calibration.model import loo_report
from convroute.calibration.profile import profile_path, save_calibration
from convroute.calibration.run import SETTINGS, run_calibration
from convroute.cli.common import check_extras
from convroute.device.gpu import get_gpu
from convroute.kernels.common import DTYPES
from convroute.report.table import fit_text

SELFTEST_SHARE = 0.15  # of --budget kept for the self-test when the grid would use it all
QUICK_BUDGET = 110.0  # --quick's default --budget (NOTES: how long it takes on lavapipe)
HELDOUT_SHARE = 0.15  # of --budget, at most, for scoring the calibration on held-out layers (bench/heldout_score.py)


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"a light third of the grid, no self-test, about {QUICK_BUDGET:.0f} s: enough to start "
                             "routing (convs it does not cover are measured when first routed); a later full "
                             "calibrate replaces it")
    parser.add_argument("--grid", choices=GRIDS, default=None,
                        help="full (default), quick (= --quick) or tiny (a dozen tiny shapes: tests, smoke runs)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help=f"stop measuring new shapes after this long (default 540, with --quick "
                             f"{QUICK_BUDGET:.0f})")
    parser.add_argument("--per-shape", type=float, default=SETTINGS.budget_s, metavar="SECONDS",
                        help=f"time budget of one algorithm on one shape (default {SETTINGS.budget_s})")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="storage of activations and weights while measuring: float32 (default) or float16 "
                             "(f16 kernels, f32 sums; needs shader-f16); each dtype has its own profile, which "
                             "routing in that dtype uses")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="measure and report, but do not save the profile")
    parser.add_argument("--heldout", default=None, metavar="NAME|FILE",
                        help="held-out layers to score the calibration on at the end, per network (default: heldout "
                             "on GPUs, heldout_small on CPU adapters, none with --quick or --grid; 'none': skip), "
                             f"in what the grid leaves of --budget: at most {100 * HELDOUT_SHARE:.0f}%% of it, "
                             "and half with a "
                             "self-test")
    parser.add_argument("--selftest-cases", type=int, default=None, metavar="N",
                        help="random cases of the self-test after the grid (default 1000, with --quick 0, with "
                             "--grid tiny 10; 0: none); "
                             f"it gets what the grid leaves of --budget, at least {100 * SELFTEST_SHARE:.0f}%%")


def run(args) -> int:
    from dataclasses import replace

    if not args.no_progress:
        check_extras({"report": ("tqdm",)}, "the progress bar", required=False)
    from convroute.bench.selftest import load_reference_backend
    from convroute.cli.selftest_cmd import selftest_and_report

    load_reference_backend()  # before the GPU opens (the self-test's reference)
    gpu = get_gpu()
    grid = args.grid or ("quick" if args.quick else "full")
    budget = args.budget if args.budget is not None else QUICK_BUDGET if grid == "quick" else 540.0
    selftest_cases = args.selftest_cases if args.selftest_cases is not None else {"full": 1000, "tiny": 10}.get(grid, 0)
    grid_budget = budget * (1 - SELFTEST_SHARE) if selftest_cases > 0 else budget
    print(f"calibrating {gpu.profile.name} ({gpu.profile.driver}, {gpu.profile.backend}) on the {grid} grid "
          f"in {args.dtype}")
    try:
        cal = run_calibration(gpu, grid, settings=replace(SETTINGS, budget_s=args.per_shape), budget_s=grid_budget,
                              progress=not args.no_progress, dtype=args.dtype)
    except ValueError as err:  # float16 on an adapter without shader-f16
        print(f"error: {err}", file=sys.stderr)
        return 2
    measured = sum(len(s.times_ms) for s in cal.samples)
    print(f"{len(cal.samples)} shapes, {measured} measurements in {cal.seconds:.0f} s ({cal.timing})")
    if grid == "quick":
        print("quick calibration: convs it does not cover are measured when first routed; `convroute calibrate` "
              "replaces it")
    for name, why in cal.excluded.items():
        print(f"EXCLUDED {name}: {why}")
    if not cal.excluded:
        print("every algorithm gave correct results on every shape")
    skipped: dict[str, int] = {}
    for s in cal.samples:
        for name in s.failed:
            skipped[name] = skipped.get(name, 0) + 1
    for name, count in skipped.items():
        example = next(s for s in cal.samples if name in s.failed)
        print(f"{name} could not run {count} shape(s), e.g. {example.params.describe()}: {example.failed[name]}")
    loo = cal.model_check = loo_report(cal.samples, cal.excluded, cal.profile, cal.dtype)
    print(fit_text(f"model check, leave-one-out over {loo['shapes']} shapes with a choice: picks the fastest on "
                   f"{100 * loo['accuracy']:.0f}%, mean regret {100 * loo['mean_regret']:.1f}%, total time "
                   f"{100 * loo['total_regret']:.1f}% over the fastest; median prediction error "
                   f"{100 * loo['median_error']:.1f}% (close calls within {100 * (cal.close_call - 1):.0f}% are "
                   f"measured while compiling); worst {100 * loo['worst_regret']:.0f}% "
                   f"({loo['worst_ms'][0]:.3g} vs {loo['worst_ms'][1]:.3g} ms on {loo['worst_shape']})"))
    if not args.dry_run:
        path = save_calibration(cal)
        if path is None:
            print(f"could not save the profile to {profile_path(gpu.profile, cal.dtype)}", file=sys.stderr)
            return 1
        print(f"saved {path}")
    spent, heldout, left = 0.0, heldout_name(args, gpu.profile), budget - cal.seconds
    if heldout:  # what the grid left, shared with the self-test
        spent = report_heldout(gpu, cal, heldout, min(budget * HELDOUT_SHARE, left / 2 if selftest_cases > 0 else left),
                               progress=not args.no_progress)
    if selftest_cases > 0:
        print(f"self-test: up to {selftest_cases} random convs in {args.dtype}, every algorithm against a float64 "
              f"reference; routing excludes what is wrong")
        selftest_and_report(gpu, args.dtype, selftest_cases, left - spent,
                            progress=not args.no_progress, save=not args.dry_run)
    return 0


def heldout_name(args, profile) -> str | None:
    if args.heldout is None:
        return default_file(profile) if (args.grid or ("quick" if args.quick else "full")) == "full" else None
    return None if args.heldout == "none" else args.heldout


def report_heldout(gpu, cal, name: str, budget_s: float, progress: bool) -> float:
    """Score the calibration on held-out layers and print it; the seconds it took."""
    try:
        score = score_heldout(gpu, cal, name, budget_s, progress)
    except ValueError as err:  # a bad --heldout file
        print(f"held-out layers not scored: {err}", file=sys.stderr)
        return 0.0
    print(heldout_text(score))
    return score.seconds

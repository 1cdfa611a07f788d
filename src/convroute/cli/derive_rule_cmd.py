"""`convroute derive-rule`: fit a small readable routing rule (decision trees of depth <= 3) on calibration
grids, print it as Python, as C++ in ET-VK's style and as JavaScript (for browser bundles), save it for the
`derived` policy, and score seed, etvk, the derived rules and calibrated on measured suites (never on the shapes
it was fitted on)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from convroute.bench.suites import HELDOUT, SUITES, load_suite
from convroute.cache import write_json
from convroute.calibration import profile as calib
from convroute.report.table import format_table
from convroute.router.derive import OBJECTIVES, derive_rule
from convroute.router.derived import RULE_ENV, rule_path
from convroute.router.regret import (
    SCORED,
    BenchLayer,
    BenchSuite,
    bench_from_json,
    check_held_out,
    grid_suite,
    read_bench,
    score_suite,
)
from convroute.router.rule_text import to_cpp, to_javascript, to_python


def add_arguments(parser) -> None:
    parser.add_argument("--calibration", nargs="+", metavar="FILE",
                        help="calibration profiles to fit on, of one device or a fleet (default: this device's, "
                             "from the cache directory)")
    parser.add_argument("--bench", nargs="+", default=[], metavar="FILE",
                        help="`convroute bench --json` reports to score the policies on")
    parser.add_argument("--suite", default="", metavar="NAMES",
                        help=f"shipped suites to measure now and score ({', '.join(SUITES)}, comma-separated, or "
                             "'all'); slow on CPU adapters, see --budget")
    parser.add_argument("--layers", metavar="FILE.json",
                        help=f"a held-out layer list (suite format, or {' or '.join(HELDOUT)}: the shipped layers of "
                             "networks outside the suites, scored per network) to measure and score")
    parser.add_argument("--budget", type=float, default=0.3, metavar="SECONDS",
                        help="measuring: time budget per algorithm and layer (default 0.3)")
    parser.add_argument("--save-bench", metavar="OUT.json", help="write the suites measured now as a bench report")
    parser.add_argument("--out", metavar="RULE.json",
                        help=f"where to save the rule (default {rule_path()}, which policy 'derived' reads unless "
                             f"{RULE_ENV} names another file)")
    parser.add_argument("--no-save", action="store_true", help="print and score the rule, save nothing")
    parser.add_argument("--python", metavar="OUT.py", help="write the Python rule here instead of printing it")
    parser.add_argument("--cpp", metavar="OUT.cpp", help="write the C++ rule here instead of printing it")
    parser.add_argument("--js", metavar="OUT.js", help="write the JavaScript rule here instead of printing it")
    parser.add_argument("--depth", type=int, default=3, choices=(1, 2, 3), help="tree depth (default 3)")
    parser.add_argument("--min-leaf", type=int, default=3, help="fewest calibration shapes per leaf (default 3)")
    parser.add_argument("--min-gain", type=float, default=0.002,
                        help="a condition must save this share of the grid's oracle time (default 0.002)")
    parser.add_argument("--objective", default="time", choices=OBJECTIVES,
                        help="time: total time lost vs the per-shape best (default); log: mean log slowdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while measuring")


def load_calibrations(paths) -> list[calib.Calibration]:
    if not paths:
        from convroute.device.gpu import get_gpu

        profile = get_gpu().profile
        cal = calib.load_calibration(profile)
        if cal is None:
            raise ValueError(f"no calibration profile for {profile.name} (run `convroute calibrate`, or pass "
                             f"--calibration FILE...)")
        return [cal]
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            if not isinstance(data, dict) or data.get("format") != calib.FORMAT:
                raise ValueError(f"not a {calib.FORMAT} file")
            out.append(calib.Calibration.from_json(data))
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"--calibration {path}: {err}") from None
    return out


def measure(suites, args) -> list[BenchSuite]:
    """Bench suites on the adapter in use: per-layer times of every algorithm."""
    from convroute.bench.suite import SETTINGS, run_bench
    from convroute.device.gpu import get_gpu

    settings = replace(SETTINGS, budget_s=args.budget)
    reports = [run_bench(get_gpu(), suite, 1, ["seed"], settings=settings, progress=not args.no_progress).to_json()
               for suite in suites]
    if args.save_bench and reports:
        Path(args.save_bench).write_text(json.dumps({"suites": reports}, indent=1))
        print(f"wrote {args.save_bench}")
    return [bench_from_json(data, "measured now") for data in reports]


def unmeasured(suite) -> BenchSuite:
    return BenchSuite(suite.name, {}, [BenchLayer(x.name, x.count, x.params(1), {}) for x in suite.layers])


def run(args) -> int:
    names = [n.strip() for n in args.suite.split(",") if n.strip()]
    names = (list(SUITES) if names == ["all"] else names) + ([args.layers] if args.layers else [])
    try:
        calibrations = load_calibrations(args.calibration)
        benches = [suite for path in args.bench for suite in read_bench(path)]
        to_measure = [load_suite(name) for name in names]
        rule, fitted = derive_rule(calibrations, depth=args.depth, min_leaf=args.min_leaf, min_gain=args.min_gain,
                                   objective=args.objective)
        for suite in benches + [unmeasured(s) for s in to_measure]:  # before anything is measured or saved
            check_held_out(suite, fitted)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shapes = sum(len(c.samples) for c in calibrations)
    print(f"fitted on {shapes} calibration shapes of {len(calibrations)} device(s) "
          f"({', '.join(c.device_key for c in calibrations)}): chooser {rule.chooser.conditions} conditions, "
          f"im2col rule {rule.im2col.conditions}")
    print(regret_table([score_suite(grid_suite(c), rule, [c]) for c in calibrations],
                       "on the calibration grids (in-sample)"))
    emit(to_python(rule), args.python, "Python")
    emit(to_cpp(rule), args.cpp, "C++")
    emit(to_javascript(rule), args.js, "JavaScript")
    if not args.no_save:
        path = Path(args.out) if args.out else rule_path()
        if not write_json(path, rule.to_json()):
            return 1
        print(f"saved {path}" + ("" if args.out is None else f" (route with it: {RULE_ENV}={path})"))
    benches += measure(to_measure, args)
    if benches:
        print(regret_table([score_suite(b, rule, calibrations, fitted) for b in benches],
                           "held out: no suite layer is a calibration shape"))
    return 0


def emit(text: str, path: str | None, label: str) -> None:
    if path:
        Path(path).write_text(text)
        print(f"wrote the {label} rule to {path}")
    else:
        print(f"\n{text}")


def regret_table(scores: list[dict], where: str) -> str:
    """Per suite (and per network of a held-out file) each policy's total / oracle total, and beside it its
    worst layer's time / that layer's fastest."""
    head = ["suite", "device", "layers", "oracle ms"] + [f"{k} x" for k in SCORED]
    rows, worst = [], []
    for s in scores:
        rows.append([s["suite"], s["family"]] + regret_cells(s))
        rows += [[f"  {net}", ""] + regret_cells(n) for net, n in s.get("networks", {}).items()]
        worst += [f"  {s['suite']}, {k}: worst layer {ratio:.2f}x ({name[-60:]})"
                  for k, (ratio, name) in s["worst"].items() if k in ("calibrated", "derived")]
    return "\n".join([f"\npolicy total / oracle total per suite, {where}; w: the policy's worst layer, its time / "
                      "the layer's fastest", format_table(head, rows, left=2)] + worst)


def regret_cells(s: dict) -> list[str]:
    return [str(s["layers"]), f"{s['oracle_ms']:.3g}"] + [
        f"{s['vs_oracle'][k]:.3f} w{s['worst'][k][0]:.2f}" if k in s["vs_oracle"] else "n/a" for k in SCORED]

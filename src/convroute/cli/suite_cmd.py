"""`convroute suite`: every conv layer of a network suite routed, run and checked on the adapter in use, with
the routed algorithm's median time per layer and the total weighted by each layer's count."""

from __future__ import annotations

import sys

from convroute.api import Conv2d
from convroute.bench.suites import SUITES, load_suite
from convroute.cli.common import TOLERANCE, check_extras
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS
from convroute.measure.reference import float64_reference, norm_relative_error
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.report.progress import progress_bar
from convroute.report.table import fit_text, format_table, shape_text
from convroute.router import POLICIES, route_params


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default="resnet50",
                        help=f"a shipped suite ({', '.join(SUITES)}) or a suite JSON file (default resnet50)")
    parser.add_argument("--layers", metavar="FILE.json", help="your own layer list in the suite format "
                                                              "(see the README; overrides --suite)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--policy", default=None, help=f"one of {', '.join(POLICIES)} (default: CONVROUTE_POLICY "
                                                         "or seed)")
    parser.add_argument("--force-direct", action="store_true", default=None,
                        help="send every sliding-window conv to direct")
    parser.add_argument("--budget", type=float, default=0.3, metavar="SECONDS",
                        help="timing budget per layer (default 0.3; at least 3 runs are timed)")
    parser.add_argument("--reasons", action="store_true", help="print the router's reason for every layer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.batch < 1:
        print("error: --batch must be >= 1", file=sys.stderr)
        return 2
    try:
        suite = load_suite(args.layers or args.suite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.no_progress:
        check_extras({"report": ("tqdm",)}, "the progress bar", required=False)
    gpu = get_gpu()
    settings = TimingSettings(warmup=1, repeats=20, min_repeats=3, budget_s=args.budget)
    rows, reasons, failed, total_ms, method, ref_name = [], [], 0, 0.0, "-", "-"
    for layer in progress_bar(suite.layers, f"suite {suite.name}", "layer", not args.no_progress, leave=False):
        p = layer.params(args.batch)
        decision = route_params(p, gpu.profile, args.policy, args.force_direct)
        work = Workload(gpu, p, seed=len(rows), rotations=2)
        try:
            conv = Conv2d(work.weight, work.bias, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                          output_padding=p.output_padding, algorithm=decision.algorithm, gpu=gpu)
            ref, ref_name = float64_reference(p, work.x_first, work.weight, work.bias)
            err = norm_relative_error(conv(work.x_first), ref)
            timing = work.time(work.kernel(ALGORITHMS[decision.algorithm]), settings)
        finally:
            work.release()
        ok = err < TOLERANCE
        failed += not ok
        total_ms += timing.median_ms * layer.count
        method = timing.method
        rows.append([layer.name, str(layer.count), shape_text(p), decision.algorithm, f"{err:.1e}",
                     "ok" if ok else "WRONG", f"{timing.median_ms:.3f}"])
        reasons.append(f"{layer.name}: {decision.reason}")
    print(fit_text(f"{suite.name}, batch {args.batch}, on {gpu.profile.name} (policy {decision.policy})"))
    print(format_table(["layer", "count", "shape", "algorithm", "rel error", "check", "median ms"], rows, left=4))
    if args.reasons:
        print(fit_text("\n".join(reasons)))
    print(fit_text(f"total {total_ms:.2f} ms for the {suite.total_count} convs ({len(suite.layers)} distinct), each "
                   f"layer's median times its count; timing: {method}; reference: {ref_name}, tolerance {TOLERANCE:g}"))
    if failed:
        print(f"{failed} layer(s) gave a wrong result", file=sys.stderr)
    return 1 if failed else 0

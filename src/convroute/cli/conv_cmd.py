"""`convroute conv`: run one conv shape with every applicable algorithm on the adapter in use, check each
against a float64 host reference (PyTorch when importable) and print its median time. `--dtype float16`
runs the f16 kernels (tolerance 1e-2 instead of 1e-4)."""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from convroute.cli.common import add_shape_arguments, params_from_args
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import DTYPES, Precision
from convroute.measure.reference import TOLERANCES, float64_reference, norm_relative_error
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.report.table import fit_text, format_table
from convroute.router import POLICIES, route_params

SETTINGS = TimingSettings(warmup=2, repeats=30, budget_s=1.0)


def add_arguments(parser) -> None:
    add_shape_arguments(parser)
    parser.add_argument("--algorithm", default="all", help=f"comma-separated subset of {', '.join(ALGORITHMS)} "
                                                          "(default: every applicable one)")
    parser.add_argument("--policy", default=None, help=f"policy whose choice is marked, one of {', '.join(POLICIES)}")
    parser.add_argument("--repeats", type=int, default=SETTINGS.repeats, help="timed runs per algorithm, at most")
    parser.add_argument("--budget", type=float, default=SETTINGS.budget_s, metavar="SECONDS",
                        help="time budget per algorithm (at least 3 runs are timed whatever the budget)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the inputs (default: fresh)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="storage of activations and weights (float16 needs the adapter's shader-f16)")
    parser.add_argument("--accumulate", default=None, choices=DTYPES,
                        help="type of the sums (default: the --dtype; float32 with --dtype float16 keeps f32 sums)")


def run(args) -> int:
    try:
        p = params_from_args(args)
        names = pick_algorithms(args.algorithm, p)
        precision = Precision.parse(args.dtype, args.accumulate)
        gpu = get_gpu()
        precision.require(gpu.profile)
        decision = route_params(p, gpu.profile, args.policy, args.force_direct, precision.dtype)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = replace(SETTINGS, repeats=max(args.repeats, SETTINGS.min_repeats), budget_s=args.budget)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    work = Workload(gpu, p, seed=seed, rotations=settings.rotations, precision=precision)
    ref, ref_name = float64_reference(p, work.x_first, work.weight, work.bias)
    tolerance = TOLERANCES[precision.dtype]
    rows, failed, method = [], 0, "-"
    try:
        for name in names:
            kernel = work.kernel(ALGORITHMS[name])
            y = work.y_bufs[0]
            gpu.fill(y, np.nan, precision.numpy)
            gpu.run(kernel.bind(work.x_bufs[0], y, p.n))
            err = norm_relative_error(gpu.read(y, p.output_shape, precision.numpy), ref)
            ok = err < tolerance
            failed += not ok
            timing = work.time(kernel, settings)
            method = timing.method
            gflops = p.flops / (timing.median_ms * 1e6)
            rows.append([name + (" (routed)" if name == decision.algorithm else ""), f"{err:.2e}",
                         "ok" if ok else "WRONG", f"{timing.median_ms:.3f}", f"{gflops:.1f}"])
    finally:
        work.release()
    print(fit_text(f"{p.describe()} on {gpu.profile.name}, dtype {precision.dtype}, sums {precision.accumulate}"))
    print(fit_text(f"routed: {decision}"))
    print(format_table(["algorithm", "rel error", "check", "median ms", "GFLOP/s"], rows))
    print(fit_text(f"reference: {ref_name}; tolerance {tolerance:g}; timing: {method}; seed {seed}"))
    return 1 if failed else 0


def pick_algorithms(spec: str, p) -> list[str]:
    if spec == "all":
        names = [n for n, cls in ALGORITHMS.items() if cls.unsupported(p) is None]
        if not names:
            raise ValueError(f"no algorithm can run {p.describe()}")
        return names
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
        why = ALGORITHMS[name].unsupported(p)
        if why:
            raise ValueError(f"algorithm {name!r} cannot run {p.describe()}: {why}")
    return names

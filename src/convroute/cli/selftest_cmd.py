"""`convroute selftest`: a differential fuzz of every algorithm on the adapter in use (random small convs,
each run with every applicable algorithm, poisoned outputs, against a float64 host reference), reported per
algorithm and saved beside the calibration. Routing obeys it: an algorithm wrong on a shape class is excluded
there under every policy, and Decision.reason says why. With --input/--weight it runs one case instead: the
one-line repros it prints are such commands."""

from __future__ import annotations

import sys
import time

from convroute.cli.common import int_or_pair, ints
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import DTYPES, F16_FEATURE
from convroute.report.table import format_table
from convroute.router import POLICIES

PROGRESS_EVERY = 100


def add_arguments(parser) -> None:
    parser.add_argument("--cases", type=int, default=1000, help="random cases per dtype (default 1000)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="only this dtype (default: float32, and float16 where the adapter has shader-f16)")
    parser.add_argument("--budget", type=float, default=300.0, metavar="SECONDS",
                        help="stop drawing cases after this long, all dtypes together (default 300)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random cases (default 0: the same cases every run); with --input, of "
                             "the case's inputs")
    parser.add_argument("--fresh", action="store_true",
                        help="forget what earlier self-tests found on this device (default: keep their findings)")
    parser.add_argument("--dry-run", action="store_true", help="test and report, but do not save the results")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    one = parser.add_argument_group("one case (what the repro lines run)")
    one.add_argument("--input", type=ints, metavar="N,C,H,W", help="input shape, NCHW: run this one case")
    one.add_argument("--weight", type=ints, metavar="O,I,KH,KW",
                     help="weight shape in PyTorch layout ([C_in, C_out/groups, Kh, Kw] with --transposed)")
    one.add_argument("--stride", type=int_or_pair, default=1, metavar="S|SH,SW")
    one.add_argument("--padding", type=int_or_pair, default=0, metavar="P|PH,PW")
    one.add_argument("--dilation", type=int_or_pair, default=1, metavar="D|DH,DW")
    one.add_argument("--groups", type=int, default=1)
    one.add_argument("--transposed", action="store_true", help="conv_transpose2d instead of conv2d")
    one.add_argument("--output-padding", type=int_or_pair, default=0, metavar="P|PH,PW")
    one.add_argument("--bias", action="store_true", default=True, help="with a bias (default)")
    one.add_argument("--no-bias", dest="bias", action="store_false", help="without a bias")
    one.add_argument("--activation", default="none",
                     help="none, a name of the activation table (relu, relu6, hardswish, silu, sigmoid, "
                          "hardsigmoid, tanh, gelu, gelu_tanh, leaky_relu, elu, softplus, mish, logsigmoid), "
                          "NAME:P1:P2... with parameters (leaky_relu:0.2, elu:ALPHA:SCALE:INPUT_SCALE, "
                          "softplus:BETA:THRESHOLD) or clamp:LO:HI (default none)")
    one.add_argument("--algorithm", default=None,
                     help=f"comma-separated algorithms to force (default: every applicable one unless --policy); "
                          f"known: {', '.join(ALGORITHMS)}")
    one.add_argument("--policy", default=None, choices=POLICIES, help="also run the case routed by this policy")
    one.add_argument("--input-dtype", default=None, choices=["float32"],
                     help="with --dtype float16: the input goes to the GPU as float32 and the algorithms that can "
                          "read it so do (Conv2d's input_dtype)")


def run(args) -> int:
    from convroute.bench.selftest import load_reference_backend

    load_reference_backend()  # before the GPU opens: torch and lavapipe each bring an LLVM
    from convroute.device.gpu import get_gpu

    gpu = get_gpu()
    if args.input is not None or args.weight is not None:
        return run_one(args, gpu)
    dtypes = [args.dtype] if args.dtype else list(DTYPES)
    if F16_FEATURE not in gpu.profile.features and "float16" in dtypes:
        if args.dtype:
            print(f"error: dtype float16 needs the adapter feature {F16_FEATURE!r}, which {gpu.profile.name} lacks",
                  file=sys.stderr)
            return 2
        dtypes.remove("float16")
        print(f"float16 skipped: {gpu.profile.name} lacks {F16_FEATURE}")
    print(f"self-test on {gpu.profile.name} ({gpu.profile.driver}, {gpu.profile.backend}): up to {args.cases} "
          f"cases per dtype in {', '.join(dtypes)}, budget {args.budget:.0f} s, seed {args.seed}")
    start, wrong = time.perf_counter(), 0
    for i, dtype in enumerate(dtypes):
        budget = (args.budget - (time.perf_counter() - start)) / (len(dtypes) - i)
        result = selftest_and_report(gpu, dtype, args.cases, budget, args.seed, not args.no_progress,
                                     save=not args.dry_run, fresh=args.fresh)
        wrong += sum(s.wrong for s in result.stats.values())
    return 1 if wrong else 0


def selftest_and_report(gpu, dtype: str, cases: int, budget: float, seed: int = 0, progress: bool = True,
                        save: bool = True, fresh: bool = False):
    """Run the self-test in one dtype, print its table and exclusions, save it (merged with the findings of
    earlier runs unless `fresh`); returns the SelftestResult. `convroute calibrate` calls it too."""
    from convroute.bench.selftest import run_selftest
    from convroute.calibration.selftest_results import load_selftest, save_selftest, selftest_path

    def show(tally, seconds):
        print(f"  {dtype}: {tally.summary()} in {seconds:.0f} s", flush=True)

    result = run_selftest(gpu, cases, dtype, max(budget, 0.0), seed, show if progress else None, PROGRESS_EVERY)
    if result.cases < cases:
        print(f"{dtype}: time budget of {budget:.0f} s spent after {result.cases} of {cases} cases")
    rows = [[name, str(s.runs), str(s.wrong), f"{s.worst_error:.2e}"] for name, s in result.stats.items()]
    print(f"{dtype}: {result.cases} cases in {result.seconds:.0f} s")
    print(format_table(["algorithm", "runs", "wrong", "worst error"], rows))
    for name, s in result.stats.items():
        label = "WRONG" if s.wrong else "worst"
        print(f"{label} {name}: {s.worst_repro}")
    if save:
        result = result.merged_with(None if fresh else load_selftest(gpu.profile, dtype))
    for f in result.findings:
        print(f"EXCLUDED {f.algorithm} on {f.shape_class} convs in {dtype}: wrong {f.wrong}x, worst relative "
              f"error {f.worst_error:.3g} ({f.when}): {f.repro}")
    if save:
        path = save_selftest(result)
        print(f"saved {path}" if path else f"could not save the results to {selftest_path(gpu.profile, dtype)}")
    return result


def run_one(args, gpu) -> int:
    from convroute.bench.selftest import Case, check_case, parse_activation
    from convroute.params import make_params

    try:
        if args.input is None or args.weight is None:
            raise ValueError("one case needs both --input and --weight")
        p = make_params(args.input, args.weight, args.stride, args.padding, args.dilation, args.groups,
                        transposed=args.transposed, output_padding=args.output_padding)
        case = Case(p, args.bias, parse_activation(args.activation), args.dtype or "float32", args.seed,
                    args.input_dtype)
        algorithms = None if args.algorithm is None and args.policy is None else \
            [n.strip() for n in (args.algorithm or "").split(",") if n.strip()]
        for name in algorithms or []:
            if name not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
        outcomes = check_case(case, gpu, algorithms, [args.policy] if args.policy else [])
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    read = f" (input read as {case.input_dtype})" if case.input_dtype else ""
    print(f"{p.describe()} bias={case.bias} activation={args.activation} {case.dtype}{read} seed {case.seed} "
          f"on {gpu.profile.name}")
    rows = [[o.algorithm or "?", o.policy or "forced", f"{o.error:.2e}", "WRONG" if o.wrong else "ok",
             o.failure[:80]] for o in outcomes]
    print(format_table(["algorithm", "via", "rel error", "check", "failure"], rows))
    for name in set(algorithms or []) - {o.algorithm for o in outcomes if o.policy is None}:
        print(f"{name} refused this shape on this device (a size or loop limit; see `convroute conv`)")
    return 1 if any(o.wrong for o in outcomes) else 0

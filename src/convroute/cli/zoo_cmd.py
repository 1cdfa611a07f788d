"""`convroute zoo [MODEL ...]`: the model-zoo view. Each model (torchvision names, timm:NAME with timm
installed; default: the default zoo, `--list` prints it) is built with random weights, compiled, checked
against the model in float64 on the CPU (torch float32's own error beside) and timed beside the peer engines of
`--compare` in interleaved rounds (as `run --compare`). Prints a table per model (compile seconds, relative
error, GPU and CPU ops, convroute's median / p10 / p90 and its GPU pass alone), the CPU ops by name, and a
summary sorted by convroute / the first peer with the geometric mean per peer. A model that fails is a row with
its error. `--json` is rewritten after every model."""

from __future__ import annotations

import json
import os
import sys

from convroute.cli.common import EXTRAS, check_extras, installed
from convroute.cli.run_cmd import known_engine_names
from convroute.measure.reference import TOLERANCES
from convroute.peers import MODEL_ENGINES, NEEDS
from convroute.router import POLICIES

RUNS = 20


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="torchvision model names and timm:NAME (default: the default zoo, see --list)")
    parser.add_argument("--list", action="store_true", help="print the default zoo (family, model, size) and exit")
    parser.add_argument("--size", type=int, default=None,
                        help="input side for every model (default: each model's own: timm's default configuration, "
                             "torchvision 224, inception_v3 299)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--policy", default=None, help="routing policy (default: $CONVROUTE_POLICY or seed)")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCES),
                        help="how values are stored on the GPU (default float32)")
    parser.add_argument("--compare", default="torch-cpu", metavar="ENGINES",
                        help=f"comma-separated peer engines, or 'all': {', '.join(MODEL_ENGINES)}; "
                             "convroute-float16 or convroute-float32: convroute itself in that dtype; "
                             f"convroute-POLICY ({', '.join(POLICIES)}): convroute itself under that policy "
                             "(default torch-cpu)")
    parser.add_argument("--runs", type=int, default=RUNS,
                        help=f"timed rounds per model (default {RUNS}; 0: compile and check only, no peers)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")
    parser.add_argument("--json", metavar="OUT.json", help="write every row as JSON (rewritten after each model)")
    parser.add_argument("--plot", metavar="OUT.png", help="plot convroute / each peer per model (needs matplotlib)")
    parser.add_argument("--from-json", nargs="+", metavar="ZOO.json",
                        help="run nothing: print (and --json, --plot) the zoo saved in these --json files, joined")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if not check_extras({"torch": EXTRAS["torch"]}, "convroute zoo"):
        return 2
    import convroute.frontend  # noqa: F401  (before torchvision and timm, which load triton: see frontend)
    from convroute.frontend import zoo

    if args.list:
        print(list_text(zoo))
        return 0
    if args.from_json:
        return show_saved(args)
    peers = known_engine_names(args.compare)
    if peers is None:
        return 2
    if args.batch < 1 or args.runs < 0 or (args.size is not None and args.size < 1):
        print("error: --batch and --size must be positive, --runs not negative", file=sys.stderr)
        return 2
    if args.plot and not check_extras({"report": ("matplotlib",)}, "--plot"):
        return 2
    for name in peers:
        check_extras(NEEDS.get(name, {}), f"--compare {name}", required=False)
    if args.policy is not None and args.policy not in POLICIES:
        print(f"error: unknown policy {args.policy!r}; known: {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(args.models or zoo.DEFAULT_ZOO.values()))
    try:
        for name in names:  # imports torchvision / timm before the GPU opens
            zoo.check_name(name)
    except zoo.UnknownModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from convroute.bench.zoo import run_zoo

    sizes = {name: args.size or zoo.default_size(name) for name in names}
    report = run_zoo(names, sizes=sizes, batch=args.batch, policy=args.policy, dtype=args.dtype, peers=peers,
                     runs=args.runs, seed=args.seed, progress=not args.no_progress,
                     on_row=lambda report: save(report, args.json))
    return show(report, args)


def save(report, path: str | None) -> None:
    """Write the JSON whole or not at all (a zoo stopped mid-write keeps the last complete file)."""
    if path:
        with open(f"{path}.tmp", "w") as f:
            json.dump(report.to_json(), f, indent=1)
        os.replace(f"{path}.tmp", path)


def show(report, args) -> int:
    """Print the zoo, write --json and --plot; 1 when a model failed or was wrong (over the tolerance and over
    what torch's own error explains: ZooRow.error_mark)."""
    from convroute.bench.zoo import zoo_text

    print(zoo_text(report))
    if args.json:
        save(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from convroute.report.plots import plot_zoo

        plot_zoo(report, args.plot)
        print(f"wrote {args.plot}")
    tolerance = TOLERANCES[report.dtype]
    wrong = [r for r in report.rows if r.error_mark(tolerance) == "!"]
    return 1 if wrong or any(r.error for r in report.rows) else 0


def show_saved(args) -> int:
    from convroute.bench.zoo import report_from_json

    files = []
    for path in args.from_json:
        try:
            with open(path) as f:
                files.append(json.load(f))
        except (OSError, ValueError) as err:
            print(f"error: --from-json {path}: {err}", file=sys.stderr)
            return 2
    return show(report_from_json(files), args)


def list_text(zoo) -> str:
    """The default zoo, one model a line: family, name, default input side."""
    lines = [f"{len(zoo.DEFAULT_ZOO)} models ({len(zoo.TORCHVISION_ZOO)} torchvision, {len(zoo.TIMM_FAMILIES)} timm)"]
    for family, name in zoo.DEFAULT_ZOO.items():
        size = zoo.default_size(name) if not zoo.is_timm(name) or installed("timm") else "?"
        lines.append(f"  {family:20s} {name:28s} {size}")
    return "\n".join(lines)

"""`convroute export-web --model resnet18 --size 64 --out DIR`: a torchvision or timm (timm:NAME) architecture (random
weights, nothing downloaded) as a browser bundle: plan, WGSL, weights, convroute.js and a demo page (index.html;
serve DIR over http and open it in a WebGPU browser). By default the bundle holds a plan for a generic GPU and one
for software adapters (SwiftShader: register tiles, no barriers), and each conv carries the policy's route and the
next candidates, which the page times on its own device and picks from; `--candidates 1` (or an explicit `--policy
... --device FAMILY` with --candidates 1) exports one fixed route. `--compare ort` also writes the model as ONNX and
a bench page running convroute and ONNX Runtime Web side by side; `--run` runs that page headless (convroute
bench-web)."""

from __future__ import annotations

import sys

from convroute.cli.common import EXTRAS, check_extras

PLAN_POLICIES = ("seed", "etvk", "calibrated", "derived")


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="resnet18",
                        help="torchvision classification model name, or timm:NAME with timm installed")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16"),
                        help="plans in the bundle: auto = float32 and float16 (the page runs float16 where the "
                             "adapter has shader-f16), or only the one named")
    parser.add_argument("--policy", default="seed", choices=PLAN_POLICIES,
                        help="the route the export starts from (default seed)")
    parser.add_argument("--device", default="unknown,cpu", metavar="FAMILIES",
                        help="comma-separated families to plan for, each its own plan; the page runs the one for its "
                             "adapter (default unknown,cpu: a generic GPU, and software adapters such as SwiftShader)")
    parser.add_argument("--candidates", default="3",
                        help="algorithms per conv the page times (default 3; 1 = the policy's route, fixed; all)")
    parser.add_argument("--exclude", default="", metavar="ALGOS",
                        help="comma-separated algorithms to leave out (e.g. direct, whose workgroup kernels stall "
                             "SwiftShader's compiler if a GPU plan is forced to run there)")
    parser.add_argument("--weights-budget", default="1.05",
                        help="carry a candidate whose weights need their own layout only while a plan's weights stay "
                             "within this multiple of its fixed route's (default 1.05; none: no bound)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random weights (default 1)")
    parser.add_argument("--compare", default="", choices=("", "ort"),
                        help="ort: also write the model as ONNX and a bench page against ONNX Runtime Web")
    parser.add_argument("--run", action="store_true", help="with --compare: run the bench page headless")
    parser.add_argument("--open", action="store_true",
                        help="then serve the bundle on 127.0.0.1 and open its demo page in your browser")
    parser.add_argument("--out", required=True, help="directory to write")


def run(args) -> int:
    if not check_extras({"torch": EXTRAS["torch"]}, "convroute export-web"):
        return 2
    candidates = args.candidates if args.candidates == "all" else int(args.candidates)
    import torch

    from convroute.frontend import zoo
    from convroute.frontend.web import export_web

    try:
        zoo.check_name(args.model)
    except zoo.UnknownModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = zoo.build_any(args.model, args.seed)
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    exclude = tuple(filter(None, args.exclude.split(",")))
    try:
        budget = None if args.weights_budget == "none" else float(args.weights_budget)
        manifest = export_web(model, (x,), args.out, dtype=args.dtype, policy=args.policy, family=args.device,
                              candidates=candidates, exclude=exclude, weights_budget=budget, name=args.model)
    except ValueError as err:  # NotForBrowser among them
        print(f"error: {args.model}: {err}", file=sys.stderr)
        return 2
    for key, entry in manifest["plans"].items():
        print(f"{key}: {entry['plan']} ({entry['family']}, {entry['dtype']}), {entry['weight_bytes'] / 2**20:.1f} MiB "
              f"of weights, {entry['routed']} convs routed in the page")
    if args.compare:
        from convroute.frontend.web.compare import write_compare

        try:
            write_compare(model, x, args.out)
        except FileNotFoundError as err:  # onnxruntime-web not installed
            print(f"error: --compare ort: {err}", file=sys.stderr)
            return 2
        print(f"bench page: {args.out}/bench.html (ONNX Runtime Web vendored)")
        if args.run:
            from convroute.cli.bench_web_cmd import bench

            return bench(args.out)
    if args.open:
        from convroute.frontend.web.browser import open_demo

        open_demo(args.out)
        return 0
    print(f"wrote {args.out}: serve it (python -m http.server -d {args.out}) and open index.html in a WebGPU "
          f"browser, or export with --open")
    return 0

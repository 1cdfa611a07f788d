"""`convroute run --model resnet18` (or timm:NAME): build a torchvision or timm architecture with random weights
(nothing is downloaded), run it on the GPU through convroute and on torch (CPU, float32), and print the error, the
routing table and the latency of both. `--dtype float16` stores every GPU value as f16 and checks against
the same float32 torch run with the fp16 tolerance (relative error <= 1e-2).

`--compare ENGINES` times peer engines (convroute.peers: ncnn-vk32, ncnn-vk16, ncnn-cpu, torch-cpu, torch-cuda,
torch-cuda-graph; in the storage dtype, ncnn-vk32/vk16 in theirs; convroute-float16 / -float32, convroute in that
dtype; convroute-seed / -etvk / -calibrated / -autotune / -derived, convroute under that policy) beside
convroute, in interleaved rounds (bench.compare_model: each engine timed on its second call in a row, so that
no engine pays for the GPU's switch from another engine's context), and reports median, p10 and p90 per engine
and convroute / each; `--json` writes it.
Without --compare convroute and torch on the CPU (float32) are timed the same way.

Batch norms get random affine parameters and running statistics settled on random images (seeded,
zoo.settle_batch_norms), so that activations keep a trained network's scale: torch's initial identity batch
norms shrink the MobileNets' activations to ~1e-9 and random statistics blow others past float16's range."""

from __future__ import annotations

import io
import json
import sys
import time

from convroute.cli.common import EXTRAS, check_extras
from convroute.measure.reference import TOLERANCES  # the project's bounds: 1e-4 float32, 1e-2 float16
from convroute.peers import MODEL_ENGINES, NEEDS
from convroute.report.table import fit_text
from convroute.router import POLICIES

RUNS, COMPARE_RUNS = 3, 20


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="resnet18", help="torchvision classification or segmentation model name "
                        "(resnet18, resnet50, mobilenet_v2, vgg11, ..., fcn_resnet50, deeplabv3_resnet50, "
                        "lraspp_mobilenet_v3_large, ...), or timm:NAME with timm installed (timm:resnet50d)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--policy", default="seed", help="routing policy (default seed)")
    parser.add_argument("--device", default=None, metavar="FAMILY",
                        help="route as if for this GPU family (mali, adreno, nvidia, ...); runs on the adapter in use")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"timed rounds after >= 3 warm-up rounds and >= 0.5 s (default {RUNS}; {COMPARE_RUNS} "
                             "with --compare)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCES),
                        help="how values are stored on the GPU (default float32; float16 needs shader-f16)")
    parser.add_argument("--accumulate", default=None, choices=list(TOLERANCES),
                        help="type of the multiply-adds' running sums (default: the --dtype; float16: f16 "
                             "arithmetic, blocks of sums added in f32; float32 with --dtype float16: f32 sums)")
    parser.add_argument("--profile", action="store_true", help="also time each node on the GPU")
    parser.add_argument("--compare", default="", metavar="ENGINES",
                        help=f"comma-separated peer engines to time beside convroute, or 'all': "
                             f"{', '.join(MODEL_ENGINES)} (ncnn needs the [peers] extra); convroute-float16 or "
                             f"convroute-float32: convroute itself in that dtype; convroute-POLICY (POLICY one "
                             f"of {', '.join(POLICIES)}): convroute itself under that policy")
    parser.add_argument("--json", metavar="OUT.json", help="write the latencies and ratios as JSON")


def run(args) -> int:
    peers = known_engine_names(args.compare)
    if peers is None:
        return 2
    runs = args.runs if args.runs is not None else COMPARE_RUNS if peers else RUNS
    if args.batch < 1 or args.size < 1 or runs < 1:
        print("error: --batch, --size and --runs must be positive", file=sys.stderr)
        return 2
    if not check_extras({"torch": EXTRAS["torch"]}, "convroute run"):
        return 2
    groups: dict[str, list[str]] = {}  # one line per set of missing packages; the peers are listed unavailable
    for name in peers:
        groups.setdefault(repr(NEEDS.get(name, {})), []).append(name)
    for names in groups.values():
        check_extras(NEEDS.get(names[0], {}), f"--compare {', '.join(names)}", required=False)
    import torch

    import convroute.frontend as frontend  # before torchvision, which loads triton (see frontend)
    from convroute.bench.compare_model import compare_model, comparison_text
    from convroute.frontend.zoo import UnknownModel, build_any, check_name, is_timm
    if args.policy not in POLICIES:
        print(f"error: unknown policy {args.policy!r}; known: {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    try:
        check_name(args.model, segmentation=True)
    except UnknownModel as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    model = build_any(args.model, args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size)
    shape = "x".join(map(str, x.shape))
    print(f"{args.model}: {'timm' if is_timm(args.model) else 'torchvision'} architecture, random weights, "
          "batch-norm statistics settled on random images, eval mode")
    print(f"input {shape}, policy {args.policy}, dtype {args.dtype}"
          + (f", sums in {args.accumulate}" if args.accumulate else ""))
    start = time.perf_counter()
    try:
        program = frontend.compile(model, (x,), policy=args.policy, device=args.device, dtype=args.dtype,
                                   accumulate=args.accumulate)
    except (frontend.CompileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    gpu = program.gpu.profile
    print(f"device: {gpu.name} ({gpu.family}, {gpu.backend}, {gpu.driver})")
    print(f"compiled in {time.perf_counter() - start:.1f} s (torch.export, batch-norm folding, activation fusion, "
          f"buffers and dispatches planned)\n")

    print("routing table:")
    print(fit_text(program.explain(file=io.StringIO())))
    print("\nsummary:")
    print(fit_text(str(program.summary())))

    ours = program(x)
    with torch.no_grad():
        ref = model(x)
    tolerance = TOLERANCES[args.dtype]
    ok = True
    for label, got, want in named_outputs(ours, ref):
        diff = got.double() - want.double()
        max_abs = diff.abs().max().item()
        rel = (diff.norm() / want.double().norm().clamp_min(1e-30)).item()
        ok &= rel <= tolerance
        verdict = "OK" if rel <= tolerance else "FAILED"
        print(fit_text(f"\ncheck{label} against torch (CPU, float32): max abs error {max_abs:.3g}, relative error "
                       f"{rel:.3g} (tolerance {tolerance:g} for {args.dtype}): {verdict}"))

    key = f"{args.model}-{args.size}px-b{args.batch}-seed{args.seed}"
    comparison = compare_model(program, model, x, peers or ["torch-cpu"], name=args.model, key=key, rounds=runs,
                               reference=ref, peer_dtype=None if peers else "float32")
    if peers:
        print()
        print(fit_text(comparison_text(comparison)))
    else:
        latency = {name: e.latency for name, e in comparison.engines.items()}
        print(fit_text(f"latency (median, p10, p90 of {runs} interleaved rounds after >= 0.5 s of warm-up, each "
                       "engine's second call in a row; host to host):"))
        print(f"  convroute on the GPU : {latency['convroute'].text()} ({args.dtype})")
        print(f"  torch on the CPU     : {latency['torch-cpu'].text()} (float32, {torch.get_num_threads()} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(comparison.to_json(), f, indent=1)
        print(f"wrote {args.json}")
    if args.profile:
        print()
        program.profile(x, runs=runs)
    return 0 if ok else 1


def known_engine_names(text: str) -> list[str] | None:
    """engine_names, or None after an error line on stderr naming the unknown ones."""
    peers = engine_names(text)
    from convroute.bench.compare_model import VARIANTS

    unknown = [name for name in peers if name not in MODEL_ENGINES and name not in VARIANTS]
    if unknown:
        known = ", ".join([*MODEL_ENGINES, *VARIANTS])
        print(f"error: --compare {', '.join(unknown)}: unknown engine (known: {known}, all)",
              file=sys.stderr)
        return None
    return peers


def named_outputs(ours, ref) -> list[tuple[str, object, object]]:
    """(label, convroute's tensor, torch's) per output: one unlabelled pair, or one per key of a segmentation
    model's dict ("out", "aux"); a ValueError where the two differ in their outputs."""
    if not isinstance(ref, dict):
        return [("", ours, ref)]
    if not isinstance(ours, dict) or sorted(ours) != sorted(ref):
        raise ValueError(f"convroute gave outputs {sorted(ours) if isinstance(ours, dict) else type(ours).__name__}, "
                         f"torch {sorted(ref)}")
    return [(f" of output {key!r}", ours[key], ref[key]) for key in sorted(ref)]


def engine_names(text: str) -> list[str]:
    """'torch-cpu,ncnn-vk32' / 'all' -> engine names, in order, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return list(MODEL_ENGINES) if names == ["all"] else list(dict.fromkeys(names))

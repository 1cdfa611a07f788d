"""`convroute run --model resnet18`: build a torchvision architecture with random weights (nothing is
downloaded), run it on the GPU through convroute and on torch (CPU, float32), and print the error, the
routing table and the latency of both. `--dtype float16` stores every GPU value as f16 and checks against
the same float32 torch run with the fp16 tolerance (relative error <= 1e-2).

Batch norms get random running statistics and affine parameters (seeded), as a trained network's have:
with torch's initial identity batch norms the MobileNets' activations shrink to ~1e-9, below float16's
range, and no fp16 engine could match them."""

from __future__ import annotations

import statistics
import sys
import time

from convroute.measure.calibration import TOLERANCES  # the project's bounds: 1e-4 float32, 1e-2 float16


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="resnet18", help="torchvision classification model name "
                        "(resnet18, resnet50, mobilenet_v2, mobilenet_v3_small, vgg11, ...)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--policy", default="seed", help="routing policy (default seed)")
    parser.add_argument("--device", default=None, metavar="FAMILY",
                        help="route as if for this GPU family (mali, adreno, nvidia, ...); runs on the adapter in use")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after >= 0.5 s of warm-up (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and input (default 0)")
    parser.add_argument("--dtype", default="float32", choices=list(TOLERANCES),
                        help="how values are stored on the GPU (default float32; float16 needs shader-f16)")
    parser.add_argument("--profile", action="store_true", help="also time each node on the GPU")


def run(args) -> int:
    missing = "error: convroute run needs torch and torchvision: pip install 'convroute[torch]'"
    try:
        import torch
    except ImportError:
        print(missing, file=sys.stderr)
        return 2
    import convroute.frontend as frontend  # before torchvision, which loads triton (see frontend)
    from convroute.router import POLICIES

    try:
        import torchvision
    except ImportError:
        print(missing, file=sys.stderr)
        return 2

    if args.batch < 1 or args.size < 1 or args.runs < 1:
        print("error: --batch, --size and --runs must be positive", file=sys.stderr)
        return 2
    if args.policy not in POLICIES:
        print(f"error: unknown policy {args.policy!r}; known: {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    known = torchvision.models.list_models(module=torchvision.models)
    if args.model not in known:
        print(f"error: unknown model {args.model!r}; torchvision classification models: {', '.join(known)}",
              file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    randomize_batch_norms(model, args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size)
    shape = "x".join(map(str, x.shape))
    print(f"{args.model} (torchvision, random weights and batch-norm statistics, eval mode), input {shape}, "
          f"policy {args.policy}, dtype {args.dtype}")
    start = time.perf_counter()
    try:
        program = frontend.compile(model, (x,), policy=args.policy, device=args.device, dtype=args.dtype)
    except (frontend.ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    gpu = program.gpu.profile
    print(f"device: {gpu.name} ({gpu.family}, {gpu.backend}, {gpu.driver})")
    print(f"compiled in {time.perf_counter() - start:.1f} s (torch.export, batch-norm folding, activation fusion, "
          f"buffers and dispatches planned)\n")

    print("routing table:")
    program.explain()
    print("\nsummary:")
    print(program.summary())

    ours, gpu_times = _timed(lambda: program(x), args.runs)
    with torch.no_grad():
        ref, cpu_times = _timed(lambda: model(x), args.runs)
    diff = (ours.double() - ref.double())
    max_abs = diff.abs().max().item()
    rel = (diff.norm() / ref.double().norm().clamp_min(1e-30)).item()
    tolerance = TOLERANCES[args.dtype]
    ok = rel <= tolerance
    print(f"\ncheck against torch (CPU, float32): max abs error {max_abs:.3g}, relative error {rel:.3g} "
          f"(tolerance {tolerance:g} for {args.dtype}): {'OK' if ok else 'FAILED'}")
    print(f"latency (median of {args.runs} runs after >= 0.5 s of warm-up):")
    print(f"  convroute on the GPU : {_ms(gpu_times)} ({args.dtype})")
    print(f"  torch on the CPU     : {_ms(cpu_times)} ({torch.get_num_threads()} threads)")
    if args.profile:
        print()
        program.profile(x, runs=args.runs)
    return 0 if ok else 1


def randomize_batch_norms(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)


def _timed(fn, runs: int, warmup_s: float = 0.5):
    """Warm up for at least 3 runs and `warmup_s` seconds (a GPU left idle clocks down), then time `runs`."""
    start, count = time.perf_counter(), 0
    while count < 3 or time.perf_counter() - start < warmup_s:
        out = fn()
        count += 1
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def _ms(times) -> str:
    return f"{1e3 * statistics.median(times):.2f} ms"

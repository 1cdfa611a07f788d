"""Each model compiled in float32 and float16 (calibrated, float32 input): the dispatch count of each plan, the
nodes whose algorithm or dispatch count differs between the two, then interleaved rounds of a whole call (host
to host) and of the GPU pass alone, median and p10/p90 per dtype; host work = call - GPU pass.
usage: python dtype_plans.py [SIZE] MODEL...   (SIZE: an int; each model's default size without it)"""

import statistics
import sys
import time

import torch

import convroute.frontend as frontend  # before torchvision and timm
from convroute.frontend import zoo
from convroute.frontend.plan import Segment

args = sys.argv[1:]
size = int(args.pop(0)) if args and args[0].isdigit() else None
DTYPES = ("float32", "float16")


def per_node(program) -> dict[str, tuple[str, int]]:
    rows = {}
    for seg in program.plan.segments:
        if not isinstance(seg, Segment):
            continue
        for step in seg.steps:
            decision = getattr(step.op, "decision", None)
            label = decision.algorithm if decision is not None else str(step.node.target).split(".")[-1]
            rows[step.node.module or step.node.name] = (label, len(step.dispatches))
    return rows


def pct(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"{statistics.median(values) * 1e3:.3f} [{q[0] * 1e3:.3f}, {q[-1] * 1e3:.3f}]"


for name in args:
    model = zoo.build_any(name, 0).eval()
    px = size or zoo.default_size(name)
    x = torch.randn(1, 3, px, px)
    programs = {d: frontend.compile(model, (x,), policy="calibrated", dtype=d) for d in DTYPES}
    for p in programs.values():
        p(x)
    counts = {d: p.plan_dispatches() for d, p in programs.items()}
    print(f"== {name} {tuple(x.shape)}: dispatches fp32 {counts['float32']} fp16 {counts['float16']}", flush=True)
    nodes = {d: per_node(p) for d, p in programs.items()}
    for n in sorted(set(nodes["float32"]) | set(nodes["float16"])):
        a, b = nodes["float32"].get(n, ("-", 0)), nodes["float16"].get(n, ("-", 0))
        if a != b:
            print(f"  {n}: fp32 {a[0]} x{a[1]}  fp16 {b[0]} x{b[1]}")
    walls: dict[str, list[float]] = {d: [] for d in DTYPES}
    passes: dict[str, list[float]] = {d: [] for d in DTYPES}
    for r in range(6):
        for d in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
            p = programs[d]
            p(x)
            for _ in range(10):
                t = time.perf_counter()
                p(x)
                walls[d].append(time.perf_counter() - t)
            passes[d] += p.gpu_pass_times(10) or []
    for d in DTYPES:
        gp = statistics.median(passes[d]) if passes[d] else float("nan")
        host = statistics.median(walls[d]) - gp
        gpu_pass = pct(passes[d]) if passes[d] else "-"
        print(f"  {d}: call {pct(walls[d])} ms  GPU pass {gpu_pass} ms  host {host * 1e3:.3f} ms")
    ratio = statistics.median(walls["float16"]) / statistics.median(walls["float32"])
    print(f"  fp16/fp32 call {ratio:.3f}", flush=True)

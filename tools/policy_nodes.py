"""Two routing policies on one model, node by node, in one process: where does one policy's whole model lose
time to the other's though each of its convs was picked as the faster one?

Each model is compiled under both policies (same weights, same input); every GPU node whose dispatches differ
between the two is timed alone in its own compute pass, the two versions interleaved (measure.timing); then the
whole calls in interleaved rounds and each program's GPU pass alone.

usage: python tools/policy_nodes.py [MODEL ...] [--policies calibrated,seed] [--size N] [--rounds R] [--runs K]
       (torchvision names or timm:NAME; default mobilenet_v2 at 224 px)
"""

from __future__ import annotations

import argparse
import sys

import torch
from flag_ab import alternating, gpu_pass_ms  # tools/ is the script's directory

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.frontend import zoo
from convroute.measure.timing import TimingSettings, time_candidates
from convroute.report.table import format_table


def algorithms(program) -> dict[str, str]:
    return {s.node.name: s.op.decision.algorithm for s in program.plan.gpu_steps
            if s.op is not None and getattr(s.op, "decision", None) is not None}


def differing_nodes(a, b) -> list[tuple[str, str, str]]:
    """(node, algorithm under a, under b) for each conv the two programs run differently."""
    alg_a, alg_b = algorithms(a), algorithms(b)
    return [(n, alg_a[n], alg_b.get(n, "?")) for n in alg_a if alg_a[n] != alg_b.get(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["mobilenet_v2"])
    parser.add_argument("--policies", default="calibrated,seed")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per node")
    args = parser.parse_args(argv)
    first, second = args.policies.split(",")
    for name in args.models:
        zoo.check_name(name)
        model = zoo.build_any(name, 0)
        x = torch.randn(1, 3, args.size, args.size)
        programs = {p: frontend.compile(model, (x,), policy=p) for p in (first, second)}
        for program in programs.values():
            program(x)  # every buffer holds real values before nodes are timed alone
        steps = {p: {s.node.name: s for s in prog.plan.gpu_steps} for p, prog in programs.items()}
        nodes = differing_nodes(programs[first], programs[second])
        settings = TimingSettings(warmup=2, repeats=args.runs, min_repeats=args.runs, budget_s=0.0)
        candidates = {(p, n): [steps[p][n].dispatches] for n, _, _ in nodes for p in programs}
        times = {k: t.median_ms for k, t in time_candidates(programs[first].gpu, candidates, settings).items()} \
            if candidates else {}
        rows = [[n, a, b, f"{times[(first, n)]:.4f}", f"{times[(second, n)]:.4f}",
                 f"{times[(first, n)] / times[(second, n)]:.3f}"] for n, a, b in nodes]
        print(f"== {name}, {args.size} px, {programs[first].gpu.profile.name}: {len(nodes)} convs routed apart, "
              f"each timed alone ({args.runs} runs, interleaved)")
        print(format_table(["node", first, second, f"{first} ms", f"{second} ms", "ratio"], rows))
        summed = [sum(times[(p, n)] for n, _, _ in nodes) for p in (first, second)]
        print(f"sum over those nodes: {first} {summed[0]:.3f} ms, {second} {summed[1]:.3f} ms")
        stats = alternating(programs, x, args.rounds)
        for p, program in programs.items():
            gpu_ms, call = gpu_pass_ms(program, x), stats[p]
            gpu = "" if gpu_ms is None else f", GPU pass {gpu_ms:.3f} ms"
            print(f"{p}: whole call {call.median_ms:.3f} ms (p10 {call.p10_ms:.3f}, p90 {call.p90_ms:.3f}), "
                  f"{program.summary().dispatches} dispatches{gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

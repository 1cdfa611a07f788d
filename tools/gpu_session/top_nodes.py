"""Where a model's GPU pass goes: the model compiled (calibrated), every node timed alone (Program.profile, GPU
timestamps, median of RUNS), the slowest TOP printed with their op, share and conv algorithm and shape, then the
time per op kind.
usage: python top_nodes.py MODEL [SIZE] [RUNS] [TOP]"""

import collections
import sys

import torch

import convroute.frontend as frontend  # before torchvision and timm
from convroute.frontend import zoo
from convroute.measure.clocks import raise_clocks

name = sys.argv[1]
size, runs, top = (int(a) for a in (sys.argv[2:] + ["224", "9", "20"][len(sys.argv) - 2:])[:3])
model = zoo.build_any(name, 0).eval()
x = torch.randn(1, 3, size, size)
program = frontend.compile(model, (x,), policy="calibrated")
raise_clocks(program.gpu)
with open("/dev/null", "w") as sink:
    rows = program.profile(x, runs=runs, file=sink)
steps = {s.node.module or s.node.name: s for s in program.plan.gpu_steps}
total = sum(r["ms"] for r in rows) or 1.0
print(f"{name} {size} px: {len(rows)} nodes, sum {total:.3f} ms, {program.summary().dispatches} dispatches")
for r in sorted(rows, key=lambda r: -r["ms"])[:top]:
    step = steps.get(r["name"])
    decision = getattr(step.op, "decision", None) if step is not None and step.op is not None else None
    shape = tuple(program.plan.metas[step.node.name].shape) if step is not None else ()
    print(f"{r['name']:40s} {r['op']:22s} {r['ms']:.4f} {100 * r['ms'] / total:5.1f}%  "
          f"{decision.algorithm if decision else '-':16s} {shape}")
kinds = collections.Counter()
for r in rows:
    kinds[r["op"]] += r["ms"]
print("by op:", ", ".join(f"{op} {ms:.3f}" for op, ms in kinds.most_common()))

"""One model compiled in float32, float16 and float16 with f32 sums (calibrated): every GPU node timed alone
(Program.profile) in interleaved rounds (the variants' order rotating, the GPU's clocks raised before each
profile), a node's time the median over rounds; then the nodes where float16 loses most, with each one's
algorithm. Session 23/24's single pass per variant read f16+f32 sums 3x slower on every node, pointwise ones
too: the clocks falling between variants is the suspect, which these rounds rule in or out.
usage: python dtype_nodes.py MODEL [SIZE] [ROUNDS]"""

import statistics
import sys

import torch

import convroute.frontend as frontend  # before torchvision and timm
from convroute.frontend import zoo
from convroute.measure.clocks import raise_clocks

name = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
model = zoo.build_any(name, 0).eval()
x = torch.randn(1, 3, size, size)
VARIANTS = {"float32": ("float32", None), "float16": ("float16", None), "f16+f32 sums": ("float16", "float32")}
programs = {label: frontend.compile(model, (x,), policy="calibrated", dtype=dtype, accumulate=accumulate)
            for label, (dtype, accumulate) in VARIANTS.items()}
times: dict[str, dict[str, list[float]]] = {label: {} for label in VARIANTS}
ops: dict[str, str] = {}
labels = list(VARIANTS)
for r in range(rounds):
    for label in labels[r % 3:] + labels[:r % 3]:
        program = programs[label]
        raise_clocks(program.gpu)
        with open("/dev/null", "w") as sink:
            for row in program.profile(x, runs=7, file=sink):
                times[label].setdefault(row["name"], []).append(row["ms"])
                ops[row["name"]] = row["op"]
rows = {label: {n: statistics.median(v) for n, v in t.items()} for label, t in times.items()}
algos = {label: {s.node.module or s.node.name: s.op.decision.algorithm for s in p.plan.gpu_steps
                 if s.op is not None and getattr(s.op, "decision", None) is not None} for label, p in programs.items()}
for label in VARIANTS:
    print(label, "sum of nodes", round(sum(rows[label].values()), 3), "ms (median of", rounds, "rounds)")
both = [n for n in rows["float16"] if all(n in r for r in rows.values())]
both.sort(key=lambda n: rows["float32"][n] - rows["float16"][n])
print("node  op  fp32 ms  fp16 ms  f16+f32 sums ms  fp32 algo  fp16 algo")
for n in both[:25]:
    print(n, ops[n], *(f"{r[n]:.4f}" for r in rows.values()), *(algos[d].get(n, "-") for d in ("float32", "float16")))

"""One model compiled in float32, float16 and float16 with f32 sums (calibrated): every GPU node timed alone
(Program.profile), the nodes where float16 loses most, with each one's algorithm and its time with f32 sums.
usage: python dtype_nodes.py MODEL [SIZE]"""

import sys

import torch

import convroute.frontend as frontend  # before torchvision and timm
from convroute.frontend import zoo

name = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
model = zoo.build_any(name, 0).eval()
x = torch.randn(1, 3, size, size)
VARIANTS = {"float32": ("float32", None), "float16": ("float16", None), "f16+f32 sums": ("float16", "float32")}
rows, algos = {}, {}
for label, (dtype, accumulate) in VARIANTS.items():
    program = frontend.compile(model, (x,), policy="calibrated", dtype=dtype, accumulate=accumulate)
    with open("/dev/null", "w") as sink:
        rows[label] = {r["name"]: r for r in program.profile(x, runs=7, file=sink)}
    algos[label] = {s.node.module or s.node.name: s.op.decision.algorithm for s in program.plan.gpu_steps
                    if s.op is not None and getattr(s.op, "decision", None) is not None}
    print(label, "sum of nodes", round(sum(r["ms"] for r in rows[label].values()), 3), "ms")
both = [n for n in rows["float16"] if all(n in r for r in rows.values())]
both.sort(key=lambda n: rows["float32"][n]["ms"] - rows["float16"][n]["ms"])
print("node  op  fp32 ms  fp16 ms  f16+f32 sums ms  fp32 algo  fp16 algo")
for n in both[:25]:
    print(n, rows["float16"][n]["op"], *(f'{r[n]["ms"]:.4f}' for r in rows.values()),
          algos["float32"].get(n, "-"), algos["float16"].get(n, "-"))

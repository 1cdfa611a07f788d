"""One model compiled in float32 and float16 (calibrated): every GPU node timed alone (Program.profile), the
nodes where float16 loses most, with each one's algorithm.  usage: python dtype_nodes.py MODEL [SIZE]"""

import sys

import torch

import convroute.frontend as frontend  # before torchvision and timm
from convroute.frontend import zoo

name = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
model = zoo.build_any(name, 0).eval()
x = torch.randn(1, 3, size, size)
rows, algos = {}, {}
for dtype in ("float32", "float16"):
    program = frontend.compile(model, (x,), policy="calibrated", dtype=dtype)
    with open("/dev/null", "w") as sink:
        rows[dtype] = {r["name"]: r for r in program.profile(x, runs=7, file=sink)}
    algos[dtype] = {s.node.module or s.node.name: s.op.decision.algorithm for s in program.plan.gpu_steps
                    if s.op is not None and getattr(s.op, "decision", None) is not None}
    print(dtype, "sum of nodes", round(sum(r["ms"] for r in rows[dtype].values()), 3), "ms")
both = [n for n in rows["float16"] if n in rows["float32"]]
both.sort(key=lambda n: rows["float32"][n]["ms"] - rows["float16"][n]["ms"])
print("node  op  fp32 ms  fp16 ms  fp32 algo  fp16 algo")
for n in both[:25]:
    print(n, rows["float16"][n]["op"], f'{rows["float32"][n]["ms"]:.4f}', f'{rows["float16"][n]["ms"]:.4f}',
          algos["float32"].get(n, "-"), algos["float16"].get(n, "-"))

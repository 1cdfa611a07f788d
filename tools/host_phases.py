"""Where a compiled model's call spends its host time, phase by phase (issue 26 item 3).

usage: python tools/host_phases.py MODEL [SIZE] [POLICY] [CALLS] [profile] [float16]   (torchvision name or
       timm:NAME; default 224, seed, 200 calls, float32; with $OUT set, the text goes to
       $OUT/host_phases_<model>.txt too)

Each phase is timed by wrapping the function that does it (perf_counter around the call), over CALLS calls
after a warm-up; the rest of the call is "Python and the rest" (Program.__call__/_run, the output tensor):
- host_array: the input tensor as a numpy array in the stored dtype;
- write_staged: map the upload buffer (premapped), copy the input in, unmap;
- submit: queue.submit of the command buffer encoded during the previous call;
- premap: ask for the upload buffer's next map;
- encode ahead: the next call's command buffer (upload copies, one compute pass of every dispatch, the
  read-back copy), made after the submit while the GPU runs: "record" is the pass's set_pipeline /
  set_bind_group / dispatch loop, "finish" the rest (wgpu's encoder.finish and the copies);
- read-back: the map (waits for the GPU's remainder) and the copy out of the mapping; "map waits" sums the
  read-back's wait and write_staged's (for the map asked for ahead), both counted in their phases already.
The GPU pass alone (timestamps) is printed beside when the adapter has them. Per dispatch: the encoding
divided by the dispatch count. With "profile": a second run of the calls under cProfile, its Python time
(waits and C calls apart) summed by package, with Python calls per call.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
import convroute.frontend.program as program_module
from convroute.device import gpu as gpu_module
from convroute.device import mapping
from convroute.frontend import zoo
from convroute.report.table import format_table

PHASES = {  # label: (owner, attribute)
    "host_array": (program_module, "host_array"),
    "write_staged": (gpu_module.Gpu, "write_staged"),
    "submit": (gpu_module.Gpu, "submit"),
    "premap": (gpu_module.Gpu, "premap"),
    "encode ahead": (gpu_module.Recording, "_encode"),
    "  of which record": (gpu_module.Gpu, "encode"),
    "read-back": (gpu_module.Gpu, "read_staging"),
    "  map waits (inside the two above)": (mapping.Maps, "_wait"),
}
NESTED = {"  of which record", "  map waits (inside the two above)"}


def timed_phases(stack: ExitStack, spent: dict[str, float]) -> None:
    for label, (owner, attribute) in PHASES.items():
        original = getattr(owner, attribute)

        def wrapper(*args, __original=original, __label=label, **kwargs):
            start = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                spent[__label] += time.perf_counter() - start

        stack.enter_context(mock.patch.object(owner, attribute, wrapper))


def python_by_package(program, x, calls: int) -> str:
    """cProfile's own time per function summed by package: convroute, wgpu (wgpu-py), threading and the rest;
    waits (lock acquires) and wgpu-py's C-call proxies apart."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        program(x)
    profiler.disable()
    spent: dict[str, float] = defaultdict(float)
    counted: dict[str, int] = defaultdict(int)
    for (path, _, function), (_, ncalls, own, _, _) in pstats.Stats(profiler).stats.items():
        if "acquire" in function:
            key = "waits (lock acquire)"
        elif function == "proxy_func":
            key = "wgpu-native calls (wgpu-py proxies)"
        elif function == "_record_raw":
            key = "convroute record loop (C API)"
        else:
            key = next((k for k in ("convroute", "wgpu", "threading", "torch") if k in path), "other Python")
        spent[key] += own
        counted[key] += ncalls
    rows = [[key, f"{1e3 * spent[key] / calls:.4f}", f"{counted[key] / calls:.0f}"]
            for key in sorted(spent, key=spent.get, reverse=True)]
    return "under cProfile (its overhead included):\n" + format_table(["own time of", "ms per call", "calls per call"],
                                                                       rows)


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v3_small"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    policy = sys.argv[3] if len(sys.argv) > 3 else "seed"
    calls = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    zoo.check_name(name)
    model = zoo.build_any(name, 0)
    x = torch.randn(1, 3, size, size)
    program = frontend.compile(model, (x,), policy=policy, dtype="float16" if "float16" in sys.argv[5:] else "float32")
    summary = program.summary()
    for _ in range(20):
        program(x)
    spent: dict[str, float] = defaultdict(float)
    totals = []
    with ExitStack() as stack:
        timed_phases(stack, spent)
        for _ in range(calls):
            start = time.perf_counter()
            program(x)
            totals.append(time.perf_counter() - start)
    per_call = {label: 1e3 * spent[label] / calls for label in PHASES}
    total = 1e3 * sum(totals) / calls
    rest = total - sum(v for label, v in per_call.items() if label not in NESTED)
    per_call["  of which finish"] = per_call["encode ahead"] - per_call["  of which record"]
    per_call["Python and the rest"] = rest
    passes = program.gpu_pass_times(20)
    gpu_pass = f"{1e3 * statistics.median(passes):.3f} ms" if passes else "no timestamps"
    rows = [[label, f"{ms:.4f}", f"{100 * ms / total:.1f}%"] for label, ms in per_call.items()]
    rows.append(["whole call (mean)", f"{total:.4f}", "100%"])
    dispatches = summary.dispatches
    text = "\n".join([
        f"{name} at {size} px, policy {policy}, {program.dtype}, {dispatches} dispatches in {summary.submits} "
        f"submit(s), {len(summary.cpu_ops)} CPU ops, on {program.gpu.profile.name}; {calls} calls; "
        f"GPU pass alone {gpu_pass}",
        format_table(["phase (ms per call, mean)", "ms", "share"], rows),
        f"encoding per dispatch: {1e3 * per_call['encode ahead'] / max(dispatches, 1):.2f} us "
        f"(record {1e3 * per_call['  of which record'] / max(dispatches, 1):.2f} us)",
        f"median call {1e3 * statistics.median(totals):.3f} ms (p10 {1e3 * sorted(totals)[calls // 10]:.3f})"])
    if "profile" in sys.argv[5:]:
        text += "\n" + python_by_package(program, x, calls)
    print(text)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / f"host_phases_{name.replace(':', '-')}.txt"
        path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

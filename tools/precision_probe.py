"""Does fp16 pay? One model compiled in fp32, fp16 with f32 sums and fp16 with f16 sums, beside torch's CUDA
graphs in fp32 and fp16, all in one process in interleaved rounds (A B C D E A B C ...).

usage: python tools/precision_probe.py MODEL [POLICY] [RUNS] [BATCH] [GRAPHS]

GRAPHS: the torch CUDA graph dtypes, comma-separated (default float32). On the H100 (torch 2.11+cu130) capturing
both float32 and float16 graphs in one process aborted inside torch (session 5); time torch's fp16 graph with
`convroute run --dtype float16 --compare torch-cuda-graph` instead, or pass float16 alone.

Prints median, p10, p90 per engine, the relative error against torch's float32 CPU output, and each
convroute variant's median over convroute fp32's.
"""

from __future__ import annotations

import sys
import time

import torch

import convroute.frontend as frontend
from convroute.measure.reference import norm_relative_error
from convroute.peers import Unavailable, model_engine, peer_settings, short_precision
from convroute.report.latency import Latency
from convroute.report.table import format_table

VARIANTS = {"convroute fp32": ("float32", None), "convroute fp16": ("float16", None),
            "convroute fp16, f16 sums": ("float16", "float16")}


def main():
    with peer_settings():  # TF32 off, cudnn.benchmark on, as `run --compare` times torch
        probe()


def probe():
    import torchvision  # after convroute.frontend (see frontend/__init__)

    from convroute.frontend.zoo import randomize_batch_norms

    name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    policy = sys.argv[2] if len(sys.argv) > 2 else "calibrated"
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    graphs = sys.argv[5].split(",") if len(sys.argv) > 5 else ["float32"]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    randomize_batch_norms(model, 0)
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        ref = model(x).numpy()
    engines = {}
    for label, (dtype, accumulate) in VARIANTS.items():
        program = frontend.compile(model, (x,), policy=policy, dtype=dtype, accumulate=accumulate)
        engines[label] = lambda program=program: program(x)
    for dtype in graphs:
        try:
            peer = model_engine("torch-cuda-graph", model, x, short_precision(dtype), name)
            engines[f"torch-cuda-graph {dtype}"] = peer.once
        except Unavailable as err:
            print(f"torch-cuda-graph {dtype}: unavailable ({err})")
    errors = {}
    for label, once in engines.items():
        out = once()
        out = out.detach().cpu().float().numpy() if isinstance(out, torch.Tensor) else out
        errors[label] = norm_relative_error(out.reshape(ref.shape), ref)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.5:
        for once in engines.values():
            once()
    times = {label: [] for label in engines}
    for _ in range(runs):
        for label, once in engines.items():
            t = time.perf_counter()
            once()
            times[label].append(time.perf_counter() - t)
    lat = {label: Latency.of(ts) for label, ts in times.items()}
    base = lat["convroute fp32"].median_ms
    rows = [[label, f"{v.median_ms:.3f}", f"{v.p10_ms:.3f}", f"{v.p90_ms:.3f}", f"{errors[label]:.2g}",
             f"{v.median_ms / base:.3f}"] for label, v in lat.items()]
    print(f"{name}, batch {batch}, policy {policy}, {runs} interleaved rounds")
    print(format_table(["engine", "median ms", "p10", "p90", "rel. error", "/ convroute fp32"], rows))


if __name__ == "__main__":
    main()

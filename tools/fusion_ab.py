"""Each planning-time fusion on and off, timed in one process, interleaved: the GPU pass (Program.gpu_pass_times)
and the whole call (host tensor in, host tensor out), median of the rounds, plus dispatches and rel. error.

usage: python tools/fusion_ab.py [--size PX] [--rounds R] [--runs N] [--dtype float32|float16] [--variants V,..]
                                MODEL ...
  MODEL: a torchvision name (mobilenet_v2, googlenet, densenet121) or timm:NAME (timm:mixnet_s,
  timm:ghostnet_100, timm:efficientnet_b0, timm:mobilenetv3_large_100). Writes $OUT/fusion_ab.json when $OUT is
  set. Switches: CONVROUTE_CONCAT_SLABS, CONVROUTE_SLICE_VIEWS, CONVROUTE_CONCAT_BN, CONVROUTE_SQUEEZE_EXCITE,
  CONVROUTE_CHANNEL_ATTENTION;
  "all-off" turns every one off, each other variant turns one off (so each row is that fusion's worth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import convroute

SWITCHES = ("CONVROUTE_CONCAT_SLABS", "CONVROUTE_SLICE_VIEWS", "CONVROUTE_CONCAT_BN", "CONVROUTE_SQUEEZE_EXCITE",
            "CONVROUTE_CHANNEL_ATTENTION")


def make(name: str):
    if name.startswith("timm:"):
        import timm
        return timm.create_model(name[5:], pretrained=False).eval()
    import torchvision
    return torchvision.models.get_model(name, weights=None).eval()


def variants() -> dict[str, dict[str, str]]:
    on = {s: "1" for s in SWITCHES}
    out = {"all-on": on, "all-off": {s: "0" for s in SWITCHES}}
    for s in SWITCHES:
        out[f"no {s.removeprefix('CONVROUTE_').lower()}"] = on | {s: "0"}
    return out


def compiled(model, x, env: dict, dtype: str):
    os.environ.update(env)  # read when the plan is built (at compile)
    return convroute.compile(model, (x,), dtype=dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variants", default="", help="comma-separated subset of: " + ", ".join(variants()))
    args = ap.parse_args()
    chosen = {v: env for v, env in variants().items() if not args.variants or v in args.variants.split(",")}
    rows = []
    for name in args.models:
        model = make(name)
        x = torch.randn(1, 3, args.size, args.size)
        with torch.no_grad():
            ref = model(x)
        programs = {v: compiled(model, x, env, args.dtype) for v, env in chosen.items()}
        calls = {v: [] for v in programs}
        passes = {v: [] for v in programs}
        for _ in range(args.rounds):
            for v, program in programs.items():  # interleaved: each round runs every variant
                program(x)
                for _ in range(args.runs):
                    start = time.perf_counter()
                    program(x)
                    calls[v].append(1e3 * (time.perf_counter() - start))
                times = program.gpu_pass_times(args.runs)
                if times:
                    passes[v] += [1e3 * t for t in times]
        for v, program in programs.items():
            out = program(x)
            row = dict(model=name, variant=v, dispatches=program.summary().dispatches,
                       rel_error=((out.double() - ref.double()).norm() / ref.double().norm()).item(),
                       call_ms=statistics.median(calls[v]),
                       gpu_pass_ms=statistics.median(passes[v]) if passes[v] else None)
            rows.append(row)
            gpu = f"{row['gpu_pass_ms']:.3f}" if row["gpu_pass_ms"] is not None else "-"
            print(f"{name:28s} {v:24s} dispatches {row['dispatches']:4d}  call {row['call_ms']:.3f} ms  "
                  f"GPU pass {gpu} ms  rel.err {row['rel_error']:.1e}", flush=True)
    gpu = next(iter(programs.values())).gpu
    device = gpu.profile.name
    align = gpu.device.limits["min-storage-buffer-offset-alignment"]
    print(f"device: {device}, {args.dtype}, batch 1, {args.size} px, {args.rounds} rounds x {args.runs} runs; "
          f"views need offsets in multiples of {align} bytes")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fusion_ab.json"), "w") as f:
            json.dump(dict(device=device, args=vars(args), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

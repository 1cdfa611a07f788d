"""A compiled model's whole call with its per-call buffer maps through the C API (device/mapping.py, the default
on wgpu-native) against wgpu-py's maps (promises, its poll thread; what convroute did before), in interleaved
rounds in one process.

usage: python tools/maps_ab.py [MODEL ...] [--size N] [--policy P] [--rounds R] [--calls C] [--dtype D]
       (torchvision names or timm:NAME; default mobilenet_v2 resnet18 at 224 px, seed, 150 rounds of 3 calls)

Each round runs both variants in turn (the order alternating), each for one untimed call and C timed ones:
blocks of many calls would each meet one of the device's slow or fast spells (lavapipe's last seconds).
On GPUs both variants spin on the device for the read-back; wgpu-py's then keeps its poll thread asleep
(QuietPoller), as convroute did. Prints median, p10 and p90 of each variant per model, and the ratio of medians.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.device.gpu import QuietPoller
from convroute.frontend import zoo
from convroute.report.latency import Latency
from convroute.report.table import format_table


def variants(gpu):
    """name -> function switching the Gpu to that way of mapping."""
    maps, quiet = gpu._maps, gpu._quiet
    if maps is None:
        raise SystemExit("this WebGPU implementation has no C API maps: nothing to compare")
    wgpu_py_quiet = quiet or (QuietPoller.install(gpu.device) if gpu._spins else None)

    def settle_all(buffers):  # the other way's maps asked for ahead: done and undone before switching
        for buffer in list(buffers):
            gpu.settle_map(buffer)

    def c_api():
        settle_all(gpu._premaps)
        gpu._maps, gpu._quiet = maps, quiet

    def wgpu_py():
        settle_all(maps._pending)
        gpu._maps, gpu._quiet = None, wgpu_py_quiet

    return {"C API maps": c_api, "wgpu-py maps": wgpu_py}


def add_model_arguments(parser: argparse.ArgumentParser, models: list[str], rounds: int) -> None:
    """The arguments of an A/B over models (also tools/flag_ab.py's)."""
    parser.add_argument("models", nargs="*", default=models)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--policy", default="seed")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--dtype", default="float32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, ["mobilenet_v2", "resnet18"], rounds=150)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        zoo.check_name(name)
        x = torch.randn(1, 3, args.size, args.size)
        program = frontend.compile(zoo.build_any(name, 0), (x,), policy=args.policy, dtype=args.dtype)
        switch = variants(program.gpu)
        times = {v: [] for v in switch}
        for i in range(args.rounds):
            for variant in (list(switch) if i % 2 else list(switch)[::-1]):
                switch[variant]()
                program(x)  # the other variant's maps asked for ahead are settled
                for _ in range(args.calls):
                    start = time.perf_counter()
                    program(x)
                    times[variant].append(time.perf_counter() - start)
        switch["C API maps"]()
        stats = {v: Latency.of(t) for v, t in times.items()}
        c_api, wgpu_py = stats["C API maps"], stats["wgpu-py maps"]
        rows.append([name, f"{c_api.median_ms:.3f} ({c_api.p10_ms:.3f}-{c_api.p90_ms:.3f})",
                     f"{wgpu_py.median_ms:.3f} ({wgpu_py.p10_ms:.3f}-{wgpu_py.p90_ms:.3f})",
                     f"{c_api.median_ms / wgpu_py.median_ms:.3f}"])
        print(f"{name}: {program.summary().dispatches} dispatches", file=sys.stderr, flush=True)
    print(f"{program.gpu.profile.name}, {args.size} px, policy {args.policy}, {args.dtype}, {args.rounds} rounds "
          f"of {args.calls} calls per variant; whole call ms, median (p10-p90)")
    print(format_table(["model", "C API maps", "wgpu-py maps", "C API / wgpu-py"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

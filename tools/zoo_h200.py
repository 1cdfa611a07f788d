"""The default zoo (`convroute zoo --list`) at full size against PyTorch's CUDA graph, within one device command.

usage: python tools/zoo_h200.py [--policy calibrated] [--compare torch-cuda-graph] [--runs 30] [--budget 570]
                                [--parts timm,torchvision] [--dtype float32] [--no-calibrate] [--size N]

1. With --policy calibrated (the default) and without --no-calibrate: `convroute calibrate --selftest-cases 0`
   with at most a third of the budget (about 90 s on an H100).
2. Each part of the default zoo (torchvision's 18 models, then timm's 20) runs as `convroute zoo` in a process of
   its own, with its share of what is left of the budget; its JSON ($OUT/zoo_<part>.json) is rewritten after
   every model, so a part cut short still reports the models it finished.
3. The parts joined (`convroute zoo --from-json`): the table, $OUT/zoo.json and $OUT/zoo.png.
Expect 5-10 s per model (export, planning, torch's CUDA-graph capture with cudnn.benchmark, 30 rounds): about
6 minutes for the 38, calibration included. Writes to $OUT (else ./zoo_out).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

PARTS = ("torchvision", "timm")


def part_models(part: str) -> list[str]:
    from convroute.frontend import zoo  # no GPU opened here: the parts' processes open it

    return [name for name in zoo.DEFAULT_ZOO.values() if zoo.is_timm(name) == (part == "timm")]


def convroute(args: list[str], timeout: float) -> int:
    """`convroute ARGS` in a process of its own; killed after `timeout` seconds (what it wrote stays)."""
    command = [sys.executable, "-m", "convroute.cli.main", *args]
    print("$ convroute " + " ".join(args), flush=True)
    try:
        return subprocess.run(command, timeout=max(timeout, 1.0)).returncode
    except subprocess.TimeoutExpired:
        print(f"(stopped after {timeout:.0f} s, the budget's end)", flush=True)
        return 124


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="calibrated")
    parser.add_argument("--compare", default="torch-cuda-graph")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for everything (default 570)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--no-calibrate", action="store_true", help="use the calibration already saved")
    parser.add_argument("--size", type=int, help="input side for every model (default: each model's own)")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or "zoo_out")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    if args.policy == "calibrated" and not args.no_calibrate:
        convroute(["calibrate", "--no-progress", "--selftest-cases", "0", "--budget", f"{args.budget / 3:.0f}",
                   "--dtype", args.dtype], left())
        print(f"calibrated in {time.perf_counter() - start:.0f} s", flush=True)
    saved, parts = [], args.parts.split(",")
    for i, part in enumerate(parts):
        path = out / f"zoo_{part}.json"
        began, models = time.perf_counter(), part_models(part)
        share = (left() - 15) / (len(parts) - i)  # what an earlier part left unused goes to the later ones
        convroute(["zoo", *models, "--policy", args.policy, "--compare", args.compare, "--runs",
                   str(args.runs), "--dtype", args.dtype, "--json", str(path), "--no-progress",
                   *(["--size", str(args.size)] if args.size else [])], share)
        print(f"part {part}: {time.perf_counter() - began:.0f} s", flush=True)
        if path.exists():
            saved.append(str(path))
    if not saved:
        print("no part finished a model", file=sys.stderr)
        return 1
    print(f"\nall parts joined ({time.perf_counter() - start:.0f} s in all):", flush=True)
    from convroute.cli.main import main as cli

    return cli(["zoo", "--from-json", *saved, "--json", str(out / "zoo.json"), "--plot", str(out / "zoo.png")])


if __name__ == "__main__":
    sys.exit(main())

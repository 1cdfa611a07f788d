"""direct on dilated convs: the whole-window staging (CONVROUTE_DIRECT_PHASES=0), the taps' lattice and segments
with contiguous blocks ("segments"), phases along the rows only ("rowphases") and the shipped choice of phases
("phases", kernels/direct.py), against implicit_gemm, in one process, timed interleaved (measure.timing).

    python tools/direct_dilated_bench.py [--budget 0.5] [--dtype float32] [--shrink 1]

The layers are issue 24's dilated 3x3 convs of DeepLabV3 and FCN at 32x32 (batch 1) plus two undilated
controls. Each kernel is checked against the float64 host reference first (a wrong one is reported, not timed).
Prints a table; writes $OUT/direct_dilated.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch  # noqa: F401  (before the GPU opens: LLVM clash on lavapipe)

from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS, direct
from convroute.kernels.common import Precision
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import make_params

LAYERS = {  # name: (C_in, C_out, size, dilation)
    "deeplabv3 ASPP d24": (2048, 256, 32, 24),
    "fcn/deeplabv3 layer4.1.conv2 d4": (512, 512, 32, 4),
    "deeplabv3 layer4.0.conv2 d2": (512, 512, 32, 2),
    "control d1 512@32": (512, 512, 32, 1),
    "control d1 64@56": (64, 64, 56, 1),
}


STAGINGS = {  # label: (direct.SPARSE, direct.PHASED)
    "whole": (False, (False, False)),  # CONVROUTE_DIRECT_PHASES=0: the whole window
    "segments": (True, (False, False)),  # contiguous blocks, the taps' lattice and segments only
    "rowphases": (True, (True, False)),  # phases along the rows only: columns contiguous (coalesced stores)
    "phases": (True, (True, True)),  # the shipped choice
}


def direct_kernel(work: Workload, staging: str):
    """direct built with a staging (its plan is chosen once, at construction); None with no plan."""
    saved = direct.SPARSE, direct.PHASED
    direct.SPARSE, direct.PHASED = STAGINGS[staging]
    try:
        kernel = work.kernel(direct.Direct)
        return kernel, str(kernel.plan(work.p.n))
    except ValueError as e:
        return None, f"no plan: {e}"
    finally:
        direct.SPARSE, direct.PHASED = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5, help="timing budget per kernel and layer, s")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--shrink", type=int, default=1, help="divide the channel counts (a quick run on lavapipe)")
    args = parser.parse_args()
    gpu = get_gpu()
    precision = Precision.parse(args.dtype)
    settings = TimingSettings(budget_s=args.budget)
    start = time.perf_counter()
    rows = []
    print(f"device: {gpu.profile.name}, {args.dtype}, workgroup memory {gpu.profile.max_workgroup_storage} B")
    print(f"{'layer':34} {'whole ms':>9} {'segs ms':>9} {'rowph ms':>9} {'phases ms':>9} {'igemm ms':>9} "
          f"{'old/new':>7} {'new/igemm':>9}  plans")
    for name, (c_in, c_out, size, d) in LAYERS.items():
        c_in, c_out = max(1, c_in // args.shrink), max(1, c_out // args.shrink)
        p = make_params((1, c_in, size, size), (c_out, c_in, 3, 3), 1, d, d)
        work = Workload(gpu, p, seed=11, precision=precision)
        kernels, plans, wrong = {}, {}, {}
        for label in STAGINGS:
            kernel, plans[label] = direct_kernel(work, label)
            if kernel is not None:
                kernels[label] = kernel
        if ALGORITHMS["implicit_gemm"].unsupported(p) is None:
            kernels["implicit_gemm"] = work.kernel(ALGORITHMS["implicit_gemm"])
        tolerance = 1e-4 if args.dtype == "float32" else 1e-2
        for label, kernel in list(kernels.items()):
            error = work.error(kernel)
            if not error < tolerance:
                wrong[label] = error
                del kernels[label]
        times = {k: t.median_ms for k, t in work.time_all(kernels, settings).items()}
        work.release()
        old, segments, rowphases, new, gemm = (times.get(k) for k in (*STAGINGS, "implicit_gemm"))

        def ms(v):
            return f"{v:9.3f}" if v is not None else f"{'-':>9}"

        def ratio(a, b):
            return f"{a / b:.2f}" if a is not None and b is not None else "-"

        print(f"{name:34} {ms(old)} {ms(segments)} {ms(rowphases)} {ms(new)} {ms(gemm)} {ratio(old, new):>7} "
              f"{ratio(new, gemm):>9}  "
              + " | ".join(f"{k} {v}" for k, v in plans.items()))
        for label, error in wrong.items():
            print(f"   WRONG {label}: relative error {error:.3g}")
        rows.append(dict(layer=name, params=p.describe(), times_ms=times, plans=plans,
                         wrong={k: float(v) for k, v in wrong.items()}))
    print(f"({time.perf_counter() - start:.1f} s)")
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "direct_dilated.json")
        with open(path, "w") as f:
            json.dump(dict(device=gpu.profile.name, dtype=args.dtype, layers=rows), f, indent=1)
        print("wrote", path)


if __name__ == "__main__":
    main()

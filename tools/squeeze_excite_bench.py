"""Squeeze-excitation blocks alone, in their one-dispatch form (`SqueezeExcite`; also with 4x the scale work a
workgroup, so that fewer workgroups repeat the W1 matvec) and their two-pass form (`TwoPassSqueezeExcite`), on
the blocks of real models: each model compiled (seed routing), its SE blocks' shapes and weights taken as the
plan builds them, the forms timed by GPU timestamps in interleaved rounds over random inputs. Prints per block C,
Cr, H*W, C*Cr, the workgroups of each one-dispatch form, the median (p10-p90) of each form and the one-dispatch
forms' ratios to the two-pass one: where does the one-dispatch form start to lose, and does a coarser grid help?

usage: python tools/squeeze_excite_bench.py [MODEL ...] [--size N] [--rounds R] [--dtype D]
       (default: the five SE models of session 26's A/B at 224 px, 30 rounds)
"""

from __future__ import annotations

import argparse
from unittest import mock

import numpy as np
import torch

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.device.gpu import get_gpu
from convroute.frontend import fuse, zoo
from convroute.kernels.common import DTYPES, Precision
from convroute.kernels.squeeze_excite import (
    ELEMENTS_PER_GROUP,
    SqueezeExcite,
    TwoPassSqueezeExcite,
    make_squeeze_excite,
)
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times
from convroute.report.table import format_table

MODELS = ["efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "timm:efficientnet_b0",
          "timm:mobilenetv3_large_100"]
REPS = 20  # passes of one form per round


def blocks_of(name: str, size: int) -> list[tuple]:
    """(shape, w1, b1, act1, w2, b2, act2, act) of each squeeze-excitation block the model's plan builds, as
    `make_squeeze_excite` received them while the model compiled."""
    found = []

    def record(gpu, shape, w1, b1, act1, w2, b2, act2, act=None, precision=None, two_pass=None):
        found.append((shape, w1, b1, act1, w2, b2, act2, act))
        return make_squeeze_excite(gpu, shape, w1, b1, act1, w2, b2, act2, act, precision, two_pass)

    model = zoo.build_any(name, 0).eval()
    with mock.patch.object(fuse, "make_squeeze_excite", record):
        frontend.compile(model, (torch.randn(1, 3, size, size),), policy="seed")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    precision = Precision.parse(args.dtype)
    gpu = get_gpu()
    print(f"{gpu.profile.name}; {args.dtype}; {args.rounds} rounds of {REPS} passes a form, GPU timestamps")
    seen, rows = set(), []
    for name in args.models:
        for shape, w1, b1, act1, w2, b2, act2, act in blocks_of(name, args.size):
            c, cr, hw = shape[1], w1.shape[0], int(np.prod(shape[2:]))
            if (shape, cr) in seen:
                continue
            seen.add((shape, cr))
            forms = {"one": SqueezeExcite(gpu, shape, w1, b1, act1, w2, b2, act2, act, precision),
                     "one, 4x": SqueezeExcite(gpu, shape, w1, b1, act1, w2, b2, act2, act, precision,
                                              4 * ELEMENTS_PER_GROUP),
                     "two": TwoPassSqueezeExcite(gpu, shape, w1, b1, act1, w2, b2, act2, act, precision)}
            rng = np.random.default_rng(0)
            x = gpu.upload(rng.standard_normal(int(np.prod(shape))).astype(precision.numpy))
            pooled = gpu.upload(rng.standard_normal(shape[0] * c).astype(precision.numpy))
            y = gpu.empty(precision.itemsize * int(np.prod(shape)))
            passes = {label: kernel.bind(x, pooled, y) for label, kernel in forms.items()}
            times: dict[str, list[float]] = {label: [] for label in passes}
            for r in range(args.rounds):
                raise_clocks(gpu)
                order = list(passes)[r % 3:] + list(passes)[:r % 3]
                for label in order:
                    times[label].append(float(np.median(pass_times(gpu, [passes[label]] * REPS))))
            spread = [f"{np.median(t) * 1e3:.1f} ({np.percentile(t, 10) * 1e3:.1f}-{np.percentile(t, 90) * 1e3:.1f})"
                      for t in times.values()]
            two = np.median(times["two"])
            rows.append([name, c, cr, hw, c * cr, forms["one"].blocks, forms["one, 4x"].blocks, *spread,
                         f"{np.median(times['one']) / two:.3f}", f"{np.median(times['one, 4x']) / two:.3f}"])
            print(*rows[-1], sep="  ", flush=True)
    rows.sort(key=lambda row: row[4])
    head = ["model", "C", "Cr", "HW", "C*Cr", "groups", "4x groups", "one dispatch us", "one, 4x elements us",
            "two passes us", "one / two", "one 4x / two"]
    print(format_table(head, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which convs of a model send Winograd tiles to its exact non-finite fallback? (NOTES, session 21.)

Every 3x3 stride-1 conv of one (C_in, H, C_out) shape group at a time is forced to winograd2, with the fallback
made to return NaN; a NaN in the model's output means that group's in-model data overflowed the transforms.

usage: python tools/winograd_fallback.py MODEL [SIZE] [DTYPE]   (torchvision name or timm:NAME; 224, float16)
"""

from __future__ import annotations

import sys

import torch

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.frontend import lower, zoo
from convroute.kernels import ALGORITHMS, winograd
from convroute.router import Decision


def main() -> int:
    name = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    dtype = sys.argv[3] if len(sys.argv) > 3 else "float16"
    winograd.OUTPUT_HELPERS = winograd.OUTPUT_HELPERS.replace(
        "var s = bias[o];", "return bitcast<f32>(0x7fc00000u);\n  var s = bias[o];")
    routed, groups, target = lower.route_params, [], [None]

    def forced(p, profile, policy, dtype="float32"):
        if ALGORITHMS["winograd2"].unsupported(p) is None:
            key = (p.c_in, p.h, p.c_out)
            if key not in groups:
                groups.append(key)
            if key == target[0]:
                return Decision("winograd2", "forced", "forced", profile.family, dtype)
        return routed(p, profile, policy, dtype=dtype)
    lower.route_params = forced
    model = zoo.build_any(name, 0).eval()
    x = torch.randn(1, 3, size, size)
    frontend.compile(model, (x,), policy="seed", dtype=dtype)  # lists the groups
    for key in list(groups):
        target[0] = key
        y = frontend.compile(model, (x,), policy="seed", dtype=dtype)(x)
        print(f"C_in {key[0]}, {key[1]} px, C_out {key[2]}: NaN share of the output "
              f"{torch.isnan(y).float().mean().item():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

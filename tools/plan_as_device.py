"""A model's plan built here (lavapipe) as another device would build it, from that device's calibration and
autotune files: its dispatches per conv algorithm, without the device. The kernels take the stored profile's
forms (GEMM style, launch plans, limits); close calls are read from the autotune file, never measured here (a
conv the device never measured stops the script). Checked against the H100 in session 29: regnet_y_400mf 111
and lcnet_050 36 dispatches in fp32, as its zoo JSON recorded.

usage: CONVROUTE_CACHE_DIR=DIR python tools/plan_as_device.py DTYPE MODEL [MODEL ...]
       (DIR holds exactly one device's calibration-*.json and autotune files, e.g. a GPU call's .gpucache)
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter

import torch

import convroute.frontend as frontend  # before torchvision and timm
import convroute.router.calibrated as calibrated
from convroute.calibration.profile import stored_profile
from convroute.device.gpu import get_gpu
from convroute.frontend import zoo
from convroute.router.measured import AutotuneCache


def stored_only(p, device, ranked, allowed, precision):
    entry = AutotuneCache(device.key, precision.dtype).get(p)
    if entry is None:
        raise SystemExit(f"{device.name} never measured {p}: run the model there first")
    return entry, "measured before"


def main(dtype: str, names: list[str]) -> None:
    files = glob.glob(os.path.join(os.environ["CONVROUTE_CACHE_DIR"], "calibration-*.json"))
    devices = {json.dumps(json.load(open(f))["device"], sort_keys=True) for f in files}
    if len(devices) != 1:
        raise SystemExit(f"CONVROUTE_CACHE_DIR must hold one device's calibrations, found {len(devices)}")
    get_gpu().profile = stored_profile(json.loads(devices.pop()))
    calibrated.measure_top = stored_only
    for name in names:
        px = zoo.default_size(name)
        x = torch.randn(1, 3, px, px)
        program = frontend.compile(zoo.build_any(name, 0).eval(), (x,), policy="calibrated", dtype=dtype)
        convs = Counter((s.op.decision.algorithm, len(s.dispatches)) for s in program.plan.gpu_steps
                        if getattr(s.op, "decision", None) is not None)
        per_algorithm = ", ".join(f"{a} x{n}: {count}" for (a, n), count in sorted(convs.items()))
        print(f"{name} {dtype}: {program.plan_dispatches()} dispatches; convs by (algorithm, dispatches): "
              f"{per_algorithm}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

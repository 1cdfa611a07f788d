"""Browser bundles checked natively on this machine's adapter (frontend/web/replay.py): each model exported
with every applicable candidate, then every plan of the bundle run with each candidate index against torch.
For the GPU session: browser plans have run only in Chromium's SwiftShader and on lavapipe.

usage: python tools/replay_bundles.py [--models resnet18,mobilenet_v2,timm:NAME] [--size 224] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from convroute.device.gpu import get_gpu
from convroute.frontend import zoo
from convroute.frontend.web import export_web
from convroute.frontend.web.replay import candidate_routes, plan_document, replay
from convroute.measure.reference import max_relative_error

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}


def check(name: str, size: int, out: Path) -> tuple[int, int]:
    model = zoo.build_any(name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    want = model(x).detach()
    manifest = export_web(model, (x,), out / name, candidates="all", weights_budget=None)
    features = set(get_gpu().device.features)
    runs = wrong = 0
    for key, entry in manifest["plans"].items():
        needs = plan_document(out / name, key)["features"]
        if not set(needs) <= features:
            print(f"{name} {key}: skipped (needs {needs})")
            continue
        for k, route in enumerate(candidate_routes(out / name, key)):
            err = max_relative_error(torch.from_numpy(replay(out / name, x.numpy(), plan=key, route=route)), want)
            bad = not err < TOLERANCE[entry["dtype"]]
            runs, wrong = runs + 1, wrong + bad
            print(f"{name} {key} candidate #{k}: rel. err {err:.2e}{'  WRONG' if bad else ''}", flush=True)
    return runs, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default=None, help="where the bundles go (default: a temporary directory)")
    args = parser.parse_args()
    print(f"adapter: {get_gpu().profile.name}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        totals = [check(name, args.size, out) for name in args.models.split(",")]
    print(f"{sum(r for r, _ in totals)} plan runs, {sum(w for _, w in totals)} wrong")


if __name__ == "__main__":
    main()

"""Routing of the dilated convs of DeepLabV3 and FCN (issue 24) under `calibrated`: the calibration's coverage,
its cost model (with and without the window/patch features) and online refinement, against every algorithm's
measured time on this device.

1. `convroute calibrate` on the full grid + coverage pool (active sampling) unless --reuse finds this device's
   calibration; prints the grid's shapes, base and pool, and the leave-one-out check with the model's features
   as they are and without window_spread / window_outside / plan_patch (the same samples, this process).
2. Every dilated conv of deeplabv3_resnet50 and fcn_resnet50 at --size (torchvision, random weights), plus the
   issue's four layers: each algorithm timed (bench's measure_layer, correctness checked); the pure prediction
   (refine off) and its regret; the refined route (a fresh autotune file) and its regret, with the reason; a
   second routing, which must say "measured before" and time nothing; whether the conv was outside the
   calibration and why.
Results go to $OUT/dilated_routing.json when OUT is set. usage: python tools/dilated_routing.py [--reuse]
[--size 256] [--budget 400] [--grid full] [--max-layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from collections import defaultdict

from convroute.bench.suite import SETTINGS as BENCH_SETTINGS
from convroute.bench.suite import LayerResult, measure_layer
from convroute.calibration import model as model_mod
from convroute.calibration.profile import load_calibration, save_calibration
from convroute.calibration.run import run_calibration
from convroute.device.gpu import get_gpu
from convroute.params import make_params
from convroute.router import autotune as autotune_mod
from convroute.router import refine as refine_mod
from convroute.router import route_params

ISSUE_LAYERS = [("aspp 2048->256 d24", 2048, 256, 24), ("layer4 512->512 d4", 512, 512, 4),
                ("layer4 512->512 d2", 512, 512, 2)]


def dilated_convs(size: int) -> list[tuple[str, object]]:
    """(name, ConvParams) of every conv with dilation > 1 in deeplabv3_resnet50 and fcn_resnet50 at size x size."""
    import torch
    from torchvision.models import segmentation

    found = {}
    for arch in ("deeplabv3_resnet50", "fcn_resnet50"):
        model = getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=21).eval()
        hooks = []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d) and max(m.dilation) > 1:
                def hook(mod, inputs, _out, name=f"{arch}.{name}"):
                    x = inputs[0]
                    found.setdefault(make_params(tuple(x.shape), tuple(mod.weight.shape), mod.stride, mod.padding,
                                                 mod.dilation, mod.groups), name)
                hooks.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
        for h in hooks:
            h.remove()
    return [(name, p) for p, name in found.items()]


def loo_without_new_features(cal) -> dict:
    real_window, real_direct = model_mod.window_features, model_mod.direct_plan
    model_mod.window_features = lambda p: {}
    model_mod.direct_plan = lambda profile, p: {k: v for k, v in real_direct(profile, p).items() if k != "plan_patch"}
    try:
        return model_mod.loo_report(cal.samples, cal.excluded, cal.profile, cal.dtype)
    finally:
        model_mod.window_features, model_mod.direct_plan = real_window, real_direct


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reuse", action="store_true", help="use this device's saved calibration if there is one")
    ap.add_argument("--size", type=int, default=256, help="input size of the segmentation models (256: 32x32 maps)")
    ap.add_argument("--budget", type=float, default=400.0, help="calibration budget, s (the device call is 600 s)")
    ap.add_argument("--grid", default="full", help="the grid to calibrate on (tiny: a smoke run)")
    ap.add_argument("--max-layers", type=int, default=None, help="only the first N layers (a smoke run)")
    args = ap.parse_args()
    layers = dilated_convs(args.size)  # torchvision before the GPU opens (LLVM load order)
    layers += [(name, make_params((1, ci, 32, 32), (co, ci, 3, 3), 1, d, d)) for name, ci, co, d in ISSUE_LAYERS]
    layers = layers[:args.max_layers]
    gpu = get_gpu()
    print(f"device: {gpu.profile.name} ({gpu.profile.driver}, {gpu.profile.backend})")
    cal = load_calibration(gpu.profile) if args.reuse else None
    if cal is None:
        start = time.perf_counter()
        cal = run_calibration(gpu, args.grid, budget_s=args.budget, progress=False)
        save_calibration(cal)
        print(f"calibrated in {time.perf_counter() - start:.0f} s")
    pool = sum(max(s.params.dilation) > 1 for s in cal.samples)
    print(f"calibration: {len(cal.samples)} shapes ({pool} dilated), complete {cal.complete}, {cal.seconds} s")
    result = {"device": gpu.profile.name, "calibration_shapes": len(cal.samples), "calibration_s": cal.seconds,
              "loo": model_mod.loo_report(cal.samples, cal.excluded, cal.profile, cal.dtype),
              "loo_without_new_features": loo_without_new_features(cal), "layers": []}
    for key in ("loo", "loo_without_new_features"):
        loo = result[key]
        print(f"{key}: fastest on {100 * loo['accuracy']:.0f}%, grid time over the fastest "
              f"{100 * loo['total_regret']:.2f}%, worst {100 * loo['worst_regret']:.0f}% ({loo['worst_shape']})")
    os.environ["CONVROUTE_CACHE_DIR"] = tempfile.mkdtemp(prefix="convroute-refine-")  # a fresh autotune file
    save_calibration(cal)
    calls = []
    real_tune = refine_mod.tune
    refine_mod.tune = lambda g, p, *a, **k: calls.append(p) or real_tune(g, p, *a, **k)
    totals = {"oracle": 0.0, "predicted": 0.0, "refined": 0.0}
    for name, p in layers:
        layer = LayerResult(name, 1, p)
        measure_layer(gpu, layer, BENCH_SETTINGS, True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pure = route_params(p, gpu.profile, "calibrated", refine=False)
            before = len(calls)
            refined = route_params(p, gpu.profile, "calibrated")
            timed = len(calls) - before
            autotune_mod.AutotuneCache._memory.clear()  # the next routing reads the file, as a new process would
            again = route_params(p, gpu.profile, "calibrated")
        verdict = cal.coverage.verdict(p)
        best, ms = layer.oracle_ms, defaultdict(lambda: float("nan"), layer.times_ms).__getitem__
        row = {"name": name, "conv": p.describe(), "times_ms": layer.times_ms, "oracle": layer.oracle,
               "outside": not verdict.covered, "why": verdict.why(),
               "predicted": pure.algorithm, "predicted_regret": ms(pure.algorithm) / best,
               "refined": refined.algorithm, "refined_regret": ms(refined.algorithm) / best,
               "timed_now": timed, "reason": refined.reason, "second_reason": again.reason,
               "second_timed": len(calls) - before - timed}
        result["layers"].append(row)
        totals["oracle"] += best
        totals["predicted"] += ms(pure.algorithm)
        totals["refined"] += ms(refined.algorithm)
        times = ", ".join(f"{n} {t:.3f}" for n, t in sorted(layer.times_ms.items(), key=lambda kv: kv[1]))
        print(f"\n{name}: {p.describe()}\n  measured ms: {times}\n  outside: {row['outside']} ({row['why']})\n"
              f"  predicted {pure.algorithm} ({row['predicted_regret']:.2f}x oracle); refined {refined.algorithm} "
              f"({row['refined_regret']:.2f}x), timed {timed} candidate set(s) now, "
              f"second routing timed {row['second_timed']}\n  reason: {refined.reason}\n  again: {again.reason}")
    result["totals_ms"] = totals
    print(f"\ntotal over {len(layers)} dilated layers, x oracle: predicted "
          f"{totals['predicted'] / totals['oracle']:.3f}, refined {totals['refined'] / totals['oracle']:.3f}; "
          f"worst predicted "
          f"{max(r['predicted_regret'] for r in result['layers']):.2f}x, worst refined "
          f"{max(r['refined_regret'] for r in result['layers']):.2f}x")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "dilated_routing.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

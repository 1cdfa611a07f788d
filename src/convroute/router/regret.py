"""Score routing policies offline on measured suites (`convroute bench --json` reports): per suite, each
policy's total time (its choice's measured time per layer, times the layer's count) over the oracle's.

An algorithm a layer did not measure (it failed there, or gave a wrong result) counts as excluded on that
device, so every policy routes around it as it would at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from convroute.calibration.profile import Calibration, load_calibration
from convroute.params import ConvParams, params_from_dict
from convroute.router.calibrated import refined_route
from convroute.router.derive import profile_from_record, shape_key
from convroute.router.etvk import etvk_route
from convroute.router.exclusions import applicable, avoid_blocked
from convroute.router.rule import Rule
from convroute.router.seed import seed_route

SCORED = ("seed", "etvk", "derived-im2col", "derived", "calibrated")


@dataclass
class BenchLayer:
    name: str
    count: int
    params: ConvParams
    times_ms: dict[str, float]


@dataclass
class BenchSuite:
    name: str
    device: dict
    layers: list[BenchLayer]
    source: str = ""


def read_bench(path) -> list[BenchSuite]:
    """The suites of one `convroute bench --json` file (one suite, or {"suites": [...]})."""
    data = json.loads(Path(path).read_text())
    return [bench_from_json(item, str(path)) for item in data.get("suites", [data])]


def bench_from_json(data: dict, source: str = "") -> BenchSuite:
    try:
        layers = [BenchLayer(str(item["name"]), int(item["count"]), params_from_dict(item["params"]),
                             {str(k): float(v) for k, v in item["times_ms"].items()}) for item in data["layers"]]
        return BenchSuite(str(data["suite"]), dict(data["device"]), layers, source)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source or 'bench report'}: not a `convroute bench --json` report ({err})") from None


def grid_suite(cal: Calibration) -> BenchSuite:
    """A calibration's measured grid as a suite (each shape once), to score policies in-sample."""
    layers = [BenchLayer(f"grid {i}", 1, s.params, dict(s.times_ms)) for i, s in enumerate(cal.samples) if s.times_ms]
    return BenchSuite(f"grid ({len(layers)} shapes, in-sample)", cal.device, layers)


def check_held_out(suite: BenchSuite, fitted: set[str]) -> None:
    """Refuse to score a suite that holds a shape the rule was fitted on (at any batch)."""
    for layer in suite.layers:
        if shape_key(layer.params) in fitted:
            raise ValueError(f"suite {suite.name}: layer {layer.name} ({layer.params.describe()}) is a calibration "
                             f"shape the rule was fitted on; its regret would not be held out")


def choices(layer: BenchLayer, profile, rule: Rule | None, calibration: Calibration | None) -> dict[str, str]:
    """Each policy's pick for a measured layer; calibrated's as compiling routes it, with the layer's measured
    times standing in for what refinement would time (calibrated.refined_route)."""
    p = layer.params
    blocked = {n: "not measured on this device" for n in applicable(p) if n not in layer.times_ms}
    out = {"seed": avoid_blocked(p, *seed_route(p, profile), blocked)[0],
           "etvk": avoid_blocked(p, *etvk_route(p, profile), blocked)[0]}
    if rule is not None:
        out["derived-im2col"] = rule.im2col_route(p, profile, blocked)[0]
        out["derived"] = rule.route(p, profile, blocked)[0]
    if calibration is not None:
        excluded = blocked | {n: why for n, why in calibration.excluded.items() if n in applicable(p)}
        out["calibrated"] = refined_route(p, profile, excluded, calibration, layer.times_ms)
    return out


def network_of(layer_name: str) -> str:
    """The network a held-out layer comes from ("deeplabv3_resnet50/backbone.layer4.0.conv2"); "" for others."""
    return layer_name.split("/", 1)[0] if "/" in layer_name else ""


def score_suite(suite: BenchSuite, rule: Rule | None, calibrations=(), fitted: set[str] | None = None) -> dict:
    """score_layers on the suite's device, with its calibration from `calibrations` or the cache (policies that
    cannot be scored are left out: calibrated without a calibration of the suite's device)."""
    if fitted is not None:
        check_held_out(suite, fitted)
    profile = profile_from_record(suite.device)
    calibration = next((c for c in calibrations if c.device_key == profile.key), None)
    return score_layers(suite, profile, rule, calibration or load_calibration(profile))


def score_layers(suite: BenchSuite, profile, rule: Rule | None, calibration: Calibration | None) -> dict:
    """{"suite", "device", "family", "layers", "oracle_ms", "vs_oracle": {policy: total / oracle},
    "worst": {policy: (its slowest layer's time / the layer's oracle, the layer's name)}, "networks": the same
    per network of a held-out file (layers named "network/module"; empty for other suites)}."""
    picked = []
    for layer in suite.layers:
        if not layer.times_ms:
            raise ValueError(f"suite {suite.name}: layer {layer.name} has no measured time")
        picked.append((layer, choices(layer, profile, rule, calibration)))
    groups: dict[str, list] = {}
    for layer, chosen in picked:
        if network_of(layer.name):
            groups.setdefault(network_of(layer.name), []).append((layer, chosen))
    return {"suite": suite.name, "device": profile.name or profile.family, "family": profile.family,
            **totals(picked), "networks": {net: totals(rows) for net, rows in groups.items()}}


def totals(picked: list[tuple[BenchLayer, dict[str, str]]]) -> dict:
    """Count-weighted totals over the oracle, and each policy's worst layer, of (layer, policy -> algorithm)."""
    oracle, sums, worst = 0.0, {}, {}
    for layer, chosen in picked:
        best = min(layer.times_ms.values())
        oracle += layer.count * best
        for policy, algorithm in chosen.items():
            sums[policy] = sums.get(policy, 0.0) + layer.count * layer.times_ms[algorithm]
            ratio = layer.times_ms[algorithm] / best
            if ratio > worst.get(policy, (0.0, ""))[0]:
                worst[policy] = (ratio, layer.name)
    return {"layers": len(picked), "oracle_ms": oracle,
            "vs_oracle": {k: sums[k] / oracle for k in SCORED if k in sums},
            "worst": {k: worst[k] for k in SCORED if k in worst}}

"""The end of `convroute calibrate`: a fresh calibration scored on held-out layers (bench/heldout.py), the
convs of networks it was never fitted on, per network: each policy's total over the per-layer oracle's, and
calibrated's worst layer.

Layers are measured as `convroute bench` measures them (every applicable algorithm checked against the
reference, then timed), a network's dilated convs first and the networks in turn, until the time budget is
spent; what is left is reported as skipped. A layer that is one of the calibration's own shapes is left out.
As in the bench, a layer where a policy's pick measured far off the fastest is measured again and reported by
medians (bench.suite.confirm_far_picks), while the budget lasts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from convroute.bench.suite import CONFIRM_ROUNDS, SETTINGS, LayerResult, confirm_far_picks, measure_layer
from convroute.bench.suites import Layer, load_suite
from convroute.calibration.profile import Calibration, device_record
from convroute.kernels.common import Precision
from convroute.report.progress import progress_bar
from convroute.report.table import format_table, shape_text
from convroute.router.derive import shape_key
from convroute.router.regret import BenchLayer, BenchSuite, choices, network_of, score_layers

HELDOUT_SETTINGS = replace(SETTINGS, repeats=5, budget_s=0.05)
POLICIES = ("calibrated", "seed", "etvk")


def default_file(profile) -> str:
    """The shipped held-out file for a device: CPU adapters get the small one."""
    return "heldout_small" if profile.family == "cpu" else "heldout"


def in_turn(layers: list[Layer]) -> list[Layer]:
    """Networks in turn, each one's dilated convs first: a budget that runs out still leaves every network
    (and every dilated conv, where there is time for one each) measured."""
    queues: dict[str, list[Layer]] = {}
    for layer in sorted(layers, key=lambda x: max(x.conv.dilation) == 1):
        queues.setdefault(network_of(layer.name), []).append(layer)
    order = []
    while any(queues.values()):
        order += [queue.pop(0) for queue in queues.values() if queue]
    return order


@dataclass
class HeldoutScore:
    suite: str
    networks: int
    layers: list[BenchLayer]
    scores: dict  # router.regret.score_layers
    routes: dict[str, dict[str, str]]  # layer name -> policy -> algorithm
    seconds: float
    skipped: list[str] = field(default_factory=list)  # not measured: the budget ran out
    in_grid: list[str] = field(default_factory=list)  # left out: a shape of the calibration itself
    failed: list[str] = field(default_factory=list)  # no algorithm ran correctly
    confirmed: int = 0  # convs measured again: a policy's pick was far off the fastest


def score_heldout(gpu, cal: Calibration, name_or_path: str, budget_s: float, progress: bool = True) -> HeldoutScore:
    """Measure the held-out layers on `gpu` within `budget_s` and score `cal` (and seed, etvk) on them."""
    suite = load_suite(name_or_path)
    grid = {shape_key(s.params) for s in cal.samples}
    out = HeldoutScore(suite.name, len({network_of(x.name) for x in suite.layers}), [], {}, {}, 0.0)
    out.in_grid = [x.name for x in suite.layers if shape_key(x.conv) in grid]
    precision, measured = Precision.parse(cal.dtype), {}
    start = time.perf_counter()
    todo = in_turn([x for x in suite.layers if x.name not in out.in_grid])
    for layer in progress_bar(todo, f"held-out {suite.name}", "layer", progress, leave=False):
        if time.perf_counter() - start > budget_s:
            out.skipped.append(layer.name)
            continue
        if layer.conv not in measured:
            measured[layer.conv] = result = LayerResult(layer.name, layer.count, layer.conv)
            measure_layer(gpu, result, HELDOUT_SETTINGS, True, precision)
        if not measured[layer.conv].times_ms:
            out.failed.append(layer.name)
            continue
        out.layers.append(BenchLayer(layer.name, layer.count, layer.conv, measured[layer.conv].times_ms))
    if time.perf_counter() - start < budget_s:
        results = [r for r in measured.values() if r.times_ms]
        for result in results:
            result.choices = choices(BenchLayer(result.name, 1, result.params, result.times_ms), gpu.profile, None,
                                     cal)
        out.confirmed = confirm_far_picks(gpu, results, HELDOUT_SETTINGS, True, precision, progress)
        out.layers = [replace(x, times_ms=measured[x.params].times_ms) for x in out.layers]
    out.seconds = time.perf_counter() - start
    if out.layers:
        out.layers.sort(key=lambda x: [y.name for y in suite.layers].index(x.name))
        bench = BenchSuite(suite.name, device_record(gpu.profile), out.layers)
        out.scores = score_layers(bench, gpu.profile, None, cal)
        out.routes = {x.name: choices(x, gpu.profile, None, cal) for x in out.layers}
    return out


def heldout_text(h: HeldoutScore) -> str:
    """Per network: layers measured, each policy's total / oracle total, calibrated's worst layer; then the
    totals, the worst layer with its algorithms, and what was skipped."""
    total = len(h.layers) + len(h.skipped) + len(h.failed)
    lines = [f"held-out layers ({h.suite}: {h.networks} networks outside the grid and the suites): {len(h.layers)} of "
             f"{total} layers measured in {h.seconds:.0f} s", "policy total / per-layer oracle total, per network:"]
    if not h.layers:
        return "\n".join(lines + skipped_lines(h))
    policies = [p for p in POLICIES if p in h.scores["vs_oracle"]]
    head = ["network", "layers", "oracle ms"] + [f"{p} x" for p in policies] + ["calibrated's worst layer"]
    rows = [[net, str(s["layers"])] + score_cells(s, policies) for net, s in h.scores["networks"].items()]
    rows.append(["all", str(h.scores["layers"])] + score_cells(h.scores, policies))
    lines.append(format_table(head, rows, left=2))
    if "calibrated" in h.scores["worst"]:
        ratio, name = h.scores["worst"]["calibrated"]
        layer = next(x for x in h.layers if x.name == name)
        best = min(layer.times_ms, key=layer.times_ms.get)
        picked = h.routes[name]["calibrated"]
        lines.append(f"worst layer under calibrated: {ratio:.2f}x, {name[-80:]}")
        lines.append(f"  {shape_text(layer.params)}: {picked} {layer.times_ms[picked]:.3g} ms, fastest {best} "
                     f"{layer.times_ms[best]:.3g} ms")
    if h.confirmed:
        lines.append(f"{h.confirmed} layer(s) where a policy's pick measured far off the fastest were measured "
                     f"{CONFIRM_ROUNDS} more times (medians)")
    return "\n".join(lines + skipped_lines(h))


def score_cells(s: dict, policies: list[str]) -> list[str]:
    cells = [f"{s['oracle_ms']:.3g}"] + [f"{s['vs_oracle'][p]:.3f}" for p in policies]
    worst = s["worst"].get("calibrated")
    return cells + ([f"{worst[0]:.2f}x {worst[1].split('/', 1)[-1][-28:]}"] if worst else ["-"])


def skipped_lines(h: HeldoutScore) -> list[str]:
    lines = []
    for what, names in (("skipped, the time budget ran out", h.skipped), ("left out, calibration shapes", h.in_grid),
                        ("no algorithm ran correctly", h.failed)):
        if names:
            networks = sorted({network_of(n) for n in names})
            lines.append(f"{what}: {len(names)} layer(s) of {len(networks)} network(s) ({', '.join(networks)[:70]})")
    return lines



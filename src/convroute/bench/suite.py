"""`convroute bench`: time every applicable algorithm on each layer of a suite, and score the policies.

Per layer: the median time of every applicable algorithm (checked against the host reference first), each
policy's choice, the oracle (the fastest correct measured algorithm) and each policy's regret. Totals weight
each layer by its count; an algorithm's total takes the oracle's time on layers it cannot run.

`dtype="float16"` measures every algorithm with f16 activations and weights (f32 sums; correct below 1e-2
relative error) and scores the policies' float16 routes.

A layer where some policy's pick measured over CONFIRM_ABOVE x the fastest is measured CONFIRM_ROUNDS more times
(fresh buffers) and reported with each algorithm's median over all its measurements, so one noisy timing (a CPU
adapter's thread waking late, a clock change) neither invents nor hides a policy's worst layer.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field, replace

from convroute.bench.suites import Suite
from convroute.calibration.profile import calibrate_command, calibration_for, device_record
from convroute.device.gpu import Gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import FP32, Precision
from convroute.measure.reference import TOLERANCES
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import ConvParams, params_to_dict
from convroute.report.progress import progress_bar
from convroute.report.table import format_table, shape_text
from convroute.router import route_params
from convroute.router.regret import network_of

SETTINGS = TimingSettings(warmup=1, repeats=10, min_repeats=3, budget_s=1.0)
DEFAULT_POLICIES = ("seed", "calibrated")
CONFIRM_ABOVE = 1.25
CONFIRM_ROUNDS = 2
POLICY_MARKS = {"seed": "s", "etvk": "e", "calibrated": "c", "autotune": "a", "derived": "d"}


@dataclass
class LayerResult:
    name: str
    count: int
    params: ConvParams
    times_ms: dict[str, float] = field(default_factory=dict)  # correct algorithms only
    errors: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # algorithm -> wrong result / exception
    choices: dict[str, str] = field(default_factory=dict)  # policy -> algorithm
    reasons: dict[str, str] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)  # each measurement, where confirmed

    @property
    def oracle(self) -> str:
        return min(self.times_ms, key=self.times_ms.get)

    @property
    def oracle_ms(self) -> float:
        return self.times_ms[self.oracle]

    def policy_ms(self, policy: str) -> float:
        """Measured time of the policy's choice (nan when that choice could not be measured)."""
        return self.times_ms.get(self.choices.get(policy, ""), math.nan)

    def algorithm_ms(self, name: str) -> float:
        """This algorithm's time, or the oracle's where it cannot run (the fastest applicable path)."""
        return self.times_ms.get(name, self.oracle_ms)

    def regret(self, policy: str) -> float:
        return self.policy_ms(policy) / self.oracle_ms - 1


@dataclass
class BenchReport:
    suite: str
    batch: int
    device: dict
    timing: str
    policies: list[str]
    layers: list[LayerResult]
    notes: list[str] = field(default_factory=list)
    dtype: str = "float32"

    @property
    def algorithms(self) -> list[str]:
        used = {n for layer in self.layers for n in layer.times_ms}
        return [n for n in ALGORITHMS if n in used]

    def totals_ms(self) -> dict[str, float | None]:
        totals: dict[str, float | None] = {}
        for policy in self.policies:
            total = sum(layer.count * layer.policy_ms(policy) for layer in self.layers)
            totals[policy] = None if math.isnan(total) else total
        totals["oracle"] = sum(layer.count * layer.oracle_ms for layer in self.layers)
        for name in self.algorithms:
            totals[name] = sum(layer.count * layer.algorithm_ms(name) for layer in self.layers)
        return totals

    def worst_layer(self, policy: str) -> tuple[float, str]:
        """(the policy's largest time / oracle over the layers, that layer's name); nan where unmeasured."""
        ratio, name = max(((layer.regret(policy) + 1, layer.name) for layer in self.layers),
                          key=lambda item: -1.0 if math.isnan(item[0]) else item[0])
        return ratio, name

    def networks(self) -> dict[str, BenchReport]:
        """Per network of a held-out file (layers named "network/module"), the report of its layers alone."""
        groups: dict[str, list[LayerResult]] = {}
        for layer in self.layers:
            if network_of(layer.name):
                groups.setdefault(network_of(layer.name), []).append(layer)
        return {net: replace(self, suite=net, layers=layers) for net, layers in groups.items()}

    def to_json(self) -> dict:
        totals = self.totals_ms()
        oracle = totals["oracle"]
        for policy in ("seed", "calibrated"):
            totals.setdefault(policy, None)  # always present; null when not measured (no calibration)
        return {
            "suite": self.suite, "batch": self.batch, "dtype": self.dtype, "device": self.device,
            "timing": self.timing,
            "policies": self.policies, "algorithms": self.algorithms, "notes": self.notes,
            "totals_ms": totals,
            "vs_oracle": {k: (v / oracle if v is not None else None) for k, v in totals.items()},
            "worst_layer": {p: dict(zip(("ratio", "layer"), self.worst_layer(p), strict=True)) for p in self.policies},
            "networks": {net: {"vs_oracle": {p: part.totals_ms()[p] / part.totals_ms()["oracle"]
                                             for p in self.policies if part.totals_ms()[p] is not None},
                               "worst_layer": {p: dict(zip(("ratio", "layer"), part.worst_layer(p), strict=True))
                                               for p in self.policies}}
                         for net, part in self.networks().items()},
            "layers": [{"name": r.name, "count": r.count, "params": params_to_dict(r.params),
                        "times_ms": r.times_ms, "errors": r.errors, "failures": r.failures,
                        "choices": r.choices, "reasons": r.reasons, "oracle": r.oracle,
                        "oracle_ms": r.oracle_ms, "regret": {p: r.regret(p) for p in r.choices},
                        "rounds": r.rounds}
                       for r in self.layers],
        }


def run_bench(gpu: Gpu, suite: Suite, batch: int = 1, policies=DEFAULT_POLICIES, *,
              settings: TimingSettings = SETTINGS, check: bool = True, progress: bool = True,
              dtype: str = "float32", confirm: bool = True) -> BenchReport:
    precision = Precision.parse(dtype)
    precision.require(gpu.profile)
    policies = list(policies)
    notes = []
    calibration = calibration_for(gpu.profile, precision.dtype) if "calibrated" in policies else None
    if "calibrated" in policies and calibration is None:
        policies.remove("calibrated")
        notes.append(f"no calibration profile for this device: run `{calibrate_command(precision.dtype)}` to score "
                     f"'calibrated'")
    elif calibration is not None and calibration.dtype != precision.dtype:
        notes.append(f"no {precision.dtype} calibration for this device: 'calibrated' routes with the float32 one "
                     f"(run `{calibrate_command(precision.dtype)}`)")
    layers = [(layer.name, layer.count, layer.params(batch)) for layer in suite.layers]
    results, method, measured = [], "", {}
    for name, count, p in progress_bar(layers, f"bench {suite.name}", "layer", progress):
        result = LayerResult(name, count, p)
        if p in measured:  # a conv that several networks of a held-out file share is measured once
            done = measured[p]
            result.times_ms, result.errors, result.failures = done.times_ms, done.errors, done.failures
        else:
            method = measure_layer(gpu, result, settings, check, precision) or method
            measured[p] = result
        if not result.times_ms:
            raise RuntimeError(f"layer {name}: no algorithm ran correctly ({result.failures})")
        for policy in policies:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decision = route_params(p, gpu.profile, policy, dtype=precision.dtype)
            result.choices[policy], result.reasons[policy] = decision.algorithm, decision.reason
        results.append(result)
    if confirm:
        confirmed = confirm_far_picks(gpu, results, settings, check, precision, progress)
        if confirmed:
            notes.append(f"{confirmed} layer(s) where a policy's pick measured over {CONFIRM_ABOVE}x the fastest were "
                         f"measured {CONFIRM_ROUNDS} more times: their times are medians over "
                         f"{CONFIRM_ROUNDS + 1} measurements")
    return BenchReport(suite.name, batch, device_record(gpu.profile), method, policies, results, notes,
                       precision.dtype)


def confirm_far_picks(gpu: Gpu, results: list[LayerResult], settings: TimingSettings, check: bool,
                      precision: Precision, progress: bool) -> int:
    """Measure again every layer where a policy's pick is over CONFIRM_ABOVE x the fastest; each algorithm's time
    becomes its median over the measurements. Returns how many distinct convs were measured again."""
    far = {}
    for result in results:
        if any(result.regret(p) + 1 > CONFIRM_ABOVE for p in result.choices):
            far.setdefault(result.params, []).append(result)
    for p, sharing in progress_bar(list(far.items()), "confirm far picks", "layer", progress):
        first = sharing[0]
        rounds = [dict(first.times_ms)]
        for _ in range(CONFIRM_ROUNDS):
            again = LayerResult(first.name, first.count, p)
            measure_layer(gpu, again, settings, check, precision)
            rounds.append(again.times_ms)
            for name, why in again.failures.items():  # wrong once is wrong
                first.failures.setdefault(name, why)
        times = {name: statistics.median(r[name] for r in rounds if name in r)
                 for name in first.times_ms if name not in first.failures}
        for result in sharing:  # layers of one conv share its measurements
            result.times_ms, result.failures, result.rounds = dict(times), first.failures, rounds
    return len(far)


def measure_layer(gpu: Gpu, result: LayerResult, settings: TimingSettings, check: bool,
                  precision: Precision = FP32) -> str:
    """Fill result.times_ms/errors/failures for every applicable algorithm (checked one by one, then timed
    together, interleaved); returns the timing method."""
    tolerance = TOLERANCES[precision.dtype]
    work = Workload(gpu, result.params, seed=7, rotations=settings.rotations, precision=precision)
    kernels = {}
    try:
        for name, cls in ALGORITHMS.items():
            if cls.unsupported(result.params) or cls.unsupported_precision(precision):
                continue
            try:
                kernel = work.kernel(cls)
                if check:
                    result.errors[name] = error = work.error(kernel)
                    if not error < tolerance:
                        result.failures[name] = f"wrong result: relative error {error:.3g}"
                        continue
            except Exception as err:  # a failing algorithm is reported, the bench goes on
                result.failures[name] = f"{type(err).__name__}: {err}"
                continue
            kernels[name] = kernel
        timings = work.time_all(kernels, settings) if kernels else {}
    finally:
        work.release()
    result.times_ms.update({n: t.median_ms for n, t in timings.items()})
    return next(iter(timings.values())).method if timings else ""


# -- for people --------------------------------------------------------------------------------------------

def table(report: BenchReport) -> str:
    """One row per layer: ms per algorithm (marks: s/c/a = seed/calibrated/autotune choice, * = fastest)."""
    algos = report.algorithms
    head = ["layer", "n", "shape"] + algos + [f"{p} regret" for p in report.policies]
    rows = []
    for r in report.layers:
        cells = [short_name(r.name), str(r.count), shape_text(r.params)]
        for name in algos:
            if name in r.times_ms:
                marks = "".join(POLICY_MARKS.get(p, "?") for p in report.policies if r.choices.get(p) == name)
                cells.append(f"{r.times_ms[name]:.3f}{'*' if name == r.oracle else ''}{marks}")
            else:
                cells.append("WRONG" if name in r.failures else "-")
        cells += [f"{100 * r.regret(p):.0f}%" for p in report.policies]
        rows.append(cells)
    return format_table(head, rows, left=3)


def short_name(name: str, width: int = 24) -> str:
    """A layer's name within `width`: its start and its end ("deeplabv~.layer4.0.conv2")."""
    start = width // 3
    return name if len(name) <= width else f"{name[:start]}~{name[start + 1 - width:]}"


def summary(report: BenchReport) -> str:
    """Totals of each policy, of the oracle, and of each algorithm where it runs with the fastest path on the
    layers it cannot run (so "1.000 x oracle" may mean it ran on one layer only: 'layers run' says how many)."""
    totals = report.totals_ms()
    oracle, layers = totals["oracle"], len(report.layers)
    rows = []
    for key, label in [(p, f"policy {p}") for p in report.policies] + [("oracle", "fastest per layer (oracle)")] + [
            (a, f"{a} where it runs, else fastest") for a in report.algorithms]:
        value = totals.get(key)
        ran = sum(key in r.times_ms for r in report.layers) if key in report.algorithms else layers
        worst = ""
        if key in report.policies:
            ratio, name = report.worst_layer(key)
            worst = f"worst layer {ratio:.2f}x ({short_name(name, 32)})"
        rows.append([label, "n/a", "", "", ""] if value is None else
                    [label, f"{value:.3f}", f"{value / oracle:.3f}", f"{ran} of {layers}", worst])
    parts = [format_table(["total", "ms", "x oracle", "layers run", "worst"], rows,
                          left=1)]
    device = report.device.get("name", "?")
    head = (f"{report.suite}, batch {report.batch}, {report.dtype}, on {device} ({report.timing}); totals weighted "
            f"by layer counts:")
    notes = [f"note: {n}" for n in report.notes]
    return "\n".join([head] + parts + network_lines(report) + notes)


def network_lines(report: BenchReport) -> list[str]:
    """Per network of a held-out file: each policy's total / oracle total and its worst layer."""
    networks = report.networks()
    if not networks:
        return []
    head = ["network", "layers"] + [f"{p} x" for p in report.policies] + [f"{p} worst" for p in report.policies]
    rows = []
    for net, part in networks.items():
        totals = part.totals_ms()
        rows.append([net, str(len(part.layers))]
                    + [f"{totals[p] / totals['oracle']:.3f}" if totals[p] is not None else "n/a"
                       for p in report.policies]
                    + [f"{part.worst_layer(p)[0]:.2f}x" for p in report.policies])
    return ["per network (total / oracle total; worst: the policy's worst layer, its time / that layer's fastest):",
            format_table(head, rows, left=2)]

"""`convroute zoo`: a list of models (torchvision names and timm:NAME), each built with random weights,
compiled, checked against the model in float64 on the CPU (torch float32's own error beside, as a yardstick of
the model's conditioning) and timed beside peer engines in interleaved rounds in this process
(bench.compare_model, as `run --compare`; every engine's error against float64). Per model: compile seconds,
relative error, GPU ops,
CPU ops by name, convroute's median / p10 / p90 and its GPU pass alone, each peer's median; a summary sorted by
convroute / the first peer, with the geometric mean per peer. A model that fails anywhere is a row with its
error, and the zoo goes on."""

from __future__ import annotations

import copy
import gc
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import convroute.frontend as frontend  # before torchvision and timm, which load triton (see frontend)
from convroute.bench.compare_model import OURS, EngineRun, ModelComparison, compare_model, flat, output_error
from convroute.calibration.profile import device_record
from convroute.device.gpu import get_gpu
from convroute.frontend import zoo
from convroute.measure.reference import TOLERANCES
from convroute.report.latency import Latency
from convroute.report.progress import progress_bar
from convroute.report.table import fit_text, format_table
from convroute.router import POLICIES, default_policy

CONDITIONING = 10  # an error over the tolerance but within this many times torch's own is the model's conditioning
SHORT = {"torch-cuda-graph": "graph", "torch-cuda": "cuda", "torch-cpu": "torch", "ncnn-vk32": "vk32",
         "ncnn-vk16": "vk16", "ncnn-cpu": "ncnn-cpu",
         "convroute-float16": "fp16", "convroute-float32": "fp32"} | {f"convroute-{p}": p for p in POLICIES}
# (peers' names in column heads)


def short(peer: str) -> str:
    return SHORT.get(peer, peer)


@dataclass
class ZooRow:
    name: str
    input_shape: tuple
    compile_s: float | None = None  # export + plan (+ any measuring the policy does)
    first_call_s: float | None = None  # the first call after compiling (where a driver builds lazily, it shows)
    gpu_ops: int = 0
    gpu_ops_by_op: dict[str, int] = field(default_factory=dict)
    cpu_ops: dict[str, int] = field(default_factory=dict)  # op -> count of CPU steps
    dispatches: int = 0
    wall_s: float | None = None  # the whole row: build, reference, compile, timing
    rel_error: float | None = None  # ||y - ref|| / ||ref|| against the model in float64 on the CPU
    torch_error: float | None = None  # torch's own error in the zoo's dtype against float64: the model's conditioning
    comparison: ModelComparison | None = None
    error: str | None = None  # why the model did not compile or run: "stage: Type: message"
    loaded: dict | None = None  # the row's JSON, when read back from a file (report_from_json)

    @property
    def ours(self):
        """convroute's EngineRun, when it was timed."""
        engine = self.comparison.engines.get(OURS) if self.comparison else None
        return engine if engine and engine.latency else None

    def error_mark(self, tolerance: float) -> str:
        """'' within the tolerance; '?' over it but within CONDITIONING times torch's own error in this dtype (the
        model amplifies rounding, e.g. random weights: not convroute's doing); '!' over both: wrong."""
        if self.rel_error is None or self.rel_error <= tolerance:
            return ""
        conditioned = self.torch_error is not None and self.rel_error <= CONDITIONING * self.torch_error
        return "?" if conditioned else "!"

    def ratio(self, peer: str) -> float | None:
        return self.comparison.ratios().get(peer) if self.comparison and not self.error else None

    def ratio_spread(self, peer: str) -> tuple[float, float] | None:
        """(convroute's p10 / the peer's p90, convroute's p90 / the peer's p10): how far the ratio can move within
        the rounds' spread; None when either was not timed."""
        ours, theirs = self.ours, self.comparison.engines.get(peer) if self.comparison else None
        if self.error or not (ours and theirs and theirs.latency):
            return None
        return ours.latency.p10_ms / theirs.latency.p90_ms, ours.latency.p90_ms / theirs.latency.p10_ms

    def beyond_spread(self, peer: str) -> bool:
        """convroute's p10 over the peer's p90: slower beyond the rounds' spread, not a tie within it."""
        spread = self.ratio_spread(peer)
        return spread is not None and spread[0] > 1.0

    def to_json(self) -> dict:
        if self.loaded is not None:
            return self.loaded
        timed = self.comparison.to_json() if self.comparison and not self.error else {}
        timed.pop("device", None)
        return {"model": self.name, "source": "timm" if zoo.is_timm(self.name) else "torchvision",
                "input_shape": list(self.input_shape), "compile_s": self.compile_s,
                "first_call_s": self.first_call_s, "gpu_ops": self.gpu_ops,
                "gpu_ops_by_op": self.gpu_ops_by_op, "cpu_ops": self.cpu_ops, "dispatches": self.dispatches,
                "wall_s": self.wall_s, "error": self.error,
                "rel_error": self.rel_error, "torch_error": self.torch_error} | timed


@dataclass
class ZooReport:
    peers: list[str]
    policy: str
    dtype: str
    batch: int
    runs: int
    device: dict = field(default_factory=dict)
    rows: list[ZooRow] = field(default_factory=list)

    def ranked(self) -> list[ZooRow]:
        """Rows by convroute / the first peer, highest (worst) first; rows without that ratio last."""
        first = self.peers[0] if self.peers else None

        def key(row):
            ratio = row.ratio(first) if first else None
            return (ratio is None, -(ratio or 0.0))

        return sorted(self.rows, key=key)

    def geomean(self, peer: str, without_cpu_ops: bool = False) -> tuple[float | None, int]:
        """Geometric mean of convroute / `peer` over the models that have it (optionally only those with no CPU
        step), and how many."""
        ratios = [r.ratio(peer) for r in self.rows if not (without_cpu_ops and r.cpu_ops)]
        ratios = [v for v in ratios if v is not None]
        return (math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None), len(ratios)

    def to_json(self) -> dict:
        geomeans = {}
        for peer in self.peers:
            value, count = self.geomean(peer)
            clean, clean_count = self.geomean(peer, without_cpu_ops=True)
            geomeans[peer] = {"ratio": value, "models": count, "ratio_without_cpu_ops": clean,
                              "models_without_cpu_ops": clean_count}
        return {"device": self.device, "policy": self.policy, "dtype": self.dtype, "batch": self.batch,
                "runs": self.runs, "peers": self.peers, "tolerance": TOLERANCES[self.dtype],
                "geomean": geomeans, "models": [r.to_json() for r in self.rows]}


def zoo_row(name: str, size: int, *, batch: int, policy: str | None, dtype: str, peers: list[str], runs: int,
            seed: int = 0) -> ZooRow:
    """One model through build, reference, compile and the timed comparison; a failure in any stage ends as
    the row's error."""
    row = ZooRow(name, (batch, 3, size, size))
    stage, start_row = "build", time.perf_counter()
    try:
        model = zoo.build_any(name, seed)
        torch.manual_seed(seed)
        x = torch.randn(*row.input_shape)
        stage = "torch"
        with torch.no_grad():
            reference = float64_output(model, x)
            if not flat(reference).any():
                raise ValueError("the model's float64 output is all zeros for this input (weights left at zero?): "
                                 "a check against it would say nothing")
            row.torch_error = torch_own_error(model, x, dtype, reference)
        stage = "compile"
        start = time.perf_counter()
        program = frontend.compile(model, (x,), policy=policy, dtype=dtype)
        row.compile_s = time.perf_counter() - start
        summary = program.summary()
        row.gpu_ops, row.dispatches = sum(summary.gpu_ops.values()), summary.dispatches
        row.gpu_ops_by_op = dict(sorted(summary.gpu_ops.items()))
        row.cpu_ops = dict(Counter(op for _, op, _ in summary.cpu_ops).most_common())
        stage = "run"
        start = time.perf_counter()
        first = program(x)
        row.first_call_s = time.perf_counter() - start
        if runs == 0:  # compile and check only
            row.rel_error = output_error(first, reference)
            return row
        key = f"{name.replace(':', '-')}-{size}px-b{batch}-seed{seed}"
        row.comparison = compare_model(program, model, x, peers, name=name, key=key, rounds=runs,
                                       reference=reference)
        row.rel_error = row.comparison.engines[OURS].error
    except Exception as err:  # one model's failure is its row's; the zoo goes on
        row.error = f"{stage}: {type(err).__name__}: {err}"
    finally:
        row.wall_s = time.perf_counter() - start_row
    return row


def torch_own_error(model, x, dtype: str, reference) -> float | None:
    """torch's own error against float64 in `dtype` (float16: a half copy of the model, on CUDA where there is
    one, else on the CPU): how far that dtype alone takes this model's output. None where torch cannot run
    the model in that dtype."""
    if dtype == "float32":
        return output_error(model(x), reference)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        half = copy.deepcopy(model).to(device).half()
        return output_error(half(x.to(device).half()), reference)
    except (RuntimeError, NotImplementedError):  # e.g. an op without a half kernel on this device
        return None


def float64_output(model, x):
    """The model's output in float64 on the CPU (a copy of the model; the model itself stays float32)."""
    return copy.deepcopy(model).double()(x.double())


def run_zoo(names: list[str], *, sizes: dict[str, int], batch: int, policy: str | None, dtype: str,
            peers: list[str], runs: int, seed: int = 0, progress: bool = True,
            on_row: Callable[[ZooReport], None] | None = None) -> ZooReport:
    """Every model in turn (`sizes`: its input side); `on_row(report)` after each one (e.g. to save the JSON).
    `runs` 0: compile and check only, nothing timed."""
    report = ZooReport(list(peers), policy or default_policy(), dtype, batch, runs)
    bar = progress_bar(names, "zoo", "model", progress)
    for name in bar:
        bar.set_postfix_str(name)
        row = zoo_row(name, sizes[name], batch=batch, policy=policy, dtype=dtype, peers=peers, runs=runs, seed=seed)
        gc.collect()  # the last model's program and GPU buffers, now unreferenced, before the next one allocates
        report.rows.append(row)
        if row.compile_s is not None and not report.device:
            report.device = device_record(get_gpu().profile)
        if on_row:
            on_row(report)
    return report


def report_from_json(files: list[dict]) -> ZooReport:
    """A ZooReport back from `ZooReport.to_json` output; several files join their models in order (settings and
    device from the first; peers in order of appearance). A model's failure gives way to a later file's run of
    it (the inceptions fail at 64 px: run again at 96 and joined, they take their failures' places)."""
    first = files[0]
    peers = list(dict.fromkeys(peer for data in files for peer in data["peers"]))
    report = ZooReport(peers, first["policy"], first["dtype"], first["batch"], first["runs"], first["device"])
    for data in files:
        for row in (_row_from_json(row, data) for row in data["models"]):
            failed = next((i for i, old in enumerate(report.rows) if old.name == row.name and old.error), None)
            if failed is not None and not row.error:
                report.rows[failed] = row
            else:
                report.rows.append(row)
    return report


def _row_from_json(row: dict, data: dict) -> ZooRow:
    comparison = None
    if "engines" in row:
        comparison = ModelComparison(row["model"], tuple(row["input_shape"]), row["dtype"], data["device"],
                                     row["rounds"])
        for name, e in row["engines"].items():
            latency = Latency(e["median_ms"], e["p10_ms"], e["p90_ms"], e["runs"])
            gpu_pass = Latency(**e["gpu_pass"]) if e.get("gpu_pass") else None
            comparison.engines[name] = EngineRun(name, e["detail"], e["precision"], latency, error=e["error"],
                                                 gpu_pass=gpu_pass)
        for name, reason in row.get("unavailable", {}).items():
            comparison.engines[name] = EngineRun(name, "", "", reason=reason)
    return ZooRow(row["model"], tuple(row["input_shape"]), compile_s=row["compile_s"],
                  first_call_s=row.get("first_call_s"), gpu_ops=row["gpu_ops"], gpu_ops_by_op=row["gpu_ops_by_op"],
                  cpu_ops=row["cpu_ops"], dispatches=row["dispatches"], wall_s=row.get("wall_s"),
                  rel_error=row["rel_error"], torch_error=row.get("torch_error", row.get("torch_fp32_error")),
                  comparison=comparison,
                  error=row["error"], loaded=row)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def models_table(report: ZooReport) -> str:
    """Per model, in the order run: compile, error, ops, convroute's latency and GPU pass."""
    head = ["model", "px", "compile s", "rel. err", "torch err", "GPU ops", "CPU ops", "p50 ms", "p10 ms", "p90 ms",
            "GPU pass"]
    tolerance = TOLERANCES[report.dtype]
    rows = []
    for r in report.rows:
        ours = r.ours
        lat = ours.latency if ours else None
        error = "-" if r.rel_error is None else f"{r.rel_error:.1e}" + r.error_mark(tolerance)
        torch_error = "-" if r.torch_error is None else f"{r.torch_error:.1e}"
        compile_s = "-" if r.compile_s is None else f"{r.compile_s:.1f}"
        gpu_ops = str(r.gpu_ops) if r.compile_s is not None else "-"
        cpu_ops = str(sum(r.cpu_ops.values())) if r.compile_s is not None else "-"
        rows.append([r.name, str(r.input_shape[-1]), compile_s, error, torch_error, gpu_ops, cpu_ops,
                     _ms(lat and lat.median_ms), _ms(lat and lat.p10_ms), _ms(lat and lat.p90_ms),
                     _ms(ours.gpu_pass.median_ms if ours and ours.gpu_pass else None)])
    if not report.runs:  # nothing timed: no latency columns
        head, rows = head[:7], [row[:7] for row in rows]
    lines = [format_table(head, rows)]
    with_cpu = [r for r in report.rows if r.cpu_ops]
    if with_cpu:
        lines.append("CPU ops (torch fallback, by op):")
        for r in with_cpu:
            ops = ", ".join(f"{op} x{n}" for op, n in r.cpu_ops.items())
            lines.append(f"  {r.name}: {ops}")
    for r in report.rows:
        if r.error:
            lines.append(f"FAILED {r.name}: {r.error}")
    lines.append(f"rel. err: ||y - ref|| / ||ref|| against the model in float64 on the CPU (! over {tolerance:g}; "
                 f"? over it but within {CONDITIONING}x torch err, the model's conditioning); torch err: torch's own "
                 f"in {report.dtype} (random weights can make a model ill-conditioned)"
                 + ("; p50/p10/p90: one call host to host;" if report.runs else ""))
    if report.runs:
        lines.append("GPU pass: median of the GPU dispatches alone (timestamps; - without them)")
    return "\n".join(lines)


def summary_table(report: ZooReport) -> str:
    """Models by convroute / the first peer (worst first), each peer's median and ratio, geometric means, and per
    peer the models where convroute is the slower one (against convroute-float32 in an fp16 zoo: where fp16 does
    not pay)."""
    head = ["model", "ms", "GPU pass"]
    for peer in report.peers:
        head += [f"{short(peer)} ms", f"/{short(peer)}"]
    rows = []
    for r in report.ranked():
        ours = r.ours
        row = [r.name + ("*" if r.cpu_ops else ""), _ms(ours and ours.latency.median_ms),
               _ms(ours.gpu_pass.median_ms if ours and ours.gpu_pass else None)]
        for peer in report.peers:
            engine = r.comparison.engines.get(peer) if r.comparison and not r.error else None
            ratio = r.ratio(peer)
            row += [_ms(engine.latency.median_ms if engine and engine.latency else None),
                    "-" if ratio is None else f"{ratio:.2f}"]
        rows.append(row)
    for without in (False, True):
        counts = [report.geomean(peer, without)[1] for peer in report.peers]
        label = "geometric mean" + (", no CPU ops" if without else "") + f" ({'/'.join(map(str, counts))})"
        row = [label, "", ""]
        for peer in report.peers:
            value = report.geomean(peer, without)[0]
            row += ["", "-" if value is None else f"{value:.2f}"]
        rows.append(row)
    lines = [format_table(head, rows)]
    for peer in report.peers:
        ratios = {r.name: r.ratio(peer) for r in report.ranked() if r.ratio(peer) is not None}
        slower = [f"{name} {ratio:.2f}" for name, ratio in ratios.items() if ratio > 1.0]
        clearly = [r.name for r in report.ranked() if r.beyond_spread(peer)]  # p10 over p90: slower too
        lines.append(f"slower than {short(peer)} on {len(slower)} of {len(ratios)} models"
                     + (f": {', '.join(slower)}" if slower else ""))
        if slower:
            lines.append(f"  beyond the rounds' spread (convroute's p10 over {short(peer)}'s p90) on {len(clearly)}"
                         + (f": {', '.join(clearly)}" if clearly else ""))
    for peer in report.peers:
        engine = next((r.comparison.engines[peer] for r in report.rows
                       if r.comparison and peer in r.comparison.engines), None)
        what = engine.detail if engine and engine.latency else f"unavailable: {engine.reason}" if engine else "-"
        lines.append(f"{short(peer)}: {peer}, {what}")
    lines.append("/peer: convroute's median / the peer's (below 1: convroute faster); * the model has CPU ops")
    return "\n".join(lines)


def zoo_text(report: ZooReport) -> str:
    device = report.device
    timing = (f"each time one call host to host, median of {report.runs} interleaved rounds per engine (as run "
              "--compare)" if report.runs else "compiled and checked only, nothing timed (--runs 0)")
    header = (
        f"convroute zoo: {len(report.rows)} models, batch {report.batch}, {report.dtype}, policy {report.policy}, "
        f"on {device.get('name', '?')} ({device.get('backend', '?')}); {timing}")
    summary = ["", summary_table(report)] if report.runs else []
    return fit_text("\n".join([header, "", models_table(report), *summary]))

"""`convroute bench --compare torch,ncnn`: the suite's layers timed by convroute and by other engines, all with
one chained method, side by side.

The method (that of ../shared/bench/peer_conv_bench.py): each layer runs as a chain of L copies recorded back
to back in one submission (one stream, one ncnn extractor). A shape-preserving layer (C_in == C_out, stride 1,
same spatial size out) is a true chain, each copy reading the previous one's output; any other layer has every
copy read the same input. The wall clock of one run includes uploading the input and downloading the output;
after a warm-up (>= 3 runs and >= 0.3 s, cut short by half the per-layer budget) the figure is the fastest of
5 runs divided by L. Where the engine can say, the GPU time of the chain / L is given beside it (convroute:
timestamp queries around the pass; torch on CUDA: CUDA events around the chain).

Engines: convroute with the algorithm each policy routes to (its command buffer for the next run is encoded
while the GPU runs the current one, as in a compiled model: see device.gpu.Recording); the peers of
convroute.peers: torch (CUDA fp32 with TF32 off and cudnn.benchmark on, else CPU); ncnn Vulkan fp32 and fp16
("ncnn-vk32", "ncnn-vk16"), for shape-preserving non-transposed layers at batch 1 only (ncnn has no batch
dimension, and the peer method chains only those).
An engine that is not installed, or has no device, is reported as unavailable; a layer it cannot time gets
"n/a" and the reason. Each engine's output is compared to convroute's (first policy) as a sanity check.

With dtype "float16" convroute runs f16 buffers and kernels routed in float16 ("convroute-<policy>-fp16"),
torch runs fp16 ("torch-fp16", where its device has fp16 convs), ncnn-vk16 is the headline peer and
ncnn-vk32 stays beside it.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from convroute.bench.suites import Suite
from convroute.calibration.profile import device_record
from convroute.device.gpu import Gpu, Recording
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import Epilogue, Precision
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times
from convroute.measure.reference import norm_relative_error
from convroute.measure.workload import random_inputs
from convroute.params import ConvParams
from convroute.peers import LAYER_ENGINES, LayerEngine, NotApplicable, layer_engines, shape_preserving, short_precision
from convroute.report.progress import progress_bar
from convroute.report.table import format_table, shape_text
from convroute.router import route_params

DEFAULT_CHAIN = 10
TIMED_RUNS = 5
WARMUP_RUNS, WARMUP_S = 3, 0.3
AGREEMENT = {"fp32": 1e-3, "fp16": 5e-2}  # relative difference to convroute's output beyond which a layer is flagged


@dataclass
class Measurement:
    ms: float | None = None  # wall clock per layer, transfers included
    gpu_ms: float | None = None  # device time per layer, where the engine can measure it
    algorithm: str | None = None
    runs: int = 0  # timed runs (after the warm-up)
    difference: float | None = None  # relative difference of the chain's output to convroute's
    reason: str | None = None  # why there is no time

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class EngineResult:
    name: str
    detail: str = ""
    precision: str = "fp32"
    reason: str | None = None  # set when the whole engine is unavailable
    layers: list[Measurement] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.reason is None

    def timed(self) -> set[int]:
        return {i for i, m in enumerate(self.layers) if m.ms is not None}


@dataclass
class CompareReport:
    suite: str
    batch: int
    chain: int
    budget_s: float
    device: dict
    names: list[str]
    counts: list[int]
    params: list[ConvParams]
    engines: dict[str, EngineResult]
    notes: list[str] = field(default_factory=list)
    dtype: str = "float32"  # convroute's

    @property
    def precision(self) -> str:
        return short_precision(self.dtype)

    @property
    def convroute(self) -> list[str]:
        return [n for n in self.engines if n.startswith("convroute")]

    @property
    def peers(self) -> list[str]:
        """Available peers, those of convroute's precision first."""
        names = [n for n, e in self.engines.items() if not n.startswith("convroute") and e.available]
        return sorted(names, key=lambda n: self.engines[n].precision != self.precision)

    def agreement(self, engine: str) -> float:
        """Largest relative difference to convroute's output that is not flagged (the looser of both precisions)."""
        return max(AGREEMENT[self.engines[engine].precision], AGREEMENT[self.precision])

    def headline(self) -> list[dict]:
        """The ratios against ncnn Vulkan in convroute's precision (issue 5's targets: vk32 for fp32, vk16 for
        fp16)."""
        peer = f"ncnn-vk{self.precision[2:]}"
        return [r for r in self.ratios() if r["peer"] == peer]

    def total(self, engine: str, subset: set[int], gpu: bool = False) -> float | None:
        """Time of the layers in `subset`, weighted by their counts (None when one is missing)."""
        values = [(self.counts[i], m.gpu_ms if gpu else m.ms)
                  for i, m in enumerate(self.engines[engine].layers) if i in subset]
        if len(values) != len(subset) or any(v is None for _, v in values):
            return None
        return sum(count * v for count, v in values)

    def subset_text(self, subset: set[int]) -> str | list[str]:
        return "all" if len(subset) == len(self.names) else [self.names[i] for i in sorted(subset)]

    def common(self) -> set[int]:
        """The layers every available engine timed."""
        sets = [e.timed() for e in self.engines.values() if e.available]
        return set.intersection(*sets) if sets else set()

    def ratios(self) -> list[dict]:
        """convroute / peer per convroute policy and peer, over the layers both timed."""
        out = []
        for ours in self.convroute:
            for peer in self.peers:
                subset = self.engines[ours].timed() & self.engines[peer].timed()
                if subset:
                    a, b = self.total(ours, subset), self.total(peer, subset)
                    out.append({"convroute": ours, "peer": peer, "convroute_ms": a, "peer_ms": b,
                                "ratio": a / b if b else None, "subset": self.subset_text(subset)})
        return out

    def to_json(self) -> dict:
        engines = {}
        for name, e in self.engines.items():
            timed = e.timed()
            engines[name] = {"available": e.available, "reason": e.reason, "detail": e.detail,
                             "precision": e.precision,
                             "total_ms": self.total(name, timed) if timed else None,
                             "gpu_total_ms": self.total(name, timed, gpu=True) if timed else None,
                             "subset": self.subset_text(timed),
                             "layers": [{"name": self.names[i], "count": self.counts[i]} | m.to_json()
                                        for i, m in enumerate(e.layers)]}
        common = self.common()
        info = {"method": method_text(self.chain), "chain": self.chain, "timed_runs": TIMED_RUNS,
                "budget_s": self.budget_s, "suite": self.suite, "batch": self.batch, "dtype": self.dtype,
                "device": self.device, "ratios": self.ratios(), "headline": self.headline(), "notes": self.notes,
                "common": {"subset": self.subset_text(common),
                           "totals_ms": {n: self.total(n, common) for n, e in self.engines.items()
                                         if e.available and common}}}
        return {"compare": engines, "compare_info": info}


def method_text(chain: int) -> str:
    return (f"chain of {chain} copies per layer in one submission, wall clock with input upload and output "
            f"download, fastest of {TIMED_RUNS} runs / {chain}")


# -- the chained timing ------------------------------------------------------------------------------------

def time_chain(once: Callable[[], object], chain: int, budget_s: float) -> tuple[float, int]:
    """(ms per layer, timed runs): warm up (>= 3 runs and >= 0.3 s, or half the budget), then the fastest
    of up to 5 runs / chain (at least 2 whatever the budget)."""
    start = time.perf_counter()
    warm = 0
    while True:
        once()
        warm += 1
        spent = time.perf_counter() - start
        if (warm >= WARMUP_RUNS and spent >= WARMUP_S) or spent >= budget_s / 2:
            break
    best, runs = math.inf, 0
    while runs < TIMED_RUNS:
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
        runs += 1
        if runs >= 2 and time.perf_counter() - start >= budget_s:
            break
    return best / chain * 1e3, runs


class ConvrouteEngine(LayerEngine):
    def __init__(self, gpu: Gpu, policy: str, dtype: str = "float32"):
        self.gpu, self.policy = gpu, policy
        self.dtype = Precision.parse(dtype)
        self.dtype.require(gpu.profile)
        self.precision = short_precision(self.dtype.dtype)
        self.name = f"convroute-{policy}" + ("-fp16" if self.precision == "fp16" else "")
        self.detail = f"convroute ({policy} policy, {self.dtype.dtype}) on {gpu.profile.name}"
        self.timestamps = "timestamp-query" in gpu.device.features

    def algorithm(self, p: ConvParams) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return route_params(p, self.gpu.profile, self.policy, dtype=self.dtype.dtype).algorithm

    def prepare(self, p, x, weight, bias, chain, algorithm=None):
        gpu, dtype, size = self.gpu, self.dtype.numpy, self.dtype.itemsize
        kernel = ALGORITHMS[algorithm or self.algorithm(p)](gpu, p, weight, bias, Epilogue(), self.dtype.dtype)
        x = np.ascontiguousarray(x, dtype)  # the host input in the storage dtype, as torch's engine takes it
        x_buf = gpu.upload(x, "input", dtype)
        if shape_preserving(p):  # ping-pong: copy i reads buffer i % 2 and writes the other
            bufs = [x_buf, gpu.empty(size * x.size, "chain buffer")]
            dispatches = [d for i in range(chain) for d in kernel.bind(bufs[i % 2], bufs[(i + 1) % 2], p.n)]
            out = bufs[chain % 2]
        else:
            bufs = [x_buf, gpu.empty(size * math.prod(p.output_shape), "output")]
            dispatches = [d for _ in range(chain) for d in kernel.bind(x_buf, bufs[1], p.n)]
            out = bufs[1]

        recording = Recording(gpu, dispatches, (out, p.output_shape, dtype))  # as a compiled model runs

        def once():
            gpu.write(x_buf, x, dtype)
            return recording.run()

        def release():
            for buf in bufs:
                buf.destroy()

        gpu_ms = (lambda: self.pass_ms(dispatches) / chain) if self.timestamps else None
        return once, gpu_ms, release

    def pass_ms(self, dispatches, reps: int = TIMED_RUNS) -> float | None:
        """The fastest GPU time of the pass (timestamp queries at its start and end), ms; None if nonsense."""
        raise_clocks(self.gpu)
        best = min(pass_times(self.gpu, [dispatches] * reps))
        return best if best > 0 else None


# -- the run ---------------------------------------------------------------------------------------------

def make_engines(gpu: Gpu, policies, compare, dtype: str = "float32") -> dict[str, LayerEngine | str]:
    """name -> engine, or the reason it is unavailable. In float16 the peers of that precision come first."""
    engines: dict[str, LayerEngine | str] = {e.name: e for e in (ConvrouteEngine(gpu, p, dtype) for p in policies)}
    return engines | layer_engines(compare, short_precision(Precision.parse(dtype).dtype) == "fp16")


def run_compare(gpu: Gpu, suite: Suite, batch: int = 1, policies=("seed",), compare=LAYER_ENGINES, *,
                chain: int = DEFAULT_CHAIN, budget_s: float = 1.0, progress: bool = True,
                dtype: str = "float32") -> CompareReport:
    if chain < 1:
        raise ValueError(f"chain must be >= 1, got {chain}")
    if not policies:
        raise ValueError("at least one convroute policy is needed")
    dtype = Precision.parse(dtype).dtype
    engines = make_engines(gpu, policies, compare, dtype)
    results = {name: EngineResult(name, reason=e) if isinstance(e, str)
               else EngineResult(name, e.detail, e.precision) for name, e in engines.items()}
    layers = [(layer.name, layer.count, layer.params(batch)) for layer in suite.layers]
    runnable = [name for name, e in engines.items() if not isinstance(e, str)]
    reference = next(iter(engines))  # convroute with the first policy
    outputs: dict[int, np.ndarray] = {}
    bar = progress_bar(range(len(layers)), f"bench {suite.name} --compare", "layer", progress)
    for i, engine_name in ((i, e) for i in bar for e in runnable):
        engine = engines[engine_name]
        p = layers[i][2]
        result = results[engine_name]
        if isinstance(engine, ConvrouteEngine):  # policies that route to the same algorithm share its time
            algorithm = engine.algorithm(p)
            same = [r.layers[i] for r in results.values() if len(r.layers) > i and r.layers[i].algorithm == algorithm]
            if same:
                result.layers.append(replace(same[0], difference=None))
                continue
        with torch_settings(engine):
            measurement, output = measure(engine, p, i, chain, budget_s)
        if engine_name == reference and output is not None:
            outputs[i] = output
        elif output is not None and i in outputs:
            measurement.difference = norm_relative_error(output.astype(np.float64), outputs[i].astype(np.float64))
        result.layers.append(measurement)
    report = CompareReport(suite.name, batch, chain, budget_s, device_record(gpu.profile),
                           [n for n, _, _ in layers], [c for _, c, _ in layers], [p for _, _, p in layers], results,
                           dtype=dtype)
    report.notes += disagreements(report)
    return report


def measure(engine: LayerEngine, p: ConvParams, index: int, chain: int,
            budget_s: float) -> tuple[Measurement, np.ndarray | None]:
    """Time one layer on one engine; an error becomes the measurement's reason, the run goes on."""
    algorithm = engine.algorithm(p) if isinstance(engine, ConvrouteEngine) else None
    x, weight, bias = random_inputs(p, np.random.default_rng(index))
    try:
        once, gpu_ms, release = engine.prepare(p, x, weight, bias, chain)
    except NotApplicable as err:
        return Measurement(algorithm=algorithm, reason=f"n/a: {err}"), None
    except Exception as err:  # one engine failing on one layer is reported, the comparison goes on
        return Measurement(algorithm=algorithm, reason=f"{type(err).__name__}: {err}"), None
    try:
        output = np.asarray(once())
        ms, runs = time_chain(once, chain, budget_s)
        return Measurement(ms, gpu_ms() if gpu_ms else None, algorithm, runs), output
    except Exception as err:
        return Measurement(algorithm=algorithm, reason=f"{type(err).__name__}: {err}"), None
    finally:
        release()


def torch_settings(engine: LayerEngine):
    return engine.settings() if hasattr(engine, "settings") else contextlib.nullcontext()


def disagreements(report: CompareReport) -> list[str]:
    notes = []
    for name, e in report.engines.items():
        limit = report.agreement(name)
        bad = [f"{report.names[i]} ({m.difference:.2g})" for i, m in enumerate(e.layers)
               if m.difference is not None and not m.difference <= limit]
        if bad:
            notes.append(f"{name}'s output differs from convroute's by more than {limit:g} on: {', '.join(bad)}")
    return notes


# -- for people --------------------------------------------------------------------------------------------

def compare_table(report: CompareReport) -> str:
    """One row per layer: convroute's algorithm and ms per policy (GPU ms for the first), each peer's ms."""
    first = report.convroute[0]
    head, columns = ["layer", "n", "shape"], []
    for name in report.convroute:
        columns += [(f"{name} algo", name, "algorithm"), (f"{name} ms", name, "ms")]
        if name == first and any(m.gpu_ms is not None for m in report.engines[name].layers):
            columns.append((f"{name} gpu", name, "gpu_ms"))
    for name in report.peers:
        columns.append((f"{name} ms", name, "ms"))
        if any(m.gpu_ms is not None for m in report.engines[name].layers):
            columns.append((f"{name} gpu", name, "gpu_ms"))
    head += [c[0] for c in columns]
    rows = []
    for i, name in enumerate(report.names):
        cells = [name[:24], str(report.counts[i]), shape_text(report.params[i])]
        for _, engine, key in columns:
            m = report.engines[engine].layers[i]
            value = getattr(m, key)
            if key == "algorithm":
                cells.append(value or "-")
            elif value is not None:
                flag = "!" if m.difference is not None and not m.difference <= report.agreement(engine) else ""
                cells.append(f"{value:.4f}{flag}")
            else:
                cells.append("n/a" if (m.reason or "").startswith("n/a") or key == "gpu_ms" else "ERR")
        rows.append(cells)
    return format_table(head, rows, left=3)


def compare_summary(report: CompareReport) -> str:
    n = len(report.names)

    def over(subset) -> str:
        if len(subset) == n:
            return f"all {n} layers"
        return f"{len(subset)} of {n} layers ({', '.join(report.names[i] for i in sorted(subset))})"

    lines = [f"{report.suite}, batch {report.batch}, convroute {report.dtype}: {method_text(report.chain)}; "
             f"totals weighted by counts"]
    width = max(22, *(len(name) for name in report.engines))
    for name, e in report.engines.items():
        if not e.available:
            lines.append(f"  {name:<{width}} unavailable: {e.reason}")
            continue
        timed = e.timed()
        if not timed:
            lines.append(f"  {name:<{width}} no layer timed  [{e.detail}]")
            continue
        gpu = report.total(name, timed, gpu=True)
        gpu_text = f"  (GPU {gpu:.3f} ms)" if gpu is not None else ""
        lines.append(f"  {name:<{width}} {report.total(name, timed):10.3f} ms over {over(timed)}{gpu_text}  "
                     f"[{e.detail}]")
    ratios = report.ratios()
    if ratios:
        lines.append("convroute / peer (below 1: convroute faster):")
        for r in ratios:
            subset = set(i for i, name in enumerate(report.names) if r["subset"] == "all" or name in r["subset"])
            lines.append(f"  {r['convroute']} / {r['peer']:<10} {r['ratio']:6.3f} x  ({r['convroute_ms']:.3f} vs "
                         f"{r['peer_ms']:.3f} ms over {over(subset)})")
    for r in report.headline():
        layers = n if r["subset"] == "all" else len(r["subset"])
        lines.append(f"headline, {report.suite} batch {report.batch}: {r['convroute']} / {r['peer']} = "
                     f"{r['ratio']:.3f} x over {layers} of {n} layers ({'faster' if r['ratio'] < 1 else 'slower'})")
    common = report.common()
    available = [n for n, e in report.engines.items() if e.available]
    if common and len(common) < n and len(available) > 2:
        totals = ", ".join(f"{name} {report.total(name, common):.3f}" for name in available)
        lines.append(f"layers every engine timed, {over(common)}: {totals} ms")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def ratio_table(reports: list[CompareReport]) -> str:
    """One row per suite and convroute policy: convroute / peer total per peer (the layers both timed, of all)."""
    peers = list(dict.fromkeys(peer for report in reports for peer in report.peers))
    rows = []
    for report in reports:
        n = len(report.names)
        ratios = {(r["convroute"], r["peer"]): r for r in report.ratios()}
        for ours in report.convroute:
            cells = [report.suite, ours]
            for peer in peers:
                r = ratios.get((ours, peer))
                layers = None if r is None else (n if r["subset"] == "all" else len(r["subset"]))
                cells.append("-" if r is None or r["ratio"] is None else f"{r['ratio']:.3f} ({layers}/{n})")
            rows.append(cells)
    return format_table(["suite", "convroute"] + [f"/ {peer}" for peer in peers], rows, left=2)

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
while the GPU runs the current one, as in a compiled model: see device.gpu.Recording); torch (CUDA fp32 with
TF32 off and cudnn.benchmark on, else CPU); ncnn Vulkan fp32 and fp16 ("ncnn-vk32", "ncnn-vk16"), for shape-preserving
non-transposed layers at batch 1 only (ncnn has no batch dimension, and the peer method chains only those).
An engine that is not installed, or has no device, is reported as unavailable; a layer it cannot time gets
"n/a" and the reason. Each engine's output is compared to convroute's (first policy) as a sanity check.

With dtype "float16" convroute runs f16 buffers and kernels routed in float16 ("convroute-<policy>-fp16"),
torch runs fp16 ("torch-fp16", where its device has fp16 convs), ncnn-vk16 is the headline peer and
ncnn-vk32 stays beside it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from convroute.device.gpu import Gpu, Recording
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import Epilogue, Precision
from convroute.measure.bench import _progress
from convroute.measure.calibration import device_record
from convroute.measure.reference import relative_error
from convroute.measure.report import shape_text
from convroute.measure.timing import pass_times
from convroute.params import ConvParams
from convroute.router import route_params
from convroute.suites import Suite

ENGINES = ("torch", "ncnn")  # names --compare accepts; "ncnn" times ncnn-vk32 and ncnn-vk16
DEFAULT_CHAIN = 10
TIMED_RUNS = 5
WARMUP_RUNS, WARMUP_S = 3, 0.3
AGREEMENT = {"fp32": 1e-3, "fp16": 5e-2}  # relative difference to convroute's output beyond which a layer is flagged


class Unavailable(Exception):
    """The engine cannot run on this machine at all (not installed, no device)."""


class NotApplicable(Exception):
    """The engine cannot time this layer with the chained method."""


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


def short_precision(dtype: str) -> str:
    return "fp16" if dtype == "float16" else "fp32"


def shape_preserving(p: ConvParams) -> bool:
    return p.c_in == p.c_out and p.stride == (1, 1) and (p.ho, p.wo) == (p.h, p.w)


def layer_data(p: ConvParams, seed: int):
    """Input, weight (scaled by 1/sqrt(fan-in), so a chain neither explodes nor vanishes) and bias."""
    rng = np.random.default_rng(seed)
    fan_in = (p.c_out // p.groups if p.transposed else p.c_in // p.groups) * p.kh * p.kw
    x = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
    weight = (rng.uniform(-1, 1, p.weight_shape) / math.sqrt(fan_in)).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, p.c_out).astype(np.float32)
    return x, weight, bias


class Engine:
    """One engine's chained runs: `prepare(p, x, weight, bias, chain)` -> (once, gpu_ms or None, release);
    once() runs the whole chain (upload, L layers, download) and returns the output as numpy."""

    name = ""
    precision = "fp32"
    detail = ""

    def prepare(self, p, x, weight, bias, chain):
        raise NotImplementedError


class ConvrouteEngine(Engine):
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
        best = min(pass_times(self.gpu, dispatches, reps))
        return best if best > 0 else None


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, precision: str = "fp32"):
        try:
            import torch
        except ImportError:
            raise Unavailable("torch is not installed (pip install torch)") from None
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            self.name = "torch-fp16"
            self.probe_fp16()
        where = torch.cuda.get_device_name(0) if self.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        extra = ", TF32 off, cudnn.benchmark" if self.device == "cuda" else ""
        self.detail = f"torch {torch.__version__} {self.device} ({where}) {precision}{extra}"

    def probe_fp16(self) -> None:
        """Unavailable when this torch build has no fp16 conv on its device (older CPU builds had none)."""
        torch = self.torch
        x = torch.ones(1, 2, 4, 4, dtype=torch.float16, device=self.device)
        w = torch.ones(2, 2, 3, 3, dtype=torch.float16, device=self.device)
        try:
            torch.nn.functional.conv2d(x, w, padding=1)
            torch.nn.functional.conv_transpose2d(x, w, stride=2)
        except RuntimeError as err:
            raise Unavailable(f"torch {torch.__version__} has no float16 conv on {self.device} ({err})") from None

    @contextlib.contextmanager
    def settings(self):
        """fp32 without TF32, cudnn.benchmark on; the caller's settings come back afterwards."""
        backends = self.torch.backends
        saved = (backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = True, False, False
        try:
            yield
        finally:
            backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved

    def prepare(self, p, x, weight, bias, chain):
        torch, dev = self.torch, self.device
        functional = torch.nn.functional
        w, b = torch.from_numpy(weight).to(dev, self.dtype), torch.from_numpy(bias).to(dev, self.dtype)
        x_host = torch.from_numpy(x).to(self.dtype)
        kwargs = {"stride": p.stride, "padding": p.padding, "dilation": p.dilation, "groups": p.groups}
        if p.transposed:
            conv = functional.conv_transpose2d
            kwargs["output_padding"] = p.output_padding
        else:
            conv = functional.conv2d
        preserving = shape_preserving(p)

        @torch.no_grad()
        def run_chain(x_dev):
            y = x_dev
            for _ in range(chain):
                y = conv(y if preserving else x_dev, w, b, **kwargs)
            return y

        def once():
            return run_chain(x_host.to(dev)).cpu().numpy()  # .cpu() waits for the stream

        gpu_ms = None
        if dev == "cuda":
            x_dev = x_host.to(dev)

            def gpu_ms():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                best = math.inf
                for _ in range(TIMED_RUNS):
                    start.record()
                    run_chain(x_dev)
                    end.record()
                    torch.cuda.synchronize()
                    best = min(best, start.elapsed_time(end))
                return best / chain

        return once, gpu_ms, lambda: None


class NcnnEngine(Engine):
    def __init__(self, precision: str):
        try:
            import ncnn
        except ImportError:
            raise Unavailable("ncnn is not installed (pip install ncnn)") from None
        if ncnn.get_gpu_count() < 1:
            raise Unavailable("ncnn finds no Vulkan device here")
        self.ncnn = ncnn
        self.precision = precision
        self.name = f"ncnn-vk{precision[2:]}"
        fp16 = ", fp16 storage and arithmetic" if precision == "fp16" else ", fp16 storage/arithmetic off"
        self.detail = f"ncnn Vulkan on {ncnn.get_gpu_info(0).device_name()}{fp16}"

    @staticmethod
    def unsupported(p: ConvParams) -> str | None:
        if p.transposed:
            return "transposed convs are not part of the peer method (Deconvolution layers)"
        if p.n != 1:
            return "ncnn has no batch dimension (batch 1 only)"
        if not shape_preserving(p):
            return "not shape-preserving (C_in == C_out, stride 1, same size): the peer method chains only those"
        return None

    def prepare(self, p, x, weight, bias, chain):
        why = self.unsupported(p)
        if why:
            raise NotApplicable(why)
        ncnn = self.ncnn
        net = ncnn.Net()
        net.opt.use_vulkan_compute = True
        if self.precision == "fp32":
            net.opt.use_fp16_packed = False
            net.opt.use_fp16_storage = False
            net.opt.use_fp16_arithmetic = False
        with tempfile.TemporaryDirectory() as folder:
            param, model = Path(folder, "chain.param"), Path(folder, "chain.bin")
            param.write_text(ncnn_param(p, chain))
            model.write_bytes(ncnn_weights(weight, bias, chain))
            if net.load_param(str(param)) != 0 or net.load_model(str(model)) != 0:
                raise RuntimeError("ncnn could not load the generated chain")
        mat = ncnn.Mat(np.ascontiguousarray(x[0])).clone()  # wrapping numpy gives an unaligned channel step

        def once():
            extractor = net.create_extractor()
            extractor.input("b0", mat)
            ret, out = extractor.extract(f"b{chain}")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return np.array(out).reshape(p.output_shape)

        return once, None, net.clear


def ncnn_param(p: ConvParams, chain: int) -> str:
    """An ncnn .param text: an Input and `chain` Convolution (groups 1) or ConvolutionDepthWise layers."""
    size = p.c_out * (p.c_in // p.groups) * p.kh * p.kw
    kind = "Convolution" if p.groups == 1 else "ConvolutionDepthWise"
    group = "" if p.groups == 1 else f" 7={p.groups}"
    args = (f"0={p.c_out} 1={p.kw} 11={p.kh} 2={p.dilation[1]} 12={p.dilation[0]} 3={p.stride[1]} "
            f"13={p.stride[0]} 4={p.padding[1]} 14={p.padding[0]} 5=1 6={size}{group}")
    lines = ["7767517", f"{chain + 1} {chain + 1}", f"Input data 0 1 b0 0={p.w} 1={p.h} 2={p.c_in}"]
    lines += [f"{kind} c{i} 1 1 b{i} b{i + 1} {args}" for i in range(chain)]
    return "\n".join(lines) + "\n"


def ncnn_weights(weight: np.ndarray, bias: np.ndarray, chain: int) -> bytes:
    """The .bin: per layer a float32 weight blob (tag 0 = raw float32) and the bias."""
    one = np.zeros(1, np.uint32).tobytes() + weight.astype(np.float32).tobytes() + bias.astype(np.float32).tobytes()
    return one * chain


# -- the run ---------------------------------------------------------------------------------------------

def make_engines(gpu: Gpu, policies, compare, dtype: str = "float32") -> dict[str, Engine | str]:
    """name -> engine, or the reason it is unavailable. In float16 the peers of that precision come first."""
    ours = [ConvrouteEngine(gpu, p, dtype) for p in policies]
    engines: dict[str, Engine | str] = {e.name: e for e in ours}
    fp16 = short_precision(Precision.parse(dtype).dtype) == "fp16"
    ncnn = [("ncnn-vk32", lambda: NcnnEngine("fp32")), ("ncnn-vk16", lambda: NcnnEngine("fp16"))]
    builds = {"torch": [("torch-fp16", lambda: TorchEngine("fp16"))] if fp16 else [("torch", TorchEngine)],
              "ncnn": ncnn[::-1] if fp16 else ncnn}
    for name in compare:
        if name not in ENGINES:
            raise ValueError(f"unknown engine {name!r} for --compare; known: {', '.join(ENGINES)}")
        for label, build in builds[name]:
            try:
                engines[label] = build()
            except Unavailable as err:
                engines[label] = str(err)
    return engines


def run_compare(gpu: Gpu, suite: Suite, batch: int = 1, policies=("seed",), compare=ENGINES, *,
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
    for i, engine_name in ((i, e) for i in _progress(range(len(layers)), progress, f"{suite.name} --compare")
                           for e in runnable):
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
            measurement.difference = relative_error(output.astype(np.float64), outputs[i].astype(np.float64))
        result.layers.append(measurement)
    report = CompareReport(suite.name, batch, chain, budget_s, device_record(gpu.profile),
                           [n for n, _, _ in layers], [c for _, c, _ in layers], [p for _, _, p in layers], results,
                           dtype=dtype)
    report.notes += disagreements(report)
    return report


def measure(engine: Engine, p: ConvParams, index: int, chain: int,
            budget_s: float) -> tuple[Measurement, np.ndarray | None]:
    """Time one layer on one engine; an error becomes the measurement's reason, the run goes on."""
    algorithm = engine.algorithm(p) if isinstance(engine, ConvrouteEngine) else None
    x, weight, bias = layer_data(p, seed=index)
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


def torch_settings(engine: Engine):
    return engine.settings() if isinstance(engine, TorchEngine) else contextlib.nullcontext()


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
    return aligned(head, rows, left=3)


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
    return aligned(["suite", "convroute"] + [f"/ {peer}" for peer in peers], rows, left=2)


def aligned(head: list[str], rows: list[list[str]], left: int) -> str:
    """Columns aligned under a ruled head; the first `left` columns left-justified, the rest right-justified."""
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_compare(report: CompareReport, path: str) -> None:
    """Per-layer bars per engine (log scale), and convroute / peer ratios beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = report.convroute + report.peers
    n = len(report.names)
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(max(10.0, 0.5 * n + 5), 6.5),
                                       gridspec_kw={"width_ratios": [max(n, 4), 3]})
    width = 0.8 / max(len(engines), 1)
    x = np.arange(n)
    for j, name in enumerate(engines):
        times = [np.nan if m.ms is None else m.ms for m in report.engines[name].layers]
        ax.bar(x + (j - (len(engines) - 1) / 2) * width, times, width, label=name)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{name} x{c}" if c > 1 else name for name, c in zip(report.names, report.counts, strict=True)],
                  rotation=70, ha="right", fontsize=7)
    ax.set_ylabel(f"ms per layer (chain of {report.chain}, transfers included)")
    ax.set_title(f"{report.suite}, batch {report.batch}: convroute {report.dtype} vs other engines")
    ax.legend(fontsize=8)
    ratios = report.ratios()
    labels = [f"{r['convroute']} / {r['peer']}" for r in ratios]
    values = [r["ratio"] for r in ratios]
    ax_ratio.barh(labels, values, color=["tab:green" if v <= 1 else "tab:red" for v in values])
    ax_ratio.axvline(1.0, color="black", linewidth=0.8)
    ax_ratio.set_xscale("log")
    for label, r in zip(labels, ratios, strict=True):
        subset = "all" if r["subset"] == "all" else f"{len(r['subset'])}/{n} layers"
        ax_ratio.text(r["ratio"], label, f" {r['ratio']:.2f}x ({subset})", va="center", fontsize=7)
    ax_ratio.invert_yaxis()
    ax_ratio.set_xlabel("total time ratio (weighted by counts)")
    ax_ratio.set_title(report.device.get("name", "")[:40], fontsize=8)
    ax_ratio.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

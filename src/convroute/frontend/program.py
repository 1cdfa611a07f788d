"""`convroute.compile(model, example_inputs)` -> `Program`: a whole PyTorch model on the GPU.

A Program keeps one plan per input shape (export, lowering, buffers and dispatches are built once per
shape); calling it uploads the inputs, submits, and reads the outputs back as torch tensors. With
dtype="float16" every GPU value is stored as f16 (arithmetic stays f32 inside the kernels); inputs are
converted on upload and outputs back to the model's own dtype on the host.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from convroute import api
from convroute.device.gpu import Recording, get_gpu, resolve_profile
from convroute.frontend.export import export_model
from convroute.frontend.fallback import download, host_array, run_on_cpu, upload
from convroute.frontend.graph import Ref
from convroute.frontend.lower import cpu_flops
from convroute.frontend.plan import Plan, Segment, ValueTooLarge, build_plan
from convroute.frontend.web.export import export_program
from convroute.kernels.common import Precision
from convroute.measure.passes import pass_times
from convroute.measure.timing import TimingSettings, time_candidates, timing_method
from convroute.report.table import format_table
from convroute.router import POLICIES, default_policy
from convroute.settings import env_flag


def compile(model, example_inputs, *, policy: str | None = None, device=None, dtype="float32",  # noqa: A001
            accumulate=None, fuse_residual: bool | None = None, fuse_depthwise: bool | None = None) -> Program:
    """Export `model` (put in eval mode) with `example_inputs` and prepare it for the GPU.

    `policy` picks each conv's algorithm (None: $CONVROUTE_POLICY, else "seed"); `device` routes as if for
    another GPU (a family name or a DeviceProfile) while still running on the adapter in use. `dtype`: how
    values are stored on the GPU, "float32" (default) or "float16" (torch.float16 accepted; needs the adapter
    feature shader-f16): activations and weights in f16, the convs' and linear layers' multiply-adds in f16
    (each block of products summed in f16 and added to f32 totals, see kernels.common.Precision), elementwise
    math in f32, routing per dtype (`route_params(dtype=)`). The outputs come back in the model's own dtype
    (float32 for a float32 model: the f16 results converted on the host, exactly), so a program is a drop-in
    for the model either way; expect relative errors near 1e-3. A `.half()` model runs on the GPU too (in
    either storage) and returns float16; with float16 storage, casts between float32 and float16 inside the
    model cost nothing.
    `accumulate="float32"` (with dtype="float16") keeps those sums in f32 (slower at batch 1 on the H100).
    `fuse_residual=False` keeps every residual add (a conv's result plus a tensor of its shape, as ResNet and
    MobileNetV2 blocks end) a dispatch of its own instead of part of the conv's store (None: on unless
    $CONVROUTE_FUSE_RESIDUAL is 0). `fuse_depthwise=True` runs a depthwise conv and the 1x1 conv reading it
    (MobileNet's blocks) as one kernel on GPUs (None: $CONVROUTE_FUSE_DEPTHWISE, off by default: on the H100
    MobileNetV2 ran 1.09-1.33x slower fused, the depthwise taps lengthening every K step of the GEMM).
    """
    return Program(model, example_inputs, policy=policy, device=device, dtype=dtype, accumulate=accumulate,
                   fuse_residual=fuse_residual, fuse_depthwise=fuse_depthwise)


def env_fuse_residual() -> bool:
    return env_flag("CONVROUTE_FUSE_RESIDUAL", True)


def env_fuse_depthwise() -> bool:
    return env_flag("CONVROUTE_FUSE_DEPTHWISE", False)


class CpuStepsWarning(UserWarning):
    """Some of a compiled model's ops run on the CPU through torch (`Program.summary()` says which and why)."""


def warn_cpu_steps(plan: Plan) -> None:
    ops = Counter(step.node.op for step in plan.steps if step.where == "cpu")
    if ops:
        listed = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in ops.most_common())
        warnings.warn(f"convroute runs {sum(ops.values())} ops on the CPU through torch ({listed}); "
                      f"program.summary() says why", CpuStepsWarning, stacklevel=4)


class Program:
    def __init__(self, model, example_inputs, *, policy: str | None = None, device=None, dtype="float32",
                 accumulate=None, fuse_residual: bool | None = None, fuse_depthwise: bool | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        policy = policy or default_policy()
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.precision = Precision.parse(dtype, accumulate)
        self.dtype = self.precision.dtype  # "float32" or "float16": the element type of GPU values
        self.model, self.policy = model, policy
        self.fuse_residual = env_fuse_residual() if fuse_residual is None else fuse_residual
        self.fuse_depthwise = env_fuse_depthwise() if fuse_depthwise is None else fuse_depthwise
        self.gpu = get_gpu()
        self.precision.require(self.gpu.profile)
        self.device_profile = self.gpu.profile if device is None else resolve_profile(device)
        self._plans: dict[tuple, Plan | int] = {}
        self._lock = threading.Lock()  # calls take turns: they share the plans' buffers and recordings
        self.batch_split: tuple[int, int] | None = None  # (batch, chunk) when the last call ran in chunks
        self._plan_for(_as_inputs(example_inputs))  # sets self.plan

    # -- running -------------------------------------------------------------------------------
    def __call__(self, *inputs):
        inputs = _as_inputs(inputs)
        expected = len(self.plan.graph.inputs)
        if len(inputs) != expected:
            raise TypeError(f"the program takes {expected} input tensor(s), as its example did; got {len(inputs)}")
        with self._lock:
            self.batch_split = None
            return self._forward(inputs)

    def _forward(self, inputs):
        found = self._plan_for(inputs)
        if isinstance(found, Plan):
            return self._run(found, inputs)
        batch = inputs[0].shape[0]
        parts = [self._forward(chunk) for chunk in ([t[i:i + found] for t in inputs] for i in range(0, batch, found))]
        self.batch_split = (batch, found)
        leaves = [tree_flatten(p) for p in parts]
        joined = [torch.cat(column) if isinstance(column[0], torch.Tensor) else column[0]
                  for column in zip(*(flat for flat, _ in leaves), strict=True)]
        return tree_unflatten(joined, leaves[0][1])

    def _plan_for(self, inputs: list[torch.Tensor]):
        """The plan for these input shapes, or (when a value would not fit one storage binding) the batch
        size to run in chunks of."""
        key = tuple((tuple(t.shape), t.dtype) for t in inputs)
        if key not in self._plans:
            graph = export_model(self.model, tuple(inputs))
            try:
                self._plans[key] = build_plan(graph, dict(gpu=self.gpu, profile=self.device_profile,
                                                          policy=self.policy, precision=self.precision),
                                              self.fuse_residual, self.fuse_depthwise)
                warn_cpu_steps(self._plans[key])
            except ValueTooLarge as exc:
                self._plans[key] = self._batch_chunk(inputs, exc)
        found = self._plans[key]
        if isinstance(found, Plan):
            self.plan = found
        return found

    def _batch_chunk(self, inputs, exc: ValueTooLarge) -> int:
        batch = inputs[0].shape[0] if inputs[0].ndim else 0
        if batch < 2 or any(t.ndim == 0 or t.shape[0] != batch for t in inputs):
            raise exc
        per_image = -(-exc.nbytes // batch)
        chunk = min(batch - 1, max(1, self.gpu.profile.max_binding_bytes // per_image))
        while True:
            found = self._plan_for([t[:chunk] for t in inputs])
            if isinstance(found, Plan):
                break
            if chunk == 1:
                raise exc
            chunk = max(1, chunk // 2)
        if not found.keeps_batch(chunk):
            raise ValueError(f"{exc}, and the batch cannot be split: some values of the model do not keep the "
                             f"batch dimension (images may mix); use a smaller batch") from exc
        return chunk

    def _run(self, plan: Plan, inputs, on_segment=None, on_cpu=None):
        gpu, graph, stored = self.gpu, plan.graph, self.precision.numpy
        if api.POISON:
            for buf in plan.allocated:
                gpu.fill(buf, np.nan, stored)
        env = dict(zip(graph.inputs, inputs, strict=True))
        staged = on_segment is None and bool(plan.segments) and isinstance(plan.segments[0], Segment)
        for name in plan.input_uploads:
            target, dtype = self._upload_target(plan, name)
            source = self._upload_buffer(plan, name, target, dtype) if staged else None
            if source is not None:
                gpu.write_staged(source, host_array(env[name], dtype), dtype)
            else:
                upload(gpu, target, env[name], dtype)
        writes = [copy for copy in plan.upload_buffers.values() if copy is not None] if staged else []
        fused_read = plan.fused_read if on_segment is None else None
        for seg in plan.segments:
            if isinstance(seg, Segment):
                first = writes if seg is plan.segments[0] else ()
                if fused_read and seg is plan.segments[-1]:  # the output comes back in the same submission
                    name, meta = fused_read
                    read = self._recording(seg, (plan.buffer(name), meta.shape), first).run()
                    env[name] = torch.from_numpy(read).to(meta.dtype)
                elif on_segment:
                    on_segment(seg)
                else:
                    self._recording(seg, writes=first).run()
                continue
            start = time.perf_counter()
            for name in seg.downloads:
                if name not in env:
                    env[name] = download(gpu, plan.buffer(name), plan.metas[name], stored)
            env[seg.node.name] = run_on_cpu(seg.node, env, graph.constants)
            for name in seg.uploads:
                upload(gpu, plan.buffer(name), env[name], stored)
            if on_cpu:
                on_cpu(seg, time.perf_counter() - start)
        results = []
        for out in graph.outputs:
            if not isinstance(out, Ref):
                results.append(out)
            elif out.name in env:
                results.append(env[out.name])
            elif out.name in graph.constants:
                results.append(graph.constants[out.name])
            else:
                results.append(download(gpu, plan.buffer(out.name), plan.metas[out.name], stored))
        return tree_unflatten(results, graph.out_spec)

    def _recording(self, seg: Segment, read=None, writes=()) -> Recording:
        """The segment's kept Recording (its next command buffer is encoded while the GPU runs this one)."""
        writes = tuple(writes)
        if seg.recording is None or (seg.recording.read is None) != (read is None) or seg.recording.writes != writes:
            seg.recording = Recording(self.gpu, seg.dispatches, read and (*read, self.precision.numpy),
                                      writes=writes)
        return seg.recording

    def _upload_target(self, plan: Plan, name: str):
        """The buffer an input is uploaded to and its dtype there: float32 inputs of f16 programs go to a
        float32 buffer of their own, cast by the first dispatch (plan._input_casts)."""
        staging = plan.input_staging.get(name)
        return (plan.buffer(name), self.precision.numpy) if staging is None else (staging, np.float32)

    def _upload_buffer(self, plan: Plan, name: str, target, dtype):
        """The input's upload buffer, which the first segment copies to `target` (Gpu.write_staged); None for
        an empty input."""
        if name not in plan.upload_buffers:
            nbytes = plan.metas[name].numel() * np.dtype(dtype).itemsize
            source = self.gpu.upload_buffer(nbytes) if nbytes else None
            plan.upload_buffers[name] = None if source is None else (source, target, source.size)
        copy = plan.upload_buffers[name]
        return None if copy is None else copy[0]

    def export_web(self, out, **options) -> dict:
        """Write this program as a browser bundle to the directory `out` (frontend.web.export_web's options:
        dtype, policy, family, candidates, exclude, name); the manifest's dict."""
        return export_program(self, out, **options)

    # -- reports -------------------------------------------------------------------------------
    def summary(self) -> Summary:
        """Which ops ran where, and the share of FLOPs on the GPU (for the last input shape used)."""
        plan = self.plan
        gpu_ops = Counter(s.node.op for s in plan.gpu_steps)
        if plan.aliases:
            gpu_ops.update(f"{n.op} (no copy)" for n in plan.aliases)
        cpu = [(s.node.name, s.node.op, s.reason) for s in plan.cpu_steps]
        gpu_flops = sum(s.op.flops for s in plan.gpu_steps)
        cpu_flops_ = sum(cpu_flops(s.node, plan.graph.constants, plan.metas) for s in plan.cpu_steps)
        convs = [s for s in plan.steps if s.node.op == "convolution"]
        conv_cpu_flops = sum(cpu_flops(s.node, plan.graph.constants, plan.metas) for s in convs if s.where == "cpu")
        conv_gpu_flops = sum(s.op.flops for s in convs if s.where == "gpu")
        return Summary(
            input_shapes=[tuple(plan.metas[n].shape) for n in plan.graph.inputs],
            gpu_ops=dict(gpu_ops), cpu_ops=cpu, gpu_flops=gpu_flops, total_flops=gpu_flops + cpu_flops_,
            convs_on_gpu=sum(s.where == "gpu" for s in convs), convs=len(convs),
            conv_gpu_flops=conv_gpu_flops, conv_flops=conv_gpu_flops + conv_cpu_flops,
            dispatches=sum(len(s.dispatches) for s in plan.gpu_steps),
            submits=sum(isinstance(s, Segment) for s in plan.segments),
            buffers=len(plan.allocated), buffer_bytes=sum(b.size for b in plan.allocated),
            fused=[f"{s.node.module or s.node.name}: {note}" for s in plan.steps for note in s.node.notes],
            batch_split=self.batch_split, dtype=self.dtype)

    def convs(self) -> list[dict]:
        """One row per conv of the last plan: shape, where, algorithm, fused epilogue, reason (a depthwise conv
        fused into the 1x1 after it gets a row of its own, before the 1x1's)."""
        rows = []
        for s in self.plan.steps:
            if s.node.op != "convolution":
                continue
            p, d = (s.op.params, s.op.decision) if s.op else (None, None)
            algorithm = d.algorithm if d else "torch (CPU)"
            if s.node.depthwise is not None:
                rows.append(self._conv_row(s.node.depthwise, s.op.inner if s.op else None, s.where, algorithm,
                                           "runs inside the 1x1 conv after it (see its row)"))
            rows.append(self._conv_row(s.node, p, s.where, algorithm, d.reason if d else s.reason))
        return rows

    def _conv_row(self, node, p, where: str, algorithm: str, reason: str) -> dict:
        in_shape = p.input_shape if p else tuple(self.plan.metas[node.conv_input().name].shape)
        w = node.args[1]
        w_shape = p.weight_shape if p else tuple(getattr(self.plan.graph.constants.get(w.name), "shape", ()))
        return dict(name=node.module or node.name, input=in_shape, weight=w_shape, stride=tuple(node.args[3]),
                    padding=tuple(node.args[4]), dilation=tuple(node.args[5]), groups=node.args[8],
                    transposed=node.args[6], where=where, algorithm=algorithm, reason=reason,
                    epilogue=node.act.kind if node.act else "none", fused=list(node.notes),
                    flops=p.flops if p else 0)

    def explain(self, file=None) -> str:
        """Print (and return) each conv with its algorithm, fused epilogue and the reason it was chosen."""
        shapes = [tuple(self.plan.metas[n].shape) for n in self.plan.graph.inputs]
        lines = [f"{len(self.convs())} convs, policy {self.policy}, routed for {self.device_profile.family} "
                 f"({self.device_profile.name}); input {shapes}; GPU values stored as {self.dtype}"]
        header = ("conv", "input", "weight", "s/p/d/g", "algorithm", "fused", "reason")
        rows = []
        for r in self.convs():
            spdg = f"{_short(r['stride'])}/{_short(r['padding'])}/{_short(r['dilation'])}/{r['groups']}"
            fused = "+".join("bn" if f.startswith("batch norm") else f.split(" ")[0] for f in r["fused"])
            rows.append((r["name"], _dims(r["input"]), _dims(r["weight"]), spdg, r["algorithm"], fused or "-",
                         r["reason"]))
        lines += _rows(header, rows)
        text = "\n".join(lines)
        print(text, file=file or sys.stdout)
        return text

    def plan_dispatches(self) -> int:
        """Dispatches one call of the last-run plan submits, input casts included (summary() counts the ops')."""
        return sum(len(seg.dispatches) for seg in self.plan.segments if isinstance(seg, Segment))

    def gpu_pass_times(self, runs: int = 20) -> list[float] | None:
        """Seconds the GPU spends on the last-run plan's GPU dispatches, all in one compute pass, `runs` times
        (measure.timing's timer, GPU timestamps) over the values the last call left; None without timestamps. A
        call's wall time minus this is host work: input upload, submit, read-back, Python (and CPU steps)."""
        if "timestamp-query" not in self.gpu.device.features:
            return None
        with self._lock:
            dispatches = [d for seg in self.plan.segments if isinstance(seg, Segment) for d in seg.dispatches]
            if not dispatches:
                return None
            settings = TimingSettings(warmup=1, repeats=runs, min_repeats=runs, budget_s=0.0, method="timestamp")
            timing = time_candidates(self.gpu, {"pass": [dispatches]}, settings)["pass"]
        if not timing.method.startswith("gpu timestamps"):  # the timestamps read nonsense: the timer fell back
            return None
        return [ms / 1e3 for ms in timing.samples_ms]

    def _in_order_times(self, plan: Plan, timed: list, runs: int) -> list[list[float]] | None:
        """Per timed node, `runs` GPU ms with every node run in plan order (None: no timestamps, CPU steps
        between, or timestamps that read nonsense)."""
        if plan.cpu_steps or timing_method(self.gpu, TimingSettings()) != "timestamp":
            return None
        passes = [s.dispatches for s in timed]
        rounds = [pass_times(self.gpu, passes, per_submit=len(passes)) for _ in range(runs + 1)][1:]  # 1 warm-up
        if min(min(r) for r in rounds) <= 0:
            return None
        return [list(samples) for samples in zip(*rounds, strict=True)]

    def profile(self, *inputs, runs: int = 3, file=None) -> list[dict]:
        """Time each GPU node alone, in its own compute pass, and each CPU step; print a table and return its
        rows (ms: median of `runs`). Random inputs when none given. With GPU timestamps and no CPU steps the
        nodes run in plan order in one submission, so each reads the values its producers just wrote (buffers
        are reused once a value is dead: a node run after the whole model would read another value's data,
        and data decides some kernels' time, e.g. Winograd's non-finite fallback); otherwise each node is timed
        by measure.timing's timer over the values the last call left."""
        inputs = _as_inputs(inputs) if inputs else [
            torch.randn(self.plan.metas[n].shape, dtype=self.plan.metas[n].dtype) for n in self.plan.graph.inputs]
        plan = self._plan_for(inputs)
        self._run(plan, inputs)  # warm-up; fills every buffer with real values
        times: dict[str, list[float]] = {s.node.name: [] for s in plan.steps}
        for _ in range(runs if plan.cpu_steps else 0):
            self._run(plan, inputs, on_cpu=lambda step, dt: times[step.node.name].append(1e3 * dt))
        timed = [s for s in plan.gpu_steps if s.dispatches]
        how = "no GPU nodes"
        in_order = self._in_order_times(plan, timed, runs) if timed else None
        if in_order:
            for s, samples in zip(timed, in_order, strict=True):
                times[s.node.name] = samples
            how = "gpu timestamps, one compute pass per node, in plan order"
        elif timed:
            settings = TimingSettings(warmup=1, repeats=runs, min_repeats=runs, budget_s=0.0)
            results = time_candidates(self.gpu, {s.node.name: [s.dispatches] for s in timed}, settings)
            for name, result in results.items():
                times[name] = list(result.samples_ms)
            how = f"{next(iter(results.values())).method}, one compute pass per node, each after the whole model"
        totals = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run(plan, inputs)
            totals.append(time.perf_counter() - start)
        rows = [dict(name=s.node.module or s.node.name, op=s.node.op, where=s.where,
                     ms=statistics.median(times[s.node.name]) if times[s.node.name] else 0.0)
                for s in plan.steps]
        summed = sum(r["ms"] for r in rows) or 1.0
        table = _rows(("node", "op", "where", "ms", "share"),
                      [(r["name"], r["op"], r["where"], f"{r['ms']:.3f}", f"{100 * r['ms'] / summed:.1f}%")
                        for r in rows])
        print("\n".join([f"per-node times ({how}, median of {runs} runs):"] + table +
                        [f"sum of nodes {summed:.3f} ms; whole program (one submit per GPU segment) "
                         f"{1e3 * statistics.median(totals):.3f} ms"]), file=file or sys.stdout)
        return rows


@dataclass
class Summary:
    input_shapes: list
    gpu_ops: dict
    cpu_ops: list  # (node, op, reason)
    gpu_flops: int
    total_flops: int
    convs_on_gpu: int
    convs: int
    dispatches: int
    submits: int
    buffers: int
    buffer_bytes: int
    fused: list = field(default_factory=list)
    batch_split: tuple | None = None  # (batch, chunk) when the last call ran the batch in chunks
    dtype: str = "float32"  # element type of the GPU values
    conv_gpu_flops: int = 0
    conv_flops: int = 0

    @property
    def gpu_share(self) -> float:
        return self.gpu_flops / self.total_flops if self.total_flops else 1.0

    @property
    def conv_gpu_share(self) -> float:
        """Share of the convolutions' FLOPs that run on the GPU (1.0 without convs)."""
        return self.conv_gpu_flops / self.conv_flops if self.conv_flops else 1.0

    @property
    def all_convs_on_gpu(self) -> bool:
        return self.convs_on_gpu == self.convs

    def __str__(self) -> str:
        lines = [f"input {self.input_shapes}: {sum(self.gpu_ops.values())} ops on the GPU, "
                 f"{len(self.cpu_ops)} on the CPU; convs on the GPU {self.convs_on_gpu}/{self.convs}; "
                 f"GPU share of FLOPs {100 * self.gpu_share:.2f}% ({self.gpu_flops / 1e6:.1f} of "
                 f"{self.total_flops / 1e6:.1f} MFLOP)",
                 f"{self.dispatches} dispatches in {self.submits} submit(s); {self.buffers} GPU buffers "
                 f"({self.buffer_bytes / 2**20:.1f} MiB, {self.dtype}) for all intermediate values; "
                 f"{len(self.fused)} fusions",
                 "GPU: " + ", ".join(f"{op} x{n}" for op, n in sorted(self.gpu_ops.items()))]
        if self.batch_split:
            lines.append(f"batch {self.batch_split[0]} ran in chunks of {self.batch_split[1]} (a value of the "
                         f"whole batch exceeds the device's largest storage binding)")
        if self.cpu_ops:
            lines.append("CPU (torch fallback):")
            lines += [f"  {name} ({op}): {reason}" for name, op, reason in self.cpu_ops]
        else:
            lines.append("CPU: nothing")
        return "\n".join(lines)

    __repr__ = __str__


def _as_inputs(inputs) -> list[torch.Tensor]:
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        inputs = (inputs,)
    out = []
    for i, t in enumerate(inputs):
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"input {i} must be a torch tensor or numpy array, got {type(t).__name__}")
        out.append(t.detach().cpu().contiguous())
    if not out:
        raise ValueError("the model needs at least one example input")
    return out


def _short(pair) -> str:
    return str(pair[0]) if len(set(pair)) == 1 else "x".join(map(str, pair))


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def _rows(header, rows) -> list[str]:
    return format_table(list(header), [list(map(str, r)) for r in rows], left=len(header)).splitlines()

"""Planning one input shape: place each node (GPU kernel, free alias, or CPU through torch), give every
GPU value a buffer (reusing buffers whose values are dead; sized in the storage precision's elements:
4 bytes, or 2 for float16), and record all dispatches once.

Running a plan is then: upload the inputs, one submit per GPU segment (one in all when nothing falls
back to the CPU), CPU steps in between, one read per output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from convroute.device.gpu import BufferView, Dispatch, word_align
from convroute.frontend.channels_last import channel_norm, lower_channel_norm, sink_permutes
from convroute.frontend.concat_view import concat_view, fuse_concat_views, lower_concat_view
from convroute.frontend.export import fold_batch_norms, fuse_depthwise_pointwise, fuse_residual_adds, node_error
from convroute.frontend.fuse import (
    channel_attention,
    fold_affine_pairs,
    fold_batch_norm_through_concat,
    fold_layer_scales,
    fuse_channel_attention,
    fuse_squeeze_excite,
    lower_channel_attention,
    lower_squeeze_excite,
    squeeze_excite,
)
from convroute.frontend.graph import Graph, Node, Ref, iter_refs
from convroute.frontend.lower import (
    GPU_DTYPES,
    Context,
    GpuOp,
    Unsupported,
    fuses_depthwise,
    is_alias,
    lower,
    routable,
    routed_to_winograd,
    takes_residual,
)
from convroute.frontend.reductions import fuse_reductions, lower_weighted_sum, weighted_sum
from convroute.frontend.siblings import merge_sibling_convs
from convroute.frontend.summed_convs import merge_summed_convs
from convroute.frontend.views import locate, plan_views
from convroute.frontend.wide_convs import split_wide_convs
from convroute.kernels.elementwise import Unary
from convroute.settings import env_flag

NEVER = float("inf")


class ValueTooLarge(ValueError):
    """A value of the graph does not fit one storage binding of the device."""

    def __init__(self, name: str, shape: tuple, nbytes: int, limit: int):
        super().__init__(f"value {name} of shape {shape} needs {nbytes} bytes, more than the device's largest "
                         f"storage binding ({limit} bytes)")
        self.nbytes = nbytes


@dataclass
class Step:
    node: Node
    where: str  # "gpu" or "cpu"
    op: GpuOp | None = None
    reason: str = ""  # why it runs on the CPU
    dispatches: list[Dispatch] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)  # GPU values a CPU step reads
    uploads: list[str] = field(default_factory=list)  # CPU results later GPU steps read


@dataclass
class Segment:
    """Consecutive GPU steps: recorded into one compute pass, submitted once."""

    steps: list[Step]
    dispatches: list[Dispatch]
    recording: object = None  # device.gpu.Recording, made on the first run


@dataclass
class Plan:
    graph: Graph
    metas: dict
    steps: list[Step]
    segments: list  # Segment or a CPU Step, in order
    aliases: list[Node]
    root: dict[str, str]  # value -> the value whose buffer it shares
    buffers: dict[str, object]  # root value -> GPU buffer
    allocated: list  # every distinct buffer
    input_uploads: list[str]
    input_staging: dict[str, object] = field(default_factory=dict)  # input -> its float32 upload buffer
    # input -> the first segment's copy (MAP_WRITE upload buffer, input buffer, bytes), None for an empty input
    upload_buffers: dict[str, tuple | None] = field(default_factory=dict)
    within: dict[str, tuple[str, int]] = field(default_factory=dict)  # value -> (value holding it, byte offset)
    itemsize: int = 4  # bytes per stored element

    def buffer(self, name: str):
        """The value's GPU buffer, or a BufferView of the part of another value's buffer it lives in."""
        home, offset = locate(name, self.root, self.within)
        if home == self.root.get(name, name):
            return self.buffers[home]
        return BufferView(self.buffers[home], offset, word_align(self.itemsize * self.metas[name].numel()))

    @cached_property
    def fused_read(self) -> tuple | None:
        """(name, meta) of the one graph output when a GPU segment ends the plan and computes it (it then comes
        back in that segment's submission), else None. Worked out once: a call reads it."""
        refs = [o for o in self.graph.outputs if isinstance(o, Ref)]
        if len(refs) != 1 or not self.segments or not isinstance(self.segments[-1], Segment):
            return None
        name = refs[0].name
        root = self.root.get(name, name)
        if not any(locate(s.node.name, self.root, self.within)[0] == root for s in self.segments[-1].steps):
            return None  # computed elsewhere (an input, a constant, a CPU step, an earlier segment)
        return name, self.metas[name]

    @property
    def gpu_steps(self) -> list[Step]:
        return [s for s in self.steps if s.where == "gpu"]

    @property
    def cpu_steps(self) -> list[Step]:
        return [s for s in self.steps if s.where == "cpu"]

    def keeps_batch(self, batch: int) -> bool:
        """Every run-time tensor has `batch` rows: a sign that images never mix, so the batch may be split."""
        tensors = [m for m in self.metas.values() if isinstance(m, torch.Tensor)]
        tensors += [t for m in self.metas.values() if isinstance(m, (list, tuple)) for t in m
                    if isinstance(t, torch.Tensor)]
        return all(t.ndim >= 1 and t.shape[0] == batch for t in tensors)


def build_plan(graph: Graph, ctx_args: dict, fuse_residual: bool = True, fuse_depthwise: bool = False,
               concat_slabs: bool | None = None, slice_views: bool | None = None,
               float32_input: bool | None = None) -> Plan:
    """`concat_slabs` (default $CONVROUTE_CONCAT_SLABS, on), `slice_views` (default $CONVROUTE_SLICE_VIEWS, on):
    producers write into their slice of a concat, and dense slices are read in place (frontend/views.py).
    $CONVROUTE_CHANNELS_LAST (on): permute -> per-pixel ops -> permute back runs on NCHW without the permutes
    (frontend/channels_last.py); $CONVROUTE_LAYER_SCALE (on): a mul by a per-channel constant after a conv goes
    into the conv's weights; $CONVROUTE_CONCAT_BN (on): a batch norm after a channel concat of convs goes into
    the convs; $CONVROUTE_SUMMED_CONVS (on): convs of one input whose results are added (and an identity batch
    norm added with them: RepVGG, MobileOne) run as one conv (frontend/summed_convs.py);
    $CONVROUTE_AFFINE_PAIRS (on): x * s + t with per-channel constants runs as one batch norm (fuse.py);
    $CONVROUTE_SQUEEZE_EXCITE (on; CPU adapters run it as the pool and two dispatches) and
    $CONVROUTE_CHANNEL_ATTENTION (on): a squeeze-excitation or an ECA block runs as its pool and one dispatch
    (frontend/fuse.py, kernels/squeeze_excite.py); $CONVROUTE_CONCAT_VIEW (on): a concat read only through
    reshapes and a permute runs as one dispatch (frontend/concat_view.py); $CONVROUTE_FUSE_REDUCTIONS (on): a sum
    or mean of a product, or of another sum or mean, runs as one row kernel (frontend/reductions.py).
    `fuse_residual`: residual adds go into the producing conv's store where its routed algorithm can add
    them (export.fuse_residual_adds); the residual is one more input of the conv's GpuOp, so it stays live,
    and in a buffer of its own, until the conv has run. `fuse_depthwise`: a depthwise conv read only by a 1x1
    conv runs inside it where lower.fuses_depthwise says so (export.fuse_depthwise_pointwise). `float32_input`
    (default $CONVROUTE_FLOAT32_INPUT, on): in f16 programs, convs that can read a float32 input read the input's
    float32 upload (_float32_uploads)."""
    if env_flag("CONVROUTE_CHANNELS_LAST", True):  # first: it changes values' shapes
        sink_permutes(graph)
    metas = dict(zip(graph.inputs, graph.input_meta, strict=True))
    metas.update((n.name, n.meta) for n in graph.nodes)
    ctx = Context(constants=graph.constants, metas=metas, **ctx_args)
    float32_uploads = _float32_uploads(ctx, graph)
    if env_flag("CONVROUTE_FLOAT32_INPUT", True) if float32_input is None else float32_input:
        ctx.float32_inputs = float32_uploads
    if env_flag("CONVROUTE_LAYER_SCALE", True):
        fold_layer_scales(graph)
    if env_flag("CONVROUTE_AFFINE_PAIRS", True):  # after the layer scales: a scale a conv can take goes there
        fold_affine_pairs(graph)
    if env_flag("CONVROUTE_CONCAT_BN", True):
        fold_batch_norm_through_concat(graph)
    if env_flag("CONVROUTE_MERGE_SIBLINGS", True) and merge_sibling_convs(graph, lambda p: routable(ctx, p)):
        metas.update((n.name, n.meta) for n in graph.nodes)
    if env_flag("CONVROUTE_SUMMED_CONVS", True) and merge_summed_convs(graph, lambda p: routable(ctx, p)):
        fold_batch_norms(graph)  # RepViT: norm(conv(x) + conv1(x) + x), the norm after the merged conv
        if env_flag("CONVROUTE_LAYER_SCALE", True):  # FastViT's RepMixer: x + scale * (conv(x) - norm(x))
            fold_layer_scales(graph)  # the scale goes into the merged conv ...
        merge_summed_convs(graph, lambda p: routable(ctx, p))  # ... which x then joins
        metas.update((n.name, n.meta) for n in graph.nodes)
    if env_flag("CONVROUTE_SQUEEZE_EXCITE", True):
        fuse_squeeze_excite(graph)
    if env_flag("CONVROUTE_CHANNEL_ATTENTION", True):
        fuse_channel_attention(graph)
    if env_flag("CONVROUTE_FUSE_REDUCTIONS", True):
        fuse_reductions(graph)
    if env_flag("CONVROUTE_CONCAT_VIEW", True):
        fuse_concat_views(graph)
    if split_wide_convs(graph, ctx.gpu.profile.max_binding_bytes, ctx.precision.itemsize,  # after the merges
                        lambda conv: routed_to_winograd(ctx, conv)):
        metas.update((n.name, n.meta) for n in graph.nodes)
    if fuse_depthwise:
        fuse_depthwise_pointwise(graph, lambda dw, conv: fuses_depthwise(ctx, dw, conv))
    if fuse_residual:
        fuse_residual_adds(graph, lambda conv: takes_residual(ctx, conv))
    steps, aliases, root = [], [], {}
    on_gpu: set[str] = set()  # values that need a GPU copy
    gpu_made = {n for n, m in zip(graph.inputs, graph.input_meta, strict=True) if _on_gpu(m)}
    for node in graph.nodes:
        try:
            placed = _place(ctx, node, gpu_made)
        except Exception as exc:
            raise node_error(node, exc) from exc
        if placed == "alias":
            src = node.args[0].name
            root[node.name] = root.get(src, src)
            on_gpu.update((src, node.name))
            gpu_made.add(node.name)
            aliases.append(node)
            continue
        if isinstance(placed, str):
            steps.append(Step(node, "cpu", reason=placed))
            continue
        op = placed
        steps.append(Step(node, "gpu", op))
        on_gpu.update(op.inputs)
        on_gpu.add(node.name)
        gpu_made.add(node.name)

    cpu_made = set(graph.inputs)
    for step in steps:
        if step.where == "cpu":
            step.downloads = [r.name for r in step.node.refs()
                              if r.name not in graph.constants and r.name not in cpu_made]
            cpu_made.add(step.node.name)
            if step.node.name in on_gpu:
                step.uploads = [step.node.name]
    input_uploads = [n for n in graph.inputs if n in on_gpu]
    within = plan_views(ctx, graph, steps, root, aliases,
                        concat=env_flag("CONVROUTE_CONCAT_SLABS", True) if concat_slabs is None else concat_slabs,
                        slices=env_flag("CONVROUTE_SLICE_VIEWS", True) if slice_views is None else slice_views)

    buffers, allocated = _allocate(ctx, graph, steps, root, within, metas, input_uploads)
    plan = Plan(graph, metas, steps, [], aliases, root, buffers, allocated, input_uploads, within=within,
                itemsize=ctx.precision.itemsize)
    for name in plan.input_uploads:
        if name in float32_uploads:
            plan.input_staging[name] = ctx.gpu.empty(4 * metas[name].numel(), f"float32 input {name!r}")
    current: list[Step] = []
    for step in steps:
        if step.where == "gpu":
            ins = [plan.buffer(name) for name in step.op.inputs]
            if step.op.float32_input is not None:
                ins[0] = plan.input_staging[step.op.float32_input]
            try:
                step.dispatches = step.op.bind(ins, plan.buffer(step.node.name))
            except Exception as exc:
                raise node_error(step.node, exc) from exc
            current.append(step)
        else:
            if current:
                plan.segments.append(_segment(current))
                current = []
            plan.segments.append(step)
    if current:
        plan.segments.append(_segment(current))
    casts = _input_casts(ctx, plan)
    if casts:
        first = next(seg for seg in plan.segments if isinstance(seg, Segment))
        first.dispatches[:0] = casts
    # The GPU kernels hold their own (prepacked) copies: keep on the host only what CPU steps and outputs read.
    needed = {r.name for s in plan.cpu_steps for r in s.node.refs()} | graph.output_names()
    graph.constants = {k: v for k, v in graph.constants.items() if k in needed}
    return plan


def _float32_uploads(ctx: Context, graph: Graph) -> frozenset[str]:
    """With f16 storage, the float32 inputs uploaded as they are into a float32 buffer of their own: no
    conversion on the host in the timed path (the H100's host, session 26: a host cast and an f16 upload
    instead ran 0.994-1.013x). Convs whose algorithm can (ConvKernel.reads_float32_input) read that buffer
    themselves; any other reader gets the f16 copy a cast dispatch makes (_input_casts). An input whose float32
    copy would pass one binding is converted on the host instead."""
    if ctx.precision.dtype != "float16":
        return frozenset()
    return frozenset(name for name, meta in zip(graph.inputs, graph.input_meta, strict=True)
                     if isinstance(meta, torch.Tensor) and meta.dtype == torch.float32
                     and 4 * meta.numel() <= ctx.profile.max_binding_bytes)


def _input_casts(ctx: Context, plan: Plan) -> list[Dispatch]:
    """The dispatches casting float32 uploads to their f16 buffers, for the inputs whose f16 buffer something
    reads: a GPU op other than through `float32_input`, a CPU step or an output (aliases and views included)."""
    read = [n for s in plan.gpu_steps for n in (s.op.inputs[1:] if s.op.float32_input else s.op.inputs)]
    read += [n for s in plan.cpu_steps for n in s.downloads] + [r.name for r in iter_refs(plan.graph.outputs)]
    homes = {locate(n, plan.root, plan.within)[0] for n in read}
    casts = []
    for name, staging in plan.input_staging.items():
        if locate(name, plan.root, plan.within)[0] in homes:
            count = plan.metas[name].numel()
            casts += Unary(ctx.gpu, None, count, ctx.precision, x_type="f32").bind(staging, plan.buffer(name))
    return casts


def _place(ctx: Context, node: Node, gpu_made: set):
    """"alias" (shares its input's buffer), a GpuOp, or the reason it runs on the CPU."""
    if is_alias(ctx, node) and node.args[0].name in gpu_made:
        return "alias"
    own = {squeeze_excite: lower_squeeze_excite, channel_attention: lower_channel_attention,
           channel_norm: lower_channel_norm, concat_view: lower_concat_view,
           weighted_sum: lower_weighted_sum}.get(node.target, lower)
    try:
        return own(ctx, node)
    except (Unsupported, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _segment(steps: list[Step]) -> Segment:
    return Segment(steps, [d for s in steps for d in s.dispatches])


def _on_gpu(meta) -> bool:
    return isinstance(meta, torch.Tensor) and meta.dtype in GPU_DTYPES


def _allocate(ctx: Context, graph: Graph, steps: list[Step], root: dict, within: dict, metas: dict,
              input_uploads: list):
    """Linear scan over the steps: a buffer is freed after its value's last reader and reused (best fit). A
    buffer holding other values (views.py) lives from the first of them written to the last one read."""
    def r(name):
        return locate(name, root, within)[0]
    birth: dict[str, int] = {r(n): -1 for n in input_uploads}
    death: dict[str, float] = {}
    for i, step in enumerate(steps):
        if step.where == "gpu":
            birth.setdefault(r(step.node.name), i)
            for name in step.op.inputs:
                death[r(name)] = max(death.get(r(name), -1), i)
        else:
            if step.uploads:
                birth[step.node.name] = i
            for name in step.downloads:
                death[r(name)] = max(death.get(r(name), -1), i)
    for ref in iter_refs(graph.outputs):
        if r(ref.name) in birth:
            death[r(ref.name)] = NEVER
    for name in input_uploads:  # kept: the plan's dispatches can be run again on their own (gpu_pass_times, profile)
        death[r(name)] = NEVER
    by_birth: dict[int, list[str]] = {}
    for name, i in birth.items():
        by_birth.setdefault(i, []).append(name)
    by_death: dict[float, list[str]] = {}
    for name, i in death.items():
        by_death.setdefault(i, []).append(name)

    free: list = []
    buffers, allocated = {}, []
    itemsize = ctx.precision.itemsize
    for i in range(-1, len(steps)):
        for name in by_birth.get(i, []):
            nbytes = max(4, itemsize * metas[name].numel())
            fits = [b for b in free if b.size >= nbytes]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                free.remove(buf)
            else:
                if nbytes > ctx.gpu.profile.max_binding_bytes:
                    raise ValueTooLarge(name, tuple(metas[name].shape), nbytes, ctx.gpu.profile.max_binding_bytes)
                buf = ctx.gpu.empty(nbytes, f"value {name} {tuple(metas[name].shape)}")
                allocated.append(buf)
            buffers[name] = buf
        for name in by_death.get(i, []):
            if name in buffers:
                free.append(buffers[name])
    return buffers, allocated

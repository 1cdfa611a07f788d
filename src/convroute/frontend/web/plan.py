"""Planning a model for the browser: the front end's plan built on a TraceGpu for a generic browser profile
(WebGPU's guaranteed limits; shader-f16 only for float16 plans; no float atomics, subgroups or textures),
plus, for each routed conv, the dispatches of its other candidate algorithms bound to the same buffers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from convroute.calibration.profile import calibration_for
from convroute.device.profile import DeviceProfile
from convroute.frontend.export import export_model
from convroute.frontend.graph import Ref
from convroute.frontend.lower import Context, Unsupported, lower_conv
from convroute.frontend.plan import Plan, Segment, build_plan
from convroute.frontend.web.trace import TraceGpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import F16_FEATURE, Precision
from convroute.router import Decision
from convroute.router.exclusions import applicable, blocked_algorithms

EXPORT_POLICIES = ("seed", "etvk", "calibrated", "derived")  # autotune measures on a device: the page does that
DEFAULT_CANDIDATES = 3
DEFAULT_WEIGHTS_BUDGET = 1.05  # a plan's weight bytes, candidates included, over its fixed route's


class NotForBrowser(ValueError):
    """The model cannot run as a browser plan (CPU steps, several inputs or outputs); one line says why."""


def browser_profile(family: str, dtype: str) -> DeviceProfile:
    """A browser's WebGPU device as the export assumes it: WebGPU's default limits, `shader-f16` for float16
    plans and nothing else optional. The family decides routing and tiling; "cpu" (a software adapter such as
    Chromium's SwiftShader) gets the register-tile kernels on buffers: no workgroup memory, no barriers, no
    textures."""
    base = DeviceProfile.for_family(family)
    features = frozenset({F16_FEATURE}) if dtype == "float16" else frozenset()
    return replace(base, name=f"browser ({family} routing)", backend="WebGPU", features=features,
                   storage_textures=False, max_gathered_columns=4)


@dataclass
class RoutedConv:
    chosen: str
    reason: str
    candidates: dict = field(default_factory=dict)  # algorithm -> its dispatches (the chosen one's included)


@dataclass
class BrowserPlan:
    plan: Plan
    gpu: TraceGpu
    dtype: str
    policy: str
    family: str
    input_name: str
    output_name: str
    casts: list  # dispatches casting the float32 input to f16 (float16 plans)
    routed: dict  # conv node name -> RoutedConv (convs with more than one candidate)


def plan_for_browser(model, example_inputs, *, dtype="float32", policy="seed", family="unknown",
                     candidates: int | str = DEFAULT_CANDIDATES, exclude=(),
                     weights_budget: float | None = DEFAULT_WEIGHTS_BUDGET) -> BrowserPlan:
    """`candidates`: how many algorithms each conv carries for the page to time (1 = the policy's fixed
    route), or "all" (every applicable one). `exclude`: algorithms neither routed to nor carried (direct's
    workgroup kernels stall SwiftShader's shader compiler for minutes). `weights_budget`: a candidate whose
    weights are packed in a layout of their own is carried only while the plan's weight bytes stay within
    this multiple of the fixed route's (None: no bound); candidates sharing a packed layout cost nothing."""
    if weights_budget is not None and weights_budget < 1:
        raise ValueError(f"weights_budget is a multiple of the fixed route's weights (>= 1), got {weights_budget}")
    unknown = [n for n in exclude if n not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithm(s) {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}")
    if policy not in EXPORT_POLICIES:
        raise ValueError(f"policy {policy!r} cannot be exported; use one of {', '.join(EXPORT_POLICIES)} "
                         f"(the page itself measures: that is autotune in the browser)")
    precision = Precision.parse(dtype)
    profile = browser_profile(family, precision.dtype)
    gpu = TraceGpu(profile)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    graph = export_model(model, inputs)
    constants = dict(graph.constants)  # build_plan keeps only what CPU steps read
    ctx_args = dict(gpu=gpu, profile=profile, policy=policy, precision=precision)
    if exclude:
        ctx_args["avoid"] = frozenset(exclude)
    # no values inside other values' buffers: the bundle binds whole buffers (views would need offsets in it)
    # candidates bind the planned buffers; an f16 candidate of the first conv would read an uncast input
    plan = build_plan(graph, ctx_args, fuse_residual=True, fuse_depthwise=False, concat_slabs=False, slice_views=False,
                      float32_input=False)
    input_name, output_name = _single_io(plan)
    first = next(s for s in plan.segments if isinstance(s, Segment))
    casts = first.dispatches[:len(first.dispatches) - sum(len(s.dispatches) for s in first.steps)]
    ctx = Context(constants=constants, metas=plan.metas, **{**ctx_args, "decisions": {}})
    routed = {}
    blobs = WeightBlobs(plan.gpu_steps, weights_budget)
    for step in plan.gpu_steps:
        if step.node.op == "convolution" and step.op.params is not None and step.node.depthwise is None:
            conv = _candidates(ctx, plan, step, candidates, set(exclude), blobs)
            if len(conv.candidates) > 1:
                routed[step.node.name] = conv
    return BrowserPlan(plan, gpu, precision.dtype, policy, family, input_name, output_name, casts, routed)


def _single_io(plan: Plan) -> tuple[str, str]:
    cpu = plan.cpu_steps
    if cpu:
        why = {s.node.op: s.reason for s in cpu}
        ops = "; ".join(f"{op}: {reason}" for op, reason in sorted(why.items()))
        raise NotForBrowser(f"the model has {len(cpu)} step(s) on the CPU ({ops}); a browser plan runs on the "
                            f"GPU only")
    refs = [o for o in plan.graph.outputs if isinstance(o, Ref)]
    if len(plan.graph.inputs) != 1 or len(refs) != 1 or len(plan.graph.outputs) != 1:
        raise NotForBrowser(f"a browser plan takes one input tensor and returns one tensor; this model takes "
                            f"{len(plan.graph.inputs)} and returns {len(plan.graph.outputs)} value(s)")
    if plan.graph.inputs[0] not in plan.input_uploads or refs[0].name in plan.graph.constants:
        raise NotForBrowser("the model's output does not depend on its input on the GPU")
    meta = plan.metas[plan.graph.inputs[0]]
    if meta.dtype != torch.float32:
        raise NotForBrowser(f"a browser plan takes a float32 input, this model's is {meta.dtype}")
    return plan.graph.inputs[0], refs[0].name


def candidate_names(p, profile: DeviceProfile, dtype: str, chosen: str, residual: bool,
                    count: int | str, exclude=frozenset()) -> list[str]:
    """The chosen algorithm first, then the others that can run p (and add its residual), ranked by the
    target's calibration where it has one, else in the router's fallback order; `count` of them, or all."""
    blocked = blocked_algorithms(p, profile, dtype)
    allowed = [n for n in applicable(p) if n not in blocked and n != chosen and n not in exclude
               and (not residual or ALGORITHMS[n].fuses_residual)]
    calibration = calibration_for(profile, dtype)
    if calibration is not None:
        predicted = {n: calibration.model.predict_ms(p, n) for n in allowed}
        allowed.sort(key=lambda n: float("inf") if predicted[n] is None else predicted[n])
    names = [chosen] + allowed
    return names if count == "all" else names[:max(1, int(count))]


class WeightBlobs:
    """The weight bytes a plan stores (identical blobs once) and the bound a candidate's new ones must fit."""

    def __init__(self, steps, budget: float | None):
        self.seen: set[bytes] = set()
        self.total = 0
        self.limit = None
        for step in steps:
            self.admit(step.dispatches)
        self.limit = None if budget is None else budget * self.total

    def admit(self, dispatches) -> bool:
        """Store the weight blobs of `dispatches` the plan does not hold yet, if they fit the bound; whether
        they did."""
        new = {b.data for d in dispatches for b in d.bind_group.buffers
               if b.kind != "uniform" and b.data and b.data not in self.seen}
        size = sum(map(len, new))
        if self.limit is not None and self.total + size > self.limit:
            return False
        self.total += size
        self.seen |= new
        return True


def _candidates(ctx: Context, plan: Plan, step, count, exclude: set, blobs: WeightBlobs) -> RoutedConv:
    node, decision = step.node, step.op.decision
    conv = RoutedConv(decision.algorithm, decision.reason, {decision.algorithm: step.dispatches})
    names = candidate_names(step.op.params, ctx.profile, ctx.precision.dtype, decision.algorithm,
                            node.residual is not None, count, exclude)
    for name in names[1:]:
        ctx.decisions[node.name] = Decision(name, "a candidate the page times", decision.policy,
                                            decision.device, decision.dtype)
        try:
            op = lower_conv(ctx, node)
            dispatches = op.bind([plan.buffer(n) for n in op.inputs], plan.buffer(node.name))
        except (Unsupported, ValueError):
            continue  # the kernel cannot size this shape on a browser device
        if blobs.admit(dispatches):
            conv.candidates[name] = dispatches
    return conv

"""Differential self-test: random small convs, each run through the public API with every applicable
algorithm forced (and, for the tests, under every routing policy) with poisoned outputs, and compared with a
float64 host reference (PyTorch when importable, else measure.reference.reference_conv) by max|y - ref| over the
larger of max|ref| and max|ref before the activation|.

One generator, `draw_case(pick)`, serves two drivers: `convroute selftest` / `calibrate` pick with a seeded
`random.Random` (`run_selftest`), tests/test_fuzz.py with hypothesis. Shapes stay small (a few hundred output
pixels, <= 16 channels) so a case costs milliseconds on a GPU and on lavapipe; what varies is what index
arithmetic branches on: kind, groups (depthwise with multipliers, grouped), per-axis kernels 1-7, strides
and dilations 1-3, paddings, output_padding, batch, bias, every activation, the dtype. Every failure has a
one-line repro: `python -m convroute.cli.main selftest --input ... --seed S --algorithm A`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

import convroute.api as api
from convroute.calibration.profile import device_record
from convroute.calibration.selftest_results import AlgorithmStats, Finding, SelftestResult, shape_class
from convroute.device.gpu import Gpu
from convroute.kernels.common import SELU, Epilogue, Precision
from convroute.measure.reference import TOLERANCES, float64_reference, max_relative_error
from convroute.measure.workload import random_inputs
from convroute.params import ConvParams, make_params
from convroute.router import route_params
from convroute.router.exclusions import applicable

KERNELS = (1, 1, 2, 3, 3, 3, 4, 5, 6, 7)  # per axis; 1 and 3 most often, as in real networks
STRIDES = (1, 1, 1, 2, 2, 3)
DILATIONS = (1, 1, 1, 1, 2, 3)
CHANNELS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16)
CLAMPS = ((-0.5, 0.75), (0.0, 0.25), (-1.0, -0.125), (0.125, math.inf))  # clamp(min=...): an open bound
ACTIVATIONS = (None, "relu", "relu6", "clamp", "hardswish", "silu", "sigmoid", "hardsigmoid", "tanh", "gelu",
               "gelu_tanh", "leaky_relu", "elu", "softplus", "mish", "logsigmoid")
# parameters drawn for the activations that take them (elu's third: selu's alpha and scale)
ACTIVATION_PARAMETERS = {"leaky_relu": ((0.01,), (0.2,), (-0.5,)),
                         "elu": ((1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (*SELU, 1.0)),
                         "softplus": ((1.0, 20.0), (2.0, 1.0), (0.5, 3.0))}
REPRO = "python -m convroute.cli.main selftest"

Pick = Callable[[Sequence], object]  # returns one element of the options it is given


@dataclass(frozen=True)
class Case:
    params: ConvParams
    bias: bool = True
    activation: str | tuple | None = None  # as Conv2d takes it: None, a name or ("clamp", lo, hi)
    dtype: str = "float32"
    seed: int = 0
    input_dtype: str | None = None  # "float32" in a float16 case: kernels that can read the float32 input

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Seeded x, weight (scaled by 1/sqrt(fan-in)) and bias, float32; in a float16 case x and weight are
        rounded to float16 values first, so the check measures the kernel, not the upload's rounding (x stays
        as drawn where the kernel reads it as float32)."""
        x, w, b = random_inputs(self.params, np.random.default_rng(self.seed), self.bias)
        if self.dtype == "float16":
            w = w.astype(np.float16).astype(np.float32)
            if self.input_dtype != "float32":
                x = x.astype(np.float16).astype(np.float32)
        return x, w, b

    def args(self) -> str:
        """The command-line arguments of `convroute selftest` that rebuild this case."""
        p = self.params
        words = [f"--input {csv(p.input_shape)}", f"--weight {csv(p.weight_shape)}", f"--stride {csv(p.stride)}",
                 f"--padding {csv(p.padding)}", f"--dilation {csv(p.dilation)}", f"--groups {p.groups}"]
        if p.transposed:
            words += ["--transposed", f"--output-padding {csv(p.output_padding)}"]
        words += ["--bias" if self.bias else "--no-bias", f"--activation {activation_text(self.activation)}",
                  f"--dtype {self.dtype}", f"--seed {self.seed}"]
        if self.input_dtype:
            words.append(f"--input-dtype {self.input_dtype}")
        return " ".join(words)

    def repro(self, algorithm: str | None = None, policy: str | None = None) -> str:
        tail = f" --algorithm {algorithm}" if algorithm else f" --policy {policy}" if policy else ""
        return f"{REPRO} {self.args()}{tail}"


def csv(values) -> str:
    return ",".join(str(v) for v in values)


def activation_text(activation) -> str:
    if isinstance(activation, tuple) and activation[0] == "clamp":
        return f"clamp:{activation[1]:g}:{activation[2]:g}"
    if isinstance(activation, tuple):
        return ":".join([activation[0], *(repr(float(v)) for v in activation[1:])])
    return activation or "none"


def parse_activation(text: str):
    """'none', a name, 'clamp:LO:HI' or 'NAME:P1:P2...' (leaky_relu:0.2) -> what Conv2d takes (ValueError
    naming the problem)."""
    if text.startswith("clamp:"):
        try:
            _, lo, hi = text.split(":")
            activation = ("clamp", float(lo), float(hi))
        except ValueError:
            raise ValueError(f"clamp activation must be clamp:LO:HI, got {text!r}") from None
    elif ":" in text:
        name, *values = text.split(":")
        try:
            activation = (name, *(float(v) for v in values))
        except ValueError:
            raise ValueError(f"activation parameters must be numbers: NAME:P1:P2..., got {text!r}") from None
    else:
        activation = None if text == "none" else text
    Epilogue.parse(activation)
    return activation


def draw_case(pick: Pick, dtypes: Sequence[str] = ("float32",)) -> Case:
    """One valid conv case, every choice made by `pick`; sizes follow from the other choices so that the
    output is never empty and no draw is rejected."""
    transposed = pick((False, False, False, True))
    grouping = pick(("dense", "dense", "depthwise", "grouped"))
    if grouping == "dense":
        groups, c_in, c_out = 1, pick(CHANNELS), pick(CHANNELS)
    elif grouping == "depthwise":  # groups == C_in, channel multiplier 1-3
        c_in = groups = pick(range(1, 13))
        c_out = c_in * pick((1, 1, 2, 3))
    else:
        groups = pick((2, 3, 4))
        c_in, c_out = groups * pick((1, 2, 3, 4)), groups * pick((1, 2, 3, 4))
    # 1x1 and 3x3 stride-1 convs have kernels of their own (Winograd: each new shape compiles ~1 s on lavapipe)
    form = pick(("free",) * 12 + ("1x1",) * 4 + ("3x3 unit",))
    kernel = {"1x1": (1, 1), "3x3 unit": (3, 3)}.get(form) or (pick(KERNELS), pick(KERNELS))
    stride, dilation = (pick(STRIDES), pick(STRIDES)), (pick(DILATIONS), pick(DILATIONS))
    if form == "3x3 unit":
        stride = dilation = (1, 1)
    padding = (pick(range(4)), pick(range(4)))
    output_padding = tuple(pick(range(max(s, d))) for s, d in zip(stride, dilation, strict=True)) if transposed \
        else (0, 0)
    sizes = []
    for k, s, p, d, op in zip(kernel, stride, padding, dilation, output_padding, strict=True):
        span = d * (k - 1) + 1
        if transposed:  # (size - 1) * s - 2p + span + op >= 1
            least = 1 + max(0, -(-(2 * p - span - op + 1) // s))
            sizes.append(pick(range(least, least + 6)))
        else:  # size + 2p >= span
            least = max(1, span - 2 * p)
            sizes.append(pick(range(least, least + 10)))
    n = pick((1, 1, 1, 2, 3))
    weight = (c_in, c_out // groups, *kernel) if transposed else (c_out, c_in // groups, *kernel)
    params = make_params((n, c_in, *sizes), weight, stride, padding, dilation, groups, transposed=transposed,
                         output_padding=output_padding)
    activation = pick(ACTIVATIONS)
    if activation == "clamp":
        activation = ("clamp", *pick(CLAMPS))
    elif activation in ACTIVATION_PARAMETERS:
        activation = (activation, *pick(ACTIVATION_PARAMETERS[activation]))
    bias, dtype, seed = pick((True, False)), pick(tuple(dtypes)), pick(range(1 << 30))
    return Case(params, bias, activation, dtype, seed, pick((None, "float32")) if dtype == "float16" else None)


def random_picker(rng: random.Random) -> Pick:
    return lambda options: options[rng.randrange(len(options))]


# -- the check ---------------------------------------------------------------------------------------------

def load_reference_backend() -> str:
    """Import torch now if it is installed: it must load before the GPU opens (torch and Mesa's lavapipe each
    bring an LLVM, and the other order crashes). Returns the reference the checks will use."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy float64 (measure.reference)"
    return "torch float64"


def reference(case: Case, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """The float64 result with the activation."""
    return Reference.of(case, x, w, b).values


@dataclass(frozen=True)
class Reference:
    """What a run of a case is checked against. `values`: the float64 result with the activation. `scale`:
    max|result before the activation|: errors are measured against the larger of it and max|values|, because a
    kernel's rounding follows the sums it computed, not the activation's range (clamp(0, 0.25) of sums up to 1.5
    made 2 f16 ulps of the sums read as 1.1e-2). `across`: `values`, but where the sums lie within the dtype's
    tolerance of a jump of the activation (softplus's threshold), the value just across the jump: sums that
    rounded across it are as right as the sums (softplus(beta 2, threshold 1) of 0.5004 in f16 is 0.657 or
    0.5004 by one ulp, fuzz seed 1218558262)."""

    values: np.ndarray
    scale: float
    across: np.ndarray

    @classmethod
    def of(cls, case: Case, x, w, b) -> Reference:
        y, _ = float64_reference(case.params, x, w, b)
        y = np.asarray(y, np.float64)
        act = Epilogue.parse(case.activation)
        values = activate(y, act)
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        across = values.copy()
        band = TOLERANCES[case.dtype] * max(scale, float(np.max(np.abs(values))) if y.size else 0.0)
        for jump in act.jumps:
            near = np.abs(y - jump) <= band
            above, below = act.reference(np.nextafter(jump, math.inf)), act.reference(np.nextafter(jump, -math.inf))
            across[near] = np.where(y[near] > jump, below, above)
        return cls(values, scale, across)

    def error(self, out) -> float:
        """max_relative_error of `out`, each element against `values` or `across`, whichever it is nearer."""
        out = np.asarray(out, np.float64)
        ref = self.values
        if out.shape == ref.shape:
            ref = np.where(np.abs(out - self.across) < np.abs(out - ref), self.across, ref)
        return max_relative_error(out, ref, self.scale)


def activate(y: np.ndarray, act: Epilogue) -> np.ndarray:
    return act.reference(y)


@contextmanager
def single_threaded_torch():
    """The reference convs are tiny: in one torch thread they run ~20x faster than in a pool that competes with
    the device's threads (lavapipe's are the CPU's)."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Outcome:
    """One run of a case: with `algorithm` forced (policy None) or routed by `policy` (algorithm: its pick,
    "" when routing itself raised)."""

    case: Case
    algorithm: str
    policy: str | None
    error: float
    failure: str = ""  # the exception, when the run raised one

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.case.dtype]

    @property
    def wrong(self) -> bool:
        return bool(self.failure) or not self.error < self.tolerance

    @property
    def repro(self) -> str:
        return self.case.repro(self.algorithm or None, None if self.algorithm else self.policy)

    def line(self) -> str:
        """One line: what went wrong and the command that reproduces it."""
        how = f"policy {self.policy} -> {self.algorithm or '?'}" if self.policy else self.algorithm
        what = self.failure or f"relative error {self.error:.3g} >= {self.tolerance:g}"
        return f"WRONG {how} ({self.case.dtype}): {what}; repro: {self.repro}"


def check_case(case: Case, gpu: Gpu, algorithms: Sequence[str] | None = None,
               policies: Sequence[str] = ()) -> list[Outcome]:
    """Run `case` with each of `algorithms` (default: every applicable one) forced, then under each policy.
    A forced algorithm that refuses the shape here (ValueError: a size or loop limit) is left out; a policy
    must always run, so there any exception is a failure. A policy's pick that already ran forced is not run
    again: Conv2d's routed path is route_params then that same kernel on the same inputs, so the forced
    outcome is the policy's. ValueError when the device lacks the case's dtype."""
    Precision.parse(case.dtype).require(gpu.profile)
    x, w, b = case.inputs()
    ref = Reference.of(case, x, w, b)
    outcomes = []
    for name in applicable(case.params) if algorithms is None else algorithms:
        try:
            outcomes.append(_run(case, gpu, x, w, b, ref, name, None))
        except ValueError:
            continue
    forced = {o.algorithm: o for o in outcomes}
    for policy in policies:
        try:
            pick = route_params(case.params, gpu.profile, policy, dtype=case.dtype).algorithm
            done = forced.get(pick)
            outcomes.append(replace(done, policy=policy) if done else _run(case, gpu, x, w, b, ref, "auto", policy))
        except Exception as err:  # routing or the routed kernel failed: a finding, not a crash of the test
            outcomes.append(Outcome(case, "", policy, math.inf, f"{type(err).__name__}: {err}"))
    return outcomes


def _run(case: Case, gpu: Gpu, x, w, b, ref, algorithm: str, policy: str | None) -> Outcome:
    """`ref`: the case's Reference."""
    p = case.params
    layer = api.Conv2d(w, b, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                   output_padding=p.output_padding, activation=case.activation, algorithm=algorithm, policy=policy,
                   gpu=gpu, dtype=case.dtype, input_dtype=case.input_dtype)
    poison, api.POISON = api.POISON, True  # outputs start as NaN: an element no kernel writes cannot pass
    try:
        y = layer(x)
    except ValueError:
        raise
    except Exception as err:  # a driver or compiler failure on this shape: a wrong result too
        return Outcome(case, algorithm if policy is None else "", policy, math.inf, f"{type(err).__name__}: {err}")
    finally:
        api.POISON = poison
    return Outcome(case, layer.decision.algorithm, policy, ref.error(y))


# -- many cases ----------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Runs, wrong runs, worst error and its repro per algorithm (forced runs) and per policy, plus the
    findings per (algorithm, shape class) that routing will obey."""

    cases: int = 0
    algorithms: dict[str, AlgorithmStats] = field(default_factory=dict)
    policies: dict[str, AlgorithmStats] = field(default_factory=dict)
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    wrong: list[Outcome] = field(default_factory=list)

    def add(self, outcomes: list[Outcome]) -> None:
        self.cases += 1
        for o in outcomes:
            table = self.algorithms if o.policy is None else self.policies
            stats = table.setdefault(o.algorithm if o.policy is None else o.policy, AlgorithmStats())
            stats.runs += 1
            if not stats.worst_repro or o.error > stats.worst_error:
                stats.worst_error, stats.worst_repro = o.error, o.repro
            if not o.wrong:
                continue
            stats.wrong += 1
            self.wrong.append(o)
            if o.policy is None:
                key = (o.algorithm, shape_class(o.case.params))
                found = self.findings.get(key)
                if found is None:
                    found = self.findings[key] = Finding(*key, 0, o.error, o.repro,
                                                         datetime.now(UTC).isoformat(timespec="seconds"))
                found.wrong += 1
                if o.error > found.worst_error:
                    found.worst_error, found.repro = o.error, o.repro

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.algorithms.values()) + sum(s.runs for s in self.policies.values())

    def summary(self) -> str:
        wrong = sum(s.wrong for s in self.algorithms.values()) + sum(s.wrong for s in self.policies.values())
        return f"{self.cases} cases, {self.runs} runs, {wrong} wrong"


def run_selftest(gpu: Gpu, cases: int = 1000, dtype: str = "float32", budget_s: float = 120.0, seed: int = 0,
                 progress: Callable[[Tally, float], None] | None = None, every: int = 100) -> SelftestResult:
    """`cases` seeded random cases in `dtype` with every applicable algorithm forced, until the cases or the
    time budget run out; `progress(tally, seconds)` after every `every` cases."""
    Precision.parse(dtype).require(gpu.profile)
    pick = random_picker(random.Random(f"{dtype} {seed}"))  # other shapes in each dtype
    drawn = (draw_case(pick, (dtype,)) for _ in range(cases))
    tally, seconds = run_cases(gpu, drawn, budget_s, progress, every)
    return selftest_result(gpu, tally, dtype, seconds, seed)


def run_cases(gpu: Gpu, cases: Iterable[Case], budget_s: float = math.inf,
              progress: Callable[[Tally, float], None] | None = None, every: int = 100) -> tuple[Tally, float]:
    """Check each case with every applicable algorithm forced until the time budget runs out; (tally, seconds)."""
    tally = Tally()
    start = time.perf_counter()
    with single_threaded_torch():
        for case in cases:
            if time.perf_counter() - start > budget_s:
                break
            tally.add(check_case(case, gpu))
            if progress and tally.cases % every == 0:
                progress(tally, time.perf_counter() - start)
    return tally, time.perf_counter() - start


def selftest_result(gpu: Gpu, tally: Tally, dtype: str, seconds: float, seed: int = 0) -> SelftestResult:
    return SelftestResult(gpu.profile.key, device_record(gpu.profile), dtype, tally.cases, round(seconds, 1), seed,
                          datetime.now(UTC).isoformat(timespec="seconds"), tally.algorithms,
                          list(tally.findings.values()))

"""`convroute run --compare`: a whole model timed by convroute and by peer engines (convroute.peers), in one
process, in interleaved rounds (A A B B C C, then B B C C A A, ...) after a common warm-up, so that clock and
load drift hit every engine alike. Each time is one call from a host input to a host output: input upload, forward and
output download, wall clock. In each round an engine runs twice and the second call is the timed one: the
first call after another engine pays for the GPU's switch between the engines' contexts (CUDA and Vulkan on
one H100: 0.15-0.28 ms for either engine, NOTES session 7), a cost that a model served by one engine never
sees. Those first calls are reported too ("after switch"). Reported per engine: median, p10 and p90, the
relative error of its output against torch's float32 CPU output, and convroute's median / the engine's.

Besides the peers, convroute itself in the other dtype ("convroute-float16" beside a float32 program, say: same
model, policy and input) or under another policy ("convroute-seed" beside a calibrated program: same dtype) is
an engine of the comparison, so that fp16 and fp32, or two policies, are timed in the same rounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from convroute.calibration.profile import device_record
from convroute.measure.reference import norm_relative_error
from convroute.peers import ModelEngine, Unavailable, model_engine, peer_settings, short_precision
from convroute.report.latency import Latency
from convroute.report.table import format_table
from convroute.router import POLICIES

OURS = "convroute"
# convroute in another dtype or under another policy, as an engine: name -> the compile() setting it changes
VARIANTS = ({f"{OURS}-{dtype}": ("dtype", dtype) for dtype in ("float16", "float32")}
            | {f"{OURS}-{policy}": ("policy", policy) for policy in POLICIES})
WARMUP_ROUNDS, WARMUP_S = 3, 0.5
GPU_PASS_RUNS = 20
COVERS = ("one call from a host input to a host output (input upload, forward, output download), wall clock; "
          "each engine's second call in a row")


@dataclass
class EngineRun:
    name: str
    detail: str
    precision: str
    latency: Latency | None = None
    after_switch: Latency | None = None  # first calls of each round, right after another engine's
    error: float | None = None  # relative to torch's float32 CPU output
    reason: str | None = None  # why the engine did not run
    gpu_pass: Latency | None = None  # convroute only: its GPU segments' time alone (timestamps), when known
    dispatches: int | None = None  # convroute only: the dispatches of one call, input casts included

    def to_json(self) -> dict:
        switch = self.after_switch.median_ms if self.after_switch else None
        gpu_pass = self.gpu_pass.to_json() if self.gpu_pass else None
        return self.latency.to_json() | {"detail": self.detail, "precision": self.precision, "error": self.error,
                                         "after_switch_median_ms": switch, "gpu_pass": gpu_pass,
                                         "dispatches": self.dispatches}


@dataclass
class ModelComparison:
    model: str
    input_shape: tuple
    dtype: str
    device: dict
    rounds: int
    engines: dict[str, EngineRun] = field(default_factory=dict)

    @property
    def timed(self) -> dict[str, EngineRun]:
        return {name: e for name, e in self.engines.items() if e.latency is not None}

    @property
    def unavailable(self) -> dict[str, str]:
        return {name: e.reason for name, e in self.engines.items() if e.latency is None}

    def ratios(self) -> dict[str, float]:
        """convroute's median / each timed peer's median (below 1: convroute faster)."""
        timed = self.timed
        if OURS not in timed:
            return {}
        ours = timed[OURS].latency.median_ms
        return {name: ours / e.latency.median_ms for name, e in timed.items() if name != OURS}

    def header(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        device = self.device.get("name", "?")
        return (f"{self.model}, input {shape}, {self.dtype}, convroute on {device} ({self.device.get('backend', '?')})"
                f"; each time: {COVERS}; {self.rounds} interleaved rounds after >= {WARMUP_ROUNDS} warm-up rounds "
                f"and >= {WARMUP_S} s")

    def to_json(self) -> dict:
        return {"engines": {name: e.to_json() for name, e in self.timed.items()}, "ratios": self.ratios(),
                "unavailable": self.unavailable, "model": self.model, "batch": self.input_shape[0],
                "input_shape": list(self.input_shape), "dtype": self.dtype, "device": self.device,
                "rounds": self.rounds, "covers": COVERS}


@dataclass
class Rounds:
    settled: dict[str, list[float]]  # seconds of each engine's second call in a round: the timed ones
    after_switch: dict[str, list[float]]  # seconds of its first call, right after another engine's


def interleaved(runners: dict[str, Callable[[], object]], rounds: int, *, warmup_rounds: int = WARMUP_ROUNDS,
                warmup_s: float = WARMUP_S, clock=time.perf_counter) -> Rounds:
    """Warm-up rounds (every runner once, in order) until there were at least `warmup_rounds` and `warmup_s`
    seconds, then `rounds` rounds in which each runner runs twice in a row. With three or more runners the order
    rotates by one each round, so that each follows every other equally often: in a fixed order one engine alone
    would come right after torch's CUDA graph, whose switch back to Vulkan may reach its timed call too."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    start, done = clock(), 0
    while done < warmup_rounds or clock() - start < warmup_s:
        for run in runners.values():
            run()
        done += 1
    result = Rounds({name: [] for name in runners}, {name: [] for name in runners})
    order = list(runners.items())
    for r in range(rounds):
        shift = r % len(order) if len(order) >= 3 else 0
        for name, run in order[shift:] + order[:shift]:
            for times in (result.after_switch[name], result.settled[name]):
                t0 = clock()
                run()
                times.append(clock() - t0)
    return result


def compare_model(program, model, x, peers: list[str], *, name: str, key: str, rounds: int, reference,
                  peer_dtype: str | None = None) -> ModelComparison:
    """Time `program` (convroute, named "convroute") and each peer engine on input `x`.

    `reference`: torch's float32 CPU output, for each engine's error. `peer_dtype`: the peers' precision
    (default: the program's). `key` names pnnx's cached conversion (model, size, batch, weights). A peer that
    cannot run here, fails to set up or fails its first run is listed with the reason."""
    precision = short_precision(peer_dtype or program.dtype)
    comparison = ModelComparison(name, tuple(x.shape), program.dtype, device_record(program.gpu.profile), rounds)
    profile = program.gpu.profile
    ours = EngineRun(OURS, f"convroute {program.policy} policy, {program.dtype} on {profile.name} "
                           f"({profile.backend})", short_precision(program.dtype))
    runners: dict[str, Callable[[], object]] = {OURS: lambda: program(x)}
    engines = {OURS: ours}
    with peer_settings():
        built = []
        for peer in peers:
            try:
                engine = (Variant(program, model, x, VARIANTS[peer]) if peer in VARIANTS
                          else model_engine(peer, model, x, precision, key))
            except Unavailable as err:
                engines[peer] = EngineRun(peer, "", precision, reason=str(err))
                continue
            except Exception as err:  # a failed set-up (conversion, capture) is reported, the others go on
                engines[peer] = EngineRun(peer, "", precision, reason=f"set-up failed: {type(err).__name__}: {err}")
                continue
            built.append(engine)
            engines[peer] = EngineRun(peer, engine.detail, engine.precision)
            runners[peer] = engine.once
        try:
            for engine_name, run in list(runners.items()):
                try:
                    engines[engine_name].error = output_error(run(), reference)
                except Exception as err:
                    if engine_name == OURS:
                        raise
                    engines[engine_name].reason = f"first run failed: {type(err).__name__}: {err}"
                    del runners[engine_name]
            timed = interleaved(runners, rounds)
            for engine_name, times in timed.settled.items():
                engines[engine_name].latency = Latency.of(times)
                engines[engine_name].after_switch = Latency.of(timed.after_switch[engine_name])
            for engine_name, compiled in [(OURS, program)] + [(e.name, e.program) for e in built
                                                              if isinstance(e, Variant) and e.name in runners]:
                passes = compiled.gpu_pass_times(GPU_PASS_RUNS)  # a variant's too: fp16 against fp32 per pass
                engines[engine_name].gpu_pass = Latency.of(passes) if passes else None
                engines[engine_name].dispatches = compiled.plan_dispatches()
        finally:
            for engine in built:
                engine.close()
    comparison.engines = engines
    return comparison


class Variant(ModelEngine):
    """The compared program's model compiled again with one setting changed: `change` is ("dtype", value) or
    ("policy", value); the other setting stays the program's."""

    def __init__(self, program, model, x, change: tuple[str, str]):
        settings = {"dtype": program.dtype, "policy": program.policy}
        key, value = change
        if settings[key] == value:
            raise Unavailable(f"it is the compared program itself ({value})")
        from convroute import frontend  # the front end imports nothing of bench: no cycle, loaded when needed

        settings[key] = value
        self.name, self.precision = f"{OURS}-{value}", short_precision(settings["dtype"])
        self.program = frontend.compile(model, (x,), **settings)
        profile = self.program.gpu.profile
        self.detail = (f"convroute {settings['policy']} policy, {settings['dtype']} on {profile.name} "
                       f"({profile.backend})")
        self.once = lambda: self.program(x)

    def close(self) -> None:
        self.program = None


def output_error(out, reference) -> float:
    """Relative error of an engine's output (any layout of the same numbers; a segmentation model's dict of
    outputs, all of them) against the reference."""
    return norm_relative_error(flat(out), flat(reference))


def flat(out) -> np.ndarray:
    """An output's numbers in float64, one flat array (a dict's values in the order of its keys)."""
    if isinstance(out, dict):
        return np.concatenate([flat(out[key]) for key in sorted(out)])
    return np.asarray(out.detach().double().cpu() if hasattr(out, "detach") else out, np.float64).reshape(-1)


def comparison_text(c: ModelComparison) -> str:
    ratios = c.ratios()
    head = ["engine", "median ms", "p10 ms", "p90 ms", "runs", "after switch ms", "rel. error", "convroute / engine"]
    rows = []
    for name, e in c.timed.items():
        lat = e.latency
        ratio = "-" if name == OURS else f"{ratios[name]:.3f}"
        rows.append([name, f"{lat.median_ms:.3f}", f"{lat.p10_ms:.3f}", f"{lat.p90_ms:.3f}", str(lat.runs),
                     f"{e.after_switch.median_ms:.3f}", f"{e.error:.2g}", ratio])
    lines = [c.header(), format_table(head, rows)]
    lines += [f"  {name}: {e.detail}" if e.latency else f"  {name}: unavailable: {e.reason}"
              for name, e in c.engines.items()]
    ours = c.engines.get(OURS)
    if ours and ours.latency and ours.gpu_pass:
        host = ours.latency.median_ms - ours.gpu_pass.median_ms
        lines.append(f"convroute's GPU pass alone (GPU timestamps): {ours.gpu_pass.text()}; the rest of its median "
                     f"call, {host:.2f} ms, is on the host's side: input upload, submit, the GPU's start and finish "
                     "latency, read-back and Python (the next call's encoding overlaps the GPU pass)")
    lines.append("rel. error: ||y - ref|| / ||ref|| against torch's float32 CPU output; convroute / engine: ratio "
                 "of the medians (below 1: convroute faster); after switch: median of each round's first call of the "
                 "engine, right after another engine ran (not in the ratio)")
    return "\n".join(lines)

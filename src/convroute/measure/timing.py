"""The one timer every measurement uses (calibrate, autotune, bench, conv, suite, Program.profile):
`time_candidates` (GPU passes are read by `passes.pass_times`).

GPU timestamp queries around each compute pass when the device has `timestamp-query` (raw ticks times the
queue's timestamp period = nanoseconds), else submit-and-wait wall clock. Warm-up first, then rounds that
run every candidate once (interleaved, so drifting load hits all alike) until the count or the time budget
runs out, and the median per candidate. Each repeat reads a different input buffer (and writes a different
output buffer) so caches do not flatter; prepacking happens before, outside the timing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from convroute.device.gpu import Dispatch, Gpu
from convroute.measure.clocks import raise_clocks
from convroute.measure.passes import pass_times, submit_and_wait


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 2
    repeats: int = 30  # at most
    min_repeats: int = 3  # at least, whatever the budget says
    budget_s: float = 1.0  # per measurement, warm-up included
    rotations: int = 4  # input/output buffer pairs cycled through
    method: str = "auto"  # "auto", "timestamp" or "wall"; CONVROUTE_TIMING overrides "auto"
    prune: float | None = None  # candidates whose warm-up is this many times the best's get no more runs
    prune_floor_s: float = 0.05  # ... and at least this long: a shorter one costs little to time properly


@dataclass(frozen=True)
class Timing:
    median_ms: float
    samples_ms: tuple[float, ...]
    method: str  # "gpu timestamps" or "wall clock"


def timing_method(gpu: Gpu, settings: TimingSettings) -> str:
    method = settings.method
    if method == "auto":
        method = os.environ.get("CONVROUTE_TIMING", "auto")
    if method not in ("auto", "timestamp", "wall"):
        raise ValueError(f"timing method must be auto, timestamp or wall, got {method!r}")
    has_timestamps = "timestamp-query" in gpu.device.features
    if method == "timestamp" and not has_timestamps:
        raise ValueError(f"{gpu.profile.name} has no timestamp-query feature; use wall-clock timing")
    return "timestamp" if method == "timestamp" or (method == "auto" and has_timestamps) else "wall"


def time_candidates(gpu: Gpu, candidates: dict[str, list[list[Dispatch]]],
                    settings: TimingSettings = TimingSettings()) -> dict[str, Timing]:
    """The timing function: median time of each candidate's run, measured interleaved.

    Each candidate is a list of runs (one per rotated input buffer); repeat i uses run i % len. After the
    warm-up, round r runs every candidate once, so load that drifts during the measurement (another process
    on the CPU, clocks ramping) hits every candidate alike. The number of rounds fits the time budget
    (settings.budget_s per candidate) within [min_repeats, repeats]. Timestamp samples are GPU time of the
    compute pass; wall-clock samples include the submit and a 4-byte read back.
    """
    names = list(candidates)
    raise_clocks(gpu)
    start = time.perf_counter()
    estimate = {}
    for name in names:
        warm = []
        for i in range(max(1, settings.warmup)):
            t0 = time.perf_counter()
            submit_and_wait(gpu, candidates[name][i % len(candidates[name])])
            warm.append(time.perf_counter() - t0)
            if sum(warm) > settings.budget_s / 2:
                break
        estimate[name] = min(warm)
    pruned = {}
    if settings.prune is not None:
        # Warm-up runs are wall clock with first-use costs: on the H100 a 0.04 ms kernel's first runs took
        # 1-8 ms, and pruning on them recorded those as its time (leave-one-out lost 32-175 % of grid time).
        # So only the costly ones (lavapipe's seconds-long direct 1x1s) are pruned.
        floor = settings.prune_floor_s
        for name in names:  # a load spike in one warm-up run must not prune the winner: confirm with another
            if estimate[name] > max(settings.prune * min(estimate.values()), floor):
                t0 = time.perf_counter()  # on the warm-up's first run: a run's first use of its buffers is slow
                submit_and_wait(gpu, candidates[name][0])
                estimate[name] = min(estimate[name], time.perf_counter() - t0)
        fastest = min(estimate.values())
        pruned = {n: Timing(t * 1e3, (t * 1e3,), "wall clock, warm-up only (pruned: clearly slower)")
                  for n, t in estimate.items() if t > max(settings.prune * fastest, floor)}
        names = [n for n in names if n not in pruned]
    runs_each = runs_per_sample(gpu)
    left = max(settings.budget_s * len(names) - (time.perf_counter() - start), 0.0)
    round_s = runs_each * sum(estimate[n] for n in names)
    rounds = int(min(settings.repeats, max(settings.min_repeats, left // max(round_s, 1e-6))))
    schedule = [(name, candidates[name][r % len(candidates[name])]) for r in range(rounds) for name in names
                for _ in range(runs_each)]
    samples, method = None, "gpu timestamps"
    if timing_method(gpu, settings) == "timestamp":
        times = pass_times(gpu, [run for _, run in schedule], per_submit=len(names) * runs_each)
        if min(times, default=0.0) > 0:
            samples = {}
            for (name, _), t in list(zip(schedule, times, strict=True))[runs_each - 1::runs_each]:
                samples.setdefault(name, []).append(t)
    if samples is None:
        samples, method = _wall_clock(gpu, schedule, runs_each), "wall clock"
    if runs_each > 1:
        method += ", each run the second of two in a row"
    timed = {name: Timing(float(np.median(samples[name])), tuple(samples[name]), method) for name in names}
    return {name: timed.get(name) or pruned[name] for name in candidates}


def runs_per_sample(gpu: Gpu) -> int:
    """Runs of a candidate in a row per timed sample, the last one timed. 2 on CPU adapters: there a kernel right
    after a different one runs up to 1.5x slower (`direct` most), which misranked candidates against their times
    in a model, where a conv mostly follows another conv; the second of two in a row tracks both a chain of the
    same conv and the in-model winner (NOTES, session 19). 1 on GPUs."""
    return 2 if gpu.profile.family == "cpu" else 1


def _wall_clock(gpu: Gpu, schedule: list, runs_each: int = 1) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for i, (name, run) in enumerate(schedule):
        t0 = time.perf_counter()
        submit_and_wait(gpu, run)
        if i % runs_each == runs_each - 1:
            samples.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)
    return samples

"""Where a compiled model's call spends its time on the GPU's own clock, inside the real calls (issue 26: the rest
of a call beyond its GPU pass).

usage: python tools/call_timeline.py MODEL [--size N] [--policy P] [--dtype D] [--rounds R] [--peer ENGINE|none]
       (torchvision name or timm:NAME; default 224 px, calibrated, float32, 60 rounds, torch-cuda-graph)

The program's command buffers get four timestamps each: an empty pass before the input's upload copy, the start and
end of the compute pass of dispatches, and an empty pass after the read-back copy. The calls run as `run --compare`
runs them (a warm-up, then rounds of the program twice and the peer twice, the second call of each timed), and for
each timed call this prints, median (p10-p90) in ms:
- upload copy: the first timestamp to the pass's start;
- pass in the call: the compute pass as the call ran it (clock state included), beside `gpu_pass_times`' figure
  (the same pass timed back to back after raising the clocks);
- read-back copy: the pass's end to the last timestamp;
- the host's remainder: the call's wall time minus the first-to-last span (encode, submit, the wait's wake-up,
  map, copy out, Python).
"""

from __future__ import annotations

import argparse
import faulthandler
import statistics
import sys
import time
from unittest import mock

import numpy as np
import torch

import convroute.frontend as frontend  # before torchvision and timm (see frontend/__init__)
from convroute.bench.compare_model import interleaved
from convroute.device import gpu as gpu_module
from convroute.device.webgpu import wgpu
from convroute.frontend import zoo
from convroute.measure.passes import timestamp_period
from convroute.peers import model_engine, peer_settings, short_precision
from convroute.report.latency import Latency
from convroute.report.table import format_table

SLOTS = 1024  # four queries a command buffer: WebGPU's largest query set holds 4096


class Timeline:
    """Patches Recording._encode (timestamps around every part) and Gpu.submit (which slot each submit ran)."""

    def __init__(self, gpu):
        self.queries = gpu.device.create_query_set(type=wgpu.QueryType.timestamp, count=4 * SLOTS)
        self.next_slot = 0
        self.slot_of: dict[int, tuple[int, object]] = {}  # id(command) -> (slot, command kept alive)
        self.submitted: list[int] = []

    def encode(self, recording, staging):
        gpu, slot = recording.gpu, self.next_slot % SLOTS
        self.next_slot += 1
        encoder = gpu.device.create_command_encoder()
        self.mark(encoder, {"beginning_of_pass_write_index": 4 * slot})
        for source, target, nbytes in recording.writes:
            encoder.copy_buffer_to_buffer(source, 0, target, 0, nbytes)
        gpu.encode(recording.dispatches, encoder, {"query_set": self.queries,
                                                   "beginning_of_pass_write_index": 4 * slot + 1,
                                                   "end_of_pass_write_index": 4 * slot + 2})
        if recording.read:
            buffer, *_, nbytes = recording.read
            encoder.copy_buffer_to_buffer(buffer, 0, staging, 0, nbytes)
        self.mark(encoder, {"end_of_pass_write_index": 4 * slot + 3})
        command = encoder.finish()
        self.slot_of[id(command)] = (slot, command)
        return command

    def mark(self, encoder, indices: dict) -> None:
        encoder.begin_compute_pass(timestamp_writes={"query_set": self.queries, **indices}).end()

    def submit(self, gpu, command, what):
        slot, _ = self.slot_of.pop(id(command), (None, None))
        self.submitted.append(slot)
        gpu.device.queue.submit([command])

    def patches(self):
        timeline = self
        return [mock.patch.object(gpu_module.Recording, "_encode", lambda rec, staging: timeline.encode(rec, staging)),
                mock.patch.object(gpu_module.Gpu, "submit", lambda gpu, command, what: timeline.submit(gpu, command,
                                                                                                       what))]

    def ticks(self, gpu, slots: set[int]) -> dict[int, np.ndarray]:
        """The four timestamps of each of `slots` (submitted ones only: on the H100 resolving a query no pass
        wrote waits forever). Each slot resolves to its own 256-byte place, WebGPU's resolve alignment."""
        order = sorted(slots)
        resolved = gpu.device.create_buffer(size=256 * len(order),
                                            usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        encoder = gpu.device.create_command_encoder()
        for i, slot in enumerate(order):
            encoder.resolve_query_set(self.queries, 4 * slot, 4, resolved, 256 * i)
        gpu.device.queue.submit([encoder.finish()])
        words = np.frombuffer(gpu.device.queue.read_buffer(resolved), dtype=np.uint64).astype(np.int64)
        return {slot: words[32 * i:32 * i + 4] for i, slot in enumerate(order)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--policy", default="calibrated")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--peer", default="torch-cuda-graph")
    parser.add_argument("--hang-s", type=float, default=0.0,
                        help="dump every thread's stack and exit if still running after this many seconds")
    args = parser.parse_args(argv)
    if args.hang_s:
        faulthandler.dump_traceback_later(args.hang_s, exit=True)
    if not 1 <= args.rounds <= SLOTS // 4:
        parser.error(f"--rounds must be 1 to {SLOTS // 4}")
    zoo.check_name(args.model)
    model = zoo.build_any(args.model, 0)
    x = torch.randn(1, 3, args.size, args.size)
    program = frontend.compile(model, (x,), policy=args.policy, dtype=args.dtype)
    print(f"compiled {args.model}", file=sys.stderr, flush=True)
    gpu = program.gpu
    if "timestamp-query" not in gpu.device.features:
        print("this adapter has no timestamps", file=sys.stderr)
        return 1
    timeline = Timeline(gpu)
    walls: list[tuple[float, int]] = []  # (seconds, index into timeline.submitted) of each timed call

    def ours():
        start = time.perf_counter()
        program(x)
        walls.append((time.perf_counter() - start, len(timeline.submitted) - 1))

    runners = {"convroute": ours}
    with peer_settings():
        peer = None
        if args.peer != "none":
            peer = model_engine(args.peer, model, x, short_precision(program.dtype), f"{args.model}-{args.size}")
            runners[args.peer] = peer.once
            print(f"peer {args.peer} ready", file=sys.stderr, flush=True)
        patches = timeline.patches()
        for patch in patches:
            patch.start()
        try:
            program(x)  # the next call's command buffer is now encoded with timestamps
            rounds = interleaved(runners, args.rounds)
            print("rounds done", file=sys.stderr, flush=True)
        finally:
            for patch in reversed(patches):
                patch.stop()
            if peer is not None:
                peer.close()
    ms_per_tick = timestamp_period(gpu) / 1e6
    settled = walls[-2 * args.rounds + 1::2]  # each round's second call of the program
    ticks = timeline.ticks(gpu, {timeline.submitted[index] for _, index in settled})
    parts: dict[str, list[float]] = {k: [] for k in ("upload copy", "pass in the call", "read-back copy",
                                                       "first to last", "call (wall)", "host's remainder")}
    for seconds, index in settled:
        slot = timeline.submitted[index]
        t0, t1, t2, t3 = (tick * ms_per_tick for tick in ticks[slot])
        for key, value in (("upload copy", t1 - t0), ("pass in the call", t2 - t1), ("read-back copy", t3 - t2),
                           ("first to last", t3 - t0), ("call (wall)", 1e3 * seconds),
                           ("host's remainder", 1e3 * seconds - (t3 - t0))):
            parts[key].append(value)
    alone = program.gpu_pass_times(20)
    rows = [[key, f"{statistics.median(v):.4f}", f"{np.percentile(v, 10):.4f}", f"{np.percentile(v, 90):.4f}"]
            for key, v in parts.items()]
    if alone:
        rows.append(["pass alone (gpu_pass_times)", f"{1e3 * statistics.median(alone):.4f}",
                     f"{1e3 * np.percentile(alone, 10):.4f}", f"{1e3 * np.percentile(alone, 90):.4f}"])
    for name, times in rounds.settled.items():
        if name != "convroute":
            lat = Latency.of(times)
            rows.append([f"{name} call (wall)", f"{lat.median_ms:.4f}", f"{lat.p10_ms:.4f}", f"{lat.p90_ms:.4f}"])
    print(f"{args.model}, {args.size} px, {program.policy}, {program.dtype}, {program.summary().dispatches} "
          f"dispatches, {gpu.profile.name}; {args.rounds} rounds, each round's second call of each engine timed")
    print(format_table(["part (ms)", "median", "p10", "p90"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs a convroute command and prints the host's state around it, to tell a slow process's host from a slow
plan (issue 26: mobilenet_v2's losing processes had the GPU pass of the winning ones and a longer rest of call).

usage: python tools/gpu_session/host_probe.py COMMAND [OPTIONS...]   (the arguments of `convroute`)

Before and after the command: the CPU this process runs on and may run on, a pure-Python loop's time and a
64 MB numpy copy's (best of 5), and the process's context switches: involuntary ones mean other work took its CPU.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np


def current_cpu() -> int:
    with open("/proc/self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def python_loop_ms() -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i & 7
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def copy_ms() -> float:
    source = np.ones(16 << 20, np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def report(when: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"host {when}: cpu {current_cpu()} of {len(os.sched_getaffinity(0))}, python loop {python_loop_ms():.2f} ms, "
          f"64 MB copy {copy_ms():.2f} ms, switches {usage.ru_nvcsw} voluntary / {usage.ru_nivcsw} involuntary, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    from convroute.cli.main import main

    report("before")
    code = main(sys.argv[1:])
    report("after")
    sys.exit(code)

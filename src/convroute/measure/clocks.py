"""GPU clocks up before a measurement: `raise_clocks(gpu)`, called by the timer before it times anything.

On the H100 the SM clock falls from 1980 to 345 MHz after 1-3 s without work, and rises again only after
about 0.2-0.3 s of continuous load (NOTES, session 6). A measurement that starts on an idle GPU therefore
times its kernels up to 5x slow, and one that starts on a busy GPU does not: `convroute bench` timed a
512@28 3x3 at 1.05 ms where the same kernel takes 0.25 ms, depending on how long the host had computed the
previous layer's reference. So before timing, a short probe kernel (a dependent FMA chain, whose time
follows the SM clock) is timed; when it is slower than the fastest probe this process has seen, the GPU
is kept busy until it is not. The first call of a process heats for at least MIN_HEAT_S, since it has no
fastest probe to compare with.

CPU adapters (lavapipe) have no clocks of this kind and are left alone; so are devices without timestamps.
`CONVROUTE_RAISE_CLOCKS=0` turns it off (to see what an idle GPU does).
"""

from __future__ import annotations

import threading
import time

from convroute.device.gpu import Gpu
from convroute.measure.passes import pass_times, submit_and_wait
from convroute.settings import env_flag

CHAIN = 8192  # dependent FMAs per invocation: ~16 us at 1980 MHz, ~95 us at 345 MHz
PROBE_GROUPS, HEAT_GROUPS, HEAT_DISPATCHES = 512, 16384, 40  # a heater pass is a few ms at full clock
MIN_HEAT_S, MAX_HEAT_S, CHUNK_S = 0.4, 2.0, 0.1
FAST_ENOUGH = 1.15  # a probe within this factor of the fastest seen means the clocks are up

SOURCE = f"""
@group(0) @binding(0) var<storage, read_write> sink: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
  var a = vec4<f32>(f32(g.x & 255u), 1.0, 2.0, 3.0) * 0.001;
  for (var i = 0u; i < {CHAIN}u; i++) {{
    a = fma(a, vec4<f32>(0.9999), vec4<f32>(0.0001));
  }}
  if (a.x == 12345.0) {{ sink[g.x & 63u] = a.y; }}
}}
"""


class _Heater:
    def __init__(self, gpu: Gpu):
        self.sink = gpu.empty(256, "clock probe sink")
        self.probe = [gpu.dispatch(SOURCE, [self.sink], PROBE_GROUPS * 64, 64)]
        self.heat = [gpu.dispatch(SOURCE, [self.sink], HEAT_GROUPS * 64, 64)] * HEAT_DISPATCHES
        self.fastest_ms: float | None = None
        self.lock = threading.Lock()


_HEATERS: dict[int, _Heater] = {}
_LOCK = threading.Lock()


def applies(gpu: Gpu) -> bool:
    return (gpu.profile.family != "cpu" and "timestamp-query" in gpu.device.features
            and env_flag("CONVROUTE_RAISE_CLOCKS", True))


def raise_clocks(gpu: Gpu) -> float:
    """Keep the GPU busy until its clocks are up (see the module's docstring); returns the seconds spent
    heating (0.0 when the clocks were already up or the device is left alone)."""
    if not applies(gpu):
        return 0.0
    with _LOCK:
        heater = _HEATERS.get(id(gpu))
        if heater is None:
            heater = _HEATERS[id(gpu)] = _Heater(gpu)
    with heater.lock:
        probe = _probe_ms(gpu, heater)
        first = heater.fastest_ms is None
        if not first and probe <= FAST_ENOUGH * heater.fastest_ms:
            return 0.0
        start = time.perf_counter()
        while True:
            _heat(gpu, heater, CHUNK_S)
            probe = _probe_ms(gpu, heater)
            heater.fastest_ms = min(probe, heater.fastest_ms or probe)
            spent = time.perf_counter() - start
            if spent >= MAX_HEAT_S or (spent >= (MIN_HEAT_S if first else 0.0)
                                       and probe <= FAST_ENOUGH * heater.fastest_ms):
                return spent


def _probe_ms(gpu: Gpu, heater: _Heater) -> float:
    return min(pass_times(gpu, [heater.probe] * 3, per_submit=3))


def _heat(gpu: Gpu, heater: _Heater, seconds: float) -> None:
    """Heater passes one after the other (each a few ms of work, waited for) for about `seconds`."""
    end = time.perf_counter() + seconds
    submit_and_wait(gpu, heater.heat)
    while time.perf_counter() < end:
        submit_and_wait(gpu, heater.heat)

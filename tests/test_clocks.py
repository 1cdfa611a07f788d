"""measure.clocks: the timer raises a GPU's clocks before timing, and leaves CPU adapters alone."""

from __future__ import annotations

import pytest

from convroute.device.gpu import get_gpu
from convroute.measure import clocks


class FakeGpu:
    """Just enough of a Gpu for raise_clocks's bookkeeping; probes and heat are patched."""


@pytest.fixture
def fake(monkeypatch):
    """A fake GPU whose probe times come from a list; returns (gpu, probes, heat_calls)."""
    gpu, probes, heats = FakeGpu(), [], []
    monkeypatch.setattr(clocks, "applies", lambda g: True)
    monkeypatch.setattr(clocks, "_Heater", lambda g: type("H", (), {"fastest_ms": None, "lock": _NoLock()})())
    monkeypatch.setattr(clocks, "_probe_ms", lambda g, h: probes.pop(0))
    monkeypatch.setattr(clocks, "_heat", lambda g, h, s: heats.append(s))
    monkeypatch.setattr(clocks, "MIN_HEAT_S", 0.0)
    yield gpu, probes, heats
    clocks._HEATERS.pop(id(gpu), None)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_first_call_heats_then_later_calls_compare_with_the_fastest_probe(fake):
    gpu, probes, heats = fake
    probes += [5.0, 1.0]  # first call: one probe before, one after a heat chunk
    clocks.raise_clocks(gpu)
    assert len(heats) == 1 and not probes
    probes += [1.1]  # within FAST_ENOUGH of the fastest: no heat
    assert clocks.raise_clocks(gpu) == 0.0 and len(heats) == 1
    probes += [5.2, 5.1, 3.0, 1.05]  # slow: heat until a probe is within FAST_ENOUGH of 1.0
    clocks.raise_clocks(gpu)
    assert len(heats) == 4 and not probes


def test_gives_up_after_max_heat(fake, monkeypatch):
    gpu, probes, heats = fake
    probes += [1.0, 1.0]
    clocks.raise_clocks(gpu)
    monkeypatch.setattr(clocks, "MAX_HEAT_S", 0.0)
    probes += [9.0, 9.0]  # never fast again: one chunk, then it stops trying
    clocks.raise_clocks(gpu)
    assert len(heats) == 2 and not probes


def test_cpu_adapters_and_the_switch_are_left_alone(monkeypatch):
    gpu = get_gpu()
    if gpu.profile.family == "cpu":
        assert not clocks.applies(gpu)
        assert clocks.raise_clocks(gpu) == 0.0
    monkeypatch.setenv("CONVROUTE_RAISE_CLOCKS", "0")
    assert not clocks.applies(gpu)
    assert clocks.raise_clocks(gpu) == 0.0

"""The bench measures a layer again before reporting a policy's pick far off the fastest (bench.suite.confirm)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from convroute.bench import suite as bench
from convroute.bench.suites import Layer, Suite
from convroute.device.gpu import DeviceProfile
from convroute.params import make_params

NVIDIA = DeviceProfile("nvidia", "Test GPU 9000", "test driver 1.2.3", vendor_id=0x10DE, backend="Vulkan")
DENSE = make_params((1, 64, 28, 28), (64, 64, 3, 3), padding=1)  # seed: direct (C_out < 128)
WIDE = make_params((1, 64, 28, 28), (256, 64, 3, 3), padding=1)  # seed: im2col


def fake_measurements(monkeypatch, times: dict) -> list:
    """measure_layer replaced: each conv's next entry of times[params] in turn; returns the calls made."""
    calls = []

    def measure(gpu, result, settings, check, precision=None):
        calls.append(result.params)
        result.times_ms.update(times[result.params].pop(0))
        return "fake"
    monkeypatch.setattr(bench, "measure_layer", measure)
    return calls


def run(layers, confirm=True):
    suite = Suite("fake", "test", tuple(Layer(name, 1, p) for name, p in layers))
    return bench.run_bench(SimpleNamespace(profile=NVIDIA), suite, policies=["seed"], progress=False,
                           confirm=confirm)


def test_a_far_pick_is_measured_again_and_reported_by_medians(monkeypatch):
    noisy = [{"direct": 3.0, "im2col": 1.0}, {"direct": 1.0, "im2col": 1.1}, {"direct": 1.2, "im2col": 0.9}]
    calls = fake_measurements(monkeypatch, {DENSE: noisy, WIDE: [{"direct": 2.0, "im2col": 1.0}]})
    report = run([("a/dense", DENSE), ("b/dense", DENSE), ("b/wide", WIDE)])
    assert calls == [DENSE, WIDE] + [DENSE] * bench.CONFIRM_ROUNDS  # shared conv measured once per round
    dense = report.layers[0]
    assert dense.times_ms == {"direct": 1.2, "im2col": 1.0}  # medians of 3.0/1.0/1.2 and 1.0/1.1/0.9
    assert report.layers[1].times_ms == dense.times_ms and report.layers[1].rounds == dense.rounds
    assert len(dense.rounds) == 1 + bench.CONFIRM_ROUNDS
    assert dense.regret("seed") == pytest.approx(0.2)
    assert report.layers[2].rounds == [] and report.layers[2].regret("seed") == 0  # im2col picked, fastest
    assert any("1 layer(s)" in note and "medians" in note for note in report.notes)
    assert report.to_json()["layers"][0]["rounds"][0] == {"direct": 3.0, "im2col": 1.0}


def test_a_wrong_result_in_a_later_round_drops_the_algorithm(monkeypatch):
    def measure(gpu, result, settings, check, precision=None):
        result.times_ms.update({"direct": 3.0, "im2col": 1.0} if not calls else {"direct": 3.0})
        if calls:
            result.failures["im2col"] = "wrong result: relative error 0.5"
        calls.append(1)
    calls = []
    monkeypatch.setattr(bench, "measure_layer", measure)
    layer = run([("dense", DENSE)]).layers[0]
    assert layer.times_ms == {"direct": 3.0} and "im2col" in layer.failures


def test_no_confirm_keeps_one_measurement(monkeypatch):
    calls = fake_measurements(monkeypatch, {DENSE: [{"direct": 3.0, "im2col": 1.0}]})
    report = run([("dense", DENSE)], confirm=False)
    assert calls == [DENSE] and report.layers[0].regret("seed") == pytest.approx(2.0) and not report.notes

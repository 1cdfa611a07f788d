"""`calibrated`'s online refinement: a conv outside the calibration's measured shapes (calibration.coverage) has
its top candidates timed once on the adapter in use, stored in the autotune file and reused; off by switch,
never for a profile other than the adapter in use."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import convroute
from convroute import cache
from convroute.calibration import profile as calib
from convroute.calibration.coverage import Coverage
from convroute.calibration.grid import conv, full_grid
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.params import make_params
from convroute.router import autotune as autotune_mod
from convroute.router import refine as refine_mod
from convroute.router import route_params
from test_policies import NVIDIA, fresh_memory  # noqa: F401 (its autouse fixture: each test a new process)

DILATED = make_params((1, 8, 12, 12), (8, 8, 3, 3), padding=4, dilation=4)
INSIDE = make_params((1, 16, 10, 10), (16, 16, 3, 3), padding=1)


@pytest.fixture(scope="module")
def gpu():
    return get_gpu()


def undilated_shapes():
    """Plain 3x3 and 1x1 shapes around DILATED's and INSIDE's sizes, none dilated."""
    return [conv(c, c2, s, k) for c in (8, 16, 32) for c2 in (8, 16, 32) for s in (6, 10, 20) for k in (1, 3)]


def direct_predicted_fastest(p):
    macs = p.flops / 2
    return {"direct": 1e-9 * macs + 0.01, "im2col": 4e-9 * macs + 0.04, "implicit_gemm": 3e-9 * macs + 0.03,
            "pointwise": 2e-9 * macs + 0.02, "winograd2": 5e-9 * macs + 0.05, "winograd4": 6e-9 * macs + 0.06}


def save_fake_calibration(profile: DeviceProfile, shapes=None) -> calib.Calibration:
    samples = []
    for p in shapes or undilated_shapes():
        times = {n: t for n, t in direct_predicted_fastest(p).items()
                 if n in ALGORITHMS and ALGORITHMS[n].unsupported(p) is None}
        samples.append(calib.Sample(p, times, {}))
    cal = calib.Calibration(profile.key, calib.device_record(profile), "fake", "test", samples)
    assert calib.save_calibration(cal) is not None
    return cal


@pytest.fixture
def tune_calls(monkeypatch):
    """The timings refinement runs; a measured winner is never re-timed (CONFIRM 0: see the confirm tests)."""
    monkeypatch.setattr(refine_mod, "CONFIRM", 0.0)
    calls = []
    real = refine_mod.tune
    monkeypatch.setattr(refine_mod, "tune", lambda g, p, *a, **k: calls.append((p, a[0])) or real(g, p, *a, **k))
    return calls


def test_coverage_names_what_no_measured_shape_has():
    grid = Coverage(full_grid())
    aspp = make_params((1, 2048, 32, 32), (256, 2048, 3, 3), padding=24, dilation=24)
    verdict = grid.verdict(aspp)
    assert not verdict.covered and "dilation 24" in verdict.why() and "2048 input channels" in verdict.why()
    asymmetric = make_params((1, 64, 20, 20), (64, 64, 1, 7), padding=(0, 3))
    assert "kernel 1x7" in grid.verdict(asymmetric).why()
    assert grid.verdict(make_params((1, 64, 20, 20), (64, 64, 3, 3), padding=1)).covered
    assert Coverage([]).verdict(aspp).covered is False


def test_dilated_conv_is_measured_once_stored_and_reused(gpu, tune_calls):
    save_fake_calibration(gpu.profile)
    first = route_params(DILATED, gpu.profile, "calibrated")
    assert len(tune_calls) == 1 and tune_calls[0][1] == ["direct", "implicit_gemm", "im2col"][:len(tune_calls[0][1])]
    assert first.reason.startswith("calibrated: outside the calibrated range (dilation 4")
    assert ": measured " in first.reason and "measured now" in first.reason and "predicted" in first.reason
    entry = autotune_mod.AutotuneCache(gpu.profile.key).get(DILATED)
    assert entry is not None and first.algorithm == entry["algorithm"] == min(entry["times_ms"],
                                                                              key=entry["times_ms"].get)
    again = route_params(DILATED, gpu.profile, "calibrated")
    autotune_mod.AutotuneCache._memory.clear()  # a new process (or machine sharing the cache dir) reads the file
    cache.forget()
    later = route_params(DILATED, gpu.profile, "calibrated")
    assert len(tune_calls) == 1 and "measured before" in again.reason and "measured before" in later.reason
    assert again.algorithm == later.algorithm == first.algorithm


def test_convs_inside_the_calibration_are_predicted(gpu, tune_calls):
    save_fake_calibration(gpu.profile)
    d = route_params(INSIDE, gpu.profile, "calibrated")
    assert tune_calls == [] and d.reason.startswith("calibrated: direct predicted") and "outside" not in d.reason


def test_refinement_switches_off(gpu, tune_calls, monkeypatch):
    save_fake_calibration(gpu.profile)
    d = route_params(DILATED, gpu.profile, "calibrated", refine=False)
    assert d.algorithm == "direct" and "outside the calibrated range (dilation 4" in d.reason
    assert d.reason.endswith("not measured: refinement is off")
    monkeypatch.setenv("CONVROUTE_REFINE", "0")
    assert route_params(DILATED, gpu.profile, "calibrated").reason == d.reason
    assert tune_calls == [] and autotune_mod.AutotuneCache(gpu.profile.key).get(DILATED) is None
    monkeypatch.setenv("CONVROUTE_REFINE", "maybe")
    with pytest.raises(ValueError, match="CONVROUTE_REFINE"):
        route_params(DILATED, gpu.profile, "calibrated")


def test_another_devices_profile_stays_a_prediction(gpu, tune_calls):
    save_fake_calibration(NVIDIA)
    d = route_params(DILATED, NVIDIA, "calibrated")
    assert tune_calls == [] and d.algorithm == "direct"
    assert "not measured: Test GPU 9000 is not the adapter in use" in d.reason


def test_wrong_candidate_is_never_picked(gpu, monkeypatch):
    from test_measure import OffByBias

    monkeypatch.setitem(ALGORITHMS, "offbias", OffByBias)
    shapes = undilated_shapes()
    samples = [calib.Sample(p, {"offbias": 0.001} | {n: t for n, t in direct_predicted_fastest(p).items()
                                                      if n in ALGORITHMS and ALGORITHMS[n].unsupported(p) is None}, {})
               for p in shapes]
    cal = calib.Calibration(gpu.profile.key, calib.device_record(gpu.profile), "fake", "test", samples)
    calib.save_calibration(cal)
    d = route_params(DILATED, gpu.profile, "calibrated")
    assert d.algorithm != "offbias" and "offbias gave a wrong result" in d.reason and "measured now" in d.reason


def test_threads_routing_one_conv_measure_it_once(gpu, tune_calls):
    save_fake_calibration(gpu.profile)
    results = []
    threads = [threading.Thread(target=lambda: results.append(route_params(DILATED, gpu.profile, "calibrated")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tune_calls) == 1 and len({d.algorithm for d in results}) == 1 and len(results) == 3


def test_compile_measures_while_compiling_not_while_running(gpu, tune_calls):
    import torch
    from torch import nn

    save_fake_calibration(gpu.profile)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=4, dilation=4), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1)).eval()
    x = torch.randn(1, 8, 12, 12)
    program = convroute.compile(model, (x,), policy="calibrated")
    assert len(tune_calls) == 1 and tune_calls[0][0].dilation == (4, 4)
    reasons = [row["reason"] for row in program.convs()]
    assert any(r.startswith("calibrated: outside the calibrated range (dilation 4") for r in reasons)
    out = program(x)
    assert len(tune_calls) == 1
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    assert np.abs(np.asarray(out) - ref).max() / np.abs(ref).max() < 1e-4


def test_close_calls_are_measured_when_the_model_is_unsure(gpu, tune_calls):
    """A conv inside the calibration whose two best predictions lie within the model's leave-one-out error is
    measured too (only the close candidates); without that error on file it stays a prediction."""
    def near_tie(p):
        return direct_predicted_fastest(p) | {"im2col": direct_predicted_fastest(p)["direct"] * 1.1}

    cal = save_fake_calibration(gpu.profile)
    for p_sample in cal.samples:
        p_sample.times_ms = {n: t for n, t in near_tie(p_sample.params).items() if n in p_sample.times_ms}
    calib.save_calibration(cal)
    cache.forget()
    assert tune_calls == [] and "close call" not in route_params(INSIDE, gpu.profile, "calibrated").reason
    cal.model_check = {"mean_regret": 0.15}
    calib.save_calibration(cal)
    cache.forget()
    d = route_params(INSIDE, gpu.profile, "calibrated")
    assert d.reason.startswith("calibrated: a close call (predicted within 45%") and ": measured " in d.reason
    assert len(tune_calls) == 1 and set(tune_calls[0][1]) == {"direct", "im2col"}
    assert calib.load_calibration(gpu.profile).close_call == pytest.approx(1.45)
    cal.model_check = {"mean_regret": 5.0}
    assert cal.close_call == calib.CLOSE_CALL_MAX


def test_close_calls_follow_the_median_prediction_error_when_calibrate_kept_it(gpu, tune_calls):
    """Predictions 10 % apart, each 5 % off at the median, may swap (1.05 ** 2 > 1.1): a close call, measured,
    though the leave-one-out mean regret (1 %) alone would trust the prediction."""
    cal = save_fake_calibration(gpu.profile)
    for p_sample in cal.samples:
        fast = direct_predicted_fastest(p_sample.params)
        p_sample.times_ms = {n: t for n, t in (fast | {"im2col": fast["direct"] * 1.1}).items()
                             if n in p_sample.times_ms}
    cal.model_check = {"mean_regret": 0.01}
    calib.save_calibration(cal)
    cache.forget()
    assert "close call" not in route_params(INSIDE, gpu.profile, "calibrated").reason and tune_calls == []
    cal.model_check = {"mean_regret": 0.01, "median_error": 0.05}
    calib.save_calibration(cal)
    cache.forget()
    d = route_params(INSIDE, gpu.profile, "calibrated")
    assert d.reason.startswith("calibrated: a close call (predicted within 10%") and ": measured " in d.reason
    assert calib.load_calibration(gpu.profile).close_call == pytest.approx(1.1025)


@pytest.mark.parametrize("flag", ["0", "1"])
def test_host_close_calls_measure_candidates_a_few_dispatches_apart(gpu, tune_calls, monkeypatch, flag):
    """im2col predicted 30 % behind direct (far past the model's 2 % error) but only ~3 us, less than two
    dispatches' host encoding: with CONVROUTE_HOST_CLOSE_CALLS on it is a close call, measured (and charged per
    dispatch); off, the prediction stands."""
    monkeypatch.setenv("CONVROUTE_HOST_CLOSE_CALLS", flag)
    cal = save_fake_calibration(gpu.profile)
    for p_sample in cal.samples:
        fast = direct_predicted_fastest(p_sample.params)
        p_sample.times_ms = {n: t for n, t in (fast | {"im2col": fast["direct"] * 1.3}).items()
                             if n in p_sample.times_ms}
    cal.model_check = {"mean_regret": 0.01, "median_error": 0.01}
    calib.save_calibration(cal)
    cache.forget()
    d = route_params(INSIDE, gpu.profile, "calibrated")
    if flag == "0":
        assert tune_calls == [] and "close call" not in d.reason
    else:
        assert d.reason.startswith("calibrated: a close call (predicted within 2% + 0.014 ms"), d.reason
        assert len(tune_calls) == 1 and set(tune_calls[0][1]) == {"direct", "im2col"}


def contradicting_tune(calls: list, rounds: list[dict[str, float]], dispatches: dict[str, int] | None = None):
    """A stand-in for measured.tune that returns `rounds` in turn (times in ms), recording its candidates; each
    candidate records one dispatch unless `dispatches` says otherwise."""
    def fake(gpu, p, candidates, *args):
        times = {n: t for n, t in rounds[len(calls)].items() if n in candidates}
        calls.append(list(candidates))
        return {"algorithm": min(times, key=times.get), "times_ms": times, "wrong": {}, "cannot": {},
                "dispatches": {n: (dispatches or {}).get(n, 1) for n in times}, "method": "fake", "when": "now"}
    return fake


@pytest.mark.parametrize("direct_ms, expected", [(0.0113, "im2col"), (0.004, "direct")])
def test_each_measured_dispatch_is_charged_its_host_encoding(gpu, monkeypatch, direct_ms, expected):
    """A two-dispatch direct measured alone 7 % ahead of a one-dispatch im2col loses to it (a model's call pays
    the extra dispatch's encoding, DISPATCH_MS); far enough ahead it wins. The entry keeps the raw fastest."""
    save_fake_calibration(gpu.profile)
    monkeypatch.setattr(refine_mod, "CONFIRM", 0.0)
    calls = []
    monkeypatch.setattr(refine_mod, "tune", contradicting_tune(
        calls, [{"direct": direct_ms, "im2col": 0.0121, "implicit_gemm": 0.5}], {"direct": 2}))
    d = route_params(DILATED, gpu.profile, "calibrated")
    assert d.algorithm == expected and f"direct {direct_ms:.3g} ms in 2 dispatches" in d.reason, d.reason
    assert "each dispatch charged 0.007 ms of host encoding" in d.reason
    assert autotune_mod.AutotuneCache(gpu.profile.key).get(DILATED)["dispatches"]["direct"] == 2
    assert route_params(DILATED, gpu.profile, "calibrated").algorithm == expected and len(calls) == 1


def test_entries_without_dispatch_counts_are_measured_again(gpu, monkeypatch):
    save_fake_calibration(gpu.profile)
    monkeypatch.setattr(refine_mod, "CONFIRM", 0.0)
    old = {"algorithm": "im2col", "times_ms": {"direct": 0.3, "im2col": 0.2, "implicit_gemm": 0.5}, "wrong": {},
           "cannot": {}, "method": "old", "when": "then"}
    autotune_mod.AutotuneCache(gpu.profile.key).put(DILATED, old)
    calls = []
    monkeypatch.setattr(refine_mod, "tune", contradicting_tune(calls, [{"direct": 0.1, "im2col": 0.2,
                                                                         "implicit_gemm": 0.5}]))
    assert route_params(DILATED, gpu.profile, "calibrated").algorithm == "direct" and len(calls) == 1


@pytest.mark.parametrize("second, expected", [({"direct": 0.20, "im2col": 0.30}, "direct"),
                                              ({"direct": 0.24, "im2col": 0.20}, "im2col")])
def test_a_narrow_upset_of_the_prediction_is_timed_again(gpu, monkeypatch, second, expected):
    """direct predicted best, measured 15 % behind im2col once: both are timed again and their two medians
    averaged, so one noisy timing cannot overturn the prediction for good, while a repeated one does."""
    save_fake_calibration(gpu.profile)
    calls = []
    monkeypatch.setattr(refine_mod, "tune", contradicting_tune(calls, [{"direct": 0.239, "im2col": 0.208,
                                                                         "implicit_gemm": 0.5}, second]))
    d = route_params(DILATED, gpu.profile, "calibrated")
    assert calls[1] == ["direct", "im2col"] and len(calls) == 2 and d.algorithm == expected
    entry = autotune_mod.AutotuneCache(gpu.profile.key).get(DILATED)
    assert entry["times_ms"]["direct"] == pytest.approx((0.239 + second["direct"]) / 2)
    assert entry["confirmed"] == ["direct", "im2col"] and entry["algorithm"] == expected


def test_a_clear_upset_of_the_prediction_is_not_timed_again(gpu, monkeypatch):
    save_fake_calibration(gpu.profile)
    calls = []
    monkeypatch.setattr(refine_mod, "tune", contradicting_tune(calls, [{"direct": 0.5, "im2col": 0.208}]))
    assert route_params(DILATED, gpu.profile, "calibrated").algorithm == "im2col" and len(calls) == 1


@pytest.mark.parametrize("tie, direct_ms, expected", [("1", 0.21, "direct"), ("0", 0.21, "im2col"),
                                                      ("1", 0.25, "im2col")])
def test_seed_tie_keeps_seeds_pick_within_its_margin(gpu, monkeypatch, tie, direct_ms, expected):
    """With CONVROUTE_SEED_TIE on, a measured winner less than SEED_TIE ahead of seed's pick (direct, for a
    dilated conv) does not move the conv off it; off, or beyond the margin, the measured fastest wins."""
    save_fake_calibration(gpu.profile)
    monkeypatch.setattr(refine_mod, "CONFIRM", 0.0)
    monkeypatch.setenv("CONVROUTE_SEED_TIE", tie)
    assert route_params(DILATED, gpu.profile, "seed").algorithm == "direct"
    monkeypatch.setattr(refine_mod, "tune", contradicting_tune([], [{"direct": direct_ms, "im2col": 0.20,
                                                                     "implicit_gemm": 0.5}]))
    d = route_params(DILATED, gpu.profile, "calibrated")
    assert d.algorithm == expected
    assert ("kept seed's direct, measured within 10% of im2col" in d.reason) == (expected == "direct"), d.reason

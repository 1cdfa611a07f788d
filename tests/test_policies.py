"""Policies: plumbing (API, env, CLI), calibrated and autotune routing, their files, and exclusions."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

import convroute
from conftest import applicable, assert_matches, random_inputs, reference
from convroute import cache
from convroute.cache import CacheWarning
from convroute.calibration import profile as calib
from convroute.calibration.grid import full_grid, tiny_grid
from convroute.calibration.run import run_calibration
from convroute.cli.main import main as cli_main
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.measure.timing import TimingSettings
from convroute.params import make_params
from convroute.router import FORCE_DIRECT_REASON, FORCE_DIRECT_SPARED, POLICIES, route_params
from convroute.router import autotune as autotune_mod

FAST = TimingSettings(warmup=1, repeats=5, min_repeats=3, budget_s=0.05)
NVIDIA = DeviceProfile("nvidia", "Test GPU 9000", "test driver 1.2.3", vendor_id=0x10DE, backend="Vulkan")
DENSE3 = make_params((1, 64, 20, 20), (64, 64, 3, 3), padding=1)
ONE_BY_ONE = make_params((1, 64, 20, 20), (32, 64, 1, 1))


@pytest.fixture(autouse=True)
def fresh_memory():
    """Each test starts like a new process: nothing loaded, tuned or warned about in memory."""
    cache.forget()
    autotune_mod.AutotuneCache._memory.clear()
    yield
    cache.forget()
    autotune_mod.AutotuneCache._memory.clear()


@pytest.fixture(scope="module")
def gpu():
    return get_gpu()


def fake_calibration(profile: DeviceProfile, rule, excluded=None) -> calib.Calibration:
    """A profile whose 'measurements' follow rule(p) -> {algorithm: ms}, saved for `profile`."""
    samples = []
    for p in tiny_grid() + full_grid()[::3]:
        times = {n: t for n, t in rule(p).items() if ALGORITHMS[n].unsupported(p) is None}
        samples.append(calib.Sample(p, times, {}))
    cal = calib.Calibration(profile.key, calib.device_record(profile), "fake", "test", samples, excluded or {})
    assert calib.save_calibration(cal) is not None
    return cal


def im2col_always_fastest(p):
    macs = p.flops / 2
    return {"direct": 1e-7 * macs + 0.05, "im2col": 2e-8 * macs + 0.01, "pointwise": 5e-8 * macs + 0.02,
            "depthwise": 3e-8 * macs + 0.01, "transposed": 1e-7 * macs + 0.05}


def test_policies_are_known():
    assert POLICIES == ("seed", "etvk", "calibrated", "autotune", "derived")
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        convroute.route((1, 8, 8, 8), (8, 8, 3, 3), device="nvidia", policy="fastest")


def test_env_selects_the_policy(monkeypatch):
    monkeypatch.setenv("CONVROUTE_POLICY", "calibrated")
    with pytest.warns(CacheWarning, match="no calibration profile"):
        d = convroute.route((1, 64, 20, 20), (64, 64, 3, 3), padding=1, device="nvidia")
    assert d.policy == "calibrated"


def test_calibrated_without_profile_falls_back_to_seed_with_a_warning():
    seed = route_params(DENSE3, NVIDIA, "seed")
    with pytest.warns(CacheWarning, match="routes as 'seed'"):
        d = route_params(DENSE3, NVIDIA, "calibrated")
    assert d.algorithm == seed.algorithm == "direct"
    assert d.reason.startswith("no calibration profile") and seed.reason in d.reason


def test_calibrated_follows_the_profile_and_states_predicted_times():
    fake_calibration(NVIDIA, im2col_always_fastest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = route_params(DENSE3, NVIDIA, "calibrated")
    assert (d.algorithm, d.policy) == ("im2col", "calibrated")
    assert route_params(DENSE3, NVIDIA, "seed").algorithm == "direct"  # C_out 64 < 128
    assert d.reason.startswith("calibrated: im2col predicted ") and " ms vs direct " in d.reason
    assert "pointwise n/a" in d.reason and "transposed n/a" in d.reason
    dw = make_params((1, 64, 20, 20), (64, 1, 3, 3), padding=1, groups=64)
    assert route_params(dw, NVIDIA, "calibrated").algorithm == "depthwise"


def test_calibrated_profile_of_one_device_does_not_serve_another():
    fake_calibration(NVIDIA, im2col_always_fastest)
    other_driver = replace(NVIDIA, driver="test driver 1.2.4")
    with pytest.warns(CacheWarning, match="no calibration profile"):
        assert route_params(DENSE3, other_driver, "calibrated").algorithm == "direct"


def test_algorithm_missing_from_the_profile_is_not_chosen():
    def without_im2col(p):
        times = im2col_always_fastest(p)
        del times["im2col"]
        return times

    fake_calibration(NVIDIA, without_im2col)
    d = route_params(DENSE3, NVIDIA, "calibrated")
    assert d.algorithm == "direct" and "im2col not calibrated" in d.reason


def test_calibration_exclusion_applies_to_every_policy():
    fake_calibration(NVIDIA, im2col_always_fastest, excluded={"im2col": "wrong result on conv2d ...: 0.5"})
    big = make_params((1, 256, 14, 14), (256, 256, 3, 3), padding=1)
    seed = route_params(big, NVIDIA, "seed")
    assert seed.algorithm == "direct"
    assert "but im2col is excluded on this device" in seed.reason and "wrong result" in seed.reason
    cal = route_params(big, NVIDIA, "calibrated")
    assert cal.algorithm == "direct" and "im2col excluded" in cal.reason


def write_denylist(tmp_path, monkeypatch, entries):
    path = tmp_path / "deny.json"
    path.write_text(json.dumps({"format": "convroute-denylist", "version": 1, "entries": entries}))
    monkeypatch.setenv("CONVROUTE_DENYLIST", str(path))


def test_algorithm_that_could_not_size_a_smaller_grid_shape_is_avoided():
    cal = fake_calibration(NVIDIA, im2col_always_fastest)
    small = make_params((1, 64, 10, 10), (64, 64, 3, 3), padding=1)
    cal.samples.append(calib.Sample(small, {"direct": 1.0}, {}, {"im2col": "packed weights exceed a binding"}))
    calib.save_calibration(cal)
    cache.forget()
    d = route_params(DENSE3, NVIDIA, "calibrated")  # 64 -> 64 3x3 weights: as large as the failed shape's
    assert d.algorithm != "im2col" and "im2col excluded (could not run a calibration shape" in d.reason
    tiny = make_params((1, 16, 20, 20), (16, 16, 3, 3), padding=1)
    assert route_params(tiny, NVIDIA, "calibrated").algorithm == "im2col"


def test_denylist_reroutes_seed_to_the_next_applicable_algorithm(tmp_path, monkeypatch):
    write_denylist(tmp_path, monkeypatch, [
        {"algorithm": "pointwise", "reason": "driver drops 1x1 stores", "vendor": "nvidia",
         "driver": r"test driver 1\.2"}])
    d = route_params(ONE_BY_ONE, NVIDIA, "seed")
    assert d.algorithm == "direct"
    assert "pointwise is excluded on this device" in d.reason and "driver drops 1x1 stores" in d.reason
    assert route_params(ONE_BY_ONE, DeviceProfile.for_family("nvidia"), "seed").algorithm == "pointwise"
    fake_calibration(NVIDIA, im2col_always_fastest)
    d = route_params(ONE_BY_ONE, NVIDIA, "calibrated")
    assert d.algorithm == "im2col" and "pointwise excluded (denylisted" in d.reason


def test_denylist_shape_range(tmp_path, monkeypatch):
    write_denylist(tmp_path, monkeypatch, [
        {"algorithm": "im2col", "reason": "large kernels", "vendor": "mali", "shapes": {"kernel": [5, 7]}}])
    mali = DeviceProfile.for_family("mali")
    k3 = make_params((1, 16, 20, 20), (16, 16, 3, 3), padding=1)
    k5 = make_params((1, 16, 20, 20), (16, 16, 5, 5), padding=2)
    assert route_params(k3, mali, "seed").algorithm == "im2col"
    assert route_params(k5, mali, "seed").algorithm == "direct"


def test_everything_excluded_is_a_clear_error(tmp_path, monkeypatch):
    write_denylist(tmp_path, monkeypatch, [{"algorithm": "transposed", "reason": "broken"}])
    p = make_params((1, 8, 6, 6), (8, 4, 2, 2), 2, transposed=True)
    with pytest.raises(RuntimeError, match="every algorithm that can run"):
        route_params(p, NVIDIA, "seed")


@pytest.mark.parametrize("policy", ["calibrated", "autotune"])
def test_force_direct_under_measured_policies(policy):
    """As in ET-VK: a sliding-window conv takes direct (nothing is measured or predicted for it), a 1x1 keeps
    the policy's choice; the Decision names the policy and the override."""
    fake_calibration(NVIDIA, im2col_always_fastest)
    d = route_params(DENSE3, NVIDIA, policy, force_direct=True)
    assert (d.algorithm, d.reason, d.policy, d.force_direct) == ("direct", FORCE_DIRECT_REASON, policy, True)
    assert str(d) == f"direct: {FORCE_DIRECT_REASON} [policy {policy} + force_direct, device nvidia]"
    if policy == "calibrated":
        plain = route_params(ONE_BY_ONE, NVIDIA, policy)
        assert plain.algorithm == "im2col" and plain.reason.startswith("calibrated: im2col predicted")
        d = route_params(ONE_BY_ONE, NVIDIA, policy, force_direct=True)
        assert (d.algorithm, d.reason, d.force_direct) == ("im2col", plain.reason + FORCE_DIRECT_SPARED, True)


ROUTED_SHAPES = [  # input, weight, stride, padding, dilation, groups, transposed
    ((1, 16, 12, 12), (32, 16, 3, 3), 1, 1, 1, 1, False), ((2, 16, 10, 10), (16, 16, 1, 1), 1, 0, 1, 1, False),
    ((1, 16, 11, 11), (16, 1, 3, 3), 2, 1, 1, 16, False), ((1, 8, 12, 12), (8, 4, 3, 3), 1, 2, 2, 2, False),
    ((1, 8, 6, 6), (8, 4, 2, 2), 2, 0, 1, 1, True), ((1, 3, 20, 20), (8, 3, 7, 7), 2, 3, 1, 1, False)]


@pytest.mark.parametrize("policy", ["calibrated", "autotune"])
def test_routed_results_are_still_correct(gpu, policy):
    cal = run_calibration(gpu, "tiny", settings=FAST, progress=False)
    calib.save_calibration(cal)
    rng = np.random.default_rng(11)
    for x_shape, w_shape, stride, padding, dilation, groups, transposed in ROUTED_SHAPES:
        p = make_params(x_shape, w_shape, stride, padding, dilation, groups, transposed=transposed)
        x, w, b = random_inputs(p, rng)
        layer = convroute.Conv2d(w, b, stride, padding, dilation, groups, transposed=transposed, policy=policy)
        out = layer(x)
        assert layer.decision.policy == policy and layer.decision.reason.startswith(policy)
        assert_matches(out, reference(p, x, w, b), f"{policy} {layer.decision.algorithm} {p.describe()}")


def test_conv2d_passes_the_policy(gpu):
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
    with pytest.warns(CacheWarning, match="no calibration profile"):
        out = convroute.conv2d(x, w, padding=1, policy="calibrated")
    p = make_params(x.shape, w.shape, padding=1)
    assert_matches(out, reference(p, x, w))


def test_autotune_tunes_once_then_reuses_the_cache_across_restarts(gpu, monkeypatch):
    calls = []
    real_tune = autotune_mod.tune
    monkeypatch.setattr(autotune_mod, "tune", lambda *a: calls.append(a[1]) or real_tune(*a))
    p = make_params((1, 16, 10, 10), (16, 16, 1, 1))
    first = route_params(p, gpu.profile, "autotune")
    assert "tuned now" in first.reason and " measured " in first.reason and len(calls) == 1
    second = route_params(p, gpu.profile, "autotune")
    assert "cached" in second.reason and second.algorithm == first.algorithm and len(calls) == 1
    autotune_mod.AutotuneCache._memory.clear()  # a new process reads the file
    third = route_params(p, gpu.profile, "autotune")
    assert "cached" in third.reason and third.algorithm == first.algorithm and len(calls) == 1
    times = json.loads(autotune_mod.AutotuneCache(gpu.profile.key).path.read_text())["entries"]
    entry = next(iter(times.values()))
    assert set(entry["times_ms"]) == set(applicable(p)) and {"direct", "im2col", "pointwise"} <= set(applicable(p))
    assert entry["algorithm"] == min(entry["times_ms"], key=entry["times_ms"].get)


@pytest.mark.parametrize("damage", ["corrupt", "other device", "inapplicable winner", "bad entry"])
def test_damaged_autotune_cache_is_refused_and_retuned(gpu, damage):
    p = make_params((1, 16, 10, 10), (16, 16, 3, 3), padding=1)
    route_params(p, gpu.profile, "autotune")
    path = autotune_mod.AutotuneCache(gpu.profile.key).path
    data = json.loads(path.read_text())
    key = next(iter(data["entries"]))
    if damage == "corrupt":
        path.write_text(path.read_text()[:-20])
    elif damage == "other device":
        data["device_key"] = "Another GPU | x | Vulkan"
        path.write_text(json.dumps(data))
    elif damage == "inapplicable winner":
        data["entries"][key] = {"algorithm": "transposed", "times_ms": {"transposed": 0.001, "direct": 1.0,
                                "im2col": 1.0}, "wrong": {}, "method": "wall clock", "when": "x"}
        path.write_text(json.dumps(data))
    else:
        data["entries"][key]["times_ms"] = {"direct": "fast"}
        path.write_text(json.dumps(data))
    autotune_mod.AutotuneCache._memory.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = route_params(p, gpu.profile, "autotune")
    assert "tuned now" in d.reason and d.algorithm in applicable(p)  # re-measured: any real candidate may win
    if damage in ("corrupt", "other device"):
        assert any(issubclass(w.category, CacheWarning) for w in caught)


def test_autotune_for_another_device_routes_as_calibrated(gpu):
    with pytest.warns(CacheWarning, match="no calibration profile"):
        d = route_params(DENSE3, DeviceProfile.for_family("mali"), "autotune")
    assert d.algorithm == "im2col" and d.reason.startswith("autotune measures only the adapter in use")


def test_autotune_skips_a_wrong_algorithm(gpu, monkeypatch):
    from test_measure import OffByBias

    monkeypatch.setitem(ALGORITHMS, "offbias", OffByBias)
    p = make_params((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
    d = route_params(p, gpu.profile, "autotune")
    assert d.algorithm != "offbias" and "offbias gave a wrong result" in d.reason


def test_autotune_skips_an_algorithm_that_cannot_size_the_shape(gpu, monkeypatch):
    from test_measure import SmallOnly

    monkeypatch.setitem(ALGORITHMS, "smallonly", SmallOnly)
    p = make_params((1, 16, 10, 10), (16, 16, 3, 3), padding=1)
    d = route_params(p, gpu.profile, "autotune")
    assert d.algorithm != "smallonly" and "smallonly cannot run it (packed weights need more" in d.reason
    assert "cached" in route_params(p, gpu.profile, "autotune").reason


def test_cli_calibrate_and_bench(gpu, tmp_path, capsys):
    assert cli_main(["calibrate", "--grid", "tiny", "--no-progress", "--per-shape", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "saved" in out and "leave-one-out" in out
    layers = {"name": "tiny", "layers": [
        {"name": "a", "c_in": 8, "h": 12, "w": 12, "c_out": 16, "kernel": 3, "padding": 1, "count": 2},
        {"name": "b", "c_in": 16, "h": 12, "w": 12, "c_out": 8, "kernel": 1},
        {"name": "c", "c_in": 16, "h": 12, "w": 12, "c_out": 16, "kernel": 3, "padding": 1, "groups": 16},
        {"name": "d", "c_in": 16, "h": 6, "w": 6, "c_out": 8, "kernel": 2, "stride": 2, "transposed": True}]}
    suite_file, out_json, out_png = tmp_path / "tiny.json", tmp_path / "r.json", tmp_path / "r.png"
    suite_file.write_text(json.dumps(layers))
    args = ["bench", "--layers", str(suite_file), "--json", str(out_json), "--plot", str(out_png),
            "--budget", "0.05", "--no-progress", "--policy", "seed,calibrated,autotune"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "x oracle" in printed and "seed" in printed and "calibrated" in printed
    report = json.loads(out_json.read_text())
    totals = report["totals_ms"]
    assert {"seed", "calibrated", "autotune", "oracle"} | set(ALGORITHMS) <= set(totals)
    assert all(v is not None and v > 0 for v in totals.values())
    assert all(totals[k] >= totals["oracle"] * (1 - 1e-9) for k in totals)
    layer_a = report["layers"][0]
    assert layer_a["count"] == 2 and set(layer_a["times_ms"]) == set(applicable(make_params((1, 8, 12, 12),
                                                                                             (16, 8, 3, 3), 1, 1)))
    assert math.isclose(layer_a["regret"]["seed"], layer_a["times_ms"][layer_a["choices"]["seed"]]
                        / layer_a["oracle_ms"] - 1)
    assert out_png.stat().st_size > 10_000


def test_cli_bench_rejects_bad_arguments(capsys):
    assert cli_main(["bench", "--suite", "nosuchnet"]) == 2
    assert cli_main(["bench", "--policy", "fastest"]) == 2
    assert cli_main(["bench", "--compare", "tensorflow"]) == 2
    err = capsys.readouterr().err
    assert "nosuchnet" in err and "unknown policy" in err and "unknown engine" in err

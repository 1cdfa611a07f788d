"""Measurement: the host reference, timing, the calibration grid, profile files, the model and the denylist."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from conftest import reference as torch_reference
from convroute import cache
from convroute.bench.suites import SUITES, load_suite
from convroute.cache import CacheWarning, cache_dir, device_file, read_json, write_json
from convroute.calibration import denylist
from convroute.calibration import model as cost_model
from convroute.calibration import profile as calib
from convroute.calibration.grid import GPU_MAX_FLOPS, coverage_pool, full_grid, grid_shapes, quick_grid, tiny_grid
from convroute.calibration.model import CostModel, loo_report, tiling_features
from convroute.calibration.run import run_calibration
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.direct import Direct
from convroute.measure import timing as timing_mod
from convroute.measure.reference import TOLERANCES, norm_relative_error, reference_conv
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import make_params, params_from_dict, params_key, params_to_dict

FAST = TimingSettings(warmup=1, repeats=5, min_repeats=3, budget_s=0.05)


@pytest.fixture(autouse=True)
def fresh_memory():
    """Each test starts like a new process: no profile loaded, no warning given yet."""
    cache.forget()


@pytest.fixture(scope="module")
def gpu():
    return get_gpu()


def random_params(rng):
    transposed = bool(rng.integers(2))
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, cout_g = groups * int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    stride, dilation = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = tuple(int(v) for v in rng.integers(0, 3, 2))
    out_pad = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation, strict=True)) \
        if transposed else (0, 0)
    weight = (c_in, cout_g, *k) if transposed else (groups * cout_g, c_in // groups, *k)
    shape = (int(rng.integers(1, 3)), c_in, int(rng.integers(3, 10)), int(rng.integers(3, 10)))
    return make_params(shape, weight, stride, padding, dilation, groups, transposed=transposed,
                       output_padding=out_pad)


def test_reference_matches_torch():
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    checked = 0
    while checked < 60:
        try:
            p = random_params(rng)
        except ValueError:
            continue
        x, w, b = (rng.standard_normal(s) for s in (p.input_shape, p.weight_shape, (p.c_out,)))
        assert norm_relative_error(reference_conv(p, x, w, b), torch_reference(p, x, w, b)) < 1e-12, p.describe()
        checked += 1


def test_relative_error_flags_unwritten_outputs():
    ref = np.ones((2, 3))
    assert norm_relative_error(ref, ref) == 0.0
    assert norm_relative_error(np.full((2, 3), np.nan), ref) == float("inf")
    assert norm_relative_error(np.ones((3, 2)), ref) == float("inf")


@pytest.mark.parametrize("method", ["auto", "wall"])
def test_timing_gives_positive_medians_within_the_repeat_bounds(gpu, method):
    p = make_params((1, 8, 10, 10), (8, 8, 3, 3), padding=1)
    work = Workload(gpu, p, rotations=3)
    try:
        kernel = work.kernel(Direct)
        timing = work.time(kernel, replace(FAST, method=method))
    finally:
        work.release()
    assert 3 <= len(timing.samples_ms) <= 5
    assert timing.median_ms > 0 and all(t > 0 for t in timing.samples_ms)
    expected = "gpu timestamps" if method == "auto" and "timestamp-query" in gpu.device.features else "wall clock"
    assert timing.method.startswith(expected)
    assert timing.method.endswith("second of two in a row") == (gpu.profile.family == "cpu")


def test_candidates_are_timed_interleaved_and_clear_losers_pruned(gpu):
    p = make_params((1, 16, 12, 12), (16, 16, 3, 3), padding=1)
    work = Workload(gpu, p, rotations=2)
    try:
        kernels = {"direct": work.kernel(Direct), "also_direct": work.kernel(Direct)}
        timings = work.time_all(kernels, FAST)
        assert set(timings) == set(kernels)
        assert len(timings["direct"].samples_ms) == len(timings["also_direct"].samples_ms) >= 3
        slow = {"direct": work.kernel(Direct), "slow": work.kernel(Slow)}
        pruned = work.time_all(slow, replace(FAST, prune=3.0, prune_floor_s=0.0))
        assert "pruned" in pruned["slow"].method and len(pruned["slow"].samples_ms) == 1
        assert "pruned" not in pruned["direct"].method
        cheap = work.time_all(slow, replace(FAST, prune=3.0, prune_floor_s=60.0))  # below the floor: timed
        assert "pruned" not in cheap["slow"].method and len(cheap["slow"].samples_ms) >= 3
    finally:
        work.release()


@pytest.mark.parametrize("runs_each", [2, 1])
def test_cpu_adapters_time_each_candidate_as_the_second_of_two_runs_in_a_row(gpu, monkeypatch, runs_each):
    """On CPU adapters a kernel right after a different one runs up to 1.5x slower: each round runs a candidate
    twice in a row and keeps the second run's time; GPUs time one run per candidate and round."""
    monkeypatch.setattr(timing_mod, "runs_per_sample", lambda g: runs_each)
    seen = []

    def fake_pass_times(g, passes, per_submit=1):
        seen.append((len(passes), per_submit))
        return [float(i + 1) for i in range(len(passes))]  # pass i took i + 1 ms

    monkeypatch.setattr(timing_mod, "pass_times", fake_pass_times)
    monkeypatch.setattr(timing_mod, "timing_method", lambda g, s: "timestamp")
    runs = {"a": [["run a"]], "b": [["run b"]]}
    monkeypatch.setattr(timing_mod, "submit_and_wait", lambda g, run: None)
    timings = timing_mod.time_candidates(gpu, runs, replace(FAST, repeats=3, min_repeats=3))
    assert seen == [(2 * 3 * runs_each, 2 * runs_each)]
    stride = 2 * runs_each  # a round: each candidate runs_each times, a then b
    assert timings["a"].samples_ms == tuple(float(r * stride + runs_each) for r in range(3))
    assert timings["b"].samples_ms == tuple(float(r * stride + 2 * runs_each) for r in range(3))
    assert timings["a"].method.endswith("second of two in a row") == (runs_each == 2)


def test_only_cpu_adapters_run_each_candidate_twice(gpu):
    assert timing_mod.runs_per_sample(gpu) == (2 if gpu.profile.family == "cpu" else 1)


class Slow(Direct):
    """The direct kernel run 100 times over: a clearly slower candidate whatever the machine's load."""

    name = "slow"

    def bind(self, x, y, n):
        return super().bind(x, y, n) * 100


def test_timing_rejects_an_unknown_method(gpu, monkeypatch):
    monkeypatch.setenv("CONVROUTE_TIMING", "sundial")
    p = make_params((1, 4, 6, 6), (4, 4, 1, 1))
    work = Workload(gpu, p, rotations=1)
    try:
        kernel = work.kernel(Direct)
        with pytest.raises(ValueError, match="timing method"):
            work.time(kernel, FAST)
    finally:
        work.release()


def test_workload_rotates_distinct_inputs_and_checks_every_algorithm(gpu):
    p = make_params((1, 8, 9, 9), (8, 8, 1, 1))
    work = Workload(gpu, p, rotations=4)
    try:
        firsts = [gpu.read(x, (8,)) for x in work.x_bufs]
        assert len(work.x_bufs) == 4 and len({tuple(v) for v in firsts}) == 4
        for name, cls in ALGORITHMS.items():
            if cls.unsupported(p) is None:
                assert work.error(work.kernel(cls)) < 1e-5, name
    finally:
        work.release()


def test_workload_beyond_one_binding_times_a_chunk_and_scales(gpu, monkeypatch):
    p = make_params((5, 8, 10, 10), (8, 8, 3, 3), padding=1)
    monkeypatch.setitem(gpu.profile.limits, "max-storage-buffer-binding-size", 4 * 8 * 10 * 10 * 2)
    work = Workload(gpu, p, rotations=2)
    try:
        assert work.p.n == 2 and work.scale == 2.5
        kernel = work.kernel(Direct)
        assert work.error(kernel) < 1e-5
        timing = work.time(kernel, FAST)
        assert "2-image chunks x 2.5" in timing.method and timing.median_ms > 0
    finally:
        work.release()


class Lazy(Direct):
    """Writes nothing: a driver that drops the dispatch. Its poisoned output must count as wrong."""

    name = "lazy"

    def bind(self, x, y, n):
        return []


class OffByBias(Direct):
    """Computes the conv with a wrong bias: a subtly wrong result."""

    name = "offbias"

    def prepare(self, weight, bias):
        super().prepare(weight, bias + 0.1)


def test_workload_error_catches_unwritten_and_wrong_outputs(gpu):
    p = make_params((1, 4, 8, 8), (4, 4, 3, 3), padding=1)
    work = Workload(gpu, p, rotations=1)
    try:
        assert work.error(work.kernel(Lazy)) == float("inf")
        assert work.error(work.kernel(OffByBias)) > 1e-3
    finally:
        work.release()


def all_suite_params():
    return {layer.params(n) for s in SUITES for layer in load_suite(s).layers for n in (1, 2, 3, 4, 8)}


def test_grid_holds_no_suite_layer():
    suite_shapes = all_suite_params()
    for grid in (full_grid(), full_grid(GPU_MAX_FLOPS), tiny_grid(), quick_grid(), coverage_pool(GPU_MAX_FLOPS)):
        overlap = [p.describe() for p in grid if p in suite_shapes]
        assert not overlap, overlap


def test_full_grid_spans_real_networks():
    grid = full_grid()
    assert {p.kh for p in grid} >= {1, 2, 3, 4, 5, 7}
    assert {p.stride[0] for p in grid} >= {1, 2}
    assert any(p.is_depthwise for p in grid) and any(p.transposed for p in grid)
    assert any(p.groups > 1 and not p.is_depthwise for p in grid)
    assert any(p.dilation != (1, 1) for p in grid) and any(p.n > 1 for p in grid)
    assert min(p.c_in for p in grid) <= 3 and max(p.c_out for p in grid) >= 1024
    assert min(p.h for p in grid) <= 6 and max(p.h for p in grid) >= 160
    assert len(set(grid)) == len(grid)


def test_gpus_also_calibrate_the_heaviest_shapes():
    cpu, gpu = (DeviceProfile.for_family(f) for f in ("cpu", "nvidia"))
    light, heavy = grid_shapes("full", cpu), grid_shapes("full", gpu)
    assert set(light) == set(full_grid()) and max(p.flops for p in light) <= 1.2e9
    assert set(light) < set(heavy) and max(p.flops for p in heavy) > 4e9
    assert grid_shapes("tiny", gpu) == tiny_grid()


def test_params_dict_and_key_round_trip():
    for p in full_grid()[:40] + tiny_grid():
        assert params_from_dict(json.loads(json.dumps(params_to_dict(p)))) == p
    keys = {params_key(p) for p in full_grid()}
    assert len(keys) == len(full_grid())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVROUTE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CONVROUTE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "convroute"


def test_device_files_differ_per_device_and_driver():
    a = DeviceProfile("nvidia", "GPU X", "driver 1.0", backend="Vulkan")
    b = replace(a, driver="driver 1.1")
    assert device_file("calibration", a.key) != device_file("calibration", b.key)
    assert device_file("calibration", a.key).name.startswith("calibration-gpu-x-")


@pytest.fixture
def quick_calibration(gpu):
    return run_calibration(gpu, "tiny", settings=FAST, progress=False)


def test_calibration_round_trip_survives_a_restart(gpu, quick_calibration):
    cal = quick_calibration
    assert cal.complete and cal.excluded == {}
    assert all(s.times_ms for s in cal.samples)
    assert max(e for s in cal.samples for e in s.errors.values()) < TOLERANCES["float32"]
    path = calib.save_calibration(cal)
    assert path is not None and path.exists()
    cache.forget()  # a new process
    loaded = calib.load_calibration(gpu.profile)
    assert loaded is not None
    assert [s.params for s in loaded.samples] == [s.params for s in cal.samples]
    assert [s.times_ms for s in loaded.samples] == [s.times_ms for s in cal.samples]
    assert loaded.device_key == gpu.profile.key and loaded.timing == cal.timing


def test_missing_profile_is_silent(gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calib.load_calibration(gpu.profile) is None


@pytest.mark.parametrize("damage", ["truncated", "not json object", "other format", "other version",
                                    "negative time", "bad params", "no samples"])
def test_damaged_profile_is_refused_with_a_warning(gpu, quick_calibration, damage):
    path = calib.save_calibration(quick_calibration)
    data = json.loads(path.read_text())
    if damage == "truncated":
        text = path.read_text()[:100]
    else:
        if damage == "not json object":
            data = [1, 2, 3]
        elif damage == "other format":
            data["format"] = "something-else"
        elif damage == "other version":
            data["version"] = 999
        elif damage == "negative time":
            data["samples"][0]["times_ms"] = {"direct": -1.0}
        elif damage == "bad params":
            data["samples"][0]["params"]["groups"] = 0
        elif damage == "no samples":
            data["samples"] = []
        text = json.dumps(data)
    path.write_text(text)
    cache.forget()
    with pytest.warns(CacheWarning, match="ignoring"):
        assert calib.load_calibration(gpu.profile) is None


def test_profile_from_another_device_is_refused(gpu, quick_calibration):
    path = calib.save_calibration(quick_calibration)
    data = json.loads(path.read_text())
    data["device_key"] = "Some Other GPU | driver 9 | Vulkan"
    path.write_text(json.dumps(data))
    cache.forget()
    with pytest.warns(CacheWarning, match="another device"):
        assert calib.load_calibration(gpu.profile) is None


def test_unwritable_cache_dir_warns_and_goes_on(monkeypatch, tmp_path, quick_calibration):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CONVROUTE_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(CacheWarning, match="could not write"):
        assert calib.save_calibration(quick_calibration) is None
    with pytest.warns(CacheWarning, match="could not write"):
        assert not write_json(blocker / "cache" / "x.json", {"a": 1})


def test_read_json_ignores_an_unreadable_path(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.warns(CacheWarning, match="unreadable"):
        assert read_json(tmp_path / "dir.json", "x", 1, None) is None


def test_calibration_excludes_an_algorithm_that_gives_wrong_results(gpu):
    algorithms = {"direct": Direct, "offbias": OffByBias, "lazy": Lazy}
    cal = run_calibration(gpu, "tiny", settings=FAST, progress=False, algorithms=algorithms)
    assert set(cal.excluded) == {"offbias", "lazy"}
    assert "wrong result" in cal.excluded["offbias"] and "relative error" in cal.excluded["offbias"]
    assert all(set(s.times_ms) <= {"direct"} for s in cal.samples)
    assert "offbias" not in CostModel.fit(cal.samples, cal.excluded).models


class SmallOnly(Direct):
    """Refuses shapes over 8 input channels for size, as a kernel hitting a binding limit does."""

    name = "smallonly"

    def prepare(self, weight, bias):
        if self.p.c_in > 8:
            raise ValueError("packed weights need more than this device's largest storage binding")
        super().prepare(weight, bias)


def test_calibration_skips_shapes_an_algorithm_cannot_size(gpu):
    cal = run_calibration(gpu, "tiny", settings=FAST, progress=False,
                                algorithms={"direct": Direct, "smallonly": SmallOnly})
    assert cal.excluded == {}
    assert any("smallonly" in s.times_ms for s in cal.samples)
    big = [s for s in cal.samples if s.params.c_in > 8 and not s.params.transposed]
    assert big and all("storage binding" in s.failed["smallonly"] and "smallonly" not in s.times_ms for s in big)
    calib.save_calibration(cal)
    cache.forget()
    assert calib.load_calibration(gpu.profile).samples[-1].failed == cal.samples[-1].failed


def synthetic_samples(rule):
    """Samples over the quick + part of the full grid whose times follow `rule(p) -> {name: ms}`."""
    return [calib.Sample(p, rule(p), {}) for p in tiny_grid() + full_grid()[::4]]


def test_model_learns_a_crossover():
    # 'fast_big' has a high fixed cost and a low per-MAC cost: it wins only on large convs.
    def rule(p):
        macs = p.flops / 2
        return {"small": 0.01 + macs * 4e-8, "fast_big": 0.5 + macs * 1e-8}

    samples = synthetic_samples(rule)
    model = CostModel.fit(samples)
    small = make_params((1, 16, 12, 12), (16, 16, 3, 3), padding=1)
    big = make_params((1, 256, 30, 30), (256, 256, 3, 3), padding=1)
    assert model.predict_ms(small, "small") < model.predict_ms(small, "fast_big")
    assert model.predict_ms(big, "fast_big") < model.predict_ms(big, "small")
    assert model.predict_ms(big, "unknown") is None
    loo = loo_report(samples)
    assert loo["shapes"] == len(samples) and loo["total_regret"] < 0.05
    assert 0 < loo["median_error"] < 0.2  # a smooth law: the model predicts it closely, never exactly


def launch_rule(p):
    """One launch (8 us fixed) vs three (16 us fixed, half the cost per MAC): times of a few tens of us."""
    macs = p.flops / 2
    return {"one_launch": 0.008 + macs * 2e-10, "three_launches": 0.016 + macs * 1e-10}


def test_model_keeps_the_fixed_cost_per_call_out_of_the_log_fit(monkeypatch):
    held_out = full_grid()[2::4]
    samples = [calib.Sample(p, launch_rule(p), {}) for p in tiny_grid() + full_grid()[::4]]

    def mean_error():
        model = CostModel.fit(samples)
        return np.mean([abs(math.log(model.predict_ms(p, n) / t)) for p in held_out
                        for n, t in launch_rule(p).items()])

    with_floor = mean_error()
    monkeypatch.setattr(cost_model, "FLOOR_SHARE", 0.0)
    assert with_floor < 0.11 and with_floor < 0.75 * mean_error()


def test_model_sees_the_input_a_strided_window_skips():
    skipped = {(k, s, d): tiling_features(make_params((1, 8, 16, 16), (8, 8, k, k), stride=s, dilation=d))[
        "input_skipped"] for k, s, d in ((1, 2, 1), (1, 4, 1), (3, 2, 1), (1, 1, 1), (2, 3, 2))}
    assert skipped == {(1, 2, 1): 2.0, (1, 4, 1): 4.0, (3, 2, 1): 0.0, (1, 1, 1): 0.0, (2, 3, 2): 0.0}
    up = make_params((1, 8, 16, 16), (8, 8, 1, 1), stride=2, transposed=True)
    assert tiling_features(up)["input_skipped"] == 0.0


def test_model_neighbours_count_by_distance_not_by_fit():
    """A shape three times slower than the trend (a tile misfit, say): the Huber weights keep it from bending
    the trend, but as its own nearest neighbour it must keep most of its excess (~1.95x on average here;
    neighbours weighted by their Huber weights too kept ~1.65x)."""
    train = tiny_grid() + full_grid()[::4]
    kept = []
    for odd in [p for p in train if p.kh == 3 and p.groups == 1 and p.dilation == (1, 1)][:8]:
        samples = [calib.Sample(p, {n: t * (3 if p == odd else 1) for n, t in launch_rule(p).items()}, {})
                   for p in train]
        kept.append(CostModel.fit(samples).predict_ms(odd, "one_launch") / launch_rule(odd)["one_launch"])
    assert np.mean(kept) > 1.8


def test_denylist_matches_vendor_device_driver_and_shapes(monkeypatch, tmp_path):
    mali = DeviceProfile("mali", "Mali-G78 MP20", "v1.r32p1-01eac0.4cc2 ( 23.1.0 )", vendor_id=0x13B5)
    conv3 = make_params((1, 256, 14, 14), (256, 256, 3, 3), padding=1)
    conv5 = make_params((1, 64, 14, 14), (64, 64, 5, 5), padding=2)
    entries = [
        {"algorithm": "im2col", "reason": "bad gather", "vendor": "0x13b5", "device": "G7[0-9]",
         "driver_below": "23.2", "shapes": {"c_out": [128, None], "kernel": 3}},
        {"algorithm": "depthwise", "reason": "other vendor", "vendor": "adreno"},
        {"algorithm": "direct", "reason": "newer drivers only", "vendor": "mali", "driver_from": "24.0"},
        {"algorithm": "pointwise", "reason": "typo", "shapes": {"colour": 3}},  # skipped: unknown key
        {"algorithm": "pointwise"},  # skipped: no reason
    ]
    path = tmp_path / "deny.json"
    path.write_text(json.dumps({"format": "convroute-denylist", "version": 1, "entries": entries}))
    monkeypatch.setenv("CONVROUTE_DENYLIST", str(path))
    with pytest.warns(CacheWarning, match="skipped"):
        hits = denylist.denied(mali, conv3)
    assert set(hits) == {"im2col"} and "bad gather" in hits["im2col"]
    assert denylist.denied(mali, conv5) == {}
    assert denylist.denied(replace(mali, driver="( 23.2.0 )"), conv3) == {}
    assert denylist.denied(replace(mali, driver="no version here"), conv3) == {}
    assert set(denylist.denied(replace(mali, driver="( 24.1 )"), conv5)) == {"direct"}


def test_shipped_denylist_is_valid(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(denylist.entries(), list)


def test_broken_user_denylist_is_ignored_with_a_warning(monkeypatch, tmp_path):
    path = tmp_path / "deny.json"
    path.write_text("{ not json")
    monkeypatch.setenv("CONVROUTE_DENYLIST", str(path))
    p = make_params((1, 8, 6, 6), (8, 8, 3, 3))
    with pytest.warns(CacheWarning, match="not valid JSON"):
        assert denylist.denied(DeviceProfile.for_family("cpu"), p) == {}

"""The calibration grid beyond the suites' shapes (grid.coverage_pool), active sampling over it
(calibration.active) and how `calibrate` spends its budget on base and pool (calibration.run)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest

from convroute.calibration import grid as grid_mod
from convroute.calibration import model as model_mod
from convroute.calibration import run as run_mod
from convroute.calibration.active import ActiveSampler, rank_swap
from convroute.calibration.grid import GPU_MAX_FLOPS, conv, coverage_pool, full_grid, grid_shapes, pool_shapes
from convroute.calibration.model import CostModel
from convroute.calibration.profile import Calibration, Sample, calibrated_device
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS, direct
from convroute.kernels.common import FP32

CPU, GPU = DeviceProfile.for_family("cpu"), DeviceProfile.for_family("nvidia")


def test_pool_spans_the_axes_real_networks_use():
    pool = coverage_pool(GPU_MAX_FLOPS)
    assert {max(p.dilation) for p in pool} >= {2, 4, 6, 12, 18, 24}
    assert {(p.kh, p.kw) for p in pool} >= {(1, 7), (7, 1), (1, 3), (3, 1)}
    assert any(p.stride[0] != p.stride[1] for p in pool)
    assert {p.c_in // p.groups for p in pool if p.groups > 1 and not p.is_depthwise} >= {4, 8, 16, 24, 48, 64}
    assert {p.kh for p in pool if p.is_depthwise} >= {7, 9, 11, 13, 15, 21, 31}
    assert any(p.c_in % 4 and p.c_out % 4 for p in pool) and any(p.c_out in (1, 3, 5, 19, 21) for p in pool)
    assert {p.h for p in pool} >= {1, 2, 3} and any(p.transposed and p.h >= 80 for p in pool)
    assert max(p.n for p in pool) >= 32
    assert any(p.c_in == 2048 and max(p.dilation) == 24 for p in pool)
    assert len(set(pool)) == len(pool) and not set(pool) & set(full_grid(GPU_MAX_FLOPS))


def test_cpu_adapters_get_a_lighter_pool_and_quick_grid():
    assert max(p.flops for p in pool_shapes("full", CPU)) <= 1.2e9 < max(p.flops for p in pool_shapes("full", GPU))
    assert max(p.flops for p in pool_shapes("quick", CPU)) <= 3e8
    quick = grid_mod.quick_grid(CPU)
    assert 40 <= len(quick) <= 60 and set(quick) < set(full_grid()) and max(p.flops for p in quick) <= 3e8
    assert {p.is_depthwise for p in quick} == {True, False} and any(p.transposed for p in quick)
    assert {p.kh for p in quick} >= {1, 3} and pool_shapes("tiny", CPU) == []
    assert grid_shapes("quick", CPU) == quick


def fake_times(p):
    """direct fast on small kernels, implicit_gemm on large ones: they swap rank where kernel area ~ 4."""
    macs = p.flops / 2
    area = p.kh * p.kw
    return {n: t for n, t in {"direct": 1e-8 * macs * area / 4 + 0.01, "implicit_gemm": 1e-8 * macs + 0.01,
                              "im2col": 3e-8 * macs + 0.02}.items() if ALGORITHMS[n].unsupported(p) is None}


def test_active_sampling_measures_the_unknown_first():
    samples = [Sample(p, fake_times(p), {}) for p in full_grid()[::3] if not p.dilation[0] > 1]
    covered = conv(64, 64, 20, 3)  # a base shape the samples cover
    dilated = conv(256, 256, 20, 3, dilation=12)
    sampler = ActiveSampler([covered, dilated], samples, {}, None, "float32")
    assert sampler.pick() == dilated and len(sampler) == 1
    model = CostModel.fit(samples)
    clear = conv(64, 64, 20, 1)  # 1x1: direct 4x faster than implicit_gemm in fake_times
    assert rank_swap(model, clear, {}) < 0.5
    assert rank_swap(model, conv(64, 64, 20, 3, kw=1), {}) > rank_swap(model, clear, {})


def test_calibrate_spends_its_budget_on_base_then_pool(monkeypatch):
    measured = []

    def fake_measure(gpu, p, algorithms, excluded, settings, precision=None):
        measured.append(p)
        time.sleep(0.01 if p in base else 0.05)
        return Sample(p, fake_times(p), {}), "fake"

    class FakeGpu:
        profile = CPU

    base = grid_shapes("quick", CPU)
    monkeypatch.setattr(run_mod, "measure_shape", fake_measure)
    monkeypatch.setattr(run_mod, "calibrated_device", lambda profile: {"family": "cpu", "name": "fake"})
    cal = run_mod.run_calibration(FakeGpu(), "quick", budget_s=600, progress=False)
    pool = pool_shapes("quick", CPU)
    assert measured[:len(base)] == base and set(measured[len(base):]) == set(pool) and cal.complete
    first_pool = measured[len(base)]
    assert first_pool.dilation[0] > 1 or first_pool.kh != first_pool.kw or first_pool.h <= 3 or first_pool.n > 8
    measured.clear()
    cal = run_mod.run_calibration(FakeGpu(), "quick", budget_s=0.3, progress=False)
    assert 0 < len(measured) < len(base) + len(pool) and not cal.complete
    measured.clear()  # the base takes ~0.6 s of 5: the pool gets as long again (at least a fifth), not the rest
    start = time.perf_counter()
    cal = run_mod.run_calibration(FakeGpu(), "quick", budget_s=5, progress=False)
    assert measured[:len(base)] == base and len(base) < len(measured) < len(base) + len(pool) and not cal.complete
    assert time.perf_counter() - start < 5


WIDE_GPU = replace(GPU, limits=dict(GPU.limits) | {"max-compute-workgroup-storage-size": 49152})


def staged_direct(p):
    """direct's time following the input it stages (direct's own plan on WIDE_GPU), implicit_gemm's the MACs."""
    plan = direct.choose_plan(WIDE_GPU, p, p.n)
    rows, cols = direct.patch_size(p, plan.tile)
    staged = direct.output_blocks(p, plan.tile, p.n) * plan.splits * (p.c_in // p.groups) * rows * cols
    times = {"direct": 1e-9 * staged * p.c_out / p.groups + 2e-10 * p.flops + 0.01,
             "implicit_gemm": 3e-10 * p.flops + 0.015}
    return {n: t for n, t in times.items() if ALGORITHMS[n].unsupported(p) is None}


def test_window_and_patch_features_see_dilation():
    plain, aspp = conv(2048, 256, 32, 3), conv(2048, 256, 32, 3, dilation=24)
    assert model_mod.window_features(plain) == {"window_spread": 0.0, "window_outside": 0.0}
    spread = model_mod.window_features(aspp)
    assert spread["window_spread"] == pytest.approx(2 * math.log2(49 / 3))
    assert spread["window_outside"] == pytest.approx(2 * math.log2(49 / 32))
    patch = model_mod.plan_features(WIDE_GPU, FP32, aspp, "direct")["plan_patch"]
    assert patch > model_mod.plan_features(WIDE_GPU, FP32, plain, "direct")["plan_patch"] + 3
    assert "plan_patch" not in model_mod.plan_features(WIDE_GPU, FP32, plain, "implicit_gemm")
    narrow = model_mod.CostModel.fit([Sample(p, staged_direct(p), {}) for p in full_grid()[::4]], profile=GPU)
    assert narrow.predict_ms(aspp, "direct") is None  # no tile's patch fits 16 KiB: no plan, no prediction


def test_direct_extrapolates_dilation_closer_with_the_new_features(monkeypatch):
    train = [p for p in full_grid(GPU_MAX_FLOPS)[::2] + coverage_pool(GPU_MAX_FLOPS) if max(p.dilation) <= 6]
    samples = [Sample(p, staged_direct(p), {}) for p in train]
    far = [conv(2048, 256, 32, 3, dilation=d) for d in (12, 24)] + [conv(512, 512, 64, 3, dilation=24)]

    def log_errors():
        model = model_mod.CostModel.fit(samples, profile=WIDE_GPU)
        return [abs(math.log(model.predict_ms(p, "direct") / staged_direct(p)["direct"])) for p in far]

    with_features = log_errors()
    real_plan = model_mod.direct_plan
    monkeypatch.setattr(model_mod, "window_features", lambda p: {})
    monkeypatch.setattr(model_mod, "direct_plan",
                        lambda profile, p: {k: v for k, v in real_plan(profile, p).items() if k != "plan_patch"})
    without = log_errors()
    assert all(a < b for a, b in zip(with_features, without, strict=True)), (with_features, without)


def test_calibrate_quick_is_the_quick_grid_without_self_test(monkeypatch, capsys):
    from convroute.cli import calibrate_cmd
    from convroute.cli.main import main as cli_main

    seen = {}

    def fake_run(gpu, grid, *, settings, budget_s, progress, dtype):
        seen.update(grid=grid, budget=budget_s)
        samples = [Sample(p, fake_times(p), {}) for p in full_grid()[::6]]
        return Calibration(gpu.profile.key, calibrated_device(gpu.profile), grid, "fake", samples, seconds=1.0)

    monkeypatch.setattr(calibrate_cmd, "run_calibration", fake_run)
    monkeypatch.setattr("convroute.cli.selftest_cmd.selftest_and_report",
                        lambda *a, **k: seen.setdefault("selftest", True))
    assert cli_main(["calibrate", "--quick", "--no-progress", "--dry-run"]) == 0
    assert seen == {"grid": "quick", "budget": calibrate_cmd.QUICK_BUDGET}
    assert "quick calibration: convs it does not cover are measured when first routed" in capsys.readouterr().out
    assert cli_main(["calibrate", "--no-progress", "--dry-run", "--budget", "100"]) == 0
    assert seen == {"grid": "full", "budget": 100 * (1 - calibrate_cmd.SELFTEST_SHARE), "selftest": True}

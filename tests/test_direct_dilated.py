"""`direct`'s workgroup kernel on dilated convs: blocks in phases, patches on the taps' lattice, tap segments
(kernels/direct.py), against torch float64 with poisoned outputs; and the plans that choose them."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import direct
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.params import make_params

# (input, weight, stride, padding, dilation, groups): odd sizes, channels past multiples of 4, batch 2
LAYERS = {
    "d2-pad2": ((2, 5, 13, 11), (7, 5, 3, 3), 1, 2, 2, 1),
    "d2-stride2-pad0": ((1, 6, 15, 17), (5, 6, 3, 3), 2, 0, 2, 1),
    "d3-pad3-groups3": ((2, 9, 14, 13), (6, 3, 3, 3), 1, 3, 3, 3),
    "d3-stride2-pad3": ((1, 5, 19, 16), (9, 5, 3, 3), 2, 3, 3, 1),
    "d4-pad4-groups2": ((1, 6, 19, 23), (10, 3, 3, 3), 1, 4, 4, 2),
    "d4-stride2-pad0-asym": ((2, 3, 21, 18), (5, 3, 3, 2), (2, 1), 0, (4, 3), 1),
    "d24-pad24": ((1, 5, 11, 13), (6, 5, 3, 3), 1, 24, 24, 1),
    "d24-pad0": ((2, 3, 51, 50), (5, 3, 3, 3), 1, 0, 24, 1),
    "d24-stride2-pad24-groups2": ((1, 4, 17, 9), (6, 2, 3, 3), 2, 24, 24, 2),
}


def params(layer):
    x, w, stride, padding, dilation, groups = LAYERS[layer]
    return make_params(x, w, stride, padding, dilation, groups)


@pytest.fixture(autouse=True)
def workgroup_style(monkeypatch):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))


def run(p, x, w, b, activation=None, **kwargs):
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation=activation, algorithm="direct",
                  **kwargs)


def touched(size: int, axis: direct.Axis, stride: int, dilation: int, kernel: int) -> int:
    """Input rows the taps of one block read: outputs phase + phases * i, here for the phase 0 block."""
    return len({axis.phases * i * stride + k * dilation for i in range(size) for k in range(kernel)})


def check_axis(axis: direct.Axis, size: int, stride: int, dilation: int, kernel: int) -> None:
    """Every tap of every output of a block reads the patch row that holds its input row, and the patch holds
    just the rows the taps read (at stride 1)."""
    def input_row(q):
        if axis.segment:
            return axis.step * ((q // axis.segment) * axis.dilation + q % axis.segment)
        return axis.step * q
    for i in range(size):
        for k in range(kernel):
            q = k * axis.pitch + i * axis.stride
            assert q < axis.rows
            assert input_row(q) == axis.phases * i * stride + k * dilation, (axis, i, k)
    # at stride 1 the patch is exactly what the taps read; past it, never more than the whole window of the
    # block's outputs (a stride past the dilation leaves rows between the taps unread, as the window did)
    if stride == 1:
        assert axis.rows == touched(size, axis, stride, dilation, kernel), axis
    assert axis.rows <= (size - 1) * axis.phases * stride + (kernel - 1) * dilation + 1, axis


@pytest.mark.parametrize("layer", LAYERS)
def test_dilated_direct_matches_torch(layer):
    p = params(layer)
    x, w, b = random_inputs(p, np.random.default_rng(60))
    kernel = direct.Direct(get_gpu(), p, w, b, Epilogue.parse("relu"))
    plan = kernel.plan(p.n)
    for axis, size, stride, dilation, k in ((plan.rows, plan.tile.br, p.stride[0], p.dilation[0], p.kh),
                                            (plan.cols, plan.tile.bc, p.stride[1], p.dilation[1], p.kw)):
        check_axis(axis, size, stride, dilation, k)
    assert np.prod(plan.patch) <= np.prod(direct.patch_size(p, plan.tile)), plan
    assert_matches(run(p, x, w, b, "relu"), reference(p, x, w, b, "relu"), f"direct {plan} on {layer}")


@pytest.mark.parametrize("layer", LAYERS)
def test_every_phase_of_a_block(monkeypatch, layer):
    """The most phases each axis allows (dilation / gcd(stride, dilation): one output per phase and block on
    the small images), so phases, coarser lattices and strides on them all run, with partial blocks."""
    def most_phases(size, out, stride, dilation, kernel, phased=True):
        return direct.axis_plan(size, stride, dilation, kernel, dilation // math.gcd(stride, dilation), True)
    monkeypatch.setattr(direct, "choose_axis", most_phases)
    p = params(layer)
    x, w, b = random_inputs(p, np.random.default_rng(63))
    plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(p.n)
    assert plan.rows.phases * plan.cols.phases > 1 or plan.rows.step > 1
    assert_matches(run(p, x, w, b, "silu"), reference(p, x, w, b, "silu"), f"direct {plan} on {layer}")


RANDOM_CASES = int(os.environ.get("CONVROUTE_DILATED_FUZZ", "8"))


def random_dilated(rng: np.random.Generator):
    """A dilated conv direct accepts: dilations 2-24 per axis, strides 1-3, kernels 1-5, paddings 0 to the
    dilation, groups, odd channel counts, batch 1-2; outputs from 1 to ~40 pixels a side."""
    groups = int(rng.choice([1, 1, 2, 3]))
    cin, cout = groups * int(rng.integers(1, 6)), groups * int(rng.integers(1, 6))
    kernel = tuple(int(rng.choice([1, 2, 3, 3, 5])) for _ in range(2))
    stride = tuple(int(rng.choice([1, 1, 2, 3])) for _ in range(2))
    dilation = tuple(int(rng.choice([2, 3, 4, 6, 12, 24])) for _ in range(2))
    padding = tuple(int(rng.integers(0, d + 1)) for d in dilation)
    sizes = tuple(max(1, d * (k - 1) + 1 - 2 * p) + int(rng.integers(0, 40))
                  for k, d, p in zip(kernel, dilation, padding, strict=True))
    return make_params((int(rng.integers(1, 3)), cin, *sizes), (cout, cin // groups, *kernel), stride, padding,
                       dilation, groups)


def test_random_dilated_convs():
    """CONVROUTE_DILATED_FUZZ random dilated convs (8 by default; the seed is in the message): each through the
    plan this device chooses, with every tap mapped into its patch, against torch float64."""
    seed = int(os.environ.get("CONVROUTE_DILATED_FUZZ_SEED", "64"))
    rng = np.random.default_rng(seed)
    for i in range(RANDOM_CASES):
        p = random_dilated(rng)
        x, w, b = random_inputs(p, rng)
        plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(p.n)
        check_axis(plan.rows, plan.tile.br, p.stride[0], p.dilation[0], p.kh)
        check_axis(plan.cols, plan.tile.bc, p.stride[1], p.dilation[1], p.kw)
        assert_matches(run(p, x, w, b, "relu"), reference(p, x, w, b, "relu"),
                       f"case {i} of seed {seed}: direct {plan} on {p.describe()}")


def test_the_layers_take_phases_and_segments():
    """The layers above run every way of staging: phases, a coarser lattice at one phase, tap segments."""
    plans = {layer: direct.choose_plan(get_gpu().profile, params(layer), params(layer).n) for layer in LAYERS}
    axes = [a for plan in plans.values() for a in (plan.rows, plan.cols)]
    assert any(a.phases > 1 for a in axes), plans
    assert any(a.segment for a in axes), plans
    assert any(a.phases == 1 and a.step > 1 for a in axes), plans


def test_whole_window_staging_still_runs(monkeypatch):
    """CONVROUTE_DIRECT_PHASES=0: the whole window, one phase (what tools/direct_dilated_bench.py compares)."""
    monkeypatch.setattr(direct, "SPARSE", False)
    p = params("d3-pad3-groups3")
    x, w, b = random_inputs(p, np.random.default_rng(61))
    plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(p.n)
    assert plan.patch == direct.patch_size(p, plan.tile) and plan.rows.phases == plan.cols.phases == 1
    assert_matches(run(p, x, w, b), reference(p, x, w, b), f"direct whole-window {plan}")


@pytest.mark.parametrize("phased", [(True, False), (False, True), (False, False)], ids=str)
def test_phases_along_one_axis(monkeypatch, phased):
    """direct.PHASED: phases along the rows only, the columns only, or neither (contiguous blocks on the taps'
    lattice: the tap segments of the 24-dilated columns)."""
    monkeypatch.setattr(direct, "PHASED", phased)
    p = make_params((1, 5, 32, 35), (6, 5, 3, 3), 1, (4, 24), (4, 24))
    x, w, b = random_inputs(p, np.random.default_rng(64))
    plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(p.n)
    assert (plan.rows.phases > 1, plan.cols.phases > 1) == phased, plan
    assert_matches(run(p, x, w, b), reference(p, x, w, b), f"direct {plan}")


@pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
@pytest.mark.parametrize("layer", ["d2-pad2", "d3-pad3-groups3", "d24-pad24"])
def test_dilated_float16(layer):
    p = params(layer)
    x, w, b = random_inputs(p, np.random.default_rng(62))
    ref = reference(p, x, w, b, "relu")
    out = run(p, x, w, b, "relu", dtype="float16")
    assert out.dtype == np.float16 and np.isfinite(out).all()
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-2, f"direct fp16 on {layer}: relative error {err:.3g}"


def gpu_with(memory: int) -> DeviceProfile:
    profile = DeviceProfile.for_family("nvidia")
    return dataclasses.replace(profile, limits=dict(profile.limits, **{"max-compute-workgroup-storage-size": memory}))


def test_aspp_plan_stages_only_what_its_taps_read():
    """deeplabv3's ASPP conv (2048->256, 3x3, dilation 24 on 32x32) has a plan within 16 KiB whose patch holds
    no more rows and columns than its block's taps read (the whole window was 56x56: no plan at all)."""
    p = make_params((1, 2048, 32, 32), (256, 2048, 3, 3), 1, 24, 24)
    for memory in (16384, 49152):
        plan = direct.choose_plan(gpu_with(memory), p, 1)
        assert plan == direct.choose_plan(gpu_with(memory), p, 1)
        rows = touched(plan.tile.br, plan.rows, 1, 24, 3)
        cols = touched(plan.tile.bc, plan.cols, 1, 24, 3)
        assert plan.patch[0] <= rows and plan.patch[1] <= cols, plan
        assert plan.patch[0] * plan.patch[1] <= 3 * plan.tile.br * 3 * plan.tile.bc, plan
        assert 8 * plan.chunk * np.prod(plan.patch) <= memory
        for axis, size in ((plan.rows, plan.tile.br), (plan.cols, plan.tile.bc)):
            check_axis(axis, size, 1, 24, 3)


@pytest.mark.parametrize("memory", [16384, 4096])
def test_dilated_plans_fit_and_map_every_tap(monkeypatch, memory):
    """Over strides, dilations, kernels and sizes: every conv the whole-window staging planned has a plan, every
    tap maps into its patch, the patch fits the memory, and undilated convs keep their plan."""
    profile = gpu_with(memory)
    for size in (7, 32, 57):
        for k in (1, 3, 5):
            for stride in (1, 2, 3):
                for dilation in (1, 2, 3, 4, 6, 12, 24):
                    pad = dilation * (k // 2)
                    p = make_params((1, 16, size, size), (16, 16, k, k), stride, pad, dilation)
                    monkeypatch.setattr(direct, "SPARSE", False)
                    try:
                        old = direct.choose_plan(profile, p, 1)
                    except ValueError:
                        old = None
                    monkeypatch.setattr(direct, "SPARSE", True)
                    try:
                        plan = direct.choose_plan(profile, p, 1)
                    except ValueError:
                        assert old is None, p.describe()
                        continue
                    if dilation == 1 or k == 1:
                        assert plan == old
                    check_axis(plan.rows, plan.tile.br, stride, dilation, k)
                    check_axis(plan.cols, plan.tile.bc, stride, dilation, k)
                    buffers = 2 if direct.double_buffered(plan, int(np.prod(plan.patch))) else 1
                    assert buffers * 4 * plan.chunk * np.prod(plan.patch) <= memory, (p.describe(), plan)

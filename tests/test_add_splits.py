"""K splits that add into their output (gemm.Gemm.adds_splits): where the device has f32 atomics, a GEMM
with no activation zeroes its output and each split atomically adds its sums (split 0 the bias and the
residual), with no reduce dispatch. Checked against the float64 reference with NaN-poisoned outputs (so a
zeroing that missed a word fails), on conv paths, linear layers and whole programs run several times (so a
zeroing that ran once only fails); the reduce stays for activations, f16, partial images, devices without
the feature and CONVROUTE_ADD_SPLITS=0."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import convroute
from conftest import activate, assert_matches, random_inputs, reference
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision
from convroute.kernels.gemm import ADD_SPLITS_MAX
from convroute.kernels.gemm_tiles import SIZED
from convroute.kernels.linear import GemmLinear
from convroute.params import make_params
from test_gemm_cpu import use_style
from test_gemm_sized import force_plan

pytestmark = pytest.mark.skipif(not get_gpu().profile.float_atomics, reason="the adapter lacks shader-float32-atomic")


def bound(name, p, activation, residual=False, dtype="float32"):
    """(output as float32, reference, dispatches) of one bound conv, its output poisoned with NaN."""
    rng = np.random.default_rng(p.c_in * 7 + p.h)
    x, w, b = random_inputs(p, rng)
    gpu, st = get_gpu(), Precision.parse(dtype).numpy
    kernel = ALGORITHMS[name](gpu, p, w, b, Epilogue.parse(activation), dtype=dtype, residual=residual)
    y = gpu.empty(np.dtype(st).itemsize * int(np.prod(p.output_shape)), "output")
    gpu.fill(y, np.nan, st)
    res, extra = None, {}
    if residual:
        res = rng.uniform(-1.0, 1.0, p.output_shape).astype(np.float32)
        extra = {"residual": gpu.upload(res, "residual", st)}
    dispatches = kernel.bind(gpu.upload(x, "input", st), y, p.n, **extra)
    ref = reference(p, x, w, b)
    if residual:
        ref = ref + res
    ref = activate(torch.from_numpy(ref), activation).numpy()
    return gpu.run_and_read(dispatches, y, p.output_shape, st).astype(np.float32), ref, dispatches


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("splits", [2, 5, 13])
@pytest.mark.parametrize("name,p", [
    ("pointwise", make_params((2, 136, 5, 7), (10, 136, 1, 1))),
    ("im2col", make_params((1, 24, 6, 4), (70, 24, 3, 3), 1, 1)),
], ids=["pointwise-2-images", "im2col"])
def test_splits_add_into_a_zeroed_output(monkeypatch, name, p, splits, residual):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], splits)
    out, ref, dispatches = bound(name, p, None, residual)
    assert_matches(out, ref, f"{name} k/{splits} adding into its output on {p.describe()}")
    zeroing = [d for d in dispatches if d.zeroes is not None]
    assert len(zeroing) == 1 and dispatches[-1].zeroes is None, "one zeroing, then the GEMM, no reduce"
    assert dispatches.index(zeroing[0]) == len(dispatches) - 2


@pytest.mark.parametrize("case", ["relu", "float16", "no-feature", "switched-off"])
def test_the_reduce_stays_where_adding_would_be_wrong_or_impossible(monkeypatch, case):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], 5)
    if case == "no-feature":
        monkeypatch.setattr(DeviceProfile, "float_atomics", property(lambda self: False))
    if case == "switched-off":
        monkeypatch.setenv("CONVROUTE_ADD_SPLITS", "0")
    if case == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip(f"the adapter lacks {F16_FEATURE}")
    p = make_params((2, 136, 5, 7), (10, 136, 1, 1))
    activation = "relu" if case == "relu" else None
    dtype = "float16" if case == "float16" else "float32"
    out, ref, dispatches = bound("pointwise", p, activation, residual=True, dtype=dtype)
    assert_matches(out, ref, f"pointwise k/5 ({case}) on {p.describe()}", 1e-2 if case == "float16" else 1e-4)
    assert len(dispatches) == 2 and all(d.zeroes is None for d in dispatches), "the GEMM and its reduce"


def test_only_whole_images_and_not_too_many_adds():
    """The zeroed span must be one range: launches over whole images only (row bands keep the reduce); and
    at most ADD_SPLITS_MAX atomic adds (splits x outputs)."""
    gemm = GemmLinear(get_gpu(), np.ones((8, 16), np.float32), None).gemm
    assert gemm.adds_splits(2, cols=40, col0=20, pixels=20)
    assert not gemm.adds_splits(2, cols=30, col0=20, pixels=20)
    assert not gemm.adds_splits(2, cols=40, col0=10, pixels=20)
    most = ADD_SPLITS_MAX // (8 * 40)
    assert gemm.adds_splits(most, cols=40, col0=0, pixels=40)
    assert not gemm.adds_splits(most + 1, cols=40, col0=0, pixels=40)
    relu = GemmLinear(get_gpu(), np.ones((8, 16), np.float32), None, act="relu").gemm
    assert not relu.adds_splits(2, cols=40, col0=0, pixels=20)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_linear_layer_adds_its_splits(monkeypatch, rows):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], 6)
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 200)).astype(np.float32)
    w = rng.standard_normal((70, 200)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    gpu = get_gpu()
    y = gpu.empty(4 * rows * 70, "output")
    gpu.fill(y, np.nan)
    dispatches = GemmLinear(gpu, w, b).bind(gpu.upload(x, "input"), y, rows)
    out = gpu.run_and_read(dispatches, y, (rows, 70))
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
    assert [d.zeroes is not None for d in dispatches] == [True, False]


class Projections(nn.Module):
    """A ReLU 1x1 conv, then a linear one with a residual (MobileNetV2's projection) and a plain linear one."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(136, 136, 1), nn.Conv2d(136, 136, 1), nn.Conv2d(136, 24, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return self.c(self.b(a) + a)


@pytest.mark.parametrize("adds", [True, False], ids=["adding", "reducing"])
def test_programs_zero_each_added_output_on_every_call(monkeypatch, adds):
    """Three calls with fresh inputs: an output zeroed on the first call only would carry the sums over."""
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], 4)
    monkeypatch.setenv("CONVROUTE_ADD_SPLITS", "1" if adds else "0")
    model = Projections().eval()
    program = convroute.compile(model, (torch.randn(1, 136, 5, 6),), policy="seed")
    for _ in range(3):
        x = torch.randn(1, 136, 5, 6)
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x.double())
        out = program(x).double()
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    (segment,) = program.plan.segments
    zeroing = [i for i, d in enumerate(segment.dispatches) if d.zeroes is not None]
    assert len(zeroing) == (2 if adds else 0)
    assert all(segment.dispatches[i + 1].zeroes is None for i in zeroing), "each zeroing just before its GEMM"


def test_a_profile_without_the_feature_reports_none():
    gpu = get_gpu()
    plain = dataclasses.replace(gpu.profile, features=frozenset())
    assert gpu.profile.float_atomics and not plain.float_atomics

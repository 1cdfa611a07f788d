"""K splits that add into their output (gemm.Gemm.adds_splits): where the device has f32 atomics, a GEMM
with no activation zeroes its output and each split atomically adds its sums (split 0 the bias and the
residual), with no reduce dispatch. Checked against the float64 reference with NaN-poisoned outputs (so a
zeroing that missed a word fails), on conv paths, linear layers and whole programs run several times (so a
zeroing that ran once only fails); the reduce stays for activations, f16, partial images, devices without
the feature and CONVROUTE_ADD_SPLITS=0."""

from __future__ import annotations

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
from convroute.kernels.common import Epilogue
from convroute.kernels.gemm_tiles import SIZED
from convroute.kernels.linear import GemmLinear
from convroute.params import make_params
from test_gemm_cpu import use_style
from test_gemm_sized import force_plan

pytestmark = pytest.mark.skipif(not get_gpu().profile.float_atomics, reason="the adapter lacks shader-float32-atomic")


def bound(name, p, activation, residual=False, dtype="float32"):
    """(output, reference, dispatches) of one bound conv, its output poisoned with NaN."""
    rng = np.random.default_rng(p.c_in * 7 + p.h)
    x, w, b = random_inputs(p, rng)
    gpu = get_gpu()
    kernel = ALGORITHMS[name](gpu, p, w, b, Epilogue.parse(activation), dtype=dtype, residual=residual)
    y = gpu.empty(4 * int(np.prod(p.output_shape)), "output")
    gpu.fill(y, np.nan)
    res, extra = None, {}
    if residual:
        res = rng.uniform(-1.0, 1.0, p.output_shape).astype(np.float32)
        extra = {"residual": gpu.upload(res, "residual")}
    dispatches = kernel.bind(gpu.upload(x, "input"), y, p.n, **extra)
    ref = reference(p, x, w, b)
    if residual:
        ref = ref + res
    ref = activate(torch.from_numpy(ref), activation).numpy()
    return gpu.run_and_read(dispatches, y, p.output_shape), ref, dispatches


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


@pytest.mark.parametrize("case", ["relu", "no-feature", "switched-off"])
def test_the_reduce_stays_where_adding_would_be_wrong_or_impossible(monkeypatch, case):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], 5)
    if case == "no-feature":
        monkeypatch.setattr(DeviceProfile, "float_atomics", property(lambda self: False))
    if case == "switched-off":
        monkeypatch.setenv("CONVROUTE_ADD_SPLITS", "0")
    p = make_params((2, 136, 5, 7), (10, 136, 1, 1))
    activation = "relu" if case == "relu" else None
    out, ref, dispatches = bound("pointwise", p, activation, residual=True)
    assert_matches(out, ref, f"pointwise k/5 ({case}) on {p.describe()}")
    assert len(dispatches) == 2 and all(d.zeroes is None for d in dispatches), "the GEMM and its reduce"


def test_only_whole_images_may_be_added_into():
    """The zeroed span must be one range: launches over whole images only (row bands keep the reduce)."""
    gemm = GemmLinear(get_gpu(), np.ones((8, 16), np.float32), None).gemm
    assert gemm.adds_splits(cols=40, col0=20, pixels=20)
    assert not gemm.adds_splits(cols=30, col0=20, pixels=20)
    assert not gemm.adds_splits(cols=40, col0=10, pixels=20)
    relu = GemmLinear(get_gpu(), np.ones((8, 16), np.float32), None, act="relu").gemm
    assert not relu.adds_splits(cols=40, col0=0, pixels=20)


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
    """Two ReLU 1x1 convs, then a linear one with a residual (MobileNetV2's projection) and a plain linear
    one: the first linear conv's output lands in the buffer the first conv's output left, which an earlier
    step of the segment touched."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(136, 136, 1), nn.Conv2d(136, 136, 1)
        self.c, self.d = nn.Conv2d(136, 136, 1), nn.Conv2d(136, 24, 1)

    def forward(self, x):
        b = torch.relu(self.b(torch.relu(self.a(x))))
        return self.d(self.c(b) + b)


@pytest.mark.parametrize("adds", [True, False], ids=["adding", "reducing"])
def test_programs_zero_added_outputs_at_the_start_of_every_call(monkeypatch, adds):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], 4)
    monkeypatch.setenv("CONVROUTE_ADD_SPLITS", "1" if adds else "0")
    model = Projections().eval()
    program = convroute.compile(model, (torch.randn(1, 136, 5, 6),), policy="seed")
    for _ in range(3):
        x = torch.randn(1, 136, 5, 6)
        with torch.no_grad():
            ref = model.double()(x.double())
        out = program(x).double()
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    plan = program.plan
    (segment,) = plan.segments
    zeroing = [d for d in segment.dispatches if d.zeroes is not None]
    assert len(zeroing) == (2 if adds else 0)
    assert segment.dispatches[:len(zeroing)] == zeroing, "zeroing runs first in the segment"
    if adds:
        steps = [s for s in plan.steps if any(d.zeroes is not None for d in s.dispatches)]
        first_out = plan.buffer(plan.steps[0].node.name)
        assert all(plan.buffer(s.node.name) is not first_out for s in steps), "an added-into output got a buffer"\
            " an earlier step of its segment used"
        assert len(plan.allocated) == len({id(b) for b in plan.allocated})


def test_a_profile_without_the_feature_reports_none():
    gpu = get_gpu()
    plain = dataclasses.replace(gpu.profile, features=frozenset())
    assert gpu.profile.float_atomics and not plain.float_atomics

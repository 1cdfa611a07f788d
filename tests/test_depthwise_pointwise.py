"""The depthwise + 1x1 pair as one GEMM (kernels/depthwise_pointwise.py) against the two convs in float64 torch:
strided and padded depthwise convs, partial tiles, K split with a residual, fp16; poisoned outputs. Random
weights, biases and residuals, so a B load that dropped the bias, the activation or a tap fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import activate, assert_matches, random_inputs
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision
from convroute.kernels.depthwise_pointwise import DepthwisePointwise, unfusable
from convroute.measure.reference import norm_relative_error, torch_reference
from convroute.params import make_params

NO_F16 = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")

# (depthwise input, kernel, stride, padding, dilation, 1x1 C_out, dw activation, activation, residual, dtype)
CASES = {
    "s1-relu6": ((1, 12, 9, 7), 3, 1, 1, 1, 10, "relu6", None, False, "float32"),
    "s2-residual": ((2, 8, 11, 10), 3, 2, 1, 1, 9, "relu", "relu", True, "float32"),
    "k5-dilated": ((1, 6, 12, 12), 5, 1, 4, 2, 12, "hardswish", None, False, "float32"),
    "fp16-residual": ((1, 16, 8, 8), 3, 1, 1, 1, 16, "relu6", None, True, "float16"),
}
SPLIT = {"split-residual": ((1, 300, 9, 8), 3, 2, 1, 1, 20, "relu6", "relu", True, "float32")}


def run_pair(case, busy=None, monkeypatch=None):
    shape, k, s, pad, dil, c_out, dw_act, act, with_residual, dtype = (CASES | SPLIT)[case]
    if busy is not None:
        monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: busy))
    rng = np.random.default_rng(7)
    dw = make_params(shape, (shape[1], 1, k, k), s, pad, dil, groups=shape[1])
    pw = make_params(dw.output_shape, (c_out, shape[1], 1, 1))
    x, w1, b1 = random_inputs(dw, rng)
    _, w2, b2 = random_inputs(pw, rng)
    r = rng.uniform(-1, 1, pw.output_shape).astype(np.float32)
    gpu, precision = get_gpu(), Precision.parse(dtype)
    kernel = DepthwisePointwise(gpu, dw, pw, w1, b1, Epilogue.parse(dw_act), w2, b2, Epilogue.parse(act),
                                precision, residual=with_residual)
    y = gpu.empty(precision.itemsize * int(np.prod(pw.output_shape)), "output")
    gpu.fill(y, np.nan, precision.numpy)
    res = gpu.upload(r, "residual", precision.numpy) if with_residual else None
    dispatches = kernel.bind(gpu.upload(x, "input", precision.numpy), y, dw.n, res)
    gpu.run(dispatches)
    mid = activate(torch.from_numpy(torch_reference(dw, x, w1, b1)), dw_act).numpy()
    ref = torch_reference(pw, mid, w2, b2) + (r if with_residual else 0)
    ref = activate(torch.from_numpy(ref), act).numpy()
    return gpu.read(y, pw.output_shape, precision.numpy), ref, dispatches


@pytest.mark.parametrize("case", [pytest.param(c, marks=[NO_F16] if CASES[c][-1] == "float16" else [])
                                  for c in CASES])
def test_pair_matches_torch(case):
    out, ref, _ = run_pair(case)
    if CASES[case][-1] == "float32":
        assert_matches(out, ref, case)
    else:
        assert np.isfinite(out).all(), f"{case}: unwritten (NaN) outputs"
        assert norm_relative_error(out, ref) <= 1e-2


def test_pair_with_k_split_adds_residual_in_reduce(monkeypatch, k_splits):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))
    out, ref, dispatches = run_pair("split-residual", busy=256, monkeypatch=monkeypatch)
    assert len(dispatches) == 2, "K (the depthwise channels) was not split"
    assert_matches(out, ref, "split")


def test_unfusable_pairs_are_named():
    dw = make_params((1, 8, 9, 9), (8, 1, 3, 3), 1, 1, groups=8)
    assert unfusable(dw, make_params(dw.output_shape, (4, 8, 1, 1))) is None
    assert "depthwise" in unfusable(make_params((1, 8, 9, 9), (16, 1, 3, 3), 1, 1, groups=8),
                                    make_params((1, 16, 9, 9), (4, 16, 1, 1)))
    assert "1x1" in unfusable(dw, make_params(dw.output_shape, (4, 8, 1, 1), 2))
    assert "input" in unfusable(dw, make_params((1, 8, 7, 7), (4, 8, 1, 1)))
    with pytest.raises(ValueError, match="1x1"):
        DepthwisePointwise(get_gpu(), dw, make_params(dw.output_shape, (4, 8, 3, 3)), *[None] * 7)

"""GemmLinear and Gemv: linear layers on GPUs (the tiled GEMM; a workgroup per 4 features for <= 4 rows);
lavapipe keeps the streaming kernel but runs these too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels.common import F16_FEATURE, Precision
from convroute.kernels.linear import GEMV_ROWS, GemmLinear, Gemv


def reference(x, w, b, act):
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b
    if act == "relu":
        y = np.maximum(y, 0)
    if act == "gelu":
        y = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    return y


@pytest.mark.parametrize("out_features, in_features, rows, act, busy", [
    (1000, 1280, 1, None, 1),
    (1000, 1280, 1, "relu", 256),  # split K: few rows, many workgroups wanted
    (10, 37, 3, "relu", 1),
    (130, 513, 5, "gelu", 64),
])
def test_gemm_linear_matches_float64(monkeypatch, out_features, in_features, rows, act, busy):
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: busy))
    gpu = get_gpu()
    rng = np.random.default_rng(out_features + rows)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    layer = GemmLinear(gpu, w, b, act)
    y_buf = gpu.empty(4 * rows * out_features)
    gpu.fill(y_buf, np.nan)
    y = gpu.run_and_read(layer.bind(gpu.upload(x), y_buf, rows), y_buf, (rows, out_features))
    ref = reference(x, w, b, act)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-4


def test_gemm_linear_is_for_gpus_whose_binding_holds_the_weight():
    gpu = get_gpu()
    assert GemmLinear.fits(gpu, (1000, 1280)) == (gpu.profile.family != "cpu")
    assert not GemmLinear.fits(gpu, (4096, 25088 * 16))


@pytest.mark.parametrize("out_features, in_features, rows, act, dtype", [
    (1000, 1280, 1, None, "float32"),
    (10, 37, 3, "relu", "float32"),  # K below the workgroup, features not a multiple of 4
    (130, 513, 4, "gelu", "float32"),
    (1000, 2048, 2, None, "float16"),
])
def test_gemv_matches_float64(out_features, in_features, rows, act, dtype):
    gpu = get_gpu()
    precision = Precision(dtype)
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16 on this adapter")
    rng = np.random.default_rng(out_features + rows + in_features)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    layer = Gemv(gpu, w, b, act, precision)
    size = precision.itemsize * rows * out_features
    y_buf = gpu.empty(size)
    gpu.fill(y_buf, np.nan, precision.numpy)
    x_buf = gpu.upload(x, "x", precision.numpy)
    y = gpu.run_and_read(layer.bind(x_buf, y_buf, rows), y_buf, (rows, out_features), precision.numpy)
    ref = reference(x.astype(precision.numpy), w.astype(precision.numpy), b, act)
    error = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert error < (1e-4 if dtype == "float32" else 1e-2)


def test_gemv_is_for_gpus_and_few_rows():
    gpu = get_gpu()
    assert Gemv.fits(gpu, (1000, 1280), 1) == (gpu.profile.gemm_style == "workgroup")
    assert not Gemv.fits(gpu, (1000, 1280), GEMV_ROWS + 1)
    with pytest.raises(ValueError, match="rows"):
        Gemv(gpu, np.ones((8, 8), np.float32), None).bind(None, None, GEMV_ROWS + 1)

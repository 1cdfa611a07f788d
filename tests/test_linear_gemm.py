"""GemmLinear: linear layers as the tiled GEMM (what GPUs use; lavapipe keeps the streaming kernel)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels.linear import GemmLinear


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

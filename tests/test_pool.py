"""Pooling kernels: a global pool takes the per-workgroup reduction on GPUs (from 17 elements) and the
per-invocation loop on CPU adapters (up to 256), and both match torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convroute.device.gpu import get_gpu
from convroute.kernels.pool import COOP_WINDOW, COOP_WINDOW_GPU, Pool2d


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("kind, side", [("adaptive", 7), ("avg", 5), ("max", 5)])
def test_pools_match_torch_in_either_style(monkeypatch, style, kind, side):
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    gpu = get_gpu()
    planes = 37
    x = np.random.default_rng(side).standard_normal((planes, side, side)).astype(np.float32)
    if kind == "adaptive":
        pool = Pool2d(gpu, kind, planes, side, side, 1, 1)
        ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), 1)
    else:
        pool = Pool2d(gpu, kind, planes, side, side, 1, 1, kernel=(side, side))
        ref = getattr(torch.nn.functional, f"{kind}_pool2d")(torch.from_numpy(x), side)
    window = (side + 1) ** 2 if kind == "adaptive" else side * side
    assert pool.coop == (window > (COOP_WINDOW_GPU if style == "workgroup" else COOP_WINDOW))
    y = gpu.empty(4 * planes)
    gpu.fill(y, np.nan)
    out = gpu.run_and_read(pool.bind(gpu.upload(x), y), y, (planes, 1, 1))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-6)

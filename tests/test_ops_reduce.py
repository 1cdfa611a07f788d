"""Reductions, softmax, group / instance norm, static gathers and max pooling on the GPU, compiled from tiny
modules through `convroute.compile` and checked against torch in float64, fp32 and fp16, with every output
poisoned (NaN) before the kernels write it and nothing on the CPU fallback."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute import api  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402

pytestmark = pytest.mark.gpu

TOLERANCE = {"float32": 1e-4, "float16": 1e-2}


def check(model: nn.Module, x: torch.Tensor, dtype: str, monkeypatch, gpu_ops=()):
    """Compile `model`, run it once with poisoned buffers, compare every output to torch's float64 result; return
    the summary. `gpu_ops`: op names that must be among the GPU steps."""
    if dtype == "float16" and "shader-f16" not in get_gpu().profile.features:
        pytest.skip("no shader-f16")
    monkeypatch.setattr(api, "POISON", True)
    model = model.eval()
    program = convroute.compile(model, (x,), dtype=dtype)
    s = program.summary()
    assert not s.cpu_ops, f"ops on the CPU fallback:\n{s}"
    missing = set(gpu_ops) - set(s.gpu_ops)
    assert not missing, f"{missing} not among the GPU ops {sorted(s.gpu_ops)}"
    with torch.no_grad():
        want = model.double()(x.double())
    model.float()
    got = program(x)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for i, (y, ref) in enumerate(zip(got, want, strict=True)):
        assert y.shape == ref.shape, f"output {i}: shape {tuple(y.shape)}, torch {tuple(ref.shape)}"
        assert not torch.isnan(y).any(), f"output {i} has NaN (an element no kernel wrote)"
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert err < TOLERANCE[dtype], f"output {i}: relative error {err:.3g}\n{s}"
    return s


DTYPES = ["float32", "float16"]


class Reductions(nn.Module):
    def forward(self, x):
        return (x.sum((1, 3), keepdim=True), x.sum(1), x.mean((0, 2)), x.mean(1, keepdim=True),
                x.amax(2), x.amin((1, 2, 3), keepdim=True), x.max(1).values, x.min(3, keepdim=True)[0],
                x.flatten(1).sum(1), x.amax(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_over_any_dims(dtype, monkeypatch):
    torch.manual_seed(1)
    # 300 elements along dim 3: a workgroup per output on either adapter kind; the rest one invocation each
    s = check(Reductions(), torch.randn(2, 5, 7, 300), dtype, monkeypatch)
    assert {"sum.dim_IntList", "mean.dim", "amax", "amin", "max_values", "min_values"} <= set(s.gpu_ops)


class Softmaxes(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return F.softmax(x, 1), F.log_softmax(x, -1), F.softmax(x * self.scale, 3), F.log_softmax(x, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_log_softmax_on_any_dim(dtype, monkeypatch):
    torch.manual_seed(2)
    # rows of 3 and 2 (one invocation each) and of 400 (a workgroup each); in fp32 x * 30 overflows exp without
    # subtracting the max (fp16 storage of x * 30 alone would round its exponents by up to 1.5 %)
    scale = 30.0 if dtype == "float32" else 3.0
    check(Softmaxes(scale), torch.randn(2, 3, 5, 400), dtype, monkeypatch, {"softmax.int", "log_softmax.int"})

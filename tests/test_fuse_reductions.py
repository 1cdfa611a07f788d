"""Chains ending in a sum or a mean as one row kernel (frontend/reductions.py, kernels/reduce.py's WeightedSum and
Reduce's scale): split attention's softmax-weighted sum over its paths and its sum-then-mean, sums of broadcast
products, sums of sums and means of means. Each compiled with CONVROUTE_FUSE_REDUCTIONS on (whatever the
adapter's default) and checked against torch in float64, fp32 and fp16, buffers NaN-poisoned, with fewer
dispatches than with it off; chains that must stay apart (a value read twice, a cast, a max, a softmax along
another dim) stay. The kernels straight on random broadcast shapes in both adapter styles."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.frontend.program import CpuStepsWarning  # noqa: E402
from convroute.kernels.reduce import Reduce, WeightedSum, broadcast_strides, row_problem, rows_of  # noqa: E402
from test_ops_reduce import check  # noqa: E402

pytestmark = pytest.mark.gpu


class SplitAttention(nn.Module):
    """ResNeSt's split attention over `radix` paths of `c` channels: the paths summed, their mean over H and W,
    two 1x1 convs, a softmax over the paths, and the paths weighted by it and summed."""

    def __init__(self, c=12, radix=2):
        super().__init__()
        self.c, self.radix = c, radix
        self.conv = nn.Conv2d(3, c * radix, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, 8, 1), nn.Conv2d(8, c * radix, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        n, _, h, w = x.shape
        paths = x.reshape(n, self.radix, self.c, h, w)
        gap = paths.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(F.relu(self.fc1(gap))).view(n, 1, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(n, self.radix, self.c, 1, 1)
        return (paths * attn).sum(dim=1)


class Chains(nn.Module):
    """Chains that fuse: sums of sums (keepdim or not), a mean of a mean, a sum of a product with a constant, a
    mean of a sum of squares, a full mean of a sum, and chains of three whose middle keeps its dim (the last then
    reduces a dim past it, or the kept size-1 dim itself)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.randn(5, 1, 1))

    def forward(self, x):
        return (x.sum(1).sum(2), x.sum(1, keepdim=True).mean((2, 3)), x.mean(3).mean(0),
                (x * self.scale).sum((0, 2)), (x * x).sum(1).mean(2, keepdim=True), x.sum(3).mean(),
                x.sum(1).mean(1, keepdim=True).sum(2), x.sum(1).mean(1, keepdim=True).sum(1))


class SoftmaxApart(nn.Module):
    """Softmax-weighted sums whose softmax must stay a node of its own: along another dim than the sum's, read
    twice (by two nodes, or as both operands of the product), and a mean taken over the fused sum (which reduces
    the softmax's dim only)."""

    def forward(self, x):
        w = x[..., :1] * 4
        elsewhere = (x * F.softmax(w, dim=2)).sum(1)
        twice = F.softmax(w, dim=1)
        fused_then_mean = (x * F.softmax(w, dim=1)).sum(1).mean(1)
        squared = F.softmax(x, dim=1)
        return elsewhere, (x * twice).sum(1) + twice.sum(1), fused_then_mean, (squared * squared).sum(1)


class Apart(nn.Module):
    """Chains that must not fuse: the inner sum read twice, a max, a product read twice."""

    def forward(self, x):
        s = x.sum(1)
        p = x * 2.0 + x
        q = p * x
        return s.mean(1) + s.sum(), x.amax(1).sum(1), q.sum(1), q.amax(0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_split_attention_runs_in_fewer_dispatches(dtype, monkeypatch):
    torch.manual_seed(0)
    model, x = SplitAttention(), torch.randn(2, 3, 9, 11)
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "0")
    apart = check(model, x, dtype, monkeypatch)
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "1")
    fused = check(model, x, dtype, monkeypatch, gpu_ops={"weighted_sum"})
    assert fused.gpu_ops["weighted_sum"] == 2 and "mul.Tensor" not in fused.gpu_ops
    assert not {"softmax.int", "_softmax"} & set(fused.gpu_ops), fused.gpu_ops
    assert fused.dispatches == apart.dispatches - 3, (fused.dispatches, apart.dispatches)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chains_of_sums_and_products_fuse(dtype, monkeypatch):
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "1")
    torch.manual_seed(1)
    s = check(Chains(), torch.randn(3, 5, 6, 7), dtype, monkeypatch, gpu_ops={"weighted_sum"})
    assert s.gpu_ops == {"weighted_sum": 8}, s.gpu_ops
    assert len(s.fused) == 11, s.fused  # the squares and the chains of three: two fusions each


def test_chains_that_must_stay_apart_stay(monkeypatch):
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "1")
    torch.manual_seed(2)
    s = check(Apart(), torch.randn(3, 5, 6, 7), "float32", monkeypatch)
    assert "weighted_sum" not in s.gpu_ops, s.gpu_ops


def test_softmax_stays_apart_where_it_must(monkeypatch):
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "1")
    torch.manual_seed(4)
    s = check(SoftmaxApart(), torch.randn(2, 3, 5, 4), "float32", monkeypatch)
    softmaxes = sum(n for op, n in s.gpu_ops.items() if "softmax" in op)
    assert softmaxes == 3 and s.gpu_ops.get("weighted_sum") == 4, s.gpu_ops


class SoftmaxPastRankSix(nn.Module):
    """A softmax-weighted sum of rank 7, past the row kernels: it must stay a product, a softmax and a sum."""

    def forward(self, x):
        x = x.reshape(2, 3, 1, 2, 1, 5, 2)
        return (x * F.softmax(x * 3, dim=1)).sum(1)


def test_a_softmax_weighted_sum_past_the_row_kernels_stays_apart(monkeypatch):
    monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", "1")
    torch.manual_seed(5)
    with pytest.warns(CpuStepsWarning):  # rank 7 is past every GPU kernel of these ops
        program = convroute.compile(SoftmaxPastRankSix().eval(), (torch.randn(2, 3, 4, 5),))
    x = torch.randn(2, 3, 4, 5)
    want = SoftmaxPastRankSix()(x.double())
    assert ((program(x).double() - want).abs().max() / want.abs().max()).item() < 1e-5
    assert "weighted_sum" not in program.summary().gpu_ops


def test_timm_split_attention_models_fuse(monkeypatch):
    """timm's ResNeSt and selective-kernel nets at 48 px: each split-attention block loses three dispatches (the
    product, the sum over H and W, the softmax), and the result still matches torch."""
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 48, 48)
    for name, blocks in (("resnest14d", 4), ("skresnet18", 8)):
        torch.manual_seed(3)
        model = timm.create_model(name, pretrained=False).eval()
        with torch.no_grad():
            want = model(x)
        counts = {}
        for flag in ("0", "1"):
            monkeypatch.setenv("CONVROUTE_FUSE_REDUCTIONS", flag)
            program = convroute.compile(model, (x,))
            err = ((program(x) - want).abs().max() / want.abs().max()).item()
            assert err < 1e-4, f"{name} with the flag {flag}: relative error {err:.3g}"
            counts[flag] = program.summary().dispatches
        assert counts["1"] == counts["0"] - 3 * blocks, (name, counts)


def test_rows_merge_only_where_every_operand_allows():
    shape, dims = (2, 3, 4, 5), [1]
    dense = (60, 20, 5, 1)
    b = broadcast_strides((3, 1, 1), shape)
    assert b == (0, 1, 0, 0)
    kept, reduced = rows_of(shape, dims, [dense, b])
    assert kept == [(1, (0, 0)), (2, (60, 0)), (20, (1, 0))]  # 4 x 5 merge for both; 2 stays apart (b: 0 vs 0*4)
    assert reduced == [(1, (0, 0)), (1, (0, 0)), (3, (20, 1))]
    assert rows_of(shape, [1, 2]) == ([(1, (0,)), (2, (60,)), (5, (1,))], [(1, (0,)), (1, (0,)), (12, (5,))])
    assert row_problem((2,) * 7, [0]) is not None
    assert "does not broadcast" in str(pytest.raises(ValueError, broadcast_strides, (4,), (3,)).value)


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("seed", range(4))
def test_weighted_sum_kernel_on_random_broadcasts(monkeypatch, style, seed):
    """WeightedSum on random shapes of rank 1-5, each operand broadcast along random dims, summed over random dims
    and scaled; Reduce's scale beside it. Rows short and long (a workgroup each from 17 / 257 elements)."""
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    gpu = get_gpu()
    rng = np.random.default_rng(seed)
    rank = 1 + seed + (seed % 2)
    shape = tuple(int(s) for s in rng.integers(2, 6, rank))
    shape = shape[:-1] + (int(rng.choice([3, 40, 300])),)
    a_shape = tuple(1 if rng.random() < 0.3 else s for s in shape)
    b_shape = tuple(1 if rng.random() < 0.5 else s for s in shape)[int(rng.integers(0, rank)):]
    shape = tuple(torch.broadcast_shapes(a_shape, b_shape))
    dims = sorted({int(d) for d in rng.integers(0, rank, 1 + rank // 2)})
    scale = float(rng.uniform(0.1, 2.0))
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    product = torch.from_numpy(a).double() * torch.from_numpy(b).double()
    cases = [(WeightedSum(gpu, a_shape, b_shape, shape, dims, scale=scale), (a, b),
              (product.sum(dims) * scale).numpy())]
    dense = rng.standard_normal(shape).astype(np.float32)
    cases.append((Reduce(gpu, "sum", shape, dims, scale=scale), (dense,),
                  (torch.from_numpy(dense).double().sum(dims) * scale).numpy()))
    for kernel, operands, want in cases:
        count = math.prod(shape) // max(want.size, 1)
        assert kernel.coop == (count > (16 if style == "workgroup" else 256))
        y = gpu.empty(4 * max(want.size, 1))
        gpu.fill(y, np.nan)
        got = gpu.run_and_read(kernel.bind(*(gpu.upload(o) for o in operands), y), y, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=f"{type(kernel).__name__} {a_shape} * {b_shape} -> {shape} over {dims}")


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("seed", range(3))
def test_softmax_weighted_sum_kernel(monkeypatch, style, seed):
    """WeightedSum with softmax_b: b holds logits (large, so that exp without the max would overflow), weighted by
    their softmax along the one summed dim; short and long rows."""
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    gpu = get_gpu()
    rng = np.random.default_rng(10 + seed)
    shape = ((2, 3, 4, 5), (3, 40, 2), (2, 300))[seed]
    dim = (1, 1, 1)[seed]
    b_shape = tuple(1 if i != dim and rng.random() < 0.5 else s for i, s in enumerate(shape))
    a = rng.standard_normal(shape).astype(np.float32)
    b = (rng.standard_normal(b_shape) * 60).astype(np.float32)
    weights = torch.softmax(torch.from_numpy(b).double(), dim)
    want = ((torch.from_numpy(a).double() * weights).sum(dim) * 0.5).numpy()
    kernel = WeightedSum(gpu, shape, b_shape, shape, [dim], scale=0.5, softmax_b=True)
    y = gpu.empty(4 * want.size)
    gpu.fill(y, np.nan)
    got = gpu.run_and_read(kernel.bind(gpu.upload(a), gpu.upload(b), y), y, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"{shape} {b_shape}")
    with pytest.raises(ValueError, match="one dim"):
        WeightedSum(gpu, shape, b_shape, shape, [0, dim], softmax_b=True)


def test_a_scale_needs_a_sum():
    with pytest.raises(ValueError, match="sums only"):
        Reduce(get_gpu(), "amax", (4, 5), [1], scale=0.5)

"""Reductions, softmax, group / instance norm, static gathers and max pooling on the GPU, compiled from tiny
modules through `convroute.compile` and checked against torch in float64, fp32 and fp16, with every output
poisoned (NaN) before the kernels write it and nothing on the CPU fallback."""

from __future__ import annotations

import math

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
                x.flatten(1).sum(1), x.amax(3), x.sum(), x.mean())


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_over_any_dims(dtype, monkeypatch):
    torch.manual_seed(1)
    # 300 elements along dim 3: a workgroup per output on either adapter kind; the rest one invocation each
    s = check(Reductions(), torch.randn(2, 5, 7, 300), dtype, monkeypatch)
    assert {"sum.dim_IntList", "mean.dim", "amax", "amin", "max_values", "min_values", "sum", "mean"} <= set(s.gpu_ops)


class Variances(nn.Module):
    """torch's var and std (var.correction after export) with corrections 0, 1 and 2, over any dims; EvoNorm's
    grouped variance (regnetz_*_evos) on a 5-D view. A mean added to the data shows the two passes keep it out."""

    def forward(self, x):
        x = x + 3.0
        g = x.reshape(x.shape[0], 2, -1, *x.shape[2:])
        return (x.var((2, 3), keepdim=True, unbiased=False), x.var(1), x.std((0, 2)), torch.var(x, 3, correction=2),
                g.var((2, 3, 4), unbiased=False, keepdim=True), x.std(), torch.std(x, (1, 3), correction=0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_variance_and_standard_deviation_over_any_dims(dtype, monkeypatch):
    torch.manual_seed(2)
    s = check(Variances(), torch.randn(2, 6, 7, 300), dtype, monkeypatch)
    assert "var.correction" in s.gpu_ops, sorted(s.gpu_ops)  # std exports as var.correction and sqrt


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


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.group = nn.GroupNorm(4, 8)
        self.plain_group = nn.GroupNorm(2, 8, affine=False)
        self.instance = nn.InstanceNorm2d(8, affine=True)
        self.plain_instance = nn.InstanceNorm2d(8)
        self.running = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        for norm in (self.group, self.instance, self.running):
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.uniform_(norm.bias, -0.5, 0.5)
        self.running.running_mean.uniform_(-0.5, 0.5)
        self.running.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return (F.relu(self.group(x)), self.plain_group(x), F.silu(self.instance(x)), self.plain_instance(x),
                self.running(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_and_instance_norms(dtype, monkeypatch):
    torch.manual_seed(3)
    x = torch.randn(2, 8, 9, 11) * 3 + 1
    s = check(Norms(), x, dtype, monkeypatch, {"group_norm", "instance_norm"})
    assert sum("relu fused" in f or "silu fused" in f for f in s.fused) == 2, s.fused


class DecomposedNorms(Norms):
    """The same norms beside an op the direct translation does not take (clamp): they arrive decomposed
    (native_group_norm, _native_batch_norm_legit.no_stats over a (1, N*C, H, W) view)."""

    def forward(self, x):
        return (*super().forward(x), x.clamp(-1.0, 1.0))


def test_decomposed_group_and_instance_norms(monkeypatch):
    torch.manual_seed(4)
    x = torch.randn(1, 8, 9, 11) * 3 + 1
    s = check(DecomposedNorms(), x, "float32", monkeypatch, {"group_norm_values", "batch_stats_norm"})
    assert any("relu fused" in f for f in s.fused), s.fused  # the silu follows a view of the instance norm


class Gathers(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("rows", torch.tensor([4, 0, 2, 2, 7]))
        self.register_buffer("where", torch.randint(0, 9, (2, 6, 9, 3)))

    def forward(self, x):
        return (x[:, :, self.rows], x[:, [1, 0, 5], :, [2, 3, 0]], torch.index_select(x, 3, self.rows),
                torch.gather(x, 3, self.where), torch.flip(x, [1, 3]), torch.roll(x, (2, -1), (2, 3)),
                F.pad(x, (2, 1, 1, 3), mode="reflect"), F.pad(x[:, 0], (1, 2), mode="replicate"),
                F.pad(x, (1, 1, 2, 0), mode="circular"), F.pixel_shuffle(x[:, :4], 2),
                F.pixel_unshuffle(x[:, :, 1:, 1:], 2), x.repeat(1, 2, 1, 1), x[:, :, :, self.rows[:2]] * 2.0,
                F.pad(x, (1, 0, 2, -1), value=1.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_static_gathers_and_pixel_shuffles(dtype, monkeypatch):
    torch.manual_seed(5)
    check(Gathers(), torch.randn(2, 6, 9, 9), dtype, monkeypatch,
          {"index.Tensor", "index_select", "gather", "flip", "roll", "pad", "pixel_shuffle", "pixel_unshuffle",
           "repeat", "constant_pad_nd"})


def test_gathers_after_decomposition(monkeypatch):
    """Through the core-ATen decomposition (clamp is not among the direct translation's ops): indexing by a constant
    list is index.Tensor, pads stay whole (export.KEEP)."""
    class Decomposed(Gathers):
        def forward(self, x):
            return (x[:, :, self.rows], torch.gather(x, 3, self.where), F.pad(x, (2, 1, 1, 3), mode="reflect"),
                    F.pad(x[:, 0], (1, 2), mode="replicate"), F.pad(x, (1, 1, 2, 0), mode="circular"),
                    F.pixel_unshuffle(x[:, :, 1:, 1:], 2), x.clamp(-1.0, 1.0))
    torch.manual_seed(6)
    check(Decomposed(), torch.randn(2, 6, 9, 9), "float32", monkeypatch, {"index.Tensor", "gather", "pad"})


def test_gather_kernel_fills_where_the_table_says_none():
    import numpy as np

    from convroute.kernels.gather import Gather
    gpu = get_gpu()
    x = np.random.default_rng(10).standard_normal((3, 5)).astype(np.float32)
    offsets = np.array([[4, -1, 0], [14, 13, -1]])
    y = gpu.empty(4 * offsets.size)
    gpu.fill(y, np.nan)
    got = gpu.run_and_read(Gather(gpu, offsets, fill=-2.5).bind(gpu.upload(x), y), y, offsets.shape)
    np.testing.assert_array_equal(got, np.where(offsets < 0, -2.5, x.reshape(-1)[offsets]))


def test_gather_table_is_factored():
    from convroute.kernels.gather import factor
    offsets = F.pad(torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5), (0, 0, 1, 1),
                    mode="reflect").long().numpy()
    outer, ostride, inner, table = factor(offsets)
    assert (outer, ostride, inner) == (6, 20, 5) and table.tolist() == [5, 0, 5, 10, 15, 10]


class MaxPools(nn.Module):
    def forward(self, x):
        return (F.max_pool2d(x, 3, 2, 1, dilation=2), F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                F.max_pool2d(x, (2, 3), (3, 2), (1, 0), dilation=(2, 1), ceil_mode=True),
                F.adaptive_max_pool2d(x, (3, 4)), F.adaptive_max_pool2d(x, 1), F.adaptive_max_pool2d(x, (7, 5)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pools_with_dilation_ceil_mode_and_adaptive(dtype, monkeypatch):
    torch.manual_seed(7)
    check(MaxPools(), torch.randn(2, 3, 10, 13), dtype, monkeypatch, {"max_pool2d", "adaptive_max_pool2d_values"})


def test_adaptive_max_pool_after_decomposition(monkeypatch):
    class Decomposed(nn.Module):
        def forward(self, x):
            return F.adaptive_max_pool2d(x, (3, 4)), F.max_pool2d(x, 3, 2, 1, ceil_mode=True), x.clamp(-1.0, 1.0)
    torch.manual_seed(8)
    check(Decomposed(), torch.randn(1, 4, 9, 11), "float32", monkeypatch, {"max_pool2d", "adaptive_max_pool2d_values"})


# op names that must run on the GPU: resnest's split attention (its softmax within the weighted sum), tresnet's
# anti-aliasing reflect pad
TIMM_MODELS = [("resnest14d", {"weighted_sum"}), ("tresnet_m", {"pad"})]


def compile_timm(name: str):
    timm = pytest.importorskip("timm")
    torch.manual_seed(9)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    program = convroute.compile(model, (x,))
    with torch.no_grad():
        want = model(x)
    err = ((program(x) - want).abs().max() / want.abs().max()).item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"
    return program.summary()


@pytest.mark.parametrize("name, ops", TIMM_MODELS)
def test_timm_models_run_their_reductions_and_gathers_on_the_gpu(name, ops):
    """resnest's split attention (softmax over the radix, the splits weighted by it and summed) and tresnet's
    anti-aliasing (a reflect pad) on the GPU, 64 px."""
    s = compile_timm(name)
    assert ops <= set(s.gpu_ops), sorted(s.gpu_ops)
    assert not s.cpu_ops, f"ops on the CPU fallback:\n{s}"


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("seed", range(4))
def test_row_kernels_on_random_shapes_and_dims(monkeypatch, style, seed):
    """Reduce, Softmax and Variance straight on random tensors of rank 1-6 and random dims (merged kept / reduced
    groups), in either adapter style (a workgroup per row from 17 elements on GPUs, from 257 on CPU adapters)."""
    import numpy as np

    from convroute.kernels.reduce import Reduce, Softmax, Variance
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    gpu = get_gpu()
    rng = np.random.default_rng(seed)
    rank = 1 + seed + 2 * (seed % 2)
    shape = tuple(int(s) for s in rng.integers(1, 6, rank))
    shape = shape[:-1] + (int(rng.choice([3, 40, 300])),)
    x = rng.standard_normal(shape).astype(np.float32)
    dims = sorted({int(d) for d in rng.integers(0, rank, 1 + rank // 2)})
    for kind in ("sum", "mean", "amax", "amin", "softmax", "log_softmax", "var"):
        if kind == "var":
            if math.prod(shape[d] for d in set(dims)) < 2:
                continue
            kernel = Variance(gpu, shape, dims, 1.0)
            want = torch.var(torch.from_numpy(x).double(), dims, correction=1).numpy()
        elif kind.endswith("softmax"):
            kernel = Softmax(gpu, kind, shape, dims[-1])
            want = getattr(torch, kind)(torch.from_numpy(x).double(), dims[-1]).numpy()
        else:
            kernel = Reduce(gpu, kind, shape, dims)
            want = getattr(torch, kind)(torch.from_numpy(x).double(), dims).numpy()
        count = x.size // max(want.size, 1) if not kind.endswith("softmax") else shape[dims[-1]]
        assert kernel.coop == (count > (16 if style == "workgroup" else 256))
        y = gpu.empty(4 * max(want.size, 1))
        gpu.fill(y, np.nan)
        got = gpu.run_and_read(kernel.bind(gpu.upload(x), y), y, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"{kind} {dims}")

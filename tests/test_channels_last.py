"""Channels-last islands on NCHW (frontend/channels_last.py, kernels/channel_norm.py): permute -> layer norm /
linear / activation over the last dim -> permute back runs without the permutes, a layer norm as one channel-norm
dispatch and a linear as a 1x1 conv. Matches the float64 torch reference in fp32 and fp16 (buffers poisoned,
conftest); islands whose values have other readers, or that hold an op that mixes pixels, keep their permutes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from conftest import RandomCases, run_guarded  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.frontend import channels_last  # noqa: E402
from convroute.kernels.channel_norm import WG, ChannelNorm, lanes_for  # noqa: E402
from convroute.kernels.common import F16_FEATURE, Precision  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = [pytest.mark.gpu]


def needs_f16(dtype):
    if dtype == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("no shader-f16 on this adapter")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape,lanes,act", [
    ((1, 96, 16, 16), 1, None),
    ((2, 40, 5, 7), 1, "gelu"),  # pixels not a multiple of the workgroup's, two images
    ((1, 768, 7, 7), 8, None),
    ((2, 3, 9, 11), 2, "relu"),  # fewer channels than lanes
    ((1, 130, 3, 3), WG, None),  # one pixel per workgroup
    ((1, 1, 4, 4), 4, None),  # one channel: the output is the bias
])
def test_channel_norm_matches_float64(shape, lanes, act, dtype):
    needs_f16(dtype)
    error, guard = run_channel_norm(get_gpu(), shape, lanes, act, dtype, np.random.default_rng(sum(shape) + lanes))
    assert np.isnan(guard), "wrote past the output"
    assert error < TOLERANCES[dtype] / 10


def run_channel_norm(gpu, shape, lanes, act, dtype, rng):
    """(relative error against float64, the guard element after the output: NaN unless written past)."""
    precision = Precision(dtype)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    kernel = ChannelNorm(gpu, shape, w, b, 1e-6, act, precision, lanes=lanes)
    x_buf = gpu.upload(x, "x", precision.numpy)
    flat, guard = run_guarded(gpu, lambda y: kernel.bind(x_buf, y), int(np.prod(shape)), precision)
    xs = torch.from_numpy(x.astype(precision.numpy).astype(np.float64))
    ref = F.layer_norm(xs.permute(0, 2, 3, 1), (shape[1],), torch.from_numpy(w).double(),
                       torch.from_numpy(b).double(), 1e-6).permute(0, 3, 1, 2)
    ref = {"gelu": F.gelu, "relu": F.relu}.get(act, lambda v: v)(ref)
    return rel_error(torch.from_numpy(flat.reshape(shape)), ref), guard


def test_channel_norm_random_shapes():
    """CONVROUTE_CHANNEL_NORM_FUZZ random channel norms (6 by default; CONVROUTE_CHANNEL_NORM_FUZZ_SEED replays):
    shape, lanes, activation and dtype drawn, against float64; a failure names the case."""
    gpu = get_gpu()
    cases = RandomCases(gpu, "CONVROUTE_CHANNEL_NORM_FUZZ", "channel norm fuzz", seed=23)
    rng = cases.rng
    for case in range(cases.count):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 800)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        lanes = [None, 1, 2, 4, 8, 16, 32, 64][int(rng.integers(8))]
        act, dtype = [None, "relu", "gelu"][int(rng.integers(3))], cases.dtype()
        error, guard = run_channel_norm(gpu, shape, lanes, act, dtype, rng)
        cases.check(error < TOLERANCES[dtype] / 10 and np.isnan(guard),
                    f"case {case}: {shape}, lanes {lanes}, {act}, {dtype}: rel. error {error:.2e}")
    cases.finish()


def test_lanes_follow_the_device():
    gpu = get_gpu()
    if gpu.profile.gemm_style == "registers":
        assert lanes_for(gpu, 56 * 56, 96) == 1
    else:
        busy = gpu.profile.busy_workgroups  # 49 pixels are one workgroup: alone they would leave a GPU idle
        assert (lanes_for(gpu, 7 * 7, 768) > 1) == (busy > 1)
    assert lanes_for(gpu, 7 * 7, 8) == 1  # too few channels to split


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a layer norm over the channels through two permutes."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Block(nn.Module):
    """torchvision's ConvNeXt block (depthwise conv, permute, layer norm, linear, GELU, linear, permute, layer
    scale, residual) with a layer scale of ~1, so the MLP's result shows in the output; `leak`: the normalized
    channels-last value is also added to the output (another reader)."""

    def __init__(self, c=24, leak=False):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.down = nn.Sequential(LayerNorm2d(c), nn.Conv2d(c, 2 * c, 2, stride=2))
        self.leak = leak

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        z = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        out = self.down(x + self.scale * z)
        return out + y.mean() if self.leak else out


def checked(model, x, dtype="float32", on=True, monkeypatch=None):
    """The compiled model's summary, after checking its output against the float64 reference."""
    monkeypatch.setenv("CONVROUTE_CHANNELS_LAST", "1" if on else "0")
    program = convroute.compile(model, (x,), dtype=dtype)
    assert rel_error(program(x), reference(model, x)) < TOLERANCES[dtype]
    return program.summary()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch,size", [(1, 8), (2, 5)])
def test_a_convnext_block_runs_without_permutes(batch, size, dtype, monkeypatch):
    needs_f16(dtype)
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(batch, 3, size, size)
    summary = checked(model, x, dtype, True, monkeypatch)
    assert summary.gpu_ops.get("channel_norm") == 2 and not summary.cpu_ops, summary.gpu_ops
    assert "permute" not in summary.gpu_ops and "linear" not in summary.gpu_ops, summary.gpu_ops
    assert summary.gpu_ops["convolution"] == 5  # stem, depthwise, the two linears, the downsampling conv
    plain = checked(model, x, dtype, False, monkeypatch)
    assert plain.gpu_ops.get("permute") == 4 and "channel_norm" not in plain.gpu_ops
    assert plain.dispatches > summary.dispatches


@pytest.mark.parametrize("batch", [1, 3])
def test_an_island_at_the_models_end_is_its_output(batch, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 20, 3), LayerNorm2d(20)).eval()
    summary = checked(model, torch.randn(batch, 3, 9, 7), monkeypatch=monkeypatch)
    assert summary.gpu_ops == {"convolution": 1, "channel_norm": 1}, summary.gpu_ops


def test_an_island_whose_value_has_another_reader_keeps_its_permutes(monkeypatch):
    torch.manual_seed(0)
    summary = checked(Block(leak=True).eval(), torch.randn(1, 3, 6, 6), monkeypatch=monkeypatch)
    assert summary.gpu_ops.get("permute") == 2, summary.gpu_ops  # the block's pair stays; LayerNorm2d's goes
    assert summary.gpu_ops.get("channel_norm") == 1


class Mixing(nn.Module):
    """Permutes around a softmax over the last dim (per pixel: rewritable in principle, but not an op the pass
    knows) and around a sum over W (mixes pixels): both keep their permutes."""

    def forward(self, x):
        a = torch.softmax(x.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
        b = x.permute(0, 2, 3, 1).cumsum(2).permute(0, 3, 1, 2)
        return a + b


def test_islands_with_unknown_or_mixing_ops_are_left_alone(monkeypatch):
    with pytest.warns(Warning, match="cumsum"):
        summary = checked(Mixing().eval(), torch.randn(1, 5, 4, 6), monkeypatch=monkeypatch)
    assert summary.gpu_ops.get("permute") == 4 and "channel_norm" not in summary.gpu_ops, summary.gpu_ops


def test_channel_norm_on_the_cpu_is_torchs_layer_norm(monkeypatch):
    """Where the GPU cannot take it, the rewritten node runs through its torch form and still matches."""
    def refuse(ctx, node):
        raise channels_last.Unsupported("refused for the test")
    monkeypatch.setattr("convroute.frontend.plan.lower_channel_norm", refuse)
    torch.manual_seed(0)
    with pytest.warns(Warning, match="CPU"):
        summary = checked(Block().eval(), torch.randn(1, 3, 6, 6), monkeypatch=monkeypatch)
    assert [op for _, op, _ in summary.cpu_ops] == ["channel_norm", "channel_norm"]

"""Squeeze-excitation and ECA blocks in two dispatches (frontend/fuse.py, kernels/squeeze_excite.py; three for
squeeze-excitation on CPU adapters, and both of its kernel forms tested directly on any adapter): the global
pool, then one kernel for the convs (two 1x1, or a conv1d over the channels), their activations, the gate and the
scale. Matches the float64 torch reference in fp32 and fp16 (buffers NaN-poisoned before each run, conftest), with
fewer dispatches than with CONVROUTE_SQUEEZE_EXCITE=0 (ECA: CONVROUTE_CHANNEL_ATTENTION=0), over channel blocks
that do and do not divide the channels, batch 1 and 2; a block whose pooled value has another reader stays."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from conftest import run_guarded  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision  # noqa: E402
from convroute.kernels.squeeze_excite import make_squeeze_excite  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("small_direct_tile")]



class SqueezeExcite(nn.Module):
    """timm's form (mean, conv, act, conv, sigmoid, mul) or torchvision's (adaptive pool, relu, hardsigmoid),
    between two convs; `leak`: the pooled means are also added to the output (another reader)."""

    def __init__(self, c=100, reduced=12, style="timm", leak=False):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 8, 1)
        self.reduce, self.expand = nn.Conv2d(c, reduced, 1), nn.Conv2d(reduced, c, 1)
        self.style, self.leak = style, leak

    def forward(self, x):
        x = self.stem(x)
        if self.style == "timm":
            pooled = x.mean((2, 3), keepdim=True)
            gate = torch.sigmoid(self.expand(F.silu(self.reduce(pooled))))
        else:
            pooled = F.adaptive_avg_pool2d(x, 1)
            gate = F.hardsigmoid(self.expand(F.relu(self.reduce(pooled))))
        y = self.head(F.relu(x * gate))
        return y + pooled.mean() if self.leak else y


def run(model, x, dtype, on: bool, monkeypatch, switch="CONVROUTE_SQUEEZE_EXCITE"):
    monkeypatch.setenv(switch, "1" if on else "0")
    program = convroute.compile(model, (x,), dtype=dtype)
    return program(x), program.summary(), program


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("style,batch,size", [("timm", 1, 8), ("timm", 2, 20), ("torchvision", 1, 20),
                                              ("torchvision", 2, 3)])
def test_squeeze_excite_in_two_dispatches(style, batch, size, dtype, monkeypatch):
    torch.manual_seed(0)
    model = SqueezeExcite(style=style).eval()
    x = torch.randn(batch, 3, size, size)
    ref = reference(model, x)
    fused, summary, program = run(model, x, dtype, True, monkeypatch)
    plain, plain_summary, _ = run(model, x, dtype, False, monkeypatch)
    assert rel_error(fused, ref) < TOLERANCES[dtype]
    assert rel_error(plain, ref) < TOLERANCES[dtype]
    assert summary.gpu_ops.get("squeeze_excite") == 1 and not summary.cpu_ops, summary.gpu_ops
    se = next(s for s in program.plan.gpu_steps if s.node.op == "squeeze_excite")
    assert len(se.dispatches) == (2 if program.gpu.profile.family == "cpu" else 1)
    assert plain_summary.dispatches - summary.dispatches >= 2


def test_pooled_value_with_another_reader_is_not_fused(monkeypatch):
    torch.manual_seed(0)
    model = SqueezeExcite(leak=True).eval()
    x = torch.randn(1, 3, 8, 8)
    out, summary, _ = run(model, x, "float32", True, monkeypatch)
    assert rel_error(out, reference(model, x)) < TOLERANCES["float32"]
    assert "squeeze_excite" not in summary.gpu_ops


class ChannelAttention(nn.Module):
    """timm's EcaModule between two convs: mean, conv1d over the channels, sigmoid, expand, mul."""

    def __init__(self, c=100, k=5, dilation=1, bias=False):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 8, 1)
        self.conv = nn.Conv1d(1, 1, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        return self.head(x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch,size,k,dilation,bias", [(1, 8, 5, 1, False), (2, 20, 3, 2, True)])
def test_channel_attention_in_two_dispatches(batch, size, k, dilation, bias, dtype, monkeypatch):
    torch.manual_seed(0)
    model = ChannelAttention(k=k, dilation=dilation, bias=bias).eval()
    x = torch.randn(batch, 3, size, size)
    ref = reference(model, x)
    fused, summary, program = run(model, x, dtype, True, monkeypatch, "CONVROUTE_CHANNEL_ATTENTION")
    assert rel_error(fused, ref) < TOLERANCES[dtype]
    assert summary.gpu_ops.get("channel_attention") == 1 and not summary.cpu_ops, (summary.gpu_ops, summary.cpu_ops)
    step = next(s for s in program.plan.gpu_steps if s.node.op == "channel_attention")
    assert len(step.dispatches) == 1
    plain, plain_summary, _ = run(model, x, dtype, False, monkeypatch, "CONVROUTE_CHANNEL_ATTENTION")
    assert rel_error(plain, ref) < TOLERANCES[dtype]
    assert "channel_attention" not in plain_summary.gpu_ops


@pytest.mark.parametrize("two_pass", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,c,cr,hw,acts", [
    (1, 100, 12, 64, ("silu", "sigmoid", "none")),  # C a multiple of 4: the hidden pass loads four means at once
    (2, 30, 7, 81, ("relu", "hardsigmoid", "relu")),  # C not, Cr not a multiple of 4, two strips a plane
    (2, 20, 5, 225, ("relu", "sigmoid", "none")),  # four strips a plane
    (1, 1152, 48, 4, ("silu", "sigmoid", "none")),  # EfficientNet's last blocks at 64 px
    (1, 960, 240, 49, ("relu", "hardsigmoid", "none")),  # MobileNetV3-Large's widest: the hidden units in rounds
    (2, 8, 1, 9, ("relu", "sigmoid", "none")),  # one hidden unit (three padded ones)
])
def test_both_squeeze_excite_kernels(two_pass, dtype, n, c, cr, hw, acts):
    """Each form of the fused kernel (kernels/squeeze_excite.py) on any adapter, against float64, output
    NaN-poisoned with a guard element: y = act(x * act2(W2 act1(W1 p + b1) + b2))."""
    gpu = get_gpu()
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16")
    precision = Precision.parse(dtype, None)
    rng = np.random.default_rng(c + hw)
    x = rng.standard_normal((n, c, hw)).astype(precision.numpy)
    pooled = x.astype(np.float64).mean(axis=2)
    w1, b1 = rng.standard_normal((cr, c, 1, 1)) / np.sqrt(c), rng.standard_normal(cr)
    w2, b2 = rng.standard_normal((c, cr, 1, 1)) / np.sqrt(cr), rng.standard_normal(c)
    act1, act2, act = (Epilogue(kind) for kind in acts)
    hidden = act1.reference(pooled @ w1.reshape(cr, c).T + b1)
    gate = act2.reference(hidden @ w2.reshape(c, cr).T + b2)
    ref = act.reference(x.astype(np.float64) * gate[:, :, None])
    kernel = make_squeeze_excite(gpu, (n, c, hw), w1.astype(np.float32), b1.astype(np.float32), act1,
                                 w2.astype(np.float32), b2.astype(np.float32), act2, act, precision, two_pass)
    x_buf = gpu.upload(x, "x", precision.numpy)
    p_buf = gpu.upload(pooled.astype(precision.numpy), "pooled", precision.numpy)
    dispatches = []
    out, guard = run_guarded(gpu, lambda y: dispatches.extend(kernel.bind(x_buf, p_buf, y)) or dispatches, ref.size,
                             precision)
    assert len(dispatches) == 1 + two_pass
    assert np.isnan(guard), "the kernel wrote past its output"
    error = np.linalg.norm(out - ref.reshape(-1)) / np.linalg.norm(ref)
    assert error < TOLERANCES[dtype], error

"""conv1d as a routed 2-D conv over (N, C, 1, L) under every policy (strides, dilations, groups, paddings, bias,
transposed, depthwise), and small blocks of the timm families issue 26 found on the CPU, each with every op on
the GPU: ECA (global pool -> conv1d over channels -> sigmoid -> scale), CSP/darknet (conv + BN + leaky_relu) and
TResNet (leaky_relu 1e-3, SE). Against torch float64, outputs poisoned (conftest)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from conftest import rel_error  # noqa: E402
from convroute.kernels.common import F16_FEATURE  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from convroute.router import autotune as autotune_mod  # noqa: E402
from test_fuzz import QUICK_TUNING, synthetic_calibration  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["float32", "float16"])
def dtype(request):
    from convroute.device.gpu import get_gpu

    if request.param == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("the adapter has no shader-f16")
    return request.param


def check(model, inputs, dtype="float32", policy=None):
    """Compile, require every op on the GPU, compare each output with torch float64; returns the program."""
    program = convroute.compile(model, inputs, dtype=dtype, policy=policy)
    s = program.summary()
    assert not s.cpu_ops and s.all_convs_on_gpu, s
    with torch.no_grad():
        refs = model.double()(*(x.double() for x in inputs))
        model.float()
    outs = program(*inputs)
    outs, refs = (outs, refs) if isinstance(refs, tuple) else ((outs,), (refs,))
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        assert out.shape == ref.shape
        err = rel_error(out.double().numpy(), ref.numpy())
        assert err < TOLERANCES[dtype], f"output {i}: relative error {err:.3g} ({dtype}, {policy})"
    return program


class Conv1ds(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Conv1d(4, 6, 3)
        self.strided = nn.Conv1d(4, 6, 5, stride=2, padding=2, dilation=2, bias=False)
        self.grouped = nn.Conv1d(4, 6, 3, padding=1, groups=2)
        self.depthwise = nn.Conv1d(4, 8, 3, padding=1, groups=4)
        self.pointwise = nn.Conv1d(4, 5, 1)
        self.up = nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return (F.leaky_relu(self.bn(self.plain(x)), 0.1), self.strided(x), F.elu(self.grouped(x)),
                self.depthwise(x), self.pointwise(x), self.up(x), F.conv1d(x, self.plain.weight, padding="same"))


def conv1ds():
    torch.manual_seed(3)
    model = Conv1ds().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2)
    return model, (torch.randn(2, 4, 13),)


def test_conv1d_variants(dtype):
    model, inputs = conv1ds()
    program = check(model, inputs, dtype)
    rows = program.convs()
    assert len(rows) == 7 and all(r["algorithm"] for r in rows)
    assert any(r["epilogue"] == "leaky_relu" for r in rows) and any(r["epilogue"] == "elu" for r in rows)


@pytest.mark.parametrize("policy", ["seed", "etvk", "calibrated", "autotune"])
def test_conv1d_under_every_policy(policy, monkeypatch):
    from convroute.device.gpu import get_gpu

    if policy == "calibrated":
        synthetic_calibration(get_gpu(), "float32")
    monkeypatch.setattr(autotune_mod, "SETTINGS", QUICK_TUNING)
    model, inputs = conv1ds()
    program = check(model, inputs, policy=policy)
    decisions = [st.op.decision for st in program.plan.gpu_steps if st.node.op == "convolution"]
    assert len(decisions) == 7 and {d.policy for d in decisions} == {policy}, decisions


class Eca(nn.Module):
    """timm's EcaModule after a conv: pool -> (N, 1, C) -> conv1d over channels -> sigmoid -> scale."""

    def __init__(self, c=16):
        super().__init__()
        self.conv = nn.Conv2d(8, c, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 5, padding=2, bias=False)

    def forward(self, x):
        y = F.relu(self.conv(x))
        a = y.mean((2, 3)).view(y.shape[0], 1, -1)
        a = self.eca(a).view(y.shape[0], -1, 1, 1).sigmoid()
        return y * a.expand_as(y)


class CspTresnet(nn.Module):
    """CSPDarknet's conv + BN + leaky_relu(0.01) stages and a cross-stage concat; TResNet's leaky_relu(1e-3)
    and SE block."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, x):
        a = self.act(self.b1(self.c1(x)))
        b = F.leaky_relu(self.b2(self.c2(a)), 1e-3)
        c = F.leaky_relu(self.c3(torch.cat([a, b], 1)), 1e-3)
        s = torch.sigmoid(self.se2(F.relu(self.se1(c.mean((2, 3), keepdim=True)))))
        return c * s


def test_eca_block_runs_whole_on_the_gpu(dtype):
    torch.manual_seed(4)
    program = check(Eca().eval(), (torch.randn(2, 8, 6, 7),), dtype)
    assert "convolution" in program.summary().gpu_ops and len(program.convs()) == 2


def test_csp_and_tresnet_blocks_run_whole_on_the_gpu(dtype):
    torch.manual_seed(5)
    model = CspTresnet().eval()
    for bn in (model.b1, model.b2):
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    program = check(model, (torch.randn(1, 3, 8, 8),), dtype)
    epilogues = [r["epilogue"] for r in program.convs()]
    assert epilogues.count("leaky_relu") == 3, epilogues
    assert "leaky_relu" not in program.summary().gpu_ops  # every one went into a conv's epilogue

"""Residual adds fused into the producing conv's store by `convroute.compile`: ResNet basic and bottleneck
blocks (with and without a downsample) and a MobileNetV2 inverted residual match the float64 torch reference in
fp32 and fp16, with one dispatch fewer per fused add than with `fuse_residual=False`; adds that must stay
(a conv result read twice, a broadcast operand, a conv with its own activation, a depthwise producer whose
kernel cannot add a residual) stay. Outputs are poisoned with NaN before each run (conftest). The unfused
programs are planned, not run, and direct takes one small register tile: lavapipe compiles each pipeline at its
first dispatch (tests/test_residual.py runs every kernel path)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from convroute.kernels import ALGORITHMS, direct_cpu  # noqa: E402
from test_frontend import randomize_batch_norms, reference, rel_error  # noqa: E402


@pytest.fixture(autouse=True)
def residuals_not_summed(monkeypatch):
    """conv(y) + y is also a summed conv (frontend/summed_convs.py, tests/test_summed_convs.py): here the
    residual store is under test."""
    monkeypatch.setenv("CONVROUTE_SUMMED_CONVS", "0")

pytestmark = pytest.mark.gpu
TOLERANCE = 1e-4
TOL16 = 1e-2


@pytest.fixture(autouse=True)
def small_direct_tile(monkeypatch):
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 4),))


def conv_bn(c_in, c_out, k, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out))


class ResNetLike(nn.Module):
    """Stem; a basic block (identity); a basic block with a strided 1x1 downsample, computed after the main path
    as torchvision does; a bottleneck whose last conv is 1x1."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3)
        self.a1, self.a2 = conv_bn(8, 8, 3), conv_bn(8, 8, 3)
        self.b1, self.b2, self.down = conv_bn(8, 12, 3, 2), conv_bn(12, 12, 3), conv_bn(8, 12, 1, 2)
        self.c1, self.c2, self.c3 = conv_bn(12, 6, 1), conv_bn(6, 6, 3), conv_bn(6, 12, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.a2(F.relu(self.a1(x))) + x)
        out = self.b2(F.relu(self.b1(x)))
        x = F.relu(out + self.down(x))
        return F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))) + x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand + relu6, depthwise 3x3 + relu6, 1x1 projection, plus the block's input
    (here the program's input)."""

    def __init__(self, c=8, expand=3):
        super().__init__()
        wide = c * expand
        self.expand, self.dw = conv_bn(c, wide, 1), conv_bn(wide, wide, 3, groups=wide)
        self.project = conv_bn(wide, c, 1)

    def forward(self, x):
        return x + self.project(F.relu6(self.dw(F.relu6(self.expand(x)))))


def compiled(model, x, **kwargs):
    """(program, reference) for `model` with real batch-norm statistics."""
    model = model.eval()
    with torch.no_grad():
        randomize_batch_norms(model)
    return convroute.compile(model, (x,), **kwargs), reference(model, x)


def residual_notes(program) -> list[str]:
    return [f for f in program.summary().fused if "residual add fused" in f]


def test_resnet_blocks_fuse_and_match_torch(monkeypatch):
    model = ResNetLike()
    x = torch.randn(2, 3, 11, 13)
    program, ref = compiled(model, x)
    assert rel_error(program(x), ref) < TOLERANCE
    assert [f.split(":")[0] for f in residual_notes(program)] == ["a2.0", "b2.0", "c3.0"]
    rows = {r["name"]: r for r in program.convs()}
    assert rows["a2.0"]["epilogue"] == "relu" and rows["a2.0"]["fused"][-2:] == ["residual add fused", "relu fused"]
    for step in program.plan.gpu_steps:  # the residual stays in a buffer of its own until the conv has run
        if step.node.residual is not None:
            assert program.plan.buffer(step.node.residual.name) is not program.plan.buffer(step.node.name)
            assert ALGORITHMS[step.op.decision.algorithm].fuses_residual
    monkeypatch.setenv("CONVROUTE_FUSE_RESIDUAL", "0")
    unfused = convroute.compile(model, (x,))  # planned only: the same kernels but for the adds
    assert residual_notes(unfused) == []
    s, u = program.summary(), unfused.summary()
    assert "add.Tensor" not in s.gpu_ops and u.gpu_ops["add.Tensor"] == 3 and not s.cpu_ops
    assert s.dispatches == u.dispatches - 3, (s.dispatches, u.dispatches)


def test_inverted_residual_fuses_and_matches_torch():
    x = torch.randn(2, 8, 11, 13)
    program, ref = compiled(InvertedResidual(), x)
    assert rel_error(program(x), ref) < TOLERANCE
    assert residual_notes(program) == ["project.0: residual add fused"]
    assert "add.Tensor" not in program.summary().gpu_ops


class TwoResiduals(nn.Module):
    """A 3x3 conv (direct) and a 1x1 conv (pointwise) each ending in a residual add."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = conv_bn(4, 4, 3), conv_bn(4, 4, 3), conv_bn(4, 4, 1)

    def forward(self, x):
        y = F.relu(self.c2(F.relu(self.c1(x))) + x)
        return self.c3(y) + y


def test_residual_blocks_in_float16():
    x = torch.randn(2, 4, 6, 10)
    program, ref = compiled(TwoResiduals(), x, dtype="float16")
    assert len(residual_notes(program)) == 2
    assert rel_error(program(x), ref) <= TOL16


class NotFusable(nn.Module):
    """Adds that keep their own dispatch."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)

    def forward(self, x):
        y = self.c1(x)
        a = F.relu(y + x) * y  # the conv's result has a second reader
        b = self.c2(a) + a.mean((2, 3), keepdim=True)  # broadcast operand
        c = F.relu(self.c3(b)) + b  # the conv already has an activation
        return self.dw(c) + c  # depthwise's kernel cannot add a residual


def test_adds_that_cannot_fuse_stay():
    assert not ALGORITHMS["depthwise"].fuses_residual
    x = torch.randn(2, 4, 7, 6)
    program, ref = compiled(NotFusable(), x)
    assert rel_error(program(x), ref) < TOLERANCE
    assert residual_notes(program) == []
    assert program.summary().gpu_ops["add.Tensor"] == 4
    assert program.summary().dispatches == convroute.compile(NotFusable().eval(), (x,), fuse_residual=False
                                                             ).summary().dispatches


def test_a_fused_conv_on_the_cpu_fallback_adds_its_residual():
    from convroute.frontend.fallback import run_on_cpu
    from convroute.frontend.graph import Node, Ref
    from convroute.kernels.common import Epilogue

    x, w, r = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(1, 3, 5, 5)
    node = Node("conv", torch.ops.aten.convolution.default,
                (Ref("x"), Ref("w"), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), act=Epilogue("relu"),
                residual=Ref("r"))
    assert [ref.name for ref in node.refs()] == ["x", "w", "r"]
    out = run_on_cpu(node, {"x": x, "r": r}, {"w": w})
    torch.testing.assert_close(out, torch.relu(F.conv2d(x, w, padding=1) + r))

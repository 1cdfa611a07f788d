"""conv3d with a kernel of 1 along its last axis (timm LambdaNet's (r, r, 1) position lambda) as a 2-D conv over
(N, C, D, H * W) with its H taps dilated by W (frontend/lower.conv3d_params), under every policy; other 3-D convs
stay on the CPU, with the reason. Against torch float64, outputs poisoned (conftest)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import convroute  # noqa: E402
from test_conv1d import check, dtype  # noqa: E402, F401 (dtype: the fixture)

pytestmark = pytest.mark.gpu


class UnitDepthConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.same = nn.Conv3d(2, 6, (3, 3, 1), padding=(1, 1, 0))
        self.strided = nn.Conv3d(6, 4, (3, 5, 1), stride=(2, 1, 1), padding=(2, 4, 0), dilation=(2, 2, 1),
                                 groups=2, bias=False)
        self.lambda_like = nn.Conv3d(1, 5, (5, 5, 1), padding=(2, 2, 0))

    def forward(self, x, v):
        return self.strided(torch.relu(self.same(x))), self.lambda_like(v)


@pytest.mark.parametrize("policy", ["seed", "autotune"])
def test_unit_depth_conv3d_runs_as_a_2d_conv(dtype, policy):  # noqa: F811 (the fixture)
    torch.manual_seed(0)
    inputs = (torch.randn(2, 2, 5, 7, 4), torch.randn(1, 1, 6, 6, 16))
    program = check(UnitDepthConvs().eval(), inputs, dtype, policy)
    dilations = sorted(tuple(s.op.params.dilation) for s in program.plan.gpu_steps if s.op.params is not None)
    assert dilations == [(1, 4), (1, 16), (2, 8)], dilations  # H taps dilated by W


def test_other_3d_convs_stay_on_the_cpu_and_say_why():
    model = nn.Conv3d(2, 3, 3, padding=1).eval()
    x = torch.randn(1, 2, 4, 5, 6)
    with pytest.warns(UserWarning, match="CPU"):
        program = convroute.compile(model, (x,))
    [(_, op, why)] = program.summary().cpu_ops
    assert op == "convolution" and "kernel of 1 along its last axis" in why
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)

"""A conv's output scaled by a constant per channel (a layer scale: ConvNeXt's gamma) folds into the conv's
weights (frontend/fuse.fold_layer_scales), so the residual add after it fuses into the conv's store. Each small
model matches the float64 torch reference in fp32 and fp16 with CONVROUTE_LAYER_SCALE on and off; scales that do
not run along the channels alone stay apart."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = pytest.mark.gpu


class ScaledBlock(nn.Module):
    """depthwise 3x3 -> 1x1 (relu) -> 1x1 -> scaled (`how`) -> + x, as a ConvNeXt block on NCHW."""

    def __init__(self, how: str, c: int = 8):
        super().__init__()
        self.how = how
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.up, self.down = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)
        shapes = {"gamma": (c, 1, 1), "gamma_first": (1, c, 1, 1), "one_value": (1,), "spatial": (1, 1, 6, 6)}
        self.gamma = nn.Parameter(torch.rand(shapes.get(self.how, (1,))) + 0.5)

    def forward(self, x):
        y = self.down(torch.relu(self.up(self.dw(x))))
        if self.how == "gamma_first":
            y = self.gamma * y
        elif self.how == "divided":
            y = y / 3.0
        else:
            y = y * self.gamma
        return y + x


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("how,folds", [("gamma", True), ("gamma_first", True), ("one_value", True),
                                       ("divided", True), ("spatial", False)])
def test_layer_scale_folds_into_the_conv(how, folds, dtype, monkeypatch):
    torch.manual_seed(0)
    model = ScaledBlock(how).eval()
    x = torch.randn(2, 8, 6, 6)
    ref = reference(model, x)
    dispatches = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("CONVROUTE_LAYER_SCALE", flag)
        program = convroute.compile(model, (x,), dtype=dtype)
        assert rel_error(program(x), ref) < TOLERANCES[dtype]
        summary = program.summary()
        dispatches[flag] = summary.dispatches
        folded = [f for f in summary.fused if "layer scale" in f]
        assert len(folded) == (flag == "1" and folds), summary.fused
    # folded, the scale's dispatch goes and the residual add joins the conv's store where its algorithm allows
    assert dispatches["0"] - dispatches["1"] >= (1 if folds else 0)
    assert folds or dispatches["0"] == dispatches["1"]

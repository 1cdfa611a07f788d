"""x * s + t with numbers or per-channel constants runs as one eval batch norm (fuse.fold_affine_pairs):
HGNetV2's learnable affine block after an activation, a division and a subtraction, per-channel and scalar
constants, in fp32 and fp16, against the float64 torch reference with the pass on and off
(CONVROUTE_AFFINE_PAIRS); a scale that a conv can take still goes into the conv, and pairs whose mul has another
reader or whose scale broadcasts x stay."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from test_siblings import check_pass  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("small_direct_tile")]


class Affine(nn.Module):
    """conv -> relu -> `form` of the relu's output with a scale and a shift, then a 1x1 conv."""

    def __init__(self, form="lab", channels=6):
        super().__init__()
        self.form = form
        self.conv, self.head = nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(channels, 4, 1)
        per_channel = form in ("per_channel", "divided")
        shape = (channels, 1, 1) if per_channel else (1,)
        self.scale = nn.Parameter(torch.rand(shape) + 0.5)
        self.shift = nn.Parameter(torch.rand(shape) - 0.5)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.form == "lab":
            y = self.scale * y + self.shift
        elif self.form == "per_channel":
            y = self.shift + y * self.scale
        elif self.form == "divided":
            y = F.relu(y / self.scale - self.shift)
        elif self.form == "numbers":
            y = y * 0.5 + 2.0
        return self.head(y)


def check(model, x, merges, monkeypatch, dtype="float32"):
    return check_pass("CONVROUTE_AFFINE_PAIRS", "as one affine", model, x, merges, monkeypatch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("form", ["lab", "per_channel", "divided", "numbers"])
def test_scale_and_shift_run_as_one_batch_norm(form, dtype, monkeypatch):
    torch.manual_seed(0)
    ops = check(Affine(form), torch.randn(2, 3, 7, 9), 1, monkeypatch, dtype)
    assert ops == ["convolution", "batch_norm_eval", "convolution"], ops


class ScaledConv(Affine):
    """The scale follows a conv without an activation: the layer-scale fold takes it, the shift stays an add
    (which a residual-capable conv may not take either: it is a constant, not a tensor of the output's shape)."""

    def forward(self, x):
        return self.head(self.conv(x) * self.scale + self.shift)


class TwoReaders(Affine):
    def forward(self, x):
        y = F.relu(self.conv(x)) * self.scale
        return self.head(y + self.shift) + y.mean()


class Broadcast(nn.Module):
    """x has one channel, the scale six: the product broadcasts x, which a batch norm of x cannot."""

    def __init__(self):
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 1, 3, padding=1), nn.Parameter(torch.rand(6, 1, 1) + 0.5)

    def forward(self, x):
        return F.relu(self.conv(x)) * self.scale + 1.0


@pytest.mark.parametrize("model", [ScaledConv("lab"), TwoReaders("lab"), Broadcast()],
                         ids=["scale into the conv", "two readers", "broadcast"])
def test_pairs_that_cannot_fold_stay(model, monkeypatch):
    torch.manual_seed(0)
    assert "batch_norm_eval" not in check(model, torch.randn(1, 3, 6, 5), 0, monkeypatch)

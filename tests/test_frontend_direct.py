"""The direct translation of torch.export's graph (no decomposition re-trace) applies only where exact: an
in-place op that writes through a view (export leaves the viewed value's later reads as they are) sends the
model down the decomposing path; either way the compiled model matches torch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import convroute  # noqa: E402
from convroute.frontend import direct  # noqa: E402

pytestmark = pytest.mark.gpu


class ReadAfterWrite(nn.Module):
    """relu_ on a value read again afterwards: export already points the later read at relu_'s result."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        a = self.conv(x)
        b = a.relu_()
        return a + 2 * b


class WriteThroughView(nn.Module):
    """relu_ on a view: the viewed value changes too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        a = self.conv(x)
        a.flatten(1).relu_()
        return a * 3


class Block(nn.Module):
    """A residual block as torchvision writes it (in-place relu, in-place add, eval batch norm, dropout)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5, inplace=True)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.drop(self.relu(out))


@pytest.mark.parametrize("model, exact", [(ReadAfterWrite(), True), (WriteThroughView(), False), (Block(), True)])
def test_direct_translation_only_where_exact(model, exact):
    torch.manual_seed(0)
    model = model.eval()
    channels = 4 if isinstance(model, Block) else 3
    x = torch.randn(2, channels, 7, 9)
    ep = torch.export.export(model, (x,))
    assert (direct.translate(ep) is not None) == exact
    with torch.no_grad():
        want = model(x.clone())
    got = convroute.compile(model, (x,))(x)
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5

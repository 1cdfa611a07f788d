"""A concat read only through reshapes and one permute runs as one dispatch over the concat's inputs
(frontend/concat_view.py, kernels.concat.ConcatView): ShuffleNet's channel shuffle and other permutes of a
concat, against torch in float64 in fp32 and fp16 (outputs NaN-poisoned, conftest), with the pass on and off;
where the concat has another reader nothing changes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.kernels.common import F16_FEATURE  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = pytest.mark.gpu


class Shuffle(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, the other half through a conv, concat, channel shuffle."""

    def __init__(self, c=16, groups=2, leak=False):
        super().__init__()
        self.groups, self.leak = groups, leak
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.branch = nn.Conv2d(c // 2, c // 2, 1)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([a, F.relu(self.branch(b))], 1)
        n, c, h, w = y.shape
        z = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        out = self.head(z)
        return out + y.mean() if self.leak else out


class Permuted(nn.Module):
    """Two convs of different inputs and the model's input concatenated, then a permute of a 5-D view (no
    reshape after it)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(F.relu(x)), x], 1)
        n, c, h, w = y.shape
        return y.view(n, 4, c // 4, h, w).permute(0, 3, 2, 4, 1) * 2.0


def run(model, x, dtype, on: bool, monkeypatch):
    if dtype == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("no shader-f16")
    monkeypatch.setenv("CONVROUTE_CONCAT_VIEW", "1" if on else "0")
    program = convroute.compile(model, (x,), dtype=dtype)
    return program(x), program.summary()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("model,batch,size", [(Shuffle(), 1, 9), (Shuffle(c=24, groups=3), 2, 6),
                                              (Permuted(), 1, 5), (Permuted(), 3, 4)])
def test_concat_then_permute_in_one_dispatch(model, batch, size, dtype, monkeypatch):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(batch, 3, size, size)
    ref = reference(model, x)
    fused, summary = run(model, x, dtype, True, monkeypatch)
    plain, plain_summary = run(model, x, dtype, False, monkeypatch)
    assert rel_error(fused, ref) < TOLERANCES[dtype]
    assert rel_error(plain, ref) < TOLERANCES[dtype]
    assert summary.gpu_ops.get("concat_view") == 1 and "cat" not in summary.gpu_ops, summary.gpu_ops
    assert not summary.cpu_ops
    assert summary.dispatches < plain_summary.dispatches


def test_concat_with_another_reader_stays(monkeypatch):
    torch.manual_seed(0)
    model = Shuffle(leak=True).eval()
    x = torch.randn(1, 3, 8, 8)
    out, summary = run(model, x, "float32", True, monkeypatch)
    assert rel_error(out, reference(model, x)) < TOLERANCES["float32"]
    assert "concat_view" not in summary.gpu_ops

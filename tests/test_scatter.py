"""index_put by indices known at compile time runs on the GPU as one ScatterAdd gather (lower.lower_index_put):
torch's fold (VOLO's outlook attention), index_put with and without accumulate over a constant or a run-time
base, against torch in float64 in fp32 and fp16 (outputs NaN-poisoned, conftest). An index_put that writes an
element twice without accumulate stays on the CPU, saying why."""

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


class Fold(nn.Module):
    """A conv, unfold into 3x3 patches (stride 2, padding 1), scale them, fold back: overlapping patches add."""

    def __init__(self, size):
        super().__init__()
        self.size, self.conv = size, nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        cols = F.unfold(self.conv(x), 3, padding=1, stride=2)
        return F.fold(cols * 0.5, self.size, 3, padding=1, stride=2)


class Put(nn.Module):
    """index_put on a constant zeros (accumulate, repeated indices) and on a run-time tensor (no repeats)."""

    def __init__(self, accumulate):
        super().__init__()
        self.accumulate = accumulate
        self.conv = nn.Conv2d(3, 6, 1)
        self.register_buffer("rows", torch.tensor([0, 2, 2, 5, 1] if accumulate else [0, 2, 5, 1]))

    def forward(self, x):
        y = self.conv(x)
        n = self.rows.numel()
        values = y[:, :n].permute(1, 0, 2, 3)  # one row of values per index
        if self.accumulate:
            return y.new_zeros(6, *y.shape[:1], *y.shape[2:]).index_put((self.rows,), values, accumulate=True)
        return y.permute(1, 0, 2, 3).index_put((self.rows,), values * 2.0)


def compiled(model, x, dtype):
    if dtype == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("no shader-f16")
    program = convroute.compile(model, (x,), dtype=dtype)
    return program(x), program.summary()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("model,batch,size", [(Fold(9), 1, 9), (Fold(8), 2, 8), (Put(True), 1, 5),
                                              (Put(False), 2, 4)])
def test_index_put_on_the_gpu(model, batch, size, dtype):
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(batch, 3, size, size)
    out, summary = compiled(model, x, dtype)
    assert rel_error(out, reference(model, x)) < TOLERANCES[dtype]
    assert not summary.cpu_ops, summary.cpu_ops
    assert summary.gpu_ops.get("index_put") == 1, summary.gpu_ops


def test_a_put_that_writes_twice_without_accumulate_stays_on_the_cpu():
    class Twice(Put):
        def forward(self, x):
            y = self.conv(x)
            return y.permute(1, 0, 2, 3).index_put((torch.tensor([1, 1]),), y[:, :2].permute(1, 0, 2, 3))

    torch.manual_seed(0)
    model = Twice(False).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.warns(UserWarning):
        out, summary = compiled(model, x, "float32")
    assert [why for _, op, why in summary.cpu_ops if op == "index_put"] == \
        ["it writes an element twice without accumulate (which value lands is undefined)"]

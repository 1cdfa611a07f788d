"""Sibling convs joined by a channel concat run as one conv (frontend/siblings.py): convs of one input (two
3x3s; a fire module's 1x1 and 3x3 and dilated kernels of two sizes where the dense growth limit allows) and
depthwise or grouped convs of consecutive channel slices (MixNet's mixed kernels). Each model matches the float64
torch reference with the pass on and off (CONVROUTE_MERGE_SIBLINGS; buffers NaN-poisoned before each run,
conftest), with fewer dispatches when merged; convs that cannot merge (a dense 1x1 beside a 3x3 by default,
unequal groups, another reader, a kernel far larger than the rest) stay as they were."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from convroute.frontend import siblings  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("small_direct_tile")]


class Fire(nn.Module):
    """A squeeze 1x1, then `kernels` expand convs of its output (padding keeps the size), relu, concat."""

    def __init__(self, kernels=((1, 0, 1), (3, 1, 1)), widths=(12, 12), stride=(1, 1), bias=(True, True)):
        super().__init__()
        self.squeeze = nn.Conv2d(3, 8, 1)
        self.expand = nn.ModuleList(nn.Conv2d(8, w, k, stride=s, padding=p, dilation=d, bias=b)
                                    for (k, p, d), w, s, b in zip(kernels, widths, stride, bias, strict=True))

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(conv(x)) for conv in self.expand], 1) * 0.5


class Mixed(nn.Module):
    """A 1x1 to `sum(chunks)` channels, split into chunks, a depthwise (or grouped) conv per chunk with its own
    kernel, concat, batch norm, silu."""

    def __init__(self, chunks=(6, 6, 4), kernels=(3, 5, 7), groups_per_chunk=None):
        super().__init__()
        self.chunks = list(chunks)
        self.stem = nn.Conv2d(3, sum(chunks), 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding=k // 2, groups=c if groups_per_chunk is None else groups_per_chunk,
                      bias=False) for c, k in zip(chunks, kernels, strict=True))
        self.bn = nn.BatchNorm2d(sum(chunks))
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        parts = torch.split(self.stem(x), self.chunks, 1)
        return F.silu(self.bn(torch.cat([conv(p) for conv, p in zip(self.convs, parts, strict=True)], 1)))


def compiled(flag: str, note: str, model, x, on: bool, monkeypatch, dtype="float32"):
    monkeypatch.setenv(flag, "1" if on else "0")
    program = convroute.compile(model, (x,), dtype=dtype)
    merged = [n for s in program.plan.gpu_steps for n in s.node.notes if note in n]
    return program(x), program.summary(), merged, [s.node.op for s in program.plan.gpu_steps]


def check_pass(flag: str, note: str, model, x, merges: int, monkeypatch, dtype="float32") -> list[str]:
    """A merging graph pass on (`flag` 1) and off: both match torch, on has `merges` notes containing `note` and
    fewer dispatches (the same where `merges` is 0), no CPU ops; the GPU steps' ops with it on."""
    torch.manual_seed(1)
    model = model.eval()
    ref = reference(model, x)
    out, summary, merged, ops = compiled(flag, note, model, x, True, monkeypatch, dtype)
    plain, plain_summary, none, _ = compiled(flag, note, model, x, False, monkeypatch, dtype)
    assert rel_error(out, ref) < TOLERANCES[dtype] and rel_error(plain, ref) < TOLERANCES[dtype]
    assert not none and len(merged) == merges, merged
    assert not summary.cpu_ops
    if merges:
        assert summary.dispatches < plain_summary.dispatches
    else:
        assert summary.dispatches == plain_summary.dispatches
    return ops


def check(model, x, merges: int, monkeypatch, dtype="float32"):
    check_pass("CONVROUTE_MERGE_SIBLINGS", "sibling convs", model, x, merges, monkeypatch, dtype)


SAME_KERNEL = ((3, 1, 1), (3, 1, 1))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch,size", [(1, 9), (2, 16)])
def test_same_input_convs_of_one_kernel_size_merge(batch, size, dtype, monkeypatch):
    torch.manual_seed(0)
    check(Fire(SAME_KERNEL, (12, 5), bias=(True, False)), torch.randn(batch, 3, size, size), 1, monkeypatch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fire_expand_1x1_and_3x3_merge_only_where_dense_growth_is_allowed(dtype, monkeypatch):
    """Zero taps in a dense conv cost arithmetic: by default the fire expand stays two convs; the merge itself
    (the 1x1's taps at the 3x3's centre) is right where the limit allows it."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    check(Fire(bias=(True, False)), x, 0, monkeypatch, dtype)
    monkeypatch.setattr(siblings, "MAX_DENSE_GROWTH", siblings.MAX_GROWTH)
    check(Fire(bias=(True, False)), x, 1, monkeypatch, dtype)


def test_dilated_kernels_of_two_sizes_merge(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(siblings, "MAX_DENSE_GROWTH", siblings.MAX_GROWTH)
    model = Fire(kernels=((3, 2, 2), (5, 4, 2), (1, 0, 2)), widths=(5, 7, 4), stride=(2, 2, 2), bias=(1, 1, 1))
    check(model, torch.randn(1, 3, 13, 11), 1, monkeypatch)


@pytest.mark.parametrize("kernels,chunks", [((3, 5, 7), (6, 6, 4)), ((3, 5), (8, 8))])
def test_mixed_depthwise_kernels_merge(kernels, chunks, monkeypatch):
    torch.manual_seed(0)
    check(Mixed(chunks, kernels), torch.randn(1, 3, 12, 10), 1, monkeypatch)


def test_grouped_convs_of_equal_slices_merge(monkeypatch):
    torch.manual_seed(0)
    check(Mixed((8, 8), (1, 3), groups_per_chunk=2), torch.randn(2, 3, 7, 7), 1, monkeypatch)


def test_grouped_convs_of_unequal_groups_stay(monkeypatch):
    torch.manual_seed(0)
    check(Mixed((8, 4), (3, 3), groups_per_chunk=2), torch.randn(1, 3, 7, 7), 0, monkeypatch)


def test_kernel_far_larger_than_the_rest_stays(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(siblings, "MAX_DENSE_GROWTH", siblings.MAX_GROWTH)
    model = Fire(kernels=((1, 0, 1), (7, 3, 1)), widths=(32, 2))  # padded to 7x7 the 1x1s would do 49x the work
    check(model, torch.randn(1, 3, 8, 8), 0, monkeypatch)


class Leaky(Fire):
    """The 3x3 expand's result is read again after the concat: it cannot merge away."""

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        a, b = (F.relu(conv(x)) for conv in self.expand)
        return torch.cat([a, b], 1).sum(1, keepdim=True) + b


def test_conv_with_another_reader_stays(monkeypatch):
    torch.manual_seed(0)
    check(Leaky(SAME_KERNEL), torch.randn(1, 3, 8, 8), 0, monkeypatch)


class FromTheEnd(nn.Module):
    """Depthwise convs of x[:, :8] and x[:, -8:]: a slice counted from the end is left alone."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 5, padding=2, groups=8)

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.a(x[:, :8]), self.b(x[:, -8:])], 1)


def test_slices_counted_from_the_end_stay(monkeypatch):
    torch.manual_seed(0)
    check(FromTheEnd(), torch.randn(1, 3, 6, 6), 0, monkeypatch)

"""Convs of one input whose results are added run as one conv (frontend/summed_convs.py): RepVGG's training-form
block (kxk conv + batch norm, 1x1 conv + batch norm, identity batch norm, summed, relu), MobileOne's depthwise
form, dilated and strided kernels. Each model matches the float64 torch reference with the pass on and off
(CONVROUTE_SUMMED_CONVS; buffers NaN-poisoned before each run, conftest), with fewer dispatches when merged; sums
that cannot merge (terms of different inputs, a term read again, a term that is no conv) stay as they were."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from test_siblings import check_pass  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("small_direct_tile")]


def settled(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


class RepBlock(nn.Module):
    """A stem conv, then `kernels` branches (kernel, padding, dilation) each a conv + batch norm of the stem's
    output, plus an identity batch norm when `identity`, summed, relu."""

    def __init__(self, channels=8, kernels=((3, 1, 1), (1, 0, 1)), identity=True, groups=1, stride=1):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, k, stride=stride, padding=p, dilation=d, groups=groups,
                                    bias=False), settled(nn.BatchNorm2d(channels)))
            for k, p, d in kernels)
        self.identity = settled(nn.BatchNorm2d(channels)) if identity else None

    def forward(self, x):
        x = self.stem(x)
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return F.relu(out)


def check(model, x, merges: int, monkeypatch, dtype="float32") -> list[str]:
    """`merges`: terms summed into another conv (a block of k terms has k - 1)."""
    return check_pass("CONVROUTE_SUMMED_CONVS", "into one conv", model, x, merges, monkeypatch, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("batch,size", [(1, 9), (2, 12)])
def test_repvgg_block_becomes_one_conv(batch, size, dtype, monkeypatch):
    torch.manual_seed(0)
    ops = check(RepBlock(), torch.randn(batch, 3, size, size), 2, monkeypatch, dtype)
    assert ops == ["convolution", "convolution"], ops  # the stem and the block: no add, no batch norm, no relu


def test_mobileone_depthwise_block_becomes_one_depthwise_conv(monkeypatch):
    torch.manual_seed(0)
    block = RepBlock(channels=8, kernels=((3, 1, 1), (3, 1, 1), (1, 0, 1)), groups=8)
    assert check(block, torch.randn(1, 3, 10, 11), 3, monkeypatch) == ["convolution", "convolution"]


def test_repghost_identity_batch_norm_adds_into_the_cheap_depthwise_conv(monkeypatch):
    from test_frontend import TwoBatchNorms

    torch.manual_seed(0)
    assert "batch_norm_eval" not in check(TwoBatchNorms(), torch.randn(1, 4, 8, 8), 1, monkeypatch)


def test_dilated_kernel_and_a_1x1_merge(monkeypatch):
    torch.manual_seed(0)
    check(RepBlock(kernels=((3, 2, 2), (1, 0, 1)), identity=False), torch.randn(1, 3, 11, 9), 1, monkeypatch)


def test_strided_convs_merge_without_an_identity(monkeypatch):
    torch.manual_seed(0)
    block = RepBlock(kernels=((3, 1, 1), (1, 0, 1)), identity=False, stride=2)
    check(block, torch.randn(1, 3, 11, 10), 1, monkeypatch)


class MobileOneSum(RepBlock):
    """MobileOne's sum starts from a literal 0 (`scale_out = 0` without a 1x1 branch): the neutral add goes at
    export, and the branches then merge."""

    def forward(self, x):
        x = self.stem(x)
        out = 0 + self.identity(x)
        for branch in self.branches:
            out = out + branch(x)
        return F.relu(out)


def test_a_sum_started_from_zero_merges(monkeypatch):
    torch.manual_seed(0)
    block = MobileOneSum(kernels=((3, 1, 1), (3, 1, 1)), groups=8)
    assert check(block, torch.randn(1, 3, 9, 8), 2, monkeypatch) == ["convolution", "convolution"]


class RepMixer(nn.Module):
    """FastViT's token mixer: x + scale * (mixer(x) - norm(x)), mixer a depthwise conv + batch norm, then a
    depthwise conv: the difference, the layer scale and the input itself all go into one depthwise conv."""

    def __init__(self, channels=8):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.mixer = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                   settled(nn.BatchNorm2d(channels)))
        self.norm = settled(nn.BatchNorm2d(channels))
        self.scale = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)
        self.tail = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.scale * (self.mixer(x) - self.norm(x))
        return self.tail(x)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_repmixer_difference_scale_and_input_become_one_conv(dtype, monkeypatch):
    torch.manual_seed(0)
    ops = check(RepMixer(), torch.randn(1, 3, 10, 9), 2, monkeypatch, dtype)
    assert ops == ["convolution"] * 3, ops


class RepViTMixer(nn.Module):
    """RepViT's token mixer: norm(conv(x) + conv1(x) + x) of depthwise convs, then a conv -> relu -> batch norm
    whose norm may not fold (the relu sits between)."""

    def __init__(self, channels=8):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                  settled(nn.BatchNorm2d(channels)))
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.norm = settled(nn.BatchNorm2d(channels))
        self.tail, self.tail_norm = nn.Conv2d(channels, 4, 1), settled(nn.BatchNorm2d(4))

    def forward(self, x):
        x = self.stem(x)
        x = self.norm(self.conv(x) + self.conv1(x) + x)
        return self.tail_norm(F.relu(self.tail(x)))


def test_a_batch_norm_after_the_sum_folds_into_the_merged_conv(monkeypatch):
    torch.manual_seed(0)
    ops = check(RepViTMixer(), torch.randn(1, 3, 9, 10), 2, monkeypatch)
    assert ops == ["convolution", "convolution", "convolution", "batch_norm_eval"], ops


class Shortcut(nn.Module):
    """ResNet's add: a conv of the block's output plus a conv of its input: two inputs, nothing to merge."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.skip = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(3, 6, 1)

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class ReadTwice(RepBlock):
    """The 3x3 branch is read again after the sum: it cannot merge away."""

    def forward(self, x):
        x = self.stem(x)
        three = self.branches[0](x)
        return F.relu(three + self.branches[1](x)) * three


@pytest.mark.parametrize("model", [Shortcut(), ReadTwice(identity=False)], ids=["shortcut", "read twice"])
def test_sums_that_cannot_merge_stay(model, monkeypatch):
    torch.manual_seed(0)
    check(model, torch.randn(1, 3, 8, 9), 0, monkeypatch)


def test_strided_kernels_of_two_sizes_merge_and_a_pooled_term_stays(monkeypatch):
    class Strides(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 5, stride=2, padding=2)
            self.c = nn.Conv2d(3, 4, 3, stride=1, padding=1)

        def forward(self, x):
            return self.a(x) + self.b(x) + F.max_pool2d(self.c(x), 2, ceil_mode=True)

    torch.manual_seed(0)
    check(Strides(), torch.randn(1, 3, 9, 9), 1, monkeypatch)  # a and b merge; the pooled stride-1 conv stays

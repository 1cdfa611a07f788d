"""torch.bmm on the GPU (kernels/bmm.py through frontend/lower.lower_bmm): random shapes against torch in float64
with poisoned outputs, a hybrid model's attention and a constant operand. CONVROUTE_BMM_FUZZ=N: random shapes
per dtype (default 6)."""

from __future__ import annotations

import os
import random

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402
from test_frontend import reference, rel_error  # noqa: E402

pytestmark = pytest.mark.gpu

CASES = int(os.environ.get("CONVROUTE_BMM_FUZZ", "6"))
SEED = int(os.environ.get("CONVROUTE_FUZZ_SEED") or random.SystemRandom().randrange(1 << 31))
EDGES = [(1, 1, 1, 1), (2, 5, 3, 7), (3, 4, 64, 4), (1, 49, 16, 49), (8, 16, 196, 17)]


class Bmm(nn.Module):
    def forward(self, a, c):
        return torch.bmm(a * 1.5, c)


class Attention(nn.Module):
    """An attention block as hybrid CNNs write it: q, k, v from a 1x1 conv, matmuls over the heads."""

    def __init__(self, channels=16, heads=2):
        super().__init__()
        self.heads, self.qkv = heads, nn.Conv2d(channels, 3 * channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b * self.heads, 3, c // self.heads, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k * (c // self.heads) ** -0.5, dim=-1)
        return (v @ attn.transpose(1, 2)).reshape(b, c, h, w) + x


class ScaledDotProduct(nn.Module):
    """F.scaled_dot_product_attention, whose export guards rows of all -inf scores (a fully masked query gives 0):
    `mask` (constant) masks every key of query 0."""

    def __init__(self, masked: bool):
        super().__init__()
        self.qkv = nn.Conv2d(8, 24, 1)
        mask = torch.ones(20, 20, dtype=torch.bool)
        mask[0] = False
        self.register_buffer("mask", mask if masked else None)

    def forward(self, x):
        q, k, v = self.qkv(x).flatten(2).transpose(1, 2).reshape(1, 20, 3, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask).transpose(1, 2).reshape(1, 20, 8)


class ConstantOperand(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(3, 6, 5))

    def forward(self, x):
        return torch.bmm(x, self.table)


def shapes() -> list[tuple[int, int, int, int]]:
    rng = random.Random(SEED)
    return EDGES + [tuple(rng.randint(1, top) for top in (6, 70, 90, 70)) for _ in range(CASES)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bmm_matches_torch(dtype, monkeypatch):
    print(f"bmm {dtype}: replay with CONVROUTE_FUZZ_SEED={SEED}")
    wrong = []
    for batch, m, k, n in shapes():
        a, c = torch.randn(batch, m, k), torch.randn(batch, k, n)
        program = convroute.compile(Bmm(), (a, c), dtype=dtype)
        assert not program.summary().cpu_ops
        error = rel_error(program(a, c), reference(Bmm(), a, c))
        if not error < TOLERANCES[dtype]:
            wrong.append(((batch, m, k, n), error))
    print(f"bmm {dtype}: {len(shapes())} cases, {len(wrong)} wrong")
    assert not wrong, wrong


def test_attention_runs_on_the_gpu(monkeypatch):
    torch.manual_seed(0)
    model, x = Attention().eval(), torch.randn(2, 16, 5, 6)
    program = convroute.compile(model, (x,))
    assert not program.summary().cpu_ops
    assert program.summary().gpu_ops["bmm"] == 2
    assert rel_error(program(x), reference(model, x)) < TOLERANCES["float32"]


@pytest.mark.parametrize("masked", [False, True])
def test_scaled_dot_product_attention_runs_on_the_gpu(masked, monkeypatch):
    torch.manual_seed(0)
    model, x = ScaledDotProduct(masked).eval(), torch.randn(1, 8, 4, 5)
    program = convroute.compile(model, (x,))
    assert not program.summary().cpu_ops, program.summary()
    out, want = program(x), reference(model, x)
    assert rel_error(out, want) < TOLERANCES["float32"]
    if masked:
        assert torch.all(want[0, 0] == 0) and torch.all(out[0, 0] == 0)  # the fully masked query


def test_a_constant_operand(monkeypatch):
    torch.manual_seed(0)
    model, x = ConstantOperand().eval(), torch.randn(3, 4, 6)
    program = convroute.compile(model, (x,))
    assert not program.summary().cpu_ops
    assert rel_error(program(x), reference(model, x)) < TOLERANCES["float32"]


class Mm(nn.Module):
    """torch.mm of two run-time matrices (timm csatv2's attention), and of one against a constant."""

    def __init__(self, n: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(n, 3))

    def forward(self, a, c):
        return torch.mm(torch.mm(a, c * 0.5), self.table)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 3, 7), (49, 16, 49), (64, 130, 33)])
def test_mm_of_run_time_matrices(dtype, m, k, n, monkeypatch):
    torch.manual_seed(m + k + n)
    model, a, c = Mm(n).eval(), torch.randn(m, k), torch.randn(k, n)
    program = convroute.compile(model, (a, c), dtype=dtype)
    summary = program.summary()
    assert not summary.cpu_ops and summary.gpu_ops.get("mm") == 2, summary
    assert rel_error(program(a, c), reference(model, a, c)) < TOLERANCES[dtype]

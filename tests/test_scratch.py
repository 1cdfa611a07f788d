"""Scratch buffers (column matrices, partial sums, Winograd's V and Mx) belong to the prepared kernel: binds
share them, growing them for a larger batch, and binds recorded back to back still give the right results."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute.device.gpu import Gpu, get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import Epilogue
from convroute.params import make_params

# Few output blocks and many input channels: with a busy device wanted, every algorithm here uses scratch
# (im2col: column matrix and split-K partial sums; direct: partial sums; winograd2: V and Mx).
P = make_params((3, 40, 6, 6), (9, 40, 3, 3), 1, 1)  # 72 and 108 GEMM columns: one GEMM tile
ALGOS = ("im2col", "direct", "winograd2")


@pytest.fixture(autouse=True)
def busy_workgroup_style(monkeypatch):
    """The workgroup variants (what GPUs run) with K / input channels split across workgroups."""
    monkeypatch.setenv("CONVROUTE_BUSY_WORKGROUPS", "256")
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))


def prepared(name):
    x, w, b = random_inputs(P, np.random.default_rng(7))
    return ALGORITHMS[name](get_gpu(), P, w, b, Epilogue.parse("relu")), x, w, b


@pytest.mark.parametrize("name", ALGOS)
def test_binds_share_scratch_and_grow_it(monkeypatch, name):
    made = Counter()
    empty = Gpu.empty

    def counting(self, nbytes, what="tensor"):
        made[what] += 1
        return empty(self, nbytes, what)

    kernel, *_ = prepared(name)
    gpu = kernel.gpu
    ins = [gpu.empty(4 * 3 * 40 * 6 * 6, "input") for _ in range(3)]
    out = gpu.empty(4 * 3 * 9 * 6 * 6, "output")
    monkeypatch.setattr(Gpu, "empty", counting)
    monkeypatch.setattr(Gpu, "dispatch", lambda self, source, buffers, threads, workgroup, constants=None: None)
    for x_buf, n in zip(ins, (2, 2, 1), strict=True):
        kernel.bind(x_buf, out, n)
    scratch = {what: count for what, count in made.items()}
    assert scratch and all(count == 1 for count in scratch.values()), scratch
    kernel.bind(ins[0], out, 3)  # a larger batch grows the buffers that depend on it, once
    assert all(made[what] <= 2 for what in scratch), dict(made)
    kernel.bind(ins[1], out, 3)
    assert sum(made.values()) == sum(made[what] for what in scratch) <= 2 * len(scratch), dict(made)


@pytest.mark.parametrize("name", ALGOS)
def test_binds_recorded_back_to_back(name, k_splits):
    """Three binds of one kernel in one submission, the second reusing the first's scratch, the third
    growing it: each output matches the reference."""
    kernel, x, w, b = prepared(name)
    if name == "im2col":
        assert kernel.gemm.plan(2 * P.ho * P.wo)[1] > 1, "the case should split K"
    if name == "direct":
        assert kernel.plan(2).splits > 1, "the case should split the input channels"
    gpu = kernel.gpu
    dispatches, outs = [], []
    for n in (2, 2, 3):
        y_buf = gpu.empty(4 * n * 9 * P.ho * P.wo, "output")
        gpu.fill(y_buf, np.nan)
        dispatches += kernel.bind(gpu.upload(x[:n]), y_buf, n)
        outs.append((n, y_buf))
    gpu.run(dispatches)
    for n, y_buf in outs:
        p = P.with_batch(n)
        y = gpu.read(y_buf, p.output_shape)
        assert_matches(y, reference(p, x[:n], w, b, "relu"), f"{name} bind of batch {n}")


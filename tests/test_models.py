"""The smallest variant of every torchvision CNN family and the three segmentation models, compiled whole at a
reduced input size (each model's minimum, 32-75 px) and batch 2: relative error < 1e-4 against torch float32
on the CPU, and nothing on the CPU fallback (every conv, view, permute, slice, pad, cat on the GPU).
tools/check_models.py runs every variant at full size on a real GPU. One export per model (torch.export is
most of the time: ~3 s each)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from convroute.frontend import zoo  # noqa: E402 (before torchvision: see convroute.frontend)

pytest.importorskip("torchvision")
import convroute  # noqa: E402

pytestmark = pytest.mark.gpu
BATCH = 2


@pytest.mark.parametrize("name", zoo.SMALLEST)
def test_model_runs_whole_on_the_gpu_and_matches_torch(name):
    size = zoo.min_size(name)
    model = zoo.build(name)
    x = torch.randn(BATCH, 3, size, size)
    program = convroute.compile(model, (x,))
    row = zoo.check(program, model, x, name)
    s = program.summary()
    assert row.rel_err < zoo.TOLERANCE, f"{name}: relative error {row.rel_err:.3g}"
    assert s.cpu_ops == [], f"{name}: ops on the CPU fallback:\n{s}"
    assert s.convs > 0 and s.convs_on_gpu == s.convs and s.conv_gpu_share == 1.0 and s.gpu_share == 1.0
    assert s.submits == 1
    assert row.passed

"""Layout ops on the GPU: the strided-copy kernel (any view of a dense tensor, constant padding) against numpy,
and in compiled models: channel shuffle (a view after a transpose), permute + layer norm (ConvNeXt), slices with
steps, select, expand, chunk/unbind, pad (growing and cropping), cat; nothing on the CPU fallback. A node that
fails to compile raises one line naming it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.frontend import CompileError, lower  # noqa: E402
from convroute.kernels import layout  # noqa: E402
from convroute.kernels.layout import StridedCopy  # noqa: E402

pytestmark = pytest.mark.gpu


def run_copy(x: np.ndarray, kernel: StridedCopy, out_shape) -> np.ndarray:
    gpu = get_gpu()
    y = gpu.empty(4 * int(np.prod(out_shape)))
    gpu.fill(y, np.nan)
    return gpu.run_and_read(kernel.bind(gpu.upload(x.reshape(-1)), y), y, tuple(out_shape))


@pytest.mark.parametrize("cpu_form", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_strided_copy_matches_numpy_views(seed, cpu_form, monkeypatch):
    """Both forms on any adapter: per element (GPUs), per (row, strip) (CPU adapters, without padding)."""
    monkeypatch.setattr(layout, "cpu_form", lambda gpu: cpu_form)
    rng = np.random.default_rng(seed)
    rank = 1 + seed % 6
    shape = tuple(int(s) for s in rng.integers(1, 5, rank))
    x = rng.standard_normal(shape).astype(np.float32)
    view = np.transpose(x, rng.permutation(rank))
    starts = [int(rng.integers(0, s)) for s in view.shape]
    steps = [int(rng.integers(1, 3)) for _ in view.shape]
    view = view[tuple(slice(a, None, b) for a, b in zip(starts, steps, strict=True))]
    strides = [s // 4 for s in view.strides]
    offset = (view.__array_interface__["data"][0] - x.__array_interface__["data"][0]) // 4
    got = run_copy(x, StridedCopy(get_gpu(), view.shape, strides, offset), view.shape)
    np.testing.assert_array_equal(got, view)


def test_strided_copy_pads_and_broadcasts():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    # rows broadcast twice (stride 0) and padded: lo 1 / extent 3 on dim 1, columns lo 2 / extent 4 of 7
    out_shape, strides = (2, 5, 7), (0, 4, 1)
    kernel = StridedCopy(get_gpu(), out_shape, strides, 0, [(0, 2), (1, 3), (2, 4)], fill=-1.5)
    want = np.full(out_shape, -1.5, np.float32)
    want[:, 1:4, 2:6] = x
    np.testing.assert_array_equal(run_copy(x, kernel, out_shape), want)


class LayoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.plain_norm = nn.LayerNorm([5, 6], elementwise_affine=False)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        shuffled = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        normed = self.norm(shuffled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        a, b = normed.chunk(2, dim=1)
        strided = a[:, 1::2, ::2, 1:]  # step slices
        picked = b[:, 2].unsqueeze(1).expand(-1, 3, -1, -1)
        rows = torch.unbind(x, dim=2)
        padded = F.pad(picked, (1, 2, 0, 1), value=0.5)
        cropped = F.pad(padded, (-1, -1, -2, 0))
        side = torch.cat([cropped, cropped[:, :, :, :2]], dim=3)
        flat = self.plain_norm(side[:, :, :5, :6]).flatten(1)
        return flat, strided.mean(dim=(2, 3)), rows[3] - rows[0]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float16", 1e-2)])
def test_layout_ops_run_on_the_gpu_and_match_torch(dtype, tolerance):
    if dtype == "float16" and "shader-f16" not in get_gpu().profile.features:
        pytest.skip("no shader-f16")
    torch.manual_seed(0)
    model = LayoutNet().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 8, 10)
    program = convroute.compile(model, (x,), dtype=dtype)
    s = program.summary()
    with torch.no_grad():
        want = model(x)
    got = program(x)
    for y, ref in zip(got, want, strict=True):
        assert y.shape == ref.shape
        err = ((y - ref).abs().max() / ref.abs().max()).item()
        assert err < tolerance, f"relative error {err:.3g}\n{s}"
    layout_ops = {op for op in s.gpu_ops if op.split(".")[0] in ("permute", "slice", "select", "expand",
                                                                  "constant_pad_nd", "cat", "layer_norm")}
    assert {"permute", "slice.Tensor", "select.int", "expand", "constant_pad_nd", "cat", "layer_norm"} <= layout_ops
    assert not s.cpu_ops, f"ops on the CPU fallback:\n{s}"


def test_a_node_that_fails_to_compile_raises_one_line_naming_it(monkeypatch):
    def broken(ctx, node):
        raise RuntimeError("shader exploded\nwith a second line")
    monkeypatch.setitem(lower.LOWERINGS, "mul.Tensor", broken)

    class Scale(nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1) * 2.0
    with pytest.raises(CompileError) as info:
        convroute.compile(Scale(), (torch.randn(1, 2, 3, 4),))
    message = str(info.value)
    assert "\n" not in message and message.startswith("node 'mul' (aten.mul.Tensor): RuntimeError: shader exploded")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert convroute.CompileError is CompileError

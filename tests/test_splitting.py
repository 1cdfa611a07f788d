"""Work too large for one binding or one dispatch dimension is split, and the pieces still match PyTorch.

- im2col: with the device's largest storage binding patched small, the column matrix is built and
  multiplied in several chunks of output pixels (chunks straddling images of the batch).
- Grid folding: a launch of more than 65535 workgroups on the real limit, and, for every algorithm, a launch
  past a patched small per-dimension limit, run as a 2-D grid.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import applicable, assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.api import batch_chunk
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS, gemm, gemm_tex
from convroute.kernels.common import Epilogue
from convroute.kernels.im2col import Im2col
from convroute.params import make_params

BINDING = "max-storage-buffer-binding-size"
GROUPS_PER_DIM = "max-compute-workgroups-per-dimension"


def one_launch_per_chunk(monkeypatch):
    """Plans as on a CPU adapter (no K split, so no reduce launch), whatever device runs the tests; on CPU
    adapters past im2col's texture limits too (faked small), so the buffer chunks run."""
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 1))
    monkeypatch.setattr(gemm_tex, "TEX_DIM", 4)


def run_kernel(kernel_cls, p, x, w, b, activation=None):
    """Build one kernel, bind poisoned buffers, run it; returns (output, dispatches)."""
    gpu = get_gpu()
    kernel = kernel_cls(gpu, p, w, b, Epilogue.parse(activation))
    x_buf = gpu.upload(x, "input")
    y_buf = gpu.empty(4 * int(np.prod(p.output_shape)), "output")
    gpu.fill(y_buf, np.nan)
    dispatches = kernel.bind(x_buf, y_buf, p.n)
    gpu.run(dispatches)
    return gpu.read(y_buf, p.output_shape), dispatches


@pytest.mark.parametrize("case", [
    dict(input_shape=(2, 3, 13, 11), weight_shape=(5, 3, 3, 3), padding=1),
    dict(input_shape=(3, 8, 17, 10), weight_shape=(6, 8, 2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(input_shape=(3, 24, 15, 12), weight_shape=(70, 24, 3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
])
def test_im2col_column_chunks_match_torch(monkeypatch, case):
    one_launch_per_chunk(monkeypatch)
    p = make_params(**case)
    x, w, b = random_inputs(p, np.random.default_rng(11))
    k_pad = -(-p.c_in * p.kh * p.kw // gemm.K_ALIGN) * gemm.K_ALIGN
    # the padded weight matrix just fits: TILE * ceil(C_out / M_ALIGN) columns per chunk
    limit = 4 * gemm.TILE * k_pad * (-(-p.c_out // gemm.M_ALIGN))
    monkeypatch.setitem(get_gpu().profile.limits, BINDING, limit)
    out, dispatches = run_kernel(Im2col, p, x, w, b, "relu")
    chunks = len(dispatches) // 2
    assert chunks == -(-p.n * p.ho * p.wo // (limit // (4 * k_pad))) and chunks >= 3
    assert_matches(out, reference(p, x, w, b, "relu"), f"im2col in {chunks} chunks")


def test_im2col_chunks_inside_batch_split(monkeypatch):
    """The API splits the batch to fit the input/output bindings; im2col chunks each part again."""
    p = make_params((5, 2, 20, 20), (4, 2, 3, 3), stride=1, padding=1)
    x, w, b = random_inputs(p, np.random.default_rng(12))
    limit = 4 * gemm.M_ALIGN * gemm.K_ALIGN * 2  # weights fit; 2 images per part, 128-column chunks
    assert batch_chunk(p, limit) == 2
    monkeypatch.setitem(get_gpu().profile.limits, BINDING, limit)
    out = conv2d(x, w, b, padding=1, algorithm="im2col", activation="silu")
    assert_matches(out, reference(p, x, w, b, "silu"), "im2col with batch split and column chunks")


def test_grid_folds_past_65535_workgroups():
    """A one-channel 4100x4100 depthwise conv needs more workgroups than one grid dimension holds."""
    gpu = get_gpu()
    assert gpu.profile.max_workgroups_per_dim == 65535
    p = make_params((1, 1, 4100, 4100), (1, 1, 3, 3), padding=1, groups=1)
    x, w, b = random_inputs(p, np.random.default_rng(13))
    out, dispatches = run_kernel(ALGORITHMS["depthwise"], p, x, w, b)  # CPU adapters: a repack pass first
    grids = [d.grid for d in dispatches]
    assert any(grid[1] > 1 for grid in grids), f"expected a folded 2-D grid, got {grids}"
    assert_matches(out, reference(p, x, w, b), "depthwise on a folded grid")


FOLD_CASES = {
    "direct": dict(input_shape=(2, 3, 30, 41), weight_shape=(40, 3, 3, 2), padding=(1, 0)),
    "im2col": dict(input_shape=(2, 3, 20, 31), weight_shape=(130, 3, 3, 3), padding=1, dilation=(1, 2)),
    "pointwise": dict(input_shape=(2, 5, 40, 61), weight_shape=(9, 5, 1, 1)),
    "implicit_gemm": dict(input_shape=(2, 3, 40, 61), weight_shape=(9, 3, 3, 2), padding=(1, 0), dilation=(2, 1)),
    "depthwise": dict(input_shape=(2, 4, 20, 29), weight_shape=(8, 1, 3, 3), padding=1, groups=4),
    "transposed": dict(input_shape=(3, 4, 16, 15), weight_shape=(4, 8, 3, 3), stride=2, padding=1,
                       transposed=True, output_padding=1),
    "winograd2": dict(input_shape=(2, 8, 40, 61), weight_shape=(9, 8, 3, 3), padding=(1, 0)),
    "winograd4": dict(input_shape=(2, 8, 40, 61), weight_shape=(9, 8, 3, 3), padding=(1, 0)),
}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_runs_on_a_folded_grid(monkeypatch, algorithm):
    """With the per-dimension limit patched to 16, launches of 17..256 workgroups become 16 x rows grids."""
    one_launch_per_chunk(monkeypatch)  # a GPU's K splits would pass the 16 x 16 grid
    p = make_params(**FOLD_CASES[algorithm])
    assert algorithm in applicable(p)
    x, w, b = random_inputs(p, np.random.default_rng(14))
    monkeypatch.setitem(get_gpu().profile.limits, GROUPS_PER_DIM, 16)
    out, dispatches = run_kernel(ALGORITHMS[algorithm], p, x, w, b, "hardswish")
    assert all(d.grid[1] > 1 for d in dispatches), [d.grid for d in dispatches]
    assert_matches(out, reference(p, x, w, b, "hardswish"), f"{algorithm} on a folded grid")


@pytest.mark.parametrize("algorithm, case", [
    ("im2col", dict(input_shape=(1, 64, 7, 7), weight_shape=(40, 64, 3, 3), padding=1)),
    ("pointwise", dict(input_shape=(2, 300, 5, 3), weight_shape=(70, 300, 1, 1))),
    ("implicit_gemm", dict(input_shape=(2, 40, 6, 5), weight_shape=(20, 40, 3, 2), stride=(2, 1), padding=1)),
])
def test_split_k_matches_torch(monkeypatch, k_splits, algorithm, case):
    """Asking for more workgroups than the small tile gives splits K; partial sums are reduced exactly once."""
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 64))
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))  # CPUs never split K
    p = make_params(**case)
    x, w, b = random_inputs(p, np.random.default_rng(15))
    out, dispatches = run_kernel(ALGORITHMS[algorithm], p, x, w, b, "relu6")
    assert len(dispatches) >= 2 and dispatches[-1].pipeline is not dispatches[-2].pipeline
    assert_matches(out, reference(p, x, w, b, "relu6"), f"{algorithm} with split K")
    tile, splits = gemm.choose_tile(p.c_out, p.n * p.ho * p.wo, -(-p.c_in * p.kh * p.kw // 16) * 16, 64)
    assert splits > 1, (tile, splits)


@pytest.mark.parametrize("algorithm, case", [
    ("pointwise", dict(input_shape=(2, 300, 5, 3), weight_shape=(70, 300, 1, 1))),
    ("implicit_gemm", dict(input_shape=(1, 96, 7, 7), weight_shape=(40, 96, 3, 3), padding=1)),
])
def test_small_split_products_run_as_one_launch_of_k_slices(monkeypatch, algorithm, case):
    """The same products on a GPU's plan (gemm.slice_plan): one launch whose workgroups sum K slices, exact."""
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 64))
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))
    p = make_params(**case)
    x, w, b = random_inputs(p, np.random.default_rng(16))
    kernel = ALGORITHMS[algorithm](get_gpu(), p, w, b, Epilogue.parse("relu6"))
    tile, splits = kernel.gemm.plan(p.n * p.ho * p.wo)
    assert splits == 1 and tile.ks > 1, (tile, splits)
    out, dispatches = run_kernel(ALGORITHMS[algorithm], p, x, w, b, "relu6")
    assert len(dispatches) == 1
    assert_matches(out, reference(p, x, w, b, "relu6"), f"{algorithm} with K slices")


@pytest.mark.parametrize("case", [
    dict(input_shape=(2, 8, 16, 16), weight_shape=(4, 8, 3, 3), padding=1),
    dict(input_shape=(2, 8, 17, 15), weight_shape=(6, 8, 3, 2), stride=(2, 1), padding=(2, 1), dilation=(2, 1)),
    dict(input_shape=(1, 8, 16, 16), weight_shape=(8, 1, 3, 3), padding=1, groups=8),
    dict(input_shape=(3, 8, 16, 16), weight_shape=(4, 8, 1, 1), algorithm="direct"),  # GEMM weights pad past the limit
])
def test_image_larger_than_a_binding_runs_in_bands_of_rows(monkeypatch, case):
    """One image over the binding limit: bands of output rows, each reading its input rows plus the halo."""
    limit = 6144  # above GPU direct's padded weights (4608 bytes), below every image
    monkeypatch.setitem(get_gpu().profile.limits, BINDING, limit)
    p = make_params(**{k: v for k, v in case.items() if k != "algorithm"})
    assert 4 * max(p.c_in * p.h * p.w, p.c_out * p.ho * p.wo) > limit
    x, w, b = random_inputs(p, np.random.default_rng(16))
    args = {k: v for k, v in case.items() if k not in ("input_shape", "weight_shape")}
    out = conv2d(x, w, b, activation="relu", **args)
    assert_matches(out, reference(p, x, w, b, "relu"), "conv in bands of rows")

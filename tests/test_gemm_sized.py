"""GPUs' GEMM tile by the size of the product (gemm.sized_plan): each SIZED tile is right on partial tiles with
and without K splits (forced, in the workgroup style, on whatever device runs the tests), and the rule picks
tiles and splits as documented, never one that does not fit the device."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import gemm
from convroute.kernels.common import Epilogue, Precision
from convroute.kernels.gemm_tiles import SIZED, Tile
from convroute.kernels.im2col import Im2col
from convroute.params import make_params
from test_gemm_cpu import LAYERS, use_style
from test_limits import GLES, MIN, TINY


def force_plan(monkeypatch, tile: Tile, splits: int) -> None:
    """Every GEMM launch takes this tile and K split, whatever sized_plan and slice_plan would choose."""
    monkeypatch.setattr(gemm, "sized_plan", lambda *args, **kwargs: (tile, splits))
    monkeypatch.setattr(gemm, "slice_plan", lambda tile, splits, *args, **kwargs: (tile, splits))


@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("tile", SIZED.values(), ids=str)
@pytest.mark.parametrize("layer", ["pointwise-strided", "implicit-5x3-s2-d2"])
def test_every_sized_tile_with_partial_tiles(monkeypatch, layer, tile, splits):
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, tile, splits)
    p = LAYERS[layer]
    name = "pointwise" if p.kh == p.kw == 1 else "implicit_gemm"
    x, w, b = random_inputs(p, np.random.default_rng(40))
    out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation="relu", algorithm=name)
    assert_matches(out, reference(p, x, w, b, "relu"), f"{name} tile {tile} k/{splits} on {p.describe()}")


@pytest.mark.parametrize("splits", [3, 5, 8, 13, 18])
@pytest.mark.parametrize("side", [(5, 7), (4, 6)], ids=["columns", "quads"])
def test_every_split_count_adds_up(monkeypatch, side, splits):
    """The reduce adds splits in blocks of 8, 4, 2 and 1 (common.sum_splits): each block size and the
    remainder paths, storing single columns (35 pixels) and quads (24). K is 136, packed to 18 K steps of 8."""
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, SIZED["small"], splits)
    p = make_params((1, 136, *side), (10, 136, 1, 1))
    x, w, b = random_inputs(p, np.random.default_rng(splits))
    out = conv2d(x, w, b, activation="relu6", algorithm="pointwise")
    assert_matches(out, reference(p, x, w, b, "relu6"), f"{splits} K splits on {p.describe()}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("tile,ks,splits", [(SIZED["small"], 2, 1), (SIZED["small"], 3, 2), (SIZED["small"], 4, 1),
                                            (SIZED["large64"], 2, 1), (Tile(16, 16, 4, 4, 4), 8, 1),
                                            (Tile(32, 16, 8, 4, 4), 3, 2)], ids=str)
@pytest.mark.parametrize("c_in,side", [(136, (5, 7)), (40, (4, 6))], ids=["k18-columns", "k5-quads"])
def test_k_slices_add_up(monkeypatch, c_in, side, tile, ks, splits, dtype):
    """K slices in one workgroup (gemm_tiles.generate with tile.ks > 1), alone and with K splits across
    workgroups: shares that do not divide the K steps, and (K 40: 5 steps in 4 slices of 2) a slice with none."""
    use_style(monkeypatch, "workgroup")
    sliced = tile.sliced(ks)
    if sliced.unfit(get_gpu().profile, Precision.parse(dtype, None)):
        pytest.skip(f"{sliced} does not fit this device")
    force_plan(monkeypatch, sliced, splits)
    p = make_params((1, c_in, *side), (70, c_in, 1, 1))
    x, w, b = random_inputs(p, np.random.default_rng(ks * 10 + splits))
    out = conv2d(x, w, b, activation="relu", algorithm="pointwise", dtype=dtype)
    assert_matches(out.astype(np.float32), reference(p, x, w, b, "relu"), f"{sliced} k/{splits} on {p.describe()}",
                   1e-4 if dtype == "float32" else 1e-2)


def test_small_split_products_become_k_slices():
    """gemm.slice_plan on an H100-sized workgroup (48 KiB, 1024 invocations): 32x32 tiles with K slices of at
    least SLICE_STEPS K steps for split products under SLICE_MACS, as many as fit; the split plan where not even
    two fit (an 8 KiB workgroup)."""
    h100 = DeviceProfile("nvidia", "H100-like", limits={"max-compute-workgroup-storage-size": 49152,
                                                        "max-compute-invocations-per-workgroup": 1024,
                                                        "max-compute-workgroup-size-x": 1024})
    small, middle = SIZED["small"], SIZED["middle"]
    f16_sums = Precision.parse("float16", "float16")
    assert gemm.SLICE_STEPS == 4
    assert gemm.slice_plan(small, 3, 24, 3136, 96, h100) == (small.sliced(3), 1)  # 12 K steps: 3 slices of 4
    assert gemm.slice_plan(middle, 2, 960, 49, 160, h100) == (small.sliced(5), 1)  # the tile becomes 32x32
    assert gemm.slice_plan(small, 1, 24, 3136, 96, h100) == (small, 1)  # not split: unchanged
    assert gemm.slice_plan(middle, 4, 128, 3136, 256, h100) == (middle, 4)  # 103 M multiply-adds: stays split
    assert gemm.slice_plan(small, 8, 64, 196, 256, h100) == (small.sliced(6), 1)  # 8 f32 slices need 60 KiB, 6 need 44
    assert gemm.slice_plan(small, 8, 64, 196, 256, h100, f16_sums) == (small.sliced(8), 1)  # f16 tiles: 44 KiB
    assert small.sliced(8).unfit(h100) and not small.sliced(6).unfit(h100) and not small.sliced(8).unfit(h100, f16_sums)
    tiny = DeviceProfile("nvidia", "8 KiB", limits={"max-compute-workgroup-storage-size": 8192,
                                                    "max-compute-invocations-per-workgroup": 1024,
                                                    "max-compute-workgroup-size-x": 1024})
    assert small.sliced(2).unfit(tiny)
    assert gemm.slice_plan(small, 8, 64, 196, 256, tiny) == (small, 8)


@pytest.mark.parametrize("tile", [Tile(32, 32, 32, 4, 4), Tile(64, 32, 32, 4, 4)], ids=str)
def test_tiles_with_several_b_loads_per_invocation(monkeypatch, tile):
    """Deep K steps (tools/gemm_tiles_bench.py --deep): each invocation loads bk*bn/4/threads B vec4s. K is
    5 * 5 * 5 = 125, packed to 128 rows: two or four K steps, split in two."""
    assert tile.b_loads > tile.threads
    use_style(monkeypatch, "workgroup")
    force_plan(monkeypatch, tile, 2)
    p = make_params((2, 5, 17, 13), (19, 5, 5, 5), 2, 2)
    x, w, b = random_inputs(p, np.random.default_rng(41))
    out = conv2d(x, w, b, p.stride, p.padding, activation="relu", algorithm="implicit_gemm")
    assert_matches(out, reference(p, x, w, b, "relu"), f"tile {tile} on {p.describe()}")
    with pytest.raises(ValueError, match="do not divide the packed K"):  # K 75 packs to 80 rows
        test_every_sized_tile_with_partial_tiles(monkeypatch, "implicit-5x3-s2-d2", tile, 2)


def test_the_tile_follows_the_size_of_the_product():
    busy = 256
    assert gemm.sized_plan(512, 64, 4608, busy) is None  # narrow launches keep NARROW's tiles
    assert gemm.sized_plan(32, 50176, 576, busy)[0] == SIZED["small"]  # few rows
    assert gemm.sized_plan(96, 3136, 16, busy)[0] == SIZED["small"]  # 4.8 M multiply-adds
    assert gemm.sized_plan(256, 3136, 64, busy)[0] == SIZED["middle"]  # 51 M
    assert gemm.sized_plan(256, 3136, 1152, busy)[0] == SIZED["large"]  # 925 M, 128-row tiles
    assert gemm.sized_plan(64, 3136, 1152, busy)[0] == SIZED["large64"]  # 231 M, 64 rows
    assert gemm.sized_plan(192, 3136, 1152, busy)[0] == SIZED["large64"]  # a 128-row tile would be half empty


@pytest.mark.parametrize("m, cols, k_pad", itertools.product((8, 64, 100, 192, 1000), (100, 784, 5000),
                                                              (16, 256, 4608)))
def test_k_is_split_toward_spread_times_the_busy_workgroups(m, cols, k_pad):
    busy = 256
    tile, splits = gemm.sized_plan(m, cols, k_pad, busy)
    ktiles = k_pad // tile.bk
    groups = -(-m // tile.bm) * -(-cols // tile.bn)
    assert 1 <= splits <= max(1, ktiles // gemm.MIN_KT_PER_SPLIT)
    if splits == 1:
        assert groups >= gemm.SPREAD * busy or ktiles < 2 * gemm.MIN_KT_PER_SPLIT
    else:
        assert -(-ktiles // splits) >= gemm.MIN_KT_PER_SPLIT // 2  # no split is left with almost nothing
        assert groups * (splits - 1) < gemm.SPREAD * busy  # one split fewer would not reach the target


@pytest.mark.parametrize("profile", [MIN, GLES, TINY], ids=["webgpu-min", "gles", "tiny"])
def test_a_sized_tile_that_does_not_fit_is_not_chosen(profile):
    refused = 0
    for precision, m, cols, k_pad in itertools.product((Precision(), Precision("float16", "float16")),
                                                       (8, 128, 1000), (100, 5000), (16, 4608)):
        plan = gemm.sized_plan(m, cols, k_pad, 256, profile, precision)
        if plan is None:
            refused += 1
        else:
            assert plan[0].unfit(profile, precision) is None
    assert refused or profile is not TINY, "TINY fits no sized tile: the test would test nothing"


@pytest.mark.parametrize("style", ["registers", "workgroup"])
def test_only_the_workgroup_style_takes_sized_tiles(monkeypatch, style):
    use_style(monkeypatch, style)
    p = LAYERS["implicit-3x3"]  # 21 rows: sized_plan's small tile, which is not among the first-busy TILES
    x, w, b = random_inputs(p, np.random.default_rng(41))
    kernel = Im2col(get_gpu(), p, w, b, Epilogue())
    tile, _ = kernel.gemm.plan(p.n * p.ho * p.wo)
    assert (tile.sliced(1) == SIZED["small"]) == (style == "workgroup"), tile  # K slices or not (slice_plan)

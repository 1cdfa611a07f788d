"""gemm_cpu's register-tile GEMMs (what CPU adapters get) and the workgroup GEMMs (what GPUs get), both on
whatever device runs the tests, for the GEMM algorithms: pointwise, implicit_gemm, Winograd, im2col."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ACTIVATIONS, assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import GEMM_STYLES, DeviceProfile
from convroute.kernels import ALGORITHMS, gemm_cpu, gemm_tex
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.params import make_params
from test_algorithms import convs

GEMM_ALGORITHMS = ("pointwise", "implicit_gemm", "im2col", "winograd2", "winograd4")


def use_style(monkeypatch, style):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: style))


def run(name, p, x, w, b, activation=None, **kwargs):
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation=activation, algorithm=name,
                  **kwargs)


@settings(max_examples=40, deadline=None,  # CI time; new draws each run
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(p=st.one_of(convs("dense"), convs("pointwise")), activation=st.sampled_from(ACTIVATIONS),
       seed=st.integers(0, 2**32 - 1))
def test_both_styles_match_torch(p, activation, seed):
    x, w, b = random_inputs(p, np.random.default_rng(seed))
    ref = reference(p, x, w, b, activation)
    for style in GEMM_STYLES:
        with pytest.MonkeyPatch.context() as monkeypatch:
            use_style(monkeypatch, style)
            for name in GEMM_ALGORITHMS:
                if ALGORITHMS[name].unsupported(p) is None:
                    out = run(name, p, x, w, b, activation)
                    assert_matches(out, ref, f"{name} ({style} GEMM) on {p.describe()} act={activation}")


LAYERS = {  # channels and pixel counts that fill none of the tiles evenly; batch 2 (one launch over images)
    "pointwise-vec4": make_params((2, 13, 6, 10), (21, 13, 1, 1)),
    "pointwise-strided": make_params((2, 13, 11, 9), (21, 13, 1, 1), 2, 1),
    "implicit-3x3": make_params((2, 7, 11, 9), (21, 7, 3, 3), 1, 1),
    "implicit-5x3-s2-d2": make_params((2, 5, 17, 13), (19, 5, 5, 3), 2, (2, 1), (1, 2)),
}


@pytest.mark.parametrize("tile", gemm_cpu.TILES, ids=str)
@pytest.mark.parametrize("layer", LAYERS)
def test_every_register_tile_with_partial_tiles(monkeypatch, layer, tile):
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(gemm_tex, "TEX_DIM", 4)  # pointwise past its textures' limits: the buffers
    monkeypatch.setattr(gemm_cpu, "choose_tile", lambda m, cols, batches, max_tn=None: tile)
    p = LAYERS[layer]
    name = "pointwise" if p.kh == p.kw == 1 else "implicit_gemm"
    x, w, b = random_inputs(p, np.random.default_rng(30))
    kernel = ALGORITHMS[name](get_gpu(), p, w, b, Epilogue.parse("silu"))
    assert kernel.cpu is not None
    out = run(name, p, x, w, b, "silu")
    assert_matches(out, reference(p, x, w, b, "silu"), f"{name} register tile {tile} on {p.describe()}")


TEXTURE_LAYERS = [  # (algorithm, params): buffer gather; texture gather aligned, strided, unaligned and
    # dilated, aligned and dilated
    ("pointwise", make_params((2, 13, 11, 9), (21, 13, 1, 1), 2, 1)),
    ("im2col", make_params((2, 7, 6, 8), (21, 7, 3, 3), 1, 1)),
    ("im2col", make_params((1, 5, 17, 13), (19, 5, 5, 3), 2, (2, 1), (1, 2))),
    ("pointwise", make_params((2, 13, 6, 10), (37, 13, 1, 1))),
    ("im2col", make_params((1, 6, 9, 11), (18, 6, 3, 3), 1, 2, 2)),
    ("im2col", make_params((2, 6, 9, 12), (18, 6, 3, 5), (2, 1), 2, 2)),
]


@pytest.mark.parametrize("i, tile", list(enumerate(gemm_tex.TILES)), ids=[str(t) for t in gemm_tex.TILES])
def test_every_texture_tile_with_partial_tiles(monkeypatch, i, tile):
    """Each texture GEMM tile on one of the layers in turn (channels and pixel counts that fill no tile)."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(gemm_tex, "choose_tile", lambda m, cols, batches, k: tile)
    name, p = TEXTURE_LAYERS[i % len(TEXTURE_LAYERS)]
    x, w, b = random_inputs(p, np.random.default_rng(40 + i))
    kernel = ALGORITHMS[name](get_gpu(), p, w, b, Epilogue.parse("silu"))
    assert kernel.tex is not None and kernel.tex.fits(p.n)
    out = run(name, p, x, w, b, "silu")
    assert_matches(out, reference(p, x, w, b, "silu"), f"{name} texture tile {tile} on {p.describe()}")


@pytest.mark.parametrize("bn", [1, 4])
def test_texture_gemm_in_column_blocks(monkeypatch, bn):
    """The invocation order in blocks of bn column tiles (1: row tiles fastest; 4: 6 column tiles in a block
    of 4 and a narrower one), forced on a small layer of 2 row tiles, batch 2."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(gemm_tex, "column_block", lambda a_bytes, b_bytes, tiles_n: bn)
    monkeypatch.setattr(gemm_tex, "choose_tile", lambda m, cols, batches, k: gemm_tex.TexTile(16, 28, 4))
    p = make_params((2, 5, 12, 12), (20, 5, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(39))
    assert_matches(run("im2col", p, x, w, b, "relu"), reference(p, x, w, b, "relu"), f"column blocks of {bn}")


@pytest.mark.parametrize("textures", [True, False], ids=["textures", "past-texture-limits"])
def test_im2col_register_tiles_for_any_pixel_count(monkeypatch, textures):
    """7 x 5 = 35 output pixels per image, batch 2: each image's columns padded to 36 in the column matrix, one
    gather and one register-tile GEMM over both images; reading textures (repack, gather, texture GEMM) or,
    where the column texture would pass the texture limits (faked small here), storage buffers."""
    use_style(monkeypatch, "registers")
    if not textures:
        monkeypatch.setattr(gemm_tex, "TEX_DIM", 16)  # 18 column texels per row
    p = make_params((2, 6, 7, 5), (10, 6, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(32))
    gpu = get_gpu()
    kernel = ALGORITHMS["im2col"](gpu, p, w, b, Epilogue.parse("relu"))
    out = gpu.empty(4 * int(np.prod(p.output_shape)))
    gpu.fill(out, np.nan)
    dispatches = kernel.bind(gpu.upload(x), out, p.n)
    assert kernel.cpu is not None and len(dispatches) == (3 if textures else 2) and kernel._gemm is None
    gpu.run(dispatches)
    assert_matches(gpu.read(out, p.output_shape), reference(p, x, w, b, "relu"), "im2col register tiles, 35 pixels")


def test_register_tiles_only_where_the_k_loop_fits_lavapipe(monkeypatch):
    """A K loop longer than lavapipe's loop limit would stop early there: such layers keep the workgroup GEMM."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(gemm_cpu, "CPU_LOOP_LIMIT", 20)
    p = make_params((1, 3, 8, 8), (4, 3, 3, 3), 1, 1)  # K = 27
    x, w, b = random_inputs(p, np.random.default_rng(31))
    assert ALGORITHMS["implicit_gemm"](get_gpu(), p, w, b, Epilogue()).cpu is None
    assert ALGORITHMS["pointwise"](get_gpu(), make_params((1, 3, 8, 8), (4, 3, 1, 1)), w[:, :, :1, :1], b,
                                   Epilogue()).cpu is not None
    assert_matches(run("implicit_gemm", p, x, w, b), reference(p, x, w, b), "implicit_gemm past the loop limit")


def test_the_style_follows_the_device_family(monkeypatch):
    monkeypatch.delenv("CONVROUTE_GEMM_STYLE", raising=False)
    assert DeviceProfile.for_family("cpu").gemm_style == "registers"
    assert DeviceProfile.for_family("nvidia").gemm_style == "workgroup"
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", "registers")
    assert DeviceProfile.for_family("nvidia").gemm_style == "registers"
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", "shared")
    with pytest.raises(ValueError, match="CONVROUTE_GEMM_STYLE='shared'"):
        _ = DeviceProfile.for_family("cpu").gemm_style


@pytest.mark.parametrize("m, cols, batches", [(64, 3136, 1), (512, 4, 36), (512, 16, 16), (3, 5, 1), (1000, 1, 1)])
def test_choose_tile_fills_the_device_or_takes_the_smallest(m, cols, batches):
    tile = gemm_cpu.choose_tile(m, cols, batches)
    invocations = batches * -(-m // tile.tm) * -(-cols // tile.tn)
    assert tile in gemm_cpu.TILES
    assert tile == gemm_cpu.TILES[-1] or invocations >= 64


@pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
@pytest.mark.parametrize("name, p", [
    ("pointwise", make_params((2, 13, 6, 10), (21, 13, 1, 1))),
    ("pointwise", make_params((1, 13, 11, 9), (21, 13, 1, 1), 2, 1)),
    ("implicit_gemm", make_params((2, 7, 11, 9), (21, 7, 3, 3), 1, 1)),
    ("winograd4", make_params((2, 7, 11, 9), (21, 7, 3, 3), 1, 1)),
    ("im2col", make_params((2, 7, 12, 8), (21, 7, 3, 3), 1, 1)),
    ("im2col", make_params((1, 7, 11, 9), (21, 7, 3, 3), 2, 1)),
], ids=["pointwise-vec4", "pointwise-strided", "implicit_gemm", "winograd4", "im2col-aligned", "im2col-strided"])
def test_register_tiles_in_float16(monkeypatch, name, p):
    use_style(monkeypatch, "registers")
    x, w, b = random_inputs(p, np.random.default_rng(32))
    ref = reference(p, x, w, b, "relu")
    out = run(name, p, x, w, b, "relu", dtype="float16")
    assert out.dtype == np.float16 and np.isfinite(out).all()
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-2, f"{name} fp16 register tiles: relative error {err:.3g}"


def test_im2col_builds_the_workgroup_gemm_only_for_batches_the_register_tiles_skip(monkeypatch):
    use_style(monkeypatch, "registers")
    even = make_params((2, 5, 8, 6), (7, 5, 3, 3), 1, 1)  # 48 pixels: one register-tile launch
    x, w, b = random_inputs(even, np.random.default_rng(32))
    kernel = ALGORITHMS["im2col"](get_gpu(), even, w, b, Epilogue())
    kernel.bind(get_gpu().upload(x, "x"), get_gpu().empty(4 * 2 * 7 * 48, "y"), 2)
    assert kernel.cpu is not None and kernel._gemm is None  # the weights are on the GPU once
    odd = make_params((2, 5, 7, 5), (7, 5, 3, 3), 1, 1)  # 35 pixels per image: the workgroup GEMM
    x = random_inputs(odd, np.random.default_rng(33))[0]
    assert_matches(run("im2col", odd, x, w, b), reference(odd, x, w, b), "im2col, odd pixel count, register style")

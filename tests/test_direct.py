"""`direct`: both variants (register tiles for CPU adapters, workgroup tiles for GPUs) on whatever device runs the
tests, against torch float64 with poisoned outputs; the plan is a pure function of (profile, params)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import direct, direct_cpu
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.params import make_params

STYLES = ("registers", "workgroup")
SPECIALISE_FLOPS = direct_cpu.SPECIALISE_FLOPS

LAYERS = {  # (params, activation): odd sizes, partial channel and pixel tiles everywhere
    "3x3-pad": (make_params((1, 5, 9, 11), (7, 5, 3, 3), 1, 1), None),
    "grouped-dilated-strided-batch2": (make_params((2, 8, 13, 10), (12, 4, 3, 3), (2, 1), (1, 2), (2, 1), 2),
                                       "relu"),
    "5x3-stride2-asym-pad": (make_params((1, 5, 20, 17), (6, 5, 5, 3), 2, (2, 1)), "hardswish"),
    "stem-7x7-s2": (make_params((1, 3, 23, 19), (10, 3, 7, 7), 2, 3), ("clamp", -0.5, 0.75)),
    "channels-past-a-chunk": (make_params((2, 37, 6, 7), (70, 37, 3, 3), 1, 1), "silu"),
    "1x1-and-no-pad": (make_params((1, 6, 5, 4), (9, 6, 1, 1)), "sigmoid"),
}


@pytest.fixture(autouse=True)
def small_register_tiles(monkeypatch):
    """lavapipe compiles a pipeline at its first dispatch, ~5-20 s for the big register tiles: the tests choose
    among small ones (the same generator); test_register_tiles_with_partial_tiles runs the main big one."""
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 8, 2), direct_cpu.RegisterTile(4, 4)))
    monkeypatch.setattr(direct_cpu, "SPECIALISE_FLOPS", 0)  # these small layers would take the generic kernel


def partial_tiles():
    """Rows, columns and channels that fill none of the tiles; two rows with stride 2 and dilation 2."""
    p = make_params((2, 6, 15, 21), (10, 3, 3, 3), (2, 1), (2, 1), (2, 1), 2)
    return (p, *random_inputs(p, np.random.default_rng(44)))


def use_style(monkeypatch, style):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: style))


def run(p, x, w, b, activation=None, **kwargs):
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation=activation, algorithm="direct",
                  **kwargs)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("layer", LAYERS)
def test_direct_matches_torch(monkeypatch, style, layer):
    use_style(monkeypatch, style)
    p, activation = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(40))
    kernel = direct.Direct(get_gpu(), p, w, b, Epilogue.parse(activation))
    assert kernel.cpu == (style == "registers")
    assert_matches(run(p, x, w, b, activation), reference(p, x, w, b, activation), f"direct ({style}) on {layer}")


@pytest.mark.parametrize("tile", [t for t in direct_cpu.TILES if t.tm > 4 or t.tr != 2 or t.tn != 8], ids=str)
def test_register_tiles_with_partial_tiles(monkeypatch, tile):
    """Every tile but the fixture's (which the other tests run) on partial channel, row and column tiles."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(direct_cpu, "choose_tile", lambda p: tile)
    p, x, w, b = partial_tiles()
    assert_matches(run(p, x, w, b, "relu"), reference(p, x, w, b, "relu"), f"direct register tile {tile}")


@pytest.mark.parametrize("tile", [direct_cpu.RegisterTile(4, 8, 2), direct_cpu.RegisterTile(8, 4)], ids=str)
def test_generic_register_kernel(monkeypatch, tile):
    """The kernel small layers share (geometry from the parameters) on partial tiles, and on a 5x3 kernel with
    stride 2 and asymmetric padding."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(direct_cpu, "SPECIALISE_FLOPS", SPECIALISE_FLOPS)
    monkeypatch.setattr(direct_cpu, "choose_tile", lambda p: tile)
    for p, x, w, b in (partial_tiles(), (LAYERS["5x3-stride2-asym-pad"][0],
                                         *random_inputs(LAYERS["5x3-stride2-asym-pad"][0], np.random.default_rng(46)))):
        assert not direct.Direct(get_gpu(), p, w, b, Epilogue()).special
        assert_matches(run(p, x, w, b, "relu"), reference(p, x, w, b, "relu"), f"generic register tile {tile}")


def test_batch_past_the_texture_limits_takes_the_buffer_kernel(monkeypatch):
    """A specialised kernel built at batch 1, bound at batch 2 whose padded input planes would need a second
    texture layer (limited to one here): that bind reads the storage buffers instead, with the same sums."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(direct_cpu, "TEX_LAYERS", 1)
    gpu = get_gpu()
    p = make_params((1, 300, 13, 9), (6, 300, 3, 3), 1, 1)
    x, w, b = random_inputs(p.with_batch(2), np.random.default_rng(48))
    kernel = direct.Direct(gpu, p, w, b, Epilogue.parse("relu"))
    tile = kernel.tile
    assert kernel.special and direct_cpu.texture_layout(p, tile, 2) is None
    y = gpu.empty(4 * 2 * p.c_out * p.ho * p.wo)
    gpu.fill(y, np.nan)
    dispatches = kernel.bind(gpu.upload(x), y, 2)
    assert len(dispatches) == 1  # no repack pass
    gpu.run(dispatches)
    out = gpu.read(y, p.with_batch(2).output_shape)
    assert_matches(out, reference(p.with_batch(2), x, w, b, "relu"), "direct's buffer kernel at batch 2")


def test_small_layers_share_one_pipeline(monkeypatch):
    monkeypatch.setattr(direct_cpu, "SPECIALISE_FLOPS", SPECIALISE_FLOPS)
    tile = direct_cpu.RegisterTile(4, 4)
    small = [p for p, _ in LAYERS.values()]
    assert not any(direct_cpu.specialised(p) for p in small)
    assert len({direct_cpu.generate_generic(p, tile, "", "") for p in small}) == 1
    assert direct_cpu.specialised(make_params((1, 64, 56, 56), (64, 64, 3, 3), 1, 1))  # 231 MFLOPs
    assert direct_cpu.specialised(make_params((1, 8192, 3, 3), (2, 8192, 3, 3), 1, 1))  # past the loop limit


def test_split_input_channels_add_up(monkeypatch):
    """Few output blocks, many input channels: the workgroup variant splits the channels and reduces."""
    use_style(monkeypatch, "workgroup")
    monkeypatch.setenv("CONVROUTE_BUSY_WORKGROUPS", "64")
    p = make_params((2, 70, 5, 6), (9, 70, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(41))
    plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(2)
    assert plan.splits > 1
    assert_matches(run(p, x, w, b, "relu6"), reference(p, x, w, b, "relu6"), f"direct split {plan}")


@pytest.mark.parametrize("ahead", [0, 64], ids=["batched-loads", "double-buffered"])
def test_patch_staging_variants(monkeypatch, ahead):
    """Three chunks of input channels through each way of staging the patch: batches of loads then stores
    between two barriers, or the next chunk's loads in flight during the sums (one barrier per chunk)."""
    use_style(monkeypatch, "workgroup")
    monkeypatch.setattr(direct, "AHEAD", ahead)
    p, activation = LAYERS["channels-past-a-chunk"]
    x, w, b = random_inputs(p, np.random.default_rng(47))
    plan = direct.Direct(get_gpu(), p, w, b, Epilogue()).plan(p.n)
    assert direct.double_buffered(plan, int(np.prod(plan.patch))) == bool(ahead)
    assert p.c_in > 2 * plan.chunk
    assert_matches(run(p, x, w, b, activation), reference(p, x, w, b, activation), f"direct {plan} ahead {ahead}")


def test_without_bias(monkeypatch):
    p = make_params((1, 4, 7, 7), (8, 4, 3, 3), 1, 1)
    x, w, _ = random_inputs(p, np.random.default_rng(42), bias=False)
    for style in STYLES:
        use_style(monkeypatch, style)
        assert_matches(run(p, x, w, None), reference(p, x, w), f"direct ({style}) without bias")


@pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
@pytest.mark.parametrize("style", STYLES)
def test_float16_storage(monkeypatch, style):
    use_style(monkeypatch, style)
    p = make_params((2, 6, 9, 7), (9, 2, 3, 3), 1, 1, 1, 3)
    x, w, b = random_inputs(p, np.random.default_rng(43))
    ref = reference(p, x, w, b, "relu")
    out = run(p, x, w, b, "relu", dtype="float16")
    assert out.dtype == np.float16 and np.isfinite(out).all()
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-2, f"direct ({style}) fp16: relative error {err:.3g}"


SUITE_LIKE = [make_params((1, c, s, s), (c, c, k, k), st, k // 2, d)
              for c, s in ((3, 224), (64, 56), (512, 7), (256, 14)) for k, st, d in ((3, 1, 1), (3, 2, 1), (7, 2, 1),
                                                                                      (3, 1, 4))]


@pytest.mark.parametrize("memory", [16384, 8192, 4096])
def test_plans_fit_the_device(memory):
    limits = dict(DeviceProfile.for_family("nvidia").limits, **{"max-compute-workgroup-storage-size": memory})
    profile = dataclasses.replace(DeviceProfile.for_family("nvidia"), limits=limits)
    for p in SUITE_LIKE:
        plan = direct.choose_plan(profile, p, p.n)
        assert plan == direct.choose_plan(profile, p, p.n)
        pr, pc = plan.patch
        buffers = 2 if direct.double_buffered(plan, pr * pc) else 1
        assert buffers * 4 * plan.chunk * pr * pc <= memory and plan.tile.threads <= 256, (p.describe(), plan)
        assert 1 <= plan.chunk <= p.c_in and plan.splits >= 1


def test_no_plan_when_no_patch_fits():
    limits = dict(DeviceProfile.for_family("nvidia").limits, **{"max-compute-workgroup-storage-size": 128})
    profile = dataclasses.replace(DeviceProfile.for_family("nvidia"), limits=limits)
    with pytest.raises(ValueError, match="workgroup memory"):
        direct.choose_plan(profile, make_params((1, 8, 64, 64), (8, 8, 3, 3), 1, 1), 1)


def test_register_tiles_bound_the_unrolled_code_and_the_loops(monkeypatch):
    monkeypatch.undo()
    for p in SUITE_LIKE:
        tile = direct_cpu.choose_tile(p)
        assert direct_cpu.fits(p, tile) and direct_cpu.unrolled_fmas(p, tile) <= direct_cpu.MAX_FMAS
    # the taps unroll: an invocation loops C_in/groups times (the generic kernel would loop 8192 * 13 times)
    assert direct.Direct.loop_trips(make_params((1, 8192, 4, 4), (8, 8192, 3, 3))) == 8192


def test_long_channel_loops_stay_within_lavapipes_limit():
    """8192 input channels of 3x3 (the taps unroll: 8192 loop trips) give the right sums on CPU adapters; their
    weights take 10 texture rows per output block and the padded input planes 4 texture layers."""
    p = make_params((1, 8192, 3, 3), (2, 8192, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(45))
    assert_matches(run(p, x, w, b), reference(p, x, w, b), "direct over 8192 input channels")

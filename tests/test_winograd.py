"""Winograd F(2x2,3x3) / F(4x4,3x3): transform matrices, borders, chunks, split K, NaN/overflow, big layers.

Both GEMM styles run on whatever device the tests have (lavapipe in CI): "workgroup" (gemm.BatchedGemm, what GPUs
get) and "registers" (gemm_cpu.BatchedGemm, what CPU adapters get), chosen by patching DeviceProfile.gemm_style.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ACTIVATIONS, assert_matches, random_inputs, reference, rel_error
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import GEMM_STYLES, DeviceProfile
from convroute.kernels import ALGORITHMS, gemm_cpu, winograd
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.kernels.winograd import Winograd2, Winograd4, toom_cook
from convroute.params import make_params

VARIANTS = (Winograd2, Winograd4)
NAMES = [v.name for v in VARIANTS]
BINDING = "max-storage-buffer-binding-size"


def use_style(monkeypatch, style):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: style))


def correlate_1d(g, d, m):
    return np.array([sum(g[k] * d[i + k] for k in range(len(g))) for i in range(m)])


@pytest.mark.parametrize("m, points", [(2, (0, 1, -1)), (4, Winograd4.points), (4, (0, 1, -1, 2, -2)),
                                       (6, (0, 1, -1, 2, -2, 0.5, -0.5))])
def test_toom_cook_is_a_correlation(m, points):
    """1-D: y = A^T [(G g) . (B^T d)] is the correlation of d with g; 2-D nests it on both axes."""
    at, g_mat, bt = toom_cook(m, points)
    assert at.shape == (m, m + 2) and g_mat.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    rng = np.random.default_rng()
    for _ in range(5):
        g, d = rng.standard_normal(3), rng.standard_normal(m + 2)
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), correlate_1d(g, d, m), rtol=1e-10, atol=1e-10)
    g2, d2 = rng.standard_normal((3, 3)), rng.standard_normal((m + 2, m + 2))
    y = at @ ((g_mat @ g2 @ g_mat.T) * (bt @ d2 @ bt.T)) @ at.T
    direct = np.array([[np.sum(g2 * d2[i:i + 3, j:j + 3]) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, direct, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_shipped_input_and_output_transforms_are_exact_in_fp32(variant):
    """The B^T and A^T baked into the WGSL lose nothing in f32 (the chosen points give dyadic entries)."""
    at, _, bt = toom_cook(variant.m, variant.points)
    for mat in (at, bt):
        np.testing.assert_array_equal(mat.astype(np.float32).astype(np.float64), mat)


def test_toom_cook_rejects_bad_points():
    with pytest.raises(ValueError, match="distinct finite points"):
        toom_cook(2, (0, 1, 1))
    with pytest.raises(ValueError, match="needs 3 distinct"):
        toom_cook(2, (0, 1))


@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_unsupported_names_the_condition(variant):
    assert variant.unsupported(make_params((1, 4, 8, 8), (4, 4, 3, 3), 1, 1)) is None
    cases = {"kernel is 3x2": make_params((1, 4, 8, 8), (4, 4, 3, 2)),
             "stride=(2, 1)": make_params((1, 4, 8, 8), (4, 4, 3, 3), (2, 1)),
             "dilation=(1, 2)": make_params((1, 4, 8, 8), (4, 4, 3, 3), 1, 2, (1, 2)),
             "groups=2": make_params((1, 4, 8, 8), (4, 2, 3, 3), 1, 1, groups=2),
             "transposed": make_params((1, 4, 8, 8), (4, 4, 3, 3), transposed=True)}
    for expect, p in cases.items():
        why = variant.unsupported(p)
        assert why and expect in why, (expect, why)
    with pytest.raises(ValueError, match="stride"):
        conv2d(np.ones((1, 4, 8, 8), np.float32), np.ones((4, 4, 3, 3), np.float32), stride=2,
               algorithm=variant.name)


@st.composite
def winograd_convs(draw):
    """3x3 stride-1 convs: odd sizes, sizes not divisible by the tile, any per-axis padding, batch > 1."""
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h, w = draw(st.integers(max(1, 3 - 2 * ph), 14)), draw(st.integers(max(1, 3 - 2 * pw), 14))
    n, c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    return make_params((n, c_in, h, w), (c_out, c_in, 3, 3), 1, (ph, pw))


@settings(max_examples=28, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # CI time; new draws each run
@given(p=winograd_convs(), activation=st.sampled_from(ACTIVATIONS), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_borders_and_padding_match_torch(p, activation, bias, seed):
    x, w, b = random_inputs(p, np.random.default_rng(seed), bias)
    ref = reference(p, x, w, b, activation)
    for style in GEMM_STYLES:
        with pytest.MonkeyPatch.context() as monkeypatch:
            use_style(monkeypatch, style)
            for name in NAMES:
                out = conv2d(x, w, b, 1, p.padding, activation=activation, algorithm=name)
                assert_matches(out, ref, f"{name} ({style} GEMM) on {p.describe()} act={activation}")


@pytest.mark.parametrize("tile", gemm_cpu.TILES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_every_cpu_register_tile_with_partial_tiles(monkeypatch, variant, tile):
    """Each register tile of gemm_cpu, on a layer whose channels and tile count fill none of them evenly."""
    use_style(monkeypatch, "registers")
    monkeypatch.setattr(gemm_cpu, "choose_tile", lambda m, cols, batches, max_tn=None: tile)
    p = make_params((2, 13, 11, 9), (21, 13, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(20))
    kernel = variant(get_gpu(), p, w, b, Epilogue.parse("relu"))
    assert kernel.gemm.plan(p.n * kernel.th * kernel.tw, 1 << 30) == (tile, 1)
    out, _ = bind_and_run(kernel, p, x)
    assert_matches(out, reference(p, x, w, b, "relu"), f"{variant.name} with register tile {tile}")


def bind_and_run(kernel, p, x, monkeypatch=None, limit=None):
    """Bind poisoned buffers (with the binding limit patched only for bind's own buffers) and run."""
    gpu = get_gpu()
    x_buf = gpu.upload(x, "input")
    y_buf = gpu.empty(4 * int(np.prod(p.output_shape)), "output")
    gpu.fill(y_buf, np.nan)
    if limit is not None:
        monkeypatch.setitem(gpu.profile.limits, BINDING, limit)
    dispatches = kernel.bind(x_buf, y_buf, p.n)
    gpu.run(dispatches)
    return gpu.read(y_buf, p.output_shape), dispatches


@pytest.mark.parametrize("variant, case, per_chunk", [
    (Winograd2, dict(input_shape=(3, 5, 23, 19), weight_shape=(7, 5, 3, 3), padding=1), 128),
    (Winograd4, dict(input_shape=(2, 6, 17, 13), weight_shape=(5, 6, 3, 3), padding=(2, 1)), 12),
    (Winograd4, dict(input_shape=(3, 3, 30, 31), weight_shape=(4, 3, 3, 3), padding=0), 8),
], ids=["F2-128-tile-chunks", "F4-12-tile-chunks", "F4-8-tile-chunks"])
@pytest.mark.parametrize("style", GEMM_STYLES)
def test_tiles_go_in_chunks_when_v_or_mx_exceed_a_binding(monkeypatch, variant, case, per_chunk, style):
    """With the largest binding patched to fit `per_chunk` tiles, V and Mx are built per chunk (chunks straddle
    images of the batch) and the result still matches."""
    use_style(monkeypatch, style)
    p = make_params(**case)
    x, w, b = random_inputs(p, np.random.default_rng(21))
    kernel = variant(get_gpu(), p, w, b, Epilogue.parse("relu"))
    per_tile = 4 * kernel.positions * max(p.c_in, p.c_out)
    total = p.n * kernel.th * kernel.tw
    out, dispatches = bind_and_run(kernel, p, x, monkeypatch, per_tile * per_chunk + per_tile // 2)
    chunks = len(dispatches) // 3
    assert chunks == -(-total // per_chunk) and chunks >= 3, (chunks, total)
    assert_matches(out, reference(p, x, w, b, "relu"), f"{variant.name} in {chunks} chunks")


def test_too_small_a_binding_is_a_clear_error(monkeypatch):
    p = make_params((1, 4, 8, 8), (4, 4, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(22))
    kernel = Winograd4(get_gpu(), p, w, b, Epilogue())
    with pytest.raises(ValueError, match="winograd4 .* one tile's transforms need"):
        bind_and_run(kernel, p, x, monkeypatch, 64)


@pytest.mark.parametrize("variant", VARIANTS, ids=NAMES)
def test_split_k_partial_sums_are_added_by_the_output_transform(monkeypatch, variant):
    use_style(monkeypatch, "workgroup")
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 64))
    p = make_params((2, 130, 6, 5), (20, 130, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(23))
    kernel = variant(get_gpu(), p, w, b, Epilogue.parse("silu"))
    _, splits = kernel.gemm.plan(p.n * kernel.th * kernel.tw, 1 << 30)
    assert splits > 1
    out, _ = bind_and_run(kernel, p, x)
    assert_matches(out, reference(p, x, w, b, "silu"), f"{variant.name} with K split {splits} ways")


def test_split_k_gives_way_to_the_binding_limit(monkeypatch):
    """Fewer K splits when the split partial sums would not fit one binding, rather than a failure."""
    use_style(monkeypatch, "workgroup")
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 256))
    p = make_params((1, 130, 6, 5), (200, 130, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(24))
    kernel = Winograd2(get_gpu(), p, w, b, Epilogue())
    cols = kernel.th * kernel.tw
    assert kernel.gemm.plan(cols, 1 << 30)[1] > 1
    limit = 4 * kernel.positions * p.c_out * -(-cols // 4) * 4  # all tiles in one chunk, unsplit Mx fits
    assert kernel.gemm.out_bytes(cols, 1) <= limit < kernel.gemm.out_bytes(cols, 2)
    out, dispatches = bind_and_run(kernel, p, x, monkeypatch, limit)
    assert len(dispatches) == 3
    assert_matches(out, reference(p, x, w, b), "winograd2 with K splits cut by the binding limit")


@pytest.mark.parametrize("cols, width", [(4, 8), (12, 16), (30, 32), (50, 64), (200, 128)])
def test_narrow_column_tiles_for_few_winograd_tiles(monkeypatch, cols, width):
    use_style(monkeypatch, "workgroup")
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 1))
    p = make_params((1, 4, 8, 8), (20, 4, 3, 3), 1, 1)
    kernel = Winograd2(get_gpu(), p, *random_inputs(p, np.random.default_rng(25))[1:], Epilogue())
    tile, splits = kernel.gemm.plan(cols, 1 << 30)
    assert (tile.bn, splits) == (width, 1)


@pytest.mark.parametrize("style", GEMM_STYLES)
@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_reach_exactly_the_outputs_they_reach_in_torch(monkeypatch, name, style):
    """The transforms would smear a NaN over whole tiles; those tiles are recomputed directly."""
    use_style(monkeypatch, style)
    p = make_params((2, 3, 11, 9), (5, 3, 3, 3), 1, (1, 2))
    x, w, b = random_inputs(p, np.random.default_rng(26))
    x[0, 1, 4, 4] = np.nan
    x[1, 0, 0, 8] = np.inf
    x[1, 2, 10, 0] = -np.inf
    for activation in (None, "relu"):
        out = conv2d(x, w, b, 1, (1, 2), activation=activation, algorithm=name)
        ref = reference(p, x, w, b, activation)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref))
        np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
        finite = np.isfinite(ref)
        assert (~finite).any() and finite.any()
        assert_matches(np.where(finite, out, 0).astype(np.float32), np.where(finite, ref, 0), name)


@pytest.mark.parametrize("style", GEMM_STYLES)
@pytest.mark.parametrize("name", NAMES)
def test_overflow_in_the_transforms_falls_back_to_the_direct_sum(monkeypatch, name, style):
    """Inputs near the f32 limit overflow B^T d B although the conv itself is finite."""
    use_style(monkeypatch, style)
    p = make_params((1, 4, 9, 9), (3, 4, 3, 3), 1, 1)
    rng = np.random.default_rng(27)
    x = (1e38 * rng.uniform(0.5, 1, p.input_shape) * rng.choice([-1, 1], p.input_shape)).astype(np.float32)
    w = (rng.uniform(0, 1, p.weight_shape) * 0.01).astype(np.float32)
    ref = reference(p, x, w)
    assert np.isfinite(ref).all()
    assert_matches(conv2d(x, w, padding=1, algorithm=name), ref, f"{name} near the f32 limit")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels, size", [(512, 7), (64, 56)], ids=["512ch-7x7", "64ch-56x56"])
@pytest.mark.parametrize("style", GEMM_STYLES)
def test_error_on_large_layers(monkeypatch, name, channels, size, style):
    """The deepest K in the suites (512 channels x 3x3) and the most tiles (56x56) against float64 torch."""
    use_style(monkeypatch, style)
    p = make_params((1, channels, size, size), (channels, channels, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng())
    ref = reference(p, x, w, b)
    out = conv2d(x, w, b, padding=1, algorithm=name)
    print(f"{name} {channels}ch {size}x{size}: relative error {rel_error(out, ref):.2e}")
    assert_matches(out, ref, f"{name} on {p.describe()}")


def test_registered():
    assert ALGORITHMS["winograd2"] is Winograd2 and ALGORITHMS["winograd4"] is Winograd4


@pytest.mark.parametrize("style", GEMM_STYLES)
def test_f16_winograd4_sums_in_f32_and_stays_within_fp16_tolerance(monkeypatch, style):
    """F(4x4)'s output transform amplifies the rounding of f16 products: its GEMM sums in f32 whatever sums the
    caller asked for (winograd2's keep them). The shape is the H100 fuzz case that read 1.1-1.2 % with f16 sums
    (session 11)."""
    if F16_FEATURE not in get_gpu().profile.features:
        pytest.skip(f"the adapter lacks {F16_FEATURE}")
    use_style(monkeypatch, style)
    p = make_params((3, 4, 8, 8), (2, 4, 3, 3), 1, (2, 1))
    x, w, _ = random_inputs(p, np.random.default_rng(5485733))
    for variant, sums in ((Winograd4, "float32"), (Winograd2, "float16")):
        kernel = variant(get_gpu(), p, w, None, Epilogue(), dtype="float16")
        assert kernel.gemm.precision.accumulate == sums, variant.name
    out = conv2d(x, w, None, 1, (2, 1), algorithm="winograd4", dtype="float16")
    assert_matches(out.astype(np.float32), reference(p, x, w), "winograd4 float16", 1e-2)


@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("style", GEMM_STYLES)
def test_f16_winograd2_holds_inputs_near_the_f16_limit_without_the_fallback(monkeypatch, style, scaled):
    """F(2x2)'s f16 V (up to 4x the inputs) is stored times 1/4: inputs up to 3e4 (timm resnet50d's deepest convs
    in the zoo) stay on the fast path; unscaled, their tiles take the fallback (still right). The fallback is made
    to write NaN here, so a tile sent to it shows."""
    if F16_FEATURE not in get_gpu().profile.features:
        pytest.skip(f"the adapter lacks {F16_FEATURE}")
    use_style(monkeypatch, style)
    if not scaled:
        monkeypatch.setattr(winograd.Winograd2, "v_scale", 1.0)
    monkeypatch.setattr(winograd, "OUTPUT_HELPERS", winograd.OUTPUT_HELPERS.replace(
        "var s = bias[o];", "return bitcast<f32>(0x7fc00000u);\n  var s = bias[o];"))
    p = make_params((1, 16, 7, 7), (8, 16, 3, 3), 1, 1)
    rng = np.random.default_rng(28)
    x = (3e4 * rng.uniform(0.5, 1, p.input_shape) * rng.choice([-1, 1], p.input_shape)).astype(np.float16)
    w = (rng.standard_normal(p.weight_shape) / 12 / 3e4 * 1e3).astype(np.float32)
    ref = reference(p, x.astype(np.float32), w)
    assert np.isfinite(ref).all() and np.abs(ref).max() < 6e4
    out = conv2d(x, w, padding=1, algorithm="winograd2", dtype="float16")
    assert np.isnan(out).any() != scaled, "tiles took the non-finite fallback" if scaled else "no tile overflowed"
    if scaled:
        assert_matches(out.astype(np.float32), ref, "winograd2 float16 near the f16 limit", 1e-2)

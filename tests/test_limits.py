"""Device limits: every workgroup fits the device's workgroup memory, invocation and size limits.

- Tile choice is a pure function of the profile: whatever the launch, the chosen GEMM tile fits (WebGPU's
  minimum limits, wgpu's GLES 16352 bytes, a tiny device that needs the fallback tiles), and the bytes the
  chooser counts are what the generated WGSL declares.
- Gpu.pipeline reads each shader's workgroup and refuses an over-limit one with a ValueError naming the limit.
- On the device with its profile capped at WebGPU's minimum (16 KiB, 256 invocations), every algorithm in
  both GEMM styles and the model-op kernels with workgroup memory run and match torch float64.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import applicable, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import WEBGPU_MIN_LIMITS, DeviceProfile
from convroute.device.workgroup import check_workgroup, workgroup_needs
from convroute.kernels import ALGORITHMS, gemm
from convroute.kernels.common import FP32, Precision, uniform_block
from convroute.kernels.gemm_tiles import FALLBACK, NARROW, SIZED, TILES, Tile, fitting, generate
from convroute.params import make_params

STORAGE, INVOCATIONS = "max-compute-workgroup-storage-size", "max-compute-invocations-per-workgroup"
BIG = DeviceProfile("amd", "Big GPU", limits={STORAGE: 65536, INVOCATIONS: 1024})
MIN = BIG.with_limits(WEBGPU_MIN_LIMITS)
GLES = BIG.with_limits({STORAGE: 16352})
TINY = BIG.with_limits({STORAGE: 4096, INVOCATIONS: 64})
PRECISIONS = (FP32, Precision("float16"), Precision("float16", "float16"))
ALL_TILES = tuple(dict.fromkeys(TILES + tuple(t for ts in NARROW.values() for t in ts) + FALLBACK
                                + tuple(SIZED.values()) + (SIZED["small"].sliced(3), SIZED["large64"].sliced(2))))


def tile_source(tile: Tile, precision: Precision, quads: bool = False) -> str:
    return generate(tile, b_decl="", b_setup="", b_load="vec4<f32>(0.0)", params=uniform_block(gemm.GEMM_PARAMS),
                    act="fn act(v: f32) -> f32 { return v; }", store="", precision=precision, quads=quads)


@pytest.mark.parametrize("precision", PRECISIONS, ids=lambda p: f"{p.dtype}-{p.accumulate}")
def test_the_tile_chooser_counts_what_the_shader_declares(precision):
    for tile, quads in itertools.product(ALL_TILES, (False, True)):
        needs = workgroup_needs(tile_source(tile, precision, quads))
        assert needs is not None, tile
        assert needs.size == (tile.threads, 1, 1) and needs.storage == tile.workgroup_bytes(precision), tile


@pytest.mark.parametrize("profile", [MIN, GLES, TINY], ids=["webgpu-min", "gles", "tiny"])
def test_no_over_limit_tile_is_ever_chosen(profile):
    over = set()
    for precision in PRECISIONS:
        for m, cols, k_pad, batches, busy in itertools.product((8, 64, 100, 128, 192, 1000),
                                                               (1, 8, 12, 16, 30, 32, 50, 64, 100, 1000, 5000),
                                                               (16, 256, 4608), (1, 16), (1, 256)):
            tiles = gemm.tiles_for(cols, profile, precision)
            tile, splits = gemm.choose_tile(m, cols, k_pad, busy, batches, tiles)
            assert tile.unfit(profile, precision) is None, (tile, profile.limits)
            assert splits >= 1
            wide = gemm.choose_tile(m, cols, k_pad, busy, batches, gemm.tiles_for(cols))[0]
            if wide.unfit(profile, precision):
                over.add(wide)
    assert over, "the case never needed a smaller tile: it tests nothing"
    if profile is TINY:
        assert set(gemm.tiles_for(64, TINY)) <= set(FALLBACK)


def test_the_webgpu_minimum_keeps_the_tiles_that_fit_it():
    assert gemm.tiles_for(64, MIN) == (TILES[3],)  # 128x64x16 needs 24 KiB
    assert gemm.tiles_for(1000, MIN) == (TILES[0], TILES[1], TILES[3])
    assert gemm.tiles_for(1000, BIG) == TILES
    assert gemm.tiles_for(64, MIN, Precision("float16", "float16")) == TILES[2:]  # f16 tiles are half the size
    assert gemm.tiles_for(16, GLES) == (NARROW[16][1],)


def test_a_device_below_every_tile_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no GEMM tile fits .*maxComputeInvocationsPerWorkgroup"):
        fitting(TILES, BIG.with_limits({INVOCATIONS: 8}))


def test_profile_limits_default_to_webgpus_and_cap_only_downwards():
    bare = DeviceProfile("mali")
    assert (bare.max_workgroup_storage, bare.max_invocations, bare.max_workgroup_size) == (16384, 256, (256, 256, 64))
    assert BIG.with_limits({STORAGE: 1 << 20}).max_workgroup_storage == 65536
    assert MIN.workgroup_problem((256,), 16384) is None
    assert "maxComputeWorkgroupStorageSize" in MIN.workgroup_problem((64,), 16385)
    assert "maxComputeInvocationsPerWorkgroup" in MIN.workgroup_problem((16, 17))
    assert "maxComputeWorkgroupSizeZ" in MIN.workgroup_problem((1, 1, 65))


def test_the_pipeline_check_reads_sizes_consts_and_aliases():
    source = """alias AT = f16;
const WG: u32 = 0x40u;
const N = 100;
var<workgroup> a: array<vec4<AT>, N>;  // 800 bytes
var<workgroup> b: array<vec3<f32>, 3>;  // stride 16: 48 bytes
var<workgroup> c: atomic<u32>;  // 4 bytes, counted as 16
@compute @workgroup_size(WG, 2)
fn main() {}"""
    needs = workgroup_needs(source)
    assert needs is not None and needs.size == (64, 2, 1) and needs.storage == 800 + 48 + 16
    check_workgroup(MIN, source)
    with pytest.raises(ValueError, match=r"128 invocations .* allows 64"):
        check_workgroup(TINY, source)
    struct = "struct S { a: f32 }\nvar<workgroup> s: S;\n@compute @workgroup_size(1) fn main() {}"
    assert workgroup_needs(struct) is None


@pytest.mark.gpu
def test_gpu_refuses_an_over_limit_shader_before_compiling(monkeypatch):
    gpu = get_gpu()
    monkeypatch.setattr(gpu, "profile", gpu.profile.with_limits(WEBGPU_MIN_LIMITS))
    source = tile_source(TILES[2], FP32)
    with pytest.raises(ValueError, match=r"24576 bytes of workgroup memory.*allows 16384"):
        gpu.pipeline(source)
    assert not any(key[0] == source for key in gpu._pipelines)


CASES = [make_params((1, 8, 4, 4), (128, 8, 3, 3), 1, 1),  # 16 columns, 128 rows: an 18 KiB tile by default
         make_params((1, 8, 4, 4), (128, 8, 1, 1)),
         make_params((1, 8, 6, 6), (8, 1, 3, 3), 1, 1, groups=8),
         make_params((1, 8, 4, 4), (8, 4, 2, 2), 2, transposed=True)]


@pytest.mark.gpu
@pytest.mark.parametrize("style", ["workgroup", "registers"])
def test_every_algorithm_runs_within_webgpus_minimum_limits(monkeypatch, style):
    gpu = get_gpu()
    assert gemm.choose_tile(128, 16, 80, 1, tiles=gemm.tiles_for(16))[0].unfit(MIN) is not None
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    monkeypatch.setattr(gpu, "profile", gpu.profile.with_limits(WEBGPU_MIN_LIMITS))
    sources = []
    compile_pipeline = gpu.pipeline
    monkeypatch.setattr(gpu, "pipeline", lambda source, *a, **k: sources.append(source) or compile_pipeline(
        source, *a, **k))
    ran = set()
    for i, p in enumerate(CASES):
        x, w, b = random_inputs(p, np.random.default_rng(70 + i))
        ref = reference(p, x, w, b)
        for name in applicable(p):
            out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                         output_padding=p.output_padding, algorithm=name)
            err = np.abs(out - ref).max() / np.abs(ref).max()
            assert err < 1e-4, f"{name} ({style} GEMM) on {p.describe()}: relative error {err:.3g}"
            ran.add(name)
    assert ran == set(ALGORITHMS)
    needs = [workgroup_needs(s) for s in sources]
    assert sources and None not in needs  # every shader was sized, so every one was checked
    assert all(gpu.profile.workgroup_problem(n.size, n.storage) is None for n in needs)
    # the workgroup style's GEMM tiles go through workgroup memory; register tiles (all GEMMs on CPU adapters) do not
    assert (max(n.storage for n in needs) > 0) == (style == "workgroup")


@pytest.mark.gpu
def test_model_op_kernels_with_workgroup_memory_run_within_the_minimum(monkeypatch):
    import torch

    from convroute.kernels.linear import GemmLinear
    from convroute.kernels.pool import COOP_WINDOW, Pool2d

    gpu = get_gpu()
    monkeypatch.setattr(gpu, "profile", gpu.profile.with_limits(WEBGPU_MIN_LIMITS))
    rng = np.random.default_rng(75)
    w, bias, x = rng.standard_normal((128, 37)), rng.standard_normal(128), rng.standard_normal((12, 37))
    layer = GemmLinear(gpu, w, bias)  # 12 columns x 128 rows: an 18 KiB tile by default
    y = gpu.empty(4 * 12 * 128)
    gpu.fill(y, np.nan)
    out = gpu.run_and_read(layer.bind(gpu.upload(x), y, 12), y, (12, 128))
    ref = x @ w.T + bias
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4

    planes, side, k = 3, 20, 17
    assert k * k > COOP_WINDOW  # the per-workgroup reduction through workgroup memory
    pool = Pool2d(gpu, "max", planes, side, side, side - k + 1, side - k + 1, kernel=(k, k))
    x = rng.standard_normal((planes, side, side)).astype(np.float32)
    y = gpu.empty(4 * planes * (side - k + 1) ** 2)
    gpu.fill(y, np.nan)
    out = gpu.run_and_read(pool.bind(gpu.upload(x), y), y, (planes, side - k + 1, side - k + 1))
    np.testing.assert_array_equal(out, torch.nn.functional.max_pool2d(torch.from_numpy(x), k, 1).numpy())


@pytest.mark.gpu
@pytest.mark.parametrize("caps, tile", [({STORAGE: 4096, INVOCATIONS: 64}, FALLBACK[0]),
                                        ({STORAGE: 1024, INVOCATIONS: 16}, FALLBACK[1])], ids=["4KiB", "1KiB"])
def test_fallback_tiles_below_webgpus_minimum_match_torch(monkeypatch, caps, tile):
    """Devices below every regular tile (not WebGPU-conformant, but wgpu's GLES offers 16352 bytes) get the
    fallback tiles: 100 output channels over 24 pixels, so rows and columns both span partial tiles. With
    `busy` workgroups wanted, K is split as on a large GPU, and the split-K reduction must fit the cap too."""
    gpu = get_gpu()
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", "workgroup")
    monkeypatch.setattr(gpu, "profile", gpu.profile.with_limits(caps))
    p = make_params((1, 24, 4, 6), (100, 24, 1, 1))
    assert gemm.tiles_for(24, gpu.profile)[0] == tile
    x, w, b = random_inputs(p, np.random.default_rng(77))
    ref = reference(p, x, w, b)
    for busy in ("1", "256"):
        monkeypatch.setenv("CONVROUTE_BUSY_WORKGROUPS", busy)
        out = conv2d(x, w, b, algorithm="pointwise")
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-4

"""GemmLinear and Gemv: linear layers on GPUs (the tiled GEMM; a workgroup per 4 features for <= 4 rows);
RegisterLinear: CPU adapters' register tiles for >= 4 rows (run on every device here, its style forced);
TexLinear: CPU adapters' fewer rows, the weight in a texture (run on every device here); lavapipe runs the
GPU kernels too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import RandomCases, run_guarded
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import gemm_cpu
from convroute.kernels.base import CPU_LOOP_LIMIT
from convroute.kernels.common import F16_FEATURE, Precision
from convroute.kernels.direct_cpu import TEX_DIM
from convroute.kernels.linear import GEMV_ROWS, REGISTER_ROWS, GemmLinear, Gemv, RegisterLinear, TexLinear


def reference(x, w, b, act):
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b
    if act == "relu":
        y = np.maximum(y, 0)
    if act == "gelu":
        y = 0.5 * y * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    return y


@pytest.mark.parametrize("out_features, in_features, rows, act, busy", [
    (1000, 1280, 1, None, 1),
    (1000, 1280, 1, "relu", 256),  # split K: few rows, many workgroups wanted
    (10, 37, 3, "relu", 1),
    (130, 513, 5, "gelu", 64),
])
def test_gemm_linear_matches_float64(monkeypatch, out_features, in_features, rows, act, busy):
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: busy))
    gpu = get_gpu()
    rng = np.random.default_rng(out_features + rows)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    layer = GemmLinear(gpu, w, b, act)
    y_buf = gpu.empty(4 * rows * out_features)
    gpu.fill(y_buf, np.nan)
    y = gpu.run_and_read(layer.bind(gpu.upload(x), y_buf, rows), y_buf, (rows, out_features))
    ref = reference(x, w, b, act)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-4


def test_gemm_linear_is_for_gpus_whose_binding_holds_the_weight():
    gpu = get_gpu()
    assert GemmLinear.fits(gpu, (1000, 1280)) == (gpu.profile.gemm_style == "workgroup")
    assert not GemmLinear.fits(gpu, (4096, 25088 * 16))


@pytest.mark.parametrize("out_features, in_features, rows, act, dtype", [
    (1000, 1280, 1, None, "float32"),
    (10, 37, 3, "relu", "float32"),  # K below the workgroup, features not a multiple of 4
    (130, 513, 4, "gelu", "float32"),
    (1000, 2048, 2, None, "float16"),
])
def test_gemv_matches_float64(out_features, in_features, rows, act, dtype):
    gpu = get_gpu()
    precision = Precision(dtype)
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16 on this adapter")
    rng = np.random.default_rng(out_features + rows + in_features)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    layer = Gemv(gpu, w, b, act, precision)
    size = precision.itemsize * rows * out_features
    y_buf = gpu.empty(size)
    gpu.fill(y_buf, np.nan, precision.numpy)
    x_buf = gpu.upload(x, "x", precision.numpy)
    y = gpu.run_and_read(layer.bind(x_buf, y_buf, rows), y_buf, (rows, out_features), precision.numpy)
    ref = reference(x.astype(precision.numpy), w.astype(precision.numpy), b, act)
    error = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert error < (1e-4 if dtype == "float32" else 1e-2)


def test_gemv_is_for_gpus_and_few_rows():
    gpu = get_gpu()
    assert Gemv.fits(gpu, (1000, 1280), 1) == (gpu.profile.gemm_style == "workgroup")
    assert not Gemv.fits(gpu, (1000, 1280), GEMV_ROWS + 1)
    with pytest.raises(ValueError, match="rows"):
        Gemv(gpu, np.ones((8, 8), np.float32), None).bind(None, None, GEMV_ROWS + 1)


def use_registers(monkeypatch):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "registers"))


@pytest.mark.parametrize("out_features, in_features, rows, act, dtype, tile", [
    (384, 96, 256, None, "float32", None),  # a ConvNeXt MLP at 64 px
    (96, 384, 64, "gelu", "float32", None),
    (10, 37, 5, "relu", "float32", None),  # features and rows not multiples of 4, K odd
    (1000, 1280, 4, None, "float32", None),
    (130, 513, 33, "gelu", "float32", gemm_cpu.CpuTile(16, 16)),  # partial tiles in both directions
    (130, 513, 33, "relu", "float32", gemm_cpu.CpuTile(16, 8)),
    (130, 513, 33, None, "float32", gemm_cpu.CpuTile(16, 4)),
    (130, 513, 33, "gelu", "float32", gemm_cpu.CpuTile(8, 4)),
    (384, 96, 50, "gelu", "float16", None),
    (7, 1280, 9, None, "float16", gemm_cpu.CpuTile(16, 16)),
])
def test_register_linear_matches_float64(monkeypatch, out_features, in_features, rows, act, dtype, tile):
    use_registers(monkeypatch)
    gpu = get_gpu()
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16 on this adapter")
    rng = np.random.default_rng(out_features * rows + in_features)
    error, guard = run_register_linear(gpu, out_features, in_features, rows, act, dtype, tile, rng)
    assert np.isnan(guard), "wrote past the output"
    assert error < (1e-5 if dtype == "float32" else 1e-2)


def run_register_linear(gpu, o: int, k: int, rows: int, act, dtype: str, tile, rng) -> tuple[float, float]:
    """RegisterLinear on random weights and rows (`tile` None: the one it chooses): (relative error against
    float64, the guard element after the output)."""
    precision = Precision(dtype)
    w, b, x = (rng.standard_normal(shape).astype(np.float32) for shape in ((o, k), (o,), (rows, k)))
    layer = RegisterLinear(gpu, w, b, act, precision)
    x_buf = gpu.upload(x, "x", precision.numpy)

    def dispatches(y):
        if tile is None:
            return layer.bind(x_buf, y, rows)
        return [layer.gemm.dispatch(y, x_buf, 1, rows, 0, 0, tile, gemm_cpu.Rows, transposed=True)]
    flat, guard = run_guarded(gpu, dispatches, rows * o, precision)
    ref = reference(x.astype(precision.numpy), w.astype(precision.numpy), b, act)
    return float(np.linalg.norm(flat.reshape(rows, o) - ref) / np.linalg.norm(ref)), guard


def test_register_linear_random_shapes(monkeypatch):
    """CONVROUTE_LINEAR_FUZZ random register-tile linears (6 by default; CONVROUTE_LINEAR_FUZZ_SEED replays):
    shape, tile, activation and dtype drawn, against float64; a failure names the case."""
    use_registers(monkeypatch)
    gpu = get_gpu()
    cases = RandomCases(gpu, "CONVROUTE_LINEAR_FUZZ", "register linear fuzz", seed=17)
    rng = cases.rng
    for case in range(cases.count):
        o, k, rows = (int(rng.integers(1, 600)), int(rng.integers(1, 1500)), int(rng.integers(REGISTER_ROWS, 300)))
        tile = gemm_cpu.TILES[int(rng.integers(len(gemm_cpu.TILES)))]
        act, dtype = [None, "relu", "gelu"][int(rng.integers(3))], cases.dtype()
        error, guard = run_register_linear(gpu, o, k, rows, act, dtype, tile, rng)
        cases.check(error < (1e-5 if dtype == "float32" else 1e-2) and np.isnan(guard),
                    f"case {case}: {rows} x {k} -> {o}, tile {tile}, {act}, {dtype}: rel. error {error:.2e}")
    cases.finish()


def test_register_linear_is_for_cpu_adapters_and_enough_rows(monkeypatch):
    gpu = get_gpu()
    cpu = gpu.profile.gemm_style == "registers"
    assert RegisterLinear.fits(gpu, (384, 96), REGISTER_ROWS) == cpu
    use_registers(monkeypatch)
    assert RegisterLinear.fits(gpu, (384, 96), REGISTER_ROWS)
    assert not RegisterLinear.fits(gpu, (384, 96), REGISTER_ROWS - 1)  # the streaming kernel is faster there
    assert not RegisterLinear.fits(gpu, (8, CPU_LOOP_LIMIT + 1), 64)  # lavapipe would stop its K loop early
    assert not RegisterLinear.fits(gpu, (4096, 25088 * 16), 64)  # past one binding: Linear splits it


@pytest.mark.parametrize("out_features, in_features, rows, act, dtype", [
    (1000, 1280, 1, None, "float32"),  # a classifier
    (10, 7, 2, "relu", "float32"),  # K below one unrolled step: the tail loop alone
    (1001, 1003, 3, "gelu", "float32"),  # features and K not multiples of 4
    (130, 2 * TEX_DIM + 9, 1, None, "float32"),  # three K segments, the last one short
    (1000, 2048, 2, "relu", "float16"),
])
def test_tex_linear_matches_float64(out_features, in_features, rows, act, dtype):
    gpu = get_gpu()
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16 on this adapter")
    rng = np.random.default_rng(out_features * rows + in_features)
    error, guard = run_tex_linear(gpu, out_features, in_features, rows, act, dtype, rng)
    assert np.isnan(guard), "wrote past the output"
    assert error < (1e-5 if dtype == "float32" else 1e-2)


def run_tex_linear(gpu, o: int, k: int, rows: int, act, dtype: str, rng) -> tuple[float, float]:
    """TexLinear on random weights and rows, NaNs past x: (relative error against float64, the guard element)."""
    precision = Precision(dtype)
    w, b, x = (rng.standard_normal(shape).astype(np.float32) for shape in ((o, k), (o,), (rows, k)))
    layer = TexLinear(gpu, w, b, act, precision)
    x_buf = gpu.upload(np.append(x, np.full(8, np.nan, np.float32)), "x and NaNs past it", precision.numpy)
    flat, guard = run_guarded(gpu, lambda y: layer.bind(x_buf, y, rows), rows * o, precision)
    ref = reference(x.astype(precision.numpy), w.astype(precision.numpy), b, act)
    return float(np.linalg.norm(flat.reshape(rows, o) - ref) / np.linalg.norm(ref)), guard


def test_tex_linear_random_shapes():
    """CONVROUTE_LINEAR_FUZZ random texture linears (6 by default; CONVROUTE_LINEAR_FUZZ_SEED replays), K past
    one texture row among them, against float64; a failure names the case."""
    gpu = get_gpu()
    cases = RandomCases(gpu, "CONVROUTE_LINEAR_FUZZ", "texture linear fuzz", seed=23)
    rng = cases.rng
    for case in range(cases.count):
        o, rows = int(rng.integers(1, 600)), int(rng.integers(1, REGISTER_ROWS))
        k = int(rng.integers(1, 3 * TEX_DIM if rng.random() < 0.2 else 1500))
        act, dtype = [None, "relu", "gelu"][int(rng.integers(3))], cases.dtype()
        error, guard = run_tex_linear(gpu, o, k, rows, act, dtype, rng)
        cases.check(error < (1e-5 if dtype == "float32" else 1e-2) and np.isnan(guard),
                    f"case {case}: {rows} x {k} -> {o}, {act}, {dtype}: rel. error {error:.2e}")
    cases.finish()


def test_tex_linear_is_for_cpu_adapters_and_few_rows():
    gpu = get_gpu()
    assert TexLinear.fits(gpu, (1000, 1280), 1) == gpu.profile.texture_paths
    assert not TexLinear.fits(gpu, (1000, 1280), REGISTER_ROWS)  # RegisterLinear's
    assert not TexLinear.fits(gpu, (8, 4 * CPU_LOOP_LIMIT), 1)  # lavapipe would stop its K loop early
    with pytest.raises(ValueError, match="rows"):
        TexLinear(gpu, np.ones((8, 8), np.float32), None).bind(None, None, REGISTER_ROWS)


def test_a_token_mlp_compiles_to_register_tiles_on_cpu_adapters(monkeypatch):
    torch = pytest.importorskip("torch")
    import convroute.frontend as frontend
    from convroute.frontend import lower

    use_registers(monkeypatch)
    made = []
    monkeypatch.setattr(lower, "RegisterLinear", type("Spy", (RegisterLinear,), {
        "__init__": lambda self, *a, **k: (made.append(a[1].shape), RegisterLinear.__init__(self, *a, **k))[1]}))
    textured = []
    monkeypatch.setattr(lower, "TexLinear", type("Spy", (TexLinear,), {
        "__init__": lambda self, *a, **k: (textured.append(a[1].shape), TexLinear.__init__(self, *a, **k))[1]}))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 384), torch.nn.GELU(), torch.nn.Linear(384, 96),
                                torch.nn.Flatten(), torch.nn.Linear(50 * 96, 10)).eval()
    x = torch.randn(1, 50, 96)
    program = frontend.compile(model, x, policy="seed")
    with torch.no_grad():
        ref = model.double()(x.double())
    got = program(x).double()
    assert torch.linalg.norm(got - ref) / torch.linalg.norm(ref) < 1e-5
    assert made == [(384, 96), (96, 384)]  # not the 1-row classifier: TexLinear where textures are the CPU path
    assert textured == ([(10, 50 * 96)] if program.gpu.profile.texture_paths else [])

"""Conv kernels built with residual=True store act(conv + bias + residual) in one dispatch (the fused residual
add of ResNet / MobileNetV2 blocks): each path against the float64 torch reference, fp32 and fp16, poisoned
outputs. The residual is random, so a store that ignored it (or read it at the wrong index) fails. Each path runs
in fp32, fp16 or both (lavapipe compiles every pipeline variant for a second or so: CI time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import activate, assert_matches, random_inputs
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS, direct_cpu
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision
from convroute.measure.reference import norm_relative_error, torch_reference
from convroute.params import make_params

TOL16 = 1e-2
NO_F16 = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
F32, F16, BOTH = ("float32",), ("float16",), ("float32", "float16")


def cases(table: dict) -> list:
    """(case, dtype) parameters from a table whose rows end with their dtypes."""
    return [pytest.param(name, dtype, id=f"{name}-{dtype}", marks=[NO_F16] if dtype == "float16" else [])
            for name, row in table.items() for dtype in row[-1]]


# (algorithm, GEMM style, params, activation, dtypes): odd channel counts, partial tiles; "quads" where the pixels per
# image are a multiple of 4 (the GEMM stores four columns at once), "cols" where they are not.
CASES = {
    "pointwise-quads": ("pointwise", "workgroup", make_params((2, 13, 6, 6), (21, 13, 1, 1)), "relu", BOTH),
    "pointwise-strided-cols": ("pointwise", "workgroup", make_params((1, 12, 9, 7), (10, 12, 1, 1), 2), None,
                               F32),
    "implicit-cols": ("implicit_gemm", "workgroup", make_params((2, 5, 9, 7), (12, 5, 3, 3), 1, 1), "relu", F16),
    "im2col-quads": ("im2col", "workgroup", make_params((1, 6, 8, 6), (9, 6, 3, 3), 1, 1), "relu6", F32),
    "pointwise-registers-vec4": ("pointwise", "registers", make_params((2, 13, 6, 6), (21, 13, 1, 1)), "relu",
                                 F32),
    "pointwise-registers-strided": ("pointwise", "registers", make_params((1, 12, 9, 7), (10, 12, 1, 1), 2),
                                    None, F16),
    "implicit-registers": ("implicit_gemm", "registers", make_params((2, 5, 9, 7), (12, 5, 3, 3), 1, 1), "relu",
                           F32),
    "im2col-registers": ("im2col", "registers", make_params((1, 6, 8, 6), (9, 6, 3, 3), 1, 1), "hardswish", F16),
}
# direct: register tiles (CPU adapters; the generic kernel for small layers, or one specialised per geometry
# reading textures)
# and workgroup tiles (GPUs), with the input channels split across workgroups where the device is large.
DIRECT = {
    "registers-generic": ("registers", make_params((2, 5, 9, 7), (12, 5, 3, 3), 1, 1), "relu", None, F32),
    "registers-special-strided": ("registers", make_params((1, 6, 11, 9), (10, 6, 3, 3), 2, 1), None, 0, F16),
    "workgroup": ("workgroup", make_params((2, 5, 9, 7), (12, 5, 3, 3), 1, 1), "relu", None, F32),
    "workgroup-split": ("workgroup", make_params((1, 64, 6, 6), (8, 64, 3, 3), 1, 1), "relu", 1024, F16),
}
# Winograd: partial output tiles (Ho, Wo not multiples of m); both GEMM styles share the output transform.
WINOGRAD = {
    "winograd2-workgroup": ("winograd2", "workgroup", make_params((2, 6, 7, 9), (10, 6, 3, 3), 1, 1), "relu",
                            F32),
    "winograd4-registers": ("winograd4", "registers", make_params((1, 6, 10, 7), (9, 6, 3, 3), 1, 1), None, F16),
}
# K split across workgroups (busy device patched large): the reduce dispatch adds the residual.
SPLIT_K = {
    "im2col-split-cols": ("im2col", make_params((1, 64, 7, 7), (40, 64, 3, 3), 1, 1), "relu", F32),
    "pointwise-split-quads": ("pointwise", make_params((2, 300, 4, 4), (70, 300, 1, 1)), None, BOTH),
}


def use_style(monkeypatch, style):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: style))


def run_residual(name, p, activation, dtype, seed=0):
    """(output, reference, dispatches) of `name` with a random residual, outputs poisoned with NaN first."""
    rng = np.random.default_rng(seed)
    x, w, b = random_inputs(p, rng)
    r = rng.uniform(-1.0, 1.0, p.output_shape).astype(np.float32)
    gpu, precision = get_gpu(), Precision.parse(dtype)
    kernel = ALGORITHMS[name](gpu, p, w, b, Epilogue.parse(activation), dtype=dtype, residual=True)
    y = gpu.empty(precision.itemsize * int(np.prod(p.output_shape)), "output")
    gpu.fill(y, np.nan, precision.numpy)
    dispatches = kernel.bind(gpu.upload(x, "input", precision.numpy), y, p.n,
                             residual=gpu.upload(r, "residual", precision.numpy))
    gpu.run(dispatches)
    ref = activate(torch.from_numpy(torch_reference(p, x, w, b) + r), activation).numpy()
    return gpu.read(y, p.output_shape, precision.numpy), ref, dispatches


def check(out, ref, what, dtype):
    if dtype == "float32":
        assert_matches(out, ref, what)
    else:
        assert np.isfinite(out).all(), f"{what}: unwritten (NaN) outputs"
        err = norm_relative_error(out, ref)
        assert err <= TOL16, f"{what}: relative error {err:.3g} > {TOL16}"


@pytest.mark.parametrize("case, dtype", cases(CASES))
def test_residual_store_matches_torch(monkeypatch, case, dtype):
    name, style, p, activation, _ = CASES[case]
    use_style(monkeypatch, style)
    out, ref, _ = run_residual(name, p, activation, dtype)
    check(out, ref, f"{case} {dtype}", dtype)


@pytest.mark.parametrize("case, dtype", cases(SPLIT_K))
def test_residual_after_split_k(monkeypatch, k_splits, case, dtype):
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 64))
    use_style(monkeypatch, "workgroup")
    name, p, activation, _ = SPLIT_K[case]
    out, ref, dispatches = run_residual(name, p, activation, dtype, seed=1)
    assert len(dispatches) >= 2 and dispatches[-1].pipeline is not dispatches[-2].pipeline, "K was not split"
    check(out, ref, f"{case} {dtype}", dtype)


@pytest.mark.parametrize("case, dtype", cases(DIRECT))
def test_direct_residual_matches_torch(monkeypatch, case, dtype):
    style, p, activation, knob, _ = DIRECT[case]
    use_style(monkeypatch, style)
    # small register tiles only: lavapipe compiles the big ones for seconds at their first dispatch
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 8, 2), direct_cpu.RegisterTile(4, 4)))
    if style == "registers" and knob is not None:
        monkeypatch.setattr(direct_cpu, "SPECIALISE_FLOPS", knob)
    if style == "workgroup" and knob is not None:
        monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: knob))
    out, ref, dispatches = run_residual("direct", p, activation, dtype, seed=4)
    # the specialised register tiles first copy the padded input into a texture
    assert len(dispatches) == (2 if case in ("workgroup-split", "registers-special-strided") else 1), \
        "input channels split as planned"
    check(out, ref, f"direct {case} {dtype}", dtype)


@pytest.mark.parametrize("case, dtype", cases(WINOGRAD))
def test_winograd_residual_matches_torch(monkeypatch, case, dtype):
    name, style, p, activation, _ = WINOGRAD[case]
    use_style(monkeypatch, style)
    out, ref, _ = run_residual(name, p, activation, dtype, seed=5)
    check(out, ref, f"{case} {dtype}", dtype)


def test_winograd_residual_in_tiles_recomputed_directly():
    """A NaN input sends its tiles to the output transform's direct fallback, which adds the residual too: the
    NaNs land where torch puts them and every other output matches."""
    p = make_params((1, 3, 8, 8), (5, 3, 3, 3), 1, 1)
    rng = np.random.default_rng(6)
    x, w, b = random_inputs(p, rng)
    x[0, 1, 2, 5] = np.nan
    r = rng.uniform(-1.0, 1.0, p.output_shape).astype(np.float32)
    gpu = get_gpu()
    kernel = ALGORITHMS["winograd4"](gpu, p, w, b, Epilogue(), residual=True)
    y = gpu.empty(4 * int(np.prod(p.output_shape)), "output")
    gpu.fill(y, np.nan)
    gpu.run(kernel.bind(gpu.upload(x), y, p.n, residual=gpu.upload(r)))
    out, ref = gpu.read(y, p.output_shape), torch_reference(p, x, w, b) + r
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    ok = np.isfinite(ref)
    assert np.abs(out[ok] - ref[ok]).max() / np.abs(ref[ok]).max() < 1e-4


def test_residual_needs_a_kernel_that_fuses_it():
    p = make_params((1, 4, 6, 6), (4, 1, 3, 3), 1, 1, 1, 4)
    x, w, b = random_inputs(p, np.random.default_rng(2))
    assert not ALGORITHMS["depthwise"].fuses_residual
    with pytest.raises(ValueError, match="cannot add a residual"):
        ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue(), residual=True)
    p = make_params((1, 4, 6, 6), (4, 4, 1, 1))
    x, w, b = random_inputs(p, np.random.default_rng(3))
    kernel = ALGORITHMS["pointwise"](get_gpu(), p, w, b, Epilogue(), residual=True)
    buf = get_gpu().empty(4 * 144)
    with pytest.raises(ValueError, match="residual"):
        kernel.bind(buf, buf, 1)

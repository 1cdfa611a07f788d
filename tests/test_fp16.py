"""dtype="float16": every algorithm with f16 storage (f32 or f16 sums) against the float64 PyTorch reference.

The reference is computed from the float32 inputs, so the error includes rounding the inputs and weights to
f16; the bound is relative error <= 1e-2. Outputs are poisoned with f16 NaN first (conftest), so unwritten
elements fail. Skipped only when the adapter lacks shader-f16.
"""

from __future__ import annotations

import re
import types
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import F16_HEADERS, applicable, random_inputs, reference, rel_error
from convroute import Conv2d, conv2d
from convroute.api import batch_chunk
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS, gemm, gemm_tex
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.kernels.im2col import Im2col
from convroute.params import make_params

TOL16 = 1e-2
ACCUMULATE = ("float32", "float16")
BINDING = "max-storage-buffer-binding-size"

needs_f16 = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features,
                               reason=f"the adapter lacks {F16_FEATURE}")


def assert_close16(out, ref, what: str, tol: float = TOL16) -> float:
    out = np.asarray(out)
    assert out.dtype == np.float16, f"{what}: result dtype {out.dtype}, expected float16"
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    bad = ~np.isfinite(out) & np.isfinite(ref)
    assert not bad.any(), f"{what}: {int(bad.sum())} of {out.size} outputs are NaN/Inf (unwritten?)"
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"
    return err


def run_all(p, activation, bias, rng, accumulate="float32", expect=None):
    x, w, b = random_inputs(p, rng, bias)
    ref = reference(p, x, w, b, activation)
    # Rounding inputs and weights to f16 (and f16 sums) errs in proportion to the terms, not to the result: with
    # few terms that cancel (one output channel, 4-8 products, relu) |y - ref| / max|ref| reached 0.0106 (f32
    # sums) and 0.018 (f16 sums). The error is bounded against the terms' magnitudes, a dot product's forward error.
    magnitude = float(np.max(reference(p, np.abs(x), np.abs(w), None if b is None else np.abs(b), None)))
    tol = TOL16 * magnitude / max(float(np.max(np.abs(ref))), 1e-30)
    names = applicable(p)
    if expect is not None:
        assert set(names) == set(expect), f"{p.describe()}: applicable {names}, expected {sorted(expect)}"
    for name in names:
        out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                     output_padding=p.output_padding, activation=activation, algorithm=name, dtype="float16",
                     accumulate=accumulate)
        assert_close16(out, ref, f"{name} fp16 accumulate={accumulate} on {p.describe()} act={activation}",
                       max(tol, TOL16))
    return names


DENSE3 = {"direct", "im2col", "implicit_gemm", "winograd2", "winograd4"}
GEMMS = {"direct", "im2col", "implicit_gemm"}
CASES = [  # (make_params kwargs, activation, bias, algorithms that must all be covered)
    (dict(input_shape=(2, 5, 9, 11), weight_shape=(7, 5, 3, 3), padding=1), "relu", True, DENSE3),
    (dict(input_shape=(1, 3, 7, 5), weight_shape=(5, 3, 3, 3), padding=(0, 2)), "hardswish", False, DENSE3),
    (dict(input_shape=(1, 64, 10, 10), weight_shape=(48, 64, 3, 3), padding=1), None, True, DENSE3),
    (dict(input_shape=(2, 4, 13, 10), weight_shape=(6, 4, 2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
     ("clamp", -0.5, 0.75), True, GEMMS),
    (dict(input_shape=(2, 8, 4, 6), weight_shape=(5, 8, 1, 1)), "silu", True, GEMMS | {"pointwise"}),
    (dict(input_shape=(3, 7, 5, 3), weight_shape=(9, 7, 1, 1), stride=2), "sigmoid", True, GEMMS | {"pointwise"}),
    (dict(input_shape=(2, 6, 7, 9), weight_shape=(9, 2, 3, 3), padding=1, groups=3), "relu6", True, {"direct"}),
    (dict(input_shape=(2, 5, 9, 7), weight_shape=(10, 1, 3, 3), stride=2, padding=1, groups=5), None, True,
     {"direct", "depthwise"}),
    (dict(input_shape=(2, 4, 5, 7), weight_shape=(4, 3, 3, 3), stride=2, padding=1, output_padding=1, groups=2,
          transposed=True), "relu", True, {"transposed"}),
    (dict(input_shape=(1, 3, 6, 5), weight_shape=(3, 2, 3, 2), stride=(1, 2), padding=(1, 0), dilation=2,
          output_padding=(1, 1), transposed=True), None, False, {"transposed"}),
]


@needs_f16
@pytest.mark.parametrize("accumulate", ACCUMULATE)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_algorithm_in_fp16_matches_torch(case, accumulate):
    kwargs, activation, bias, expect = CASES[case]
    run_all(make_params(**kwargs), activation, bias, np.random.default_rng(100 + case), accumulate, expect)


@needs_f16
def test_cases_cover_every_algorithm():
    covered = set().union(*(expect for *_, expect in CASES))
    assert covered == set(ALGORITHMS)


@st.composite
def small_convs(draw):
    kind = draw(st.sampled_from(("dense", "pointwise", "grouped", "depthwise", "transposed")))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 11)), draw(st.integers(3, 11))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    k = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    groups = {"grouped": 2, "depthwise": 3}.get(kind, 1)
    c_in = groups * draw(st.integers(1, 4)) if kind != "depthwise" else 3
    c_out = groups * draw(st.integers(1, 4)) if kind != "depthwise" else 3 * draw(st.integers(1, 2))
    if kind == "transposed":
        weight = (c_in, c_out // groups) + k
        return make_params((n, c_in, h, w), weight, stride, padding, 1, groups, transposed=True)
    return make_params((n, c_in, h, w), (c_out, c_in // groups) + k, stride, padding, 1, groups)


@needs_f16
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=small_convs(), accumulate=st.sampled_from(ACCUMULATE), seed=st.integers(0, 2**32 - 1))
def test_random_convs_in_fp16(p, accumulate, seed):
    run_all(p, "relu", True, np.random.default_rng(seed), accumulate)


@needs_f16
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_shader_of_an_fp16_kernel_stores_f16(monkeypatch, name):
    """No algorithm silently runs fp32 shaders: every pipeline an fp16 kernel builds starts with an f16 storage
    header (f16 or f32 sums: winograd4's GEMM sums in f32)."""
    p = {"transposed": make_params((1, 4, 5, 5), (4, 4, 3, 3), 2, 1, transposed=True),
         "depthwise": make_params((1, 4, 6, 6), (4, 1, 3, 3), 1, 1, groups=4),
         "pointwise": make_params((1, 4, 6, 6), (8, 4, 1, 1))}.get(name, make_params((1, 4, 6, 6), (8, 4, 3, 3), 1, 1))
    gpu = get_gpu()
    sources, real = [], gpu.pipeline

    def recording(source, constants=None):
        sources.append(source)
        return real(source, constants)

    monkeypatch.setattr(gpu, "pipeline", recording)
    x, w, b = random_inputs(p, np.random.default_rng(5))
    kernel = ALGORITHMS[name](gpu, p, w, b, Epilogue(), dtype="float16")
    assert kernel.dtype == "float16"
    kernel.bind(gpu.empty(2 * x.size), gpu.empty(2 * int(np.prod(p.output_shape))), p.n)
    assert sources and all(s.startswith(F16_HEADERS) for s in sources), name


@needs_f16
def test_input_dtypes_are_converted_and_the_result_is_float16():
    import torch

    p = make_params((2, 3, 7, 9), (4, 3, 3, 3), padding=1)
    x, w, b = random_inputs(p, np.random.default_rng(3))
    ref = reference(p, x, w, b)
    layer = Conv2d(torch.from_numpy(w).half(), torch.from_numpy(b).double(), padding=1, dtype="float16")
    assert layer.dtype == "float16"
    for given_x in (x, x.astype(np.float16), x.astype(np.float64), torch.from_numpy(x).half(), torch.from_numpy(x)):
        assert_close16(layer(given_x), ref, f"input {given_x.dtype}")
    assert conv2d(x, w, b, padding=1).dtype == np.float32  # the default is unchanged
    assert_close16(conv2d(x, w, b, padding=1, dtype=np.float16), ref, "dtype=np.float16")
    assert_close16(conv2d(x, w, b, padding=1, dtype=torch.float16), ref, "dtype=torch.float16")


@needs_f16
def test_nan_and_inf_propagate_in_fp16():
    p = make_params((1, 3, 8, 8), (4, 3, 3, 3), padding=1)
    x, w, b = random_inputs(p, np.random.default_rng(8))
    x[0, 1, 2, 3], x[0, 2, 6, 6] = np.nan, np.inf
    ref = reference(p, x, w, b)
    for name in applicable(p):
        out = conv2d(x, w, b, padding=1, algorithm=name, dtype="float16").astype(np.float64)
        assert (np.isnan(out) == np.isnan(ref)).all(), name
        assert (np.isinf(out) == np.isinf(ref)).all(), name
        ok = np.isfinite(ref)
        assert rel_error(out[ok], ref[ok]) <= TOL16, name


@needs_f16
def test_odd_float16_buffers_round_trip_and_poison_every_element():
    gpu = get_gpu()
    for count in (1, 3, 7, 10):
        data = np.random.default_rng(count).standard_normal(count).astype(np.float16)
        buf = gpu.upload(data, "odd", np.float16)
        assert buf.size % 4 == 0 and buf.size >= 2 * count
        assert np.array_equal(gpu.read(buf, (count,), np.float16), data)
        gpu.fill(buf, np.nan, np.float16)
        assert np.isnan(gpu.read(buf, (count,), np.float16)).all()
        gpu.write(buf, data, np.float16)
        assert np.array_equal(gpu.read(buf, (count,), np.float16), data)
    assert gpu.empty(6).size == 8


@needs_f16
def test_im2col_fp16_column_chunks(monkeypatch):
    """The column matrix is f16, so a binding holds twice the columns; chunks still match. One busy workgroup
    wanted, so no GPU splits K (a reduce dispatch per chunk would change the count)."""
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 1))
    monkeypatch.setattr(gemm_tex, "TEX_DIM", 16)  # CPU adapters: past the column texture's limits too
    p = make_params((3, 8, 11, 10), (6, 8, 3, 3), padding=1)
    x, w, b = random_inputs(p, np.random.default_rng(9))
    k_pad = -(-p.c_in * 9 // gemm.K_ALIGN) * gemm.K_ALIGN
    limit = 2 * gemm.TILE * k_pad  # one tile of f16 columns (half a tile in fp32, which im2col refuses)
    gpu = get_gpu()
    monkeypatch.setitem(gpu.profile.limits, BINDING, limit)
    kernel = Im2col(gpu, p, w, b, Epilogue(), dtype="float16")
    assert kernel.chunk_columns(10**6) == gemm.TILE
    y = gpu.empty(2 * int(np.prod(p.output_shape)))
    gpu.fill(y, np.nan, np.float16)
    x_buf = gpu.upload(x, "input", np.float16)
    dispatches = kernel.bind(x_buf, y, p.n)
    assert len(dispatches) == 2 * -(-p.n * p.ho * p.wo // gemm.TILE)
    gpu.run(dispatches)
    assert_close16(gpu.read(y, p.output_shape, np.float16), reference(p, x, w, b), "im2col fp16 chunks")


def test_batch_chunk_counts_two_bytes_per_element():
    p = make_params((8, 4, 10, 10), (4, 4, 3, 3), padding=1)
    assert batch_chunk(p, 4 * 400 * 2, itemsize=2) == 4
    assert batch_chunk(p, 4 * 400 * 2) == 2


@pytest.mark.parametrize("bad", ["float64", "bfloat16", "int8", "f16x", np.int32, 3])
def test_unknown_dtype_is_rejected(bad):
    p = make_params((1, 2, 5, 5), (3, 2, 3, 3))
    x, w, b = random_inputs(p, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown dtype"):
        conv2d(x, w, b, dtype=bad)
    with pytest.raises(ValueError, match="unknown dtype"):
        Conv2d(w, b, dtype=bad)
    with pytest.raises(ValueError, match="unknown accumulate"):
        conv2d(x, w, b, dtype="float16", accumulate=bad)


def test_float16_sums_need_float16_storage():
    p = make_params((1, 2, 5, 5), (3, 2, 3, 3))
    x, w, b = random_inputs(p, np.random.default_rng(0))
    with pytest.raises(ValueError, match="accumulate='float16' needs dtype='float16'"):
        conv2d(x, w, b, accumulate="float16")


def test_float16_without_shader_f16_names_the_feature_and_the_adapter():
    real = get_gpu()
    profile = replace(real.profile, features=frozenset({"timestamp-query"}))
    fake = types.SimpleNamespace(profile=profile, device=real.device)
    p = make_params((1, 2, 5, 5), (3, 2, 3, 3))
    x, w, b = random_inputs(p, np.random.default_rng(0))
    layer = Conv2d(w, b, dtype="float16", gpu=fake)
    with pytest.raises(ValueError, match=f"'shader-f16'.*{re.escape(profile.name)}"):
        layer(x)
    for name in applicable(p):
        with pytest.raises(ValueError, match="shader-f16"):
            ALGORITHMS[name](fake, p, w, b, Epilogue(), dtype="float16")


@needs_f16
def test_conv_command_runs_fp16(capsys):
    from convroute.cli.main import main

    args = ["conv", "--input", "2,4,7,9", "--weight", "6,4,3,3", "--padding", "1", "--budget", "0.05", "--repeats",
            "3", "--dtype", "float16"]
    assert main(args + ["--accumulate", "float16"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the header wraps where the device's name ends
    assert "dtype float16, sums float16" in out and "tolerance 0.01" in out and "WRONG" not in out
    assert all(name in out for name in ("direct", "im2col", "implicit_gemm", "winograd2", "winograd4"))
    with pytest.raises(SystemExit):
        main(["conv", "--input", "1,4,8,8", "--weight", "8,4,3,3", "--dtype", "float64"])
    assert main(["conv", "--input", "1,4,8,8", "--weight", "8,4,3,3", "--accumulate", "float16"]) == 2
    assert "needs dtype='float16'" in capsys.readouterr().err

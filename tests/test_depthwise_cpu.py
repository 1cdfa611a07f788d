"""depthwise on CPU adapters (register style): the texture kernel (depthwise_cpu) where its code stays small and
the textures fit, the buffer kernel past that; both against float64 PyTorch, whatever device runs the tests."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS, depthwise_cpu
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.params import make_params

LAYERS = {  # sizes that fill no tile; multiplier 2; stride, dilation, uneven padding; a 5x3 kernel; batch 2
    "3x3": make_params((2, 5, 13, 11), (5, 1, 3, 3), 1, 1, groups=5),
    "mult2-s2-d2": make_params((1, 3, 17, 10), (6, 1, 3, 3), 2, (2, 1), (2, 2), groups=3),
    "5x3-s(1,2)": make_params((1, 4, 9, 15), (4, 1, 5, 3), (1, 2), (2, 0), groups=4),
}


def register_style(monkeypatch):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "registers"))


def run(p, x, w, b, activation, **kwargs):
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation=activation,
                  algorithm="depthwise", **kwargs)


@pytest.mark.parametrize("layer", LAYERS)
def test_texture_kernel_matches_torch(monkeypatch, layer):
    register_style(monkeypatch)
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(50))
    assert ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue()).tex is not None
    assert_matches(run(p, x, w, b, "relu6"), reference(p, x, w, b, "relu6"), f"depthwise textures on {layer}")


def test_large_kernels_keep_the_buffer_kernel(monkeypatch):
    register_style(monkeypatch)
    monkeypatch.setattr(depthwise_cpu, "MAX_FMAS", 8)  # a 3x3 kernel unrolls 72 FMAs per invocation
    p = LAYERS["mult2-s2-d2"]
    x, w, b = random_inputs(p, np.random.default_rng(51))
    assert ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue()).tex is None
    assert_matches(run(p, x, w, b, "silu"), reference(p, x, w, b, "silu"), "depthwise buffer kernel")


@pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
def test_texture_kernel_in_float16(monkeypatch):
    register_style(monkeypatch)
    p = LAYERS["3x3"]
    x, w, b = random_inputs(p, np.random.default_rng(52))
    out = run(p, x, w, b, None, dtype="float16")
    ref = reference(p, x, w, b)
    assert out.dtype == np.float16
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-2, f"depthwise fp16 textures: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layer", LAYERS)
def test_buffer_kernel_with_the_shape_baked_in(monkeypatch, layer, dtype):
    """CONVROUTE_DEPTHWISE_CONSTANTS (on trial, session 24): GPUs' buffer kernel with the layer's shape written
    into the WGSL as literals (loops unroll, divisions fold) matches float64 like the kernel reading P."""
    if dtype == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip(f"the adapter lacks {F16_FEATURE}")
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))
    monkeypatch.setenv("CONVROUTE_DEPTHWISE_CONSTANTS", "1")
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(53))
    kernel = ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue(), dtype=dtype)
    assert kernel.tex is None and "P.kw" not in kernel.source and f"kw < {p.kw}u" in kernel.source
    out = run(p, x, w, b, "hardswish", dtype=dtype)
    ref = reference(p, x, w, b, "hardswish")
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err < (1e-2 if dtype == "float16" else 1e-5), f"depthwise constants on {layer}: relative error {err:.3g}"


@pytest.mark.parametrize("layer", LAYERS)
def test_buffer_kernel_with_f32_sums(monkeypatch, layer):
    """CONVROUTE_DEPTHWISE_F32_SUMS (on by default since session 26): the f16 buffer kernel summing in f32 (no f16
    block sums) matches float64 at least as closely as fp16 storage allows; switched off, it sums in f16 blocks."""
    if F16_FEATURE not in get_gpu().profile.features:
        pytest.skip(f"the adapter lacks {F16_FEATURE}")
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: "workgroup"))
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(54))
    monkeypatch.setenv("CONVROUTE_DEPTHWISE_F32_SUMS", "0")
    kernel = ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue(), dtype="float16")
    assert "alias AT = f16;" in kernel.source and "part" in kernel.source
    monkeypatch.delenv("CONVROUTE_DEPTHWISE_F32_SUMS")
    kernel = ALGORITHMS["depthwise"](get_gpu(), p, w, b, Epilogue(), dtype="float16")
    assert "alias AT = f32;" in kernel.source and "part" not in kernel.source
    out = run(p, x, w, b, "hardswish", dtype="float16")
    ref = reference(p, x, w, b, "hardswish")
    err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"depthwise f32 sums on {layer}: relative error {err:.3g}"

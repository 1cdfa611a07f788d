"""`transposed`'s GEMM path (kernels/transposed.py): up-convolutions whose kernel tiles the output exactly
(Kh == Sh, Kw == Sw, no padding, groups 1) run as one GEMM with a depth-to-space store on GPUs (gemm_style
"workgroup", forced here on whatever adapter runs the tests); the rest, and CPU adapters, keep the gather.
Against torch float64 with poisoned outputs, in both GEMM styles and in f16 where the adapter has it."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference, rel_error
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import gemm
from convroute.kernels.common import F16_FEATURE, Epilogue
from convroute.kernels.transposed import Transposed
from convroute.params import make_params

LAYERS = {  # C_out never a multiple of 4; H*W a multiple of 4 (pointwise's vec4 B) or not (its scalar B)
    "2x2-s2": make_params((1, 8, 4, 4), (8, 5, 2, 2), 2, transposed=True),
    "2x2-s2-batch2-deep": make_params((2, 72, 8, 6), (72, 6, 2, 2), 2, transposed=True),  # K could split
    "3x3-s3-batch2-odd": make_params((2, 6, 5, 3), (6, 7, 3, 3), 3, transposed=True),
    "2x3-s23-odd": make_params((1, 5, 3, 5), (5, 3, 2, 3), (2, 3), transposed=True),
}
NOT_COVERED = {
    "padding": make_params((1, 4, 4, 4), (4, 4, 2, 2), 2, 1, transposed=True),
    "groups": make_params((1, 4, 4, 4), (4, 2, 2, 2), 2, groups=2, transposed=True),
    "output_padding": make_params((1, 4, 4, 4), (4, 4, 2, 2), 2, output_padding=1, dilation=2, transposed=True),
    "overlapping": make_params((1, 4, 4, 4), (4, 4, 3, 3), 2, transposed=True),
}


def use_style(monkeypatch, style):
    monkeypatch.setattr(DeviceProfile, "gemm_style", property(lambda self: style))
    monkeypatch.setenv("CONVROUTE_BUSY_WORKGROUPS", "256")  # a GPU's: sized_plan would split K of the deep layer


def run(p, x, w, b, dtype="float32", accumulate=None):
    return conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, transposed=True,
                  output_padding=p.output_padding, activation="relu", algorithm="transposed", dtype=dtype,
                  accumulate=accumulate)


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("layer", LAYERS)
def test_exact_cover_matches_torch(monkeypatch, style, layer):
    use_style(monkeypatch, style)
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(7))
    assert_matches(run(p, x, w, b), reference(p, x, w, b, "relu"), f"transposed ({style}) on {layer}")


@pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features, reason=f"the adapter lacks {F16_FEATURE}")
@pytest.mark.parametrize("accumulate", ["float32", "float16"])
@pytest.mark.parametrize("layer", ["2x2-s2-batch2-deep", "3x3-s3-batch2-odd"])
def test_exact_cover_in_fp16(monkeypatch, layer, accumulate):
    use_style(monkeypatch, "workgroup")
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(8))
    out = np.asarray(run(p, x, w, b, "float16", accumulate))
    assert out.dtype == np.float16 and np.isfinite(out).all()
    err = rel_error(out, reference(p, x, w, b, "relu"))
    assert err <= 1e-2, f"transposed fp16 accumulate={accumulate} on {layer}: relative error {err:.3g}"


def test_the_gemm_runs_exactly_the_exact_cover_on_gpus(monkeypatch):
    gpu = get_gpu()

    def kernel(p):
        w = np.random.default_rng(9).uniform(-1, 1, p.weight_shape).astype(np.float32)
        return Transposed(gpu, p, w, None, Epilogue())

    use_style(monkeypatch, "workgroup")
    for layer, p in LAYERS.items():
        assert kernel(p).gemm is not None, layer
    for case, p in NOT_COVERED.items():
        assert kernel(p).gemm is None, case
    use_style(monkeypatch, "registers")
    assert kernel(LAYERS["2x2-s2"]).gemm is None


def test_a_gemm_with_its_own_store_refuses_a_residual():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="own output store cannot add a residual"):
        gemm.Gemm(get_gpu(), w, np.zeros(4, np.float32), Epilogue(), "", "", "", [], residual=True, store="")

"""fp16 storage keeps NaN and Inf (README: "NaN and Inf propagate as in PyTorch"), also where a finite f32 sum
overflows f16: every store path (scalar, quad, split-K reduction of quads), every algorithm, both GEMM styles.

Quads are stored by value conversion (kernels.common st4), which WGSL defines for NaN, Inf and overflow;
pack2x16float, used before, leaves them indeterminate (lavapipe happened to give IEEE results, other drivers
need not). Inputs are rounded to f16 first, so the float64 reference sees what the kernels see.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import applicable, random_inputs
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import gemm
from convroute.kernels.common import F16_FEATURE
from convroute.measure.reference import torch_reference
from convroute.params import make_params

pytestmark = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features,
                                reason=f"the adapter lacks {F16_FEATURE}")

BIG = 1.0e5  # bias of the overflowing channels: far past f16's 65504, so round-to-zero devices give Inf too
CASES = {
    "3x3": make_params((1, 4, 2, 8), (8, 4, 3, 3), 1, 1),
    "1x1": make_params((2, 4, 2, 2), (8, 4, 1, 1)),
    "depthwise": make_params((1, 8, 8, 8), (8, 1, 3, 3), 1, 1, groups=8),
    "transposed": make_params((1, 4, 4, 4), (4, 8, 2, 2), 2, transposed=True),
}


def special_inputs(p, rng):
    """f16-exact input and weights with a NaN and a +-Inf in the input, and a bias that overflows f16 on two
    output channels (+Inf on one, -Inf on the other) and stays small on the rest."""
    x, w, b = random_inputs(p, rng)
    x, w = x.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32)
    x[0, 1, 0, 0], x[0, 2, -1, -1], x[-1, 3, 0, p.w // 2] = np.nan, np.inf, -np.inf
    b[1], b[p.c_out - 2] = BIG, -BIG
    return x, w, b


def check_specials(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    out = np.asarray(out, np.float64)
    assert out.shape == ref.shape, what
    over = np.isfinite(ref) & (np.abs(ref) > 65520)  # rounds to Inf in f16
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref) | (over & (ref > 0)), err_msg=f"{what}: +Inf")
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref) | (over & (ref < 0)), err_msg=f"{what}: -Inf")
    finite = np.isfinite(ref) & ~over
    assert np.isnan(ref).any() and np.isinf(ref).any() and over.any() and finite.any(), f"{what}: weak case"
    err = np.abs(out[finite] - ref[finite]).max() / np.abs(ref[finite]).max()
    assert err <= 1e-2, f"{what}: relative error {err:.3g} of the finite outputs"


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fp16_stores_keep_nan_inf_and_overflow(monkeypatch, case, style):
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    p = CASES[case]
    x, w, b = special_inputs(p, np.random.default_rng(90))
    ref = torch_reference(p, x, w, b)
    for name in applicable(p):
        out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                     output_padding=p.output_padding, algorithm=name, dtype="float16")
        check_specials(out, ref, f"{name} ({style} GEMM) on {p.describe()}")


def test_split_k_quad_reduction_keeps_specials(monkeypatch):
    """Deep K and few columns: the GEMM splits K and the reduction stores quads."""
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", "workgroup")
    monkeypatch.setattr(DeviceProfile, "busy_workgroups", property(lambda self: 64))
    p = make_params((1, 256, 4, 4), (8, 256, 1, 1))
    assert gemm.choose_tile(8, 16, 256, 64, tiles=gemm.tiles_for(16))[1] > 1
    x, w, b = special_inputs(p, np.random.default_rng(91))
    out = conv2d(x, w, b, algorithm="pointwise", dtype="float16")
    check_specials(out, torch_reference(p, x, w, b), "pointwise with split K")

"""The cost model's launch-plan features (calibration.model.plan_features): pure functions of a DeviceProfile and
the shape, so routing stays testable with a stand-in profile; and the calibration file's stored device profile."""

from __future__ import annotations

import json

from convroute.calibration.model import CostModel, feature_vector, plan_features
from convroute.calibration.profile import Calibration, Sample, calibrated_device, stored_profile
from convroute.device.profile import DEFAULT_LIMITS, DeviceProfile
from convroute.kernels import direct, gemm
from convroute.kernels.common import Precision
from convroute.params import make_params

H100 = DeviceProfile("nvidia", "H100-like", limits=DEFAULT_LIMITS | {"max-compute-workgroup-storage-size": 49152,
                                                                     "max-compute-invocations-per-workgroup": 1024,
                                                                     "max-compute-workgroup-size-x": 1024},
                     features=frozenset({"shader-float32-atomic"}))
FP32 = Precision.parse()


def pointwise(c_in: int, c_out: int, h: int, w: int):
    return make_params((1, c_in, h, w), (c_out, c_in, 1, 1))


def test_a_product_past_slice_macs_is_split_with_fewer_workgroups():
    """512 x 16 x 31 columns x K 128 is under gemm.SLICE_MACS: one launch of 256 sliced 32x32 tiles; 16 x 32
    columns reach it: 64x64 tiles with K split in two, 128 workgroups. The features see the jump."""
    below, above = pointwise(128, 512, 16, 31), pointwise(128, 512, 16, 32)
    assert 512 * 16 * 31 * 128 < gemm.SLICE_MACS <= 512 * 16 * 32 * 128
    tile, splits = gemm.launch_plan(H100, 512, 16 * 31, 128)
    assert (tile.ks, splits) == (4, 1)
    tile, splits = gemm.launch_plan(H100, 512, 16 * 32, 128)
    assert (tile.ks, splits) == (1, 2)
    for name in ("pointwise", "implicit_gemm", "im2col"):
        f_below, f_above = plan_features(H100, FP32, below, name), plan_features(H100, FP32, above, name)
        assert f_below == {"plan_workgroups": 8.0, "plan_steps": 2.0}  # 16 K steps of 8 in 4 slices
        assert f_above == {"plan_workgroups": 7.0, "plan_steps": 2.0}  # 8 K steps of 16 in 2 splits


def test_direct_features_follow_its_channel_splits():
    """direct.choose_plan's workgroups count its input-channel splits; a split workgroup sums fewer channels."""
    p = make_params((1, 512, 7, 7), (512, 512, 3, 3), padding=1)
    plan = direct.choose_plan(H100, p, 1)
    assert plan.splits > 1
    f = plan_features(H100, FP32, p, "direct")
    assert f["plan_steps"] <= 9  # at most 512 channels: log2
    assert 2 ** f["plan_workgroups"] % plan.splits == 0


def test_no_plan_features_without_a_gpu_plan():
    """None without a profile, on CPU adapters (register tiles), or for algorithms without plan features."""
    p = make_params((1, 64, 28, 28), (64, 64, 3, 3), padding=1)
    assert plan_features(None, FP32, p, "implicit_gemm") == {}
    assert plan_features(DeviceProfile.for_family("cpu"), FP32, p, "implicit_gemm") == {}
    assert plan_features(H100, FP32, p, "winograd2") == {}
    assert len(feature_vector(p, "implicit_gemm", H100)) == len(feature_vector(p)) + 2
    assert len(feature_vector(p, "winograd2", H100)) == len(feature_vector(p))


def test_stand_in_profiles_route_without_a_gpu():
    """A model fitted with DeviceProfile.for_family predicts with plan features; a calibration's stored profile
    keeps the limits and features the launch plans read; an older file without them gives no plan features."""
    shapes = [make_params((1, c, s, s), (c, c, 1, 1)) for c in (16, 64, 256) for s in (7, 14, 28)]
    samples = [Sample(p, {"pointwise": 1e-6 * p.flops + 0.01, "direct": 2e-6 * p.flops + 0.01}, {}) for p in shapes]
    model = CostModel.fit(samples, profile=DeviceProfile.for_family("nvidia"))
    assert model.predict_ms(shapes[4], "pointwise") < model.predict_ms(shapes[4], "direct")
    stored = stored_profile(json.loads(json.dumps(calibrated_device(H100))))
    assert stored.limits == H100.limits and stored.float_atomics and stored.max_invocations == 1024
    old = Calibration("key", {"family": "nvidia", "name": "old file"}, "full", "", samples)
    assert old.profile is None and old.model.profile is None
    new = Calibration("key", calibrated_device(H100), "full", "", samples)
    assert new.profile == H100 and new.model.profile == H100

"""The `etvk` policy (ET-VK's follow-up rule, PR #22782) on emulated Mali, Adreno and NVIDIA profiles, its
32 Mi gather boundary, its agreement with seed everywhere else, and force_direct under it. Pure routing."""

from __future__ import annotations

import pytest

import convroute.device.gpu
from convroute import route
from convroute.calibration.grid import full_grid
from convroute.cli.main import build_parser, main
from convroute.router import FORCE_DIRECT_REASON, Decision
from convroute.router.etvk import MAX_CHEAP_GATHER, etvk_route, gather_elements
from convroute.router.seed import im2col_candidate, seed_route

FAMILIES = ("mali", "adreno", "nvidia")
LIMIT = 33_554_432


build_parser()  # imports every command module now: they bind get_gpu at import, not under the trap below


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    def trap(*_args, **_kwargs):
        raise AssertionError("routing touched the GPU layer")

    monkeypatch.setattr(convroute.device.gpu, "get_gpu", trap)
    monkeypatch.setattr(convroute.device.gpu, "list_adapters", trap)


# (id, input, weight, conv args, gather H_out*W_out*C_in*Kh*Kw): C_out 64 < 128, groups 1, dilation 1
BOUNDARY = [
    ("32 Mi - 1", (1, 1, 601, 1831), (64, 1, 1, 31), {}, LIMIT - 1),  # 601 x 1801 outputs x 1 x 31
    ("32 Mi", (1, 64, 257, 513), (64, 64, 2, 2), {}, LIMIT),  # 256 x 512 outputs x 64 x 4
    ("32 Mi + 1", (1, 11, 251, 4053), (64, 11, 1, 3), {}, LIMIT + 1),  # 251 x 4051 outputs x 11 x 3
]


def etvk(family, x, w, **kwargs):
    return route(x, w, device=family, policy="etvk", **kwargs)


def test_the_limit_is_32_mi():
    assert MAX_CHEAP_GATHER == LIMIT == 32 * 1024 * 1024


@pytest.mark.parametrize(("case", "x", "w", "kwargs", "gather"), BOUNDARY, ids=[c[0] for c in BOUNDARY])
@pytest.mark.parametrize("family", FAMILIES)
def test_gather_boundary(family, case, x, w, kwargs, gather):
    d = etvk(family, x, w, **kwargs)
    p = convroute.params.make_params(x, w, **kwargs)
    assert gather_elements(p) == gather
    if family != "mali":
        assert (d.algorithm, d.reason) == ("direct", f"C_out 64 < 128 on a non-Mali GPU ({family}) -> direct")
    elif gather <= LIMIT:
        assert (d.algorithm, d.reason) == ("im2col", f"C_out 64 < 128 on an ARM Mali but the gather "
                                                     f"H_out*W_out*C_in*Kh*Kw = {gather} <= 33554432 is cheap "
                                                     f"-> im2col + GEMM")
    else:
        assert (d.algorithm, d.reason) == ("direct", f"C_out 64 < 128 on an ARM Mali and the gather "
                                                     f"H_out*W_out*C_in*Kh*Kw = {gather} > 33554432 -> direct")
    assert (d.policy, d.device) == ("etvk", family)
    seed = route(x, w, device=family, policy="seed", **kwargs)
    assert seed.algorithm == ("im2col" if family == "mali" else "direct"), "the seed takes im2col on any Mali"
    forced = route(x, w, device=family, policy="etvk", force_direct=True, **kwargs)
    assert (forced.algorithm, forced.reason) == ("direct", FORCE_DIRECT_REASON)


def test_gather_is_per_image():
    """ET-VK counts H_out*W_out (it rejects batch > 1); convroute routes a batch like one image and says so."""
    x, w = (2, 11, 251, 4053), (64, 11, 1, 3)
    d = etvk("mali", x, w)
    assert d.algorithm == "direct" and d.reason.endswith(
        "> 33554432 -> direct (ET-VK also rejects batch > 1; convroute runs it the same way)")
    assert etvk("mali", (4, 64, 257, 513), (64, 64, 2, 2)).algorithm == "im2col"


# (id, input, weight, conv args, {family: algorithm}): the models PR #22782 measured, and wide convs
MODELS = [
    ("fast_sam 80x80 3x3 C_out 64", (1, 64, 80, 80), (64, 64, 3, 3), dict(padding=1),
     {"mali": "im2col", "adreno": "direct", "nvidia": "direct"}),
    ("style transfer stem 640x640 9x9 3 -> 32", (1, 3, 640, 640), (32, 3, 9, 9), dict(padding=4),
     {f: "direct" for f in FAMILIES}),  # gather 409600 x 3 x 81 = 99.5 M
    ("decoder 640x640 9x9 C_in 32 -> 3", (1, 32, 640, 640), (3, 32, 9, 9), dict(padding=4),
     {f: "direct" for f in FAMILIES}),
    ("fcn_resnet50 head 2048 -> 512 3x3 at 65x65", (1, 2048, 65, 65), (512, 2048, 3, 3), dict(padding=1),
     {f: "im2col" for f in FAMILIES}),
    ("C_out 128 boundary", (1, 64, 28, 28), (128, 64, 3, 3), dict(padding=1), {f: "im2col" for f in FAMILIES}),
    ("C_out 127", (1, 64, 28, 28), (127, 64, 3, 3), dict(padding=1),
     {"mali": "im2col", "adreno": "direct", "nvidia": "direct"}),
    ("1x1", (1, 64, 56, 56), (256, 64, 1, 1), {}, {f: "pointwise" for f in FAMILIES}),
    ("depthwise", (1, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32), {f: "depthwise" for f in FAMILIES}),
    ("grouped", (1, 256, 14, 14), (256, 8, 3, 3), dict(padding=1, groups=32), {f: "direct" for f in FAMILIES}),
    ("dilated C_out 256", (1, 64, 28, 28), (256, 64, 3, 3), dict(padding=2, dilation=2),
     {f: "direct" for f in FAMILIES}),
    ("transposed", (1, 512, 28, 28), (512, 256, 2, 2), dict(stride=2, transposed=True),
     {f: "transposed" for f in FAMILIES}),
]


@pytest.mark.parametrize(("case", "x", "w", "kwargs", "expected"), MODELS, ids=[c[0] for c in MODELS])
@pytest.mark.parametrize("family", FAMILIES)
def test_etvk_routes(family, case, x, w, kwargs, expected):
    assert etvk(family, x, w, **kwargs).algorithm == expected[family], case


def test_wide_conv_with_a_huge_gather_keeps_im2col():
    d = etvk("mali", (1, 2048, 65, 65), (512, 2048, 3, 3), padding=1)
    assert d.reason == "groups 1, dilation 1, Kh*Kw > 1 and C_out 512 >= 128 -> im2col + GEMM"
    assert gather_elements(convroute.params.make_params((1, 2048, 65, 65), (512, 2048, 3, 3), padding=1)) > LIMIT


@pytest.mark.parametrize("family", ["mali", "adreno", "nvidia", "amd", "cpu"])
def test_etvk_is_seed_outside_the_cheap_gather_rule(family):
    """On the calibration grid and the boundary shapes, etvk decides as seed (same algorithm; same reason but
    for a Mali's im2col candidates) except for narrow sliding-window convs with a gather above 32 Mi on a Mali."""
    profile = convroute.DeviceProfile.for_family(family)
    differ = 0
    shapes = full_grid() + [convroute.params.make_params(x, w, **kw) for _, x, w, kw, _ in BOUNDARY]
    for p in shapes:
        seed, new = (Decision(*route(p, profile), policy, family) for route, policy in
                      ((seed_route, "seed"), (etvk_route, "etvk")))
        expensive = family == "mali" and im2col_candidate(p) and p.c_out < 128 and gather_elements(p) > LIMIT
        if expensive:
            differ += 1
            assert (seed.algorithm, new.algorithm) == ("im2col", "direct"), p.describe()
        else:
            assert seed.algorithm == new.algorithm, p.describe()
            if not (family == "mali" and im2col_candidate(p)):  # there etvk names C_out or the gather instead
                assert seed.reason == new.reason
    assert differ == (1 if family == "mali" else 0)


def test_cli_route_etvk(capsys):
    args = ["route", "--input", "1,11,251,4053", "--weight", "64,11,1,3", "--policy", "etvk"]
    assert main(args + ["--device", "mali"]) == 0
    out = capsys.readouterr().out
    assert "policy    etvk\n" in out and "algorithm direct\n" in out and "33554433 > 33554432" in out
    assert main(args + ["--device", "all"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["mali"] == rows["adreno"] == rows["nvidia"] == "direct"

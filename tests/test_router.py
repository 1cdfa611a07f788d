"""The seed policy (ET-VK's rule) branch by branch for Mali, Adreno and NVIDIA; force_direct as in ET-VK;
DeviceProfile families.

Routing is pure: every test here except the last runs with the GPU layer booby-trapped.
"""

from __future__ import annotations

import numpy as np
import pytest

import convroute
import convroute.device.gpu
from convroute import DeviceProfile, route
from convroute.cli.main import build_parser, main
from convroute.device.profile import family_of
from convroute.router import FORCE_DIRECT_REASON, FORCE_DIRECT_SPARED
from convroute.router.seed import IM2COL_MIN_COUT

FAMILIES = ("mali", "adreno", "nvidia")


build_parser()  # imports every command module now: they bind get_gpu at import, not under the trap below


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch, request):
    """Routing for a named family or profile must not open (or even enumerate) a device."""
    if "gpu" in request.keywords:
        return

    def trap(*_args, **_kwargs):
        raise AssertionError("routing touched the GPU layer")

    monkeypatch.setattr(convroute.device.gpu, "get_gpu", trap)
    monkeypatch.setattr(convroute.device.gpu, "list_adapters", trap)


def decide(family, input_shape, weight_shape, *args, **kwargs):
    return route(input_shape, weight_shape, *args, device=family, policy="seed", **kwargs)


# (case, input, weight, conv args, {family: algorithm}, words the reason must contain)
CASES = [
    ("3x3 C_out 64", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1),
     {"mali": "im2col", "adreno": "direct", "nvidia": "direct"}, None),
    ("3x3 C_out 127", (1, 64, 28, 28), (127, 64, 3, 3), dict(padding=1),
     {"mali": "im2col", "adreno": "direct", "nvidia": "direct"}, None),
    ("3x3 C_out 128", (1, 64, 28, 28), (128, 64, 3, 3), dict(padding=1),
     {"mali": "im2col", "adreno": "im2col", "nvidia": "im2col"}, None),
    ("7x7 stride 2 C_out 64", (1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3),
     {"mali": "im2col", "adreno": "direct", "nvidia": "direct"}, None),
    ("1x3 non-square C_out 256", (1, 32, 17, 9), (256, 32, 1, 3), dict(padding=(0, 1)),
     {f: "im2col" for f in FAMILIES}, None),
    ("1x1", (1, 64, 56, 56), (256, 64, 1, 1), {}, {f: "pointwise" for f in FAMILIES}, "1x1"),
    ("1x1 stride 2", (1, 64, 56, 56), (16, 64, 1, 1), dict(stride=2), {f: "pointwise" for f in FAMILIES}, "1x1"),
    ("1x1 dilated", (1, 8, 9, 9), (8, 8, 1, 1), dict(dilation=2), {f: "pointwise" for f in FAMILIES}, "1x1"),
    ("depthwise 3x3", (1, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32),
     {f: "depthwise" for f in FAMILIES}, "depthwise"),
    ("depthwise 5x5 dilated", (1, 256, 14, 14), (256, 1, 5, 5), dict(padding=4, dilation=2, groups=256),
     {f: "depthwise" for f in FAMILIES}, "depthwise"),
    ("depthwise multiplier 2", (1, 16, 14, 14), (32, 1, 3, 3), dict(padding=1, groups=16),
     {f: "direct" for f in FAMILIES}, "grouped"),
    ("grouped 3x3", (1, 256, 14, 14), (256, 8, 3, 3), dict(padding=1, groups=32),
     {f: "direct" for f in FAMILIES}, "grouped"),
    ("grouped 1x1", (1, 64, 14, 14), (128, 16, 1, 1), dict(groups=4), {f: "direct" for f in FAMILIES}, "grouped"),
    ("dilated 3x3 C_out 256", (1, 64, 28, 28), (256, 64, 3, 3), dict(padding=2, dilation=2),
     {f: "direct" for f in FAMILIES}, "dilation"),
    ("dilated in width only", (1, 64, 28, 28), (256, 64, 3, 3), dict(padding=(1, 2), dilation=(1, 2)),
     {f: "direct" for f in FAMILIES}, "dilation"),
    ("transposed 2x2 stride 2", (1, 512, 28, 28), (512, 256, 2, 2), dict(stride=2, transposed=True),
     {f: "transposed" for f in FAMILIES}, "transposed"),
    ("transposed 1x1", (1, 64, 8, 8), (64, 32, 1, 1), dict(transposed=True),
     {f: "transposed" for f in FAMILIES}, "transposed"),
    ("transposed grouped", (1, 64, 8, 8), (64, 8, 3, 3), dict(groups=4, padding=1, transposed=True),
     {f: "transposed" for f in FAMILIES}, "transposed"),
    ("transposed dilated", (1, 16, 8, 8), (16, 16, 3, 3), dict(dilation=2, transposed=True),
     {f: "transposed" for f in FAMILIES}, "dilated transposed"),
]


@pytest.mark.parametrize(("case", "x", "w", "kwargs", "expected", "words"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("family", FAMILIES)
def test_seed_policy(family, case, x, w, kwargs, expected, words):
    d = decide(family, x, w, **kwargs)
    assert d.algorithm == expected[family], f"{case} on {family}: {d}"
    assert (d.policy, d.device) == ("seed", family)
    assert d.reason and d.reason[0] != " "
    if words:
        assert words in d.reason, d.reason


def test_im2col_threshold_is_et_vk_s():
    assert IM2COL_MIN_COUT == 128


@pytest.mark.parametrize("family", FAMILIES)
def test_im2col_reasons_name_the_rule(family):
    wide = decide(family, (1, 64, 28, 28), (128, 64, 3, 3), padding=1)
    narrow = decide(family, (1, 64, 28, 28), (64, 64, 3, 3), padding=1)
    if family == "mali":
        assert "Mali" in wide.reason and "Mali" in narrow.reason
    else:
        assert "128" in wide.reason and "C_out 128" in wide.reason
        assert "C_out 64 < 128" in narrow.reason and family in narrow.reason


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (4, 4)])
def test_transposed_guard(family, kernel):
    """ET-VK never sends a transposed conv to im2col, even where a plain conv of that shape would go there
    (C_out >= 128, Kh*Kw > 1, and on a Mali whatever C_out)."""
    plain = decide(family, (1, 128, 16, 16), (256, 128, *kernel), padding=1)
    assert plain.algorithm == "im2col"
    d = decide(family, (1, 128, 16, 16), (128, 256, *kernel), padding=1, transposed=True)
    assert d.algorithm == "transposed", d
    assert "never" in d.reason and "im2col" in d.reason
    forced = decide(family, (1, 128, 16, 16), (128, 256, *kernel), padding=1, transposed=True, force_direct=True)
    assert forced.algorithm == "transposed", "force_direct leaves transposed convs alone"


SPARED = FORCE_DIRECT_SPARED
# (id, input, weight, conv args, algorithm under force_direct on every family, its exact reason): as in ET-VK,
# force_direct sends sliding-window convs to direct and leaves pointwise (any 1x1, grouped ones included),
# depthwise and transposed convs on their paths
FORCED = [
    ("3x3", (1, 64, 56, 56), (256, 64, 3, 3), dict(padding=1), "direct", FORCE_DIRECT_REASON),
    ("7x7 stem", (1, 3, 224, 224), (128, 3, 7, 7), dict(stride=2, padding=3), "direct", FORCE_DIRECT_REASON),
    ("grouped 3x3", (1, 64, 14, 14), (64, 8, 3, 3), dict(padding=1, groups=8), "direct", FORCE_DIRECT_REASON),
    ("dilated 3x3", (1, 64, 28, 28), (256, 64, 3, 3), dict(padding=2, dilation=2), "direct", FORCE_DIRECT_REASON),
    ("depthwise multiplier 2", (1, 16, 14, 14), (32, 1, 3, 3), dict(padding=1, groups=16), "direct",
     FORCE_DIRECT_REASON),
    ("1x1", (1, 64, 56, 56), (256, 64, 1, 1), {}, "pointwise",
     "1x1 kernel with groups == 1 -> pointwise path" + SPARED),
    ("grouped 1x1", (1, 64, 14, 14), (128, 16, 1, 1), dict(groups=4), "direct",
     "grouped conv (groups=4) that is not depthwise: ET-VK rejects it, convroute runs it on the direct path" + SPARED),
    ("depthwise", (1, 32, 56, 56), (32, 1, 3, 3), dict(padding=1, groups=32), "depthwise",
     "depthwise (C_out == groups == C_in == 32) -> depthwise path" + SPARED),
    ("transposed", (1, 64, 8, 8), (64, 32, 3, 3), dict(stride=2, transposed=True), "transposed",
     "transposed conv -> transposed path (ET-VK never sends transposed convs to im2col, whatever C_out or kernel)"
     + SPARED),
]


def test_force_direct_reason_strings():
    assert FORCE_DIRECT_REASON == ("force_direct is set: sliding-window conv -> direct path, whatever the policy "
                                   "would choose (1x1, depthwise and transposed convs keep their paths)")
    assert SPARED == "; force_direct leaves it alone (not a sliding-window conv)"


@pytest.mark.parametrize("policy", ["seed", "etvk"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("case", "x", "w", "kwargs", "algorithm", "reason"), FORCED, ids=[c[0] for c in FORCED])
def test_force_direct_only_bypasses_the_im2col_decision(policy, family, case, x, w, kwargs, algorithm, reason):
    plain = route(x, w, device=family, policy=policy, **kwargs)
    d = route(x, w, device=family, policy=policy, force_direct=True, **kwargs)
    assert (d.algorithm, d.reason) == (algorithm, reason), case
    assert (d.policy, d.force_direct, plain.force_direct) == (policy, True, False)
    assert str(d) == f"{algorithm}: {reason} [policy {policy} + force_direct, device {family}]"
    assert str(plain) == f"{plain.algorithm}: {plain.reason} [policy {policy}, device {family}]"
    if algorithm != "direct":
        assert (plain.algorithm, plain.reason + SPARED) == (d.algorithm, d.reason), "only sliding-window convs move"


@pytest.mark.parametrize("family", FAMILIES)
def test_force_direct_environment(monkeypatch, family):
    x, w, kwargs = (1, 64, 56, 56), (256, 64, 3, 3), dict(padding=1)
    monkeypatch.setenv("CONVROUTE_FORCE_DIRECT", "1")
    d = decide(family, x, w, **kwargs)
    assert (d.algorithm, d.reason, d.force_direct) == ("direct", FORCE_DIRECT_REASON, True)
    assert decide(family, x, w, force_direct=False, **kwargs).algorithm == "im2col", "argument beats environment"
    assert decide(family, (1, 64, 56, 56), (256, 64, 1, 1)).algorithm == "pointwise"
    monkeypatch.setenv("CONVROUTE_FORCE_DIRECT", "0")
    assert decide(family, x, w, **kwargs).algorithm == "im2col"


def test_force_direct_still_avoids_excluded_direct():
    """lavapipe stops long loops: a forced direct that would loop too long moves on, and says why."""
    from convroute.kernels.base import CPU_LOOP_LIMIT

    d = route((1, 65536, 1, 1), (2, 65536, 3, 3), padding=1, device="cpu", policy="seed", force_direct=True)
    assert d.algorithm == "im2col"
    assert d.reason == (f"{FORCE_DIRECT_REASON}; but direct is excluded on this device (one invocation would loop "
                        f"65536 times; lavapipe stops loops silently after {CPU_LOOP_LIMIT}) -> im2col, the next "
                        f"applicable algorithm")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("x", "w", "kwargs", "algorithm"), [
    ((3, 64, 56, 56), (256, 64, 3, 3), dict(padding=1), "im2col"),
    ((2, 64, 56, 56), (256, 64, 1, 1), {}, "pointwise"),
    ((4, 32, 56, 56), (32, 1, 3, 3), dict(padding=1, groups=32), "depthwise"),
    ((2, 64, 8, 8), (64, 32, 2, 2), dict(stride=2, transposed=True), "transposed"),
], ids=["3x3", "1x1", "depthwise", "transposed"])
def test_batch_above_one(family, x, w, kwargs, algorithm):
    """ET-VK rejects batch > 1; convroute routes as for batch 1 and says so."""
    d = decide(family, x, w, **kwargs)
    assert d.algorithm == algorithm
    assert "batch > 1" in d.reason
    assert "batch" not in decide(family, (1,) + x[1:], w, **kwargs).reason


def test_route_accepts_a_profile_and_pairs():
    profile = DeviceProfile.for_family("adreno")
    d = route((1, 64, 30, 20), (128, 64, 3, 5), stride=(2, 1), padding=(1, 2), device=profile)
    assert d.algorithm == "im2col" and d.device == "adreno"
    assert route((1, 64, 30, 20), (128, 64, 3, 5), (2, 1), (1, 2), device=profile) == d


def test_route_rejects_unknown_device_and_policy():
    with pytest.raises(ValueError, match="unknown device family 'voodoo'"):
        route((1, 8, 8, 8), (8, 8, 3, 3), device="voodoo")
    with pytest.raises(TypeError, match="device must be"):
        route((1, 8, 8, 8), (8, 8, 3, 3), device=42)
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        route((1, 8, 8, 8), (8, 8, 3, 3), device="mali", policy="fastest")


def test_route_rejects_bad_shapes_before_routing():
    with pytest.raises(ValueError, match="channel mismatch"):
        route((1, 8, 8, 8), (8, 4, 3, 3), device="mali")


@pytest.mark.parametrize(("vendor", "family"), [
    (0x13B5, "mali"), (0x5143, "adreno"), (0x10DE, "nvidia"), (0x1002, "amd"), (0x8086, "intel"),
    (0x106B, "apple"), (0x1010, "powervr"), (0x10005, "cpu"), (0x1234, "unknown")])
def test_family_from_vendor_id(vendor, family):
    assert family_of(vendor) == family
    info = {"vendor_id": vendor, "device": "Some GPU", "description": "driver 1.2", "backend_type": "Vulkan",
            "adapter_type": "IntegratedGPU"}
    limits = {"max-storage-buffer-binding-size": 1 << 30, "max-compute-workgroups-per-dimension": 65535,
              "max-compute-workgroup-storage-size": 32768, "max-compute-invocations-per-workgroup": 1024,
              "max-buffer-size": 1 << 31, "max-texture-dimension-2d": 8192}
    profile = DeviceProfile.from_adapter_info(info, limits, ["timestamp-query", "shader-f16"])
    assert profile.family == family and profile.vendor_id == vendor
    assert profile.max_binding_bytes == 1 << 30 and profile.max_workgroups_per_dim == 65535
    assert "max-texture-dimension-2d" not in profile.limits
    assert profile.features == {"timestamp-query", "shader-f16"}
    assert "Some GPU" in profile.key and "driver 1.2" in profile.key


@pytest.mark.parametrize("vendor", [0x10DE, 0x13B5, 0x1234])
def test_cpu_adapter_type_means_cpu(vendor):
    assert family_of(vendor, "CPU") == "cpu"
    profile = DeviceProfile.from_adapter_info({"vendor_id": vendor, "adapter_type": "CPU"}, {}, [])
    assert profile.family == "cpu"


@pytest.mark.parametrize("family", ["mali", "adreno", "nvidia", "amd", "intel", "apple", "powervr", "cpu"])
def test_profile_for_every_family(family):
    profile = DeviceProfile.for_family(family.upper())
    assert profile.family == family
    assert family_of(profile.vendor_id) == family
    assert profile.max_binding_bytes >= 128 << 20 and profile.max_workgroups_per_dim >= 65535
    assert route((1, 8, 8, 8), (8, 8, 3, 3), padding=1, device=family).device == family


@pytest.mark.gpu
def test_api_decision_follows_the_router():
    """End to end on the real device: Conv2d's decision is the router's for this device, force_direct included."""
    rng = np.random.default_rng()
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((128, 16, 3, 3)).astype(np.float32)
    layer = convroute.Conv2d(w, padding=1)
    layer(x)
    assert layer.decision == route(x.shape, w.shape, padding=1)
    forced = convroute.Conv2d(w, padding=1, force_direct=True)
    forced(x)
    assert forced.decision.algorithm == "direct"
    np.testing.assert_allclose(forced(x), layer(x), rtol=1e-4, atol=1e-4)


def test_lavapipe_loop_limit_routes_around_long_loops():
    """On CPU adapters an algorithm whose invocation would loop past lavapipe's limit is excluded (it would
    give wrong sums silently); other families keep the seed choice."""
    from convroute.kernels.base import CPU_LOOP_LIMIT

    shape = ((1, 65536, 1, 1), (2, 65536, 3, 3))  # direct loops C_in = 65536 times on CPU adapters
    cpu = route(*shape, padding=1, device="cpu", policy="seed")
    assert cpu.algorithm != "direct" and str(CPU_LOOP_LIMIT) in cpu.reason
    assert route(*shape, padding=1, device="nvidia", policy="seed").algorithm == "direct"



def test_cli_route_shows_the_override(capsys):
    dense = ["--input", "1,64,28,28", "--weight", "128,64,3,3", "--padding", "1"]
    assert main(["route", *dense, "--device", "mali", "--policy", "etvk", "--force-direct", "--wide"]) == 0
    out = capsys.readouterr().out  # --wide: the reason whole on its line
    assert "policy    etvk\noverride  force_direct (sliding-window convs take direct)\n" in out
    assert f"algorithm direct\nreason    {FORCE_DIRECT_REASON}\n" in out
    assert main(["route", "--input", "1,64,28,28", "--weight", "128,64,1,1", "--device", "all", "--force-direct",
                 "--wide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "policy seed + force_direct (sliding-window convs take direct)"
    assert all(line.split()[1] == "pointwise" for line in lines[4:])
    assert main(["route", *dense, "--device", "mali"]) == 0
    assert "override" not in capsys.readouterr().out

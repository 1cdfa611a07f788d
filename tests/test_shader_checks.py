"""CONVROUTE_SHADER_CHECKS: shader modules made with only some of naga's run-time checks (device.webgpu
SHADER_CHECKS through wgpuDeviceCreateShaderModuleTrusted on wgpu-native). Every value gives right results on
the conv paths, each value compiles its own pipelines, the default drops only the loop counters, and a bad
value or a value Dawn cannot honour is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d, settings
from convroute.device import webgpu
from convroute.device.gpu import get_gpu
from convroute.params import make_params
from convroute.settings import shader_checks

pytestmark = pytest.mark.skipif(webgpu.IMPLEMENTATION != "wgpu-native", reason="trusted modules are wgpu-native's")


@pytest.mark.parametrize("checks", ["all", "bounds", "none"])
def test_every_value_runs_the_conv_paths_right(monkeypatch, checks):
    from wgpu.backends.wgpu_native import _api

    asked = []
    trusted = _api.libf.wgpuDeviceCreateShaderModuleTrusted
    monkeypatch.setattr(_api.libf, "wgpuDeviceCreateShaderModuleTrusted",
                        lambda device, descriptor, flags: asked.append(flags) or trusted(device, descriptor, flags))
    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", checks)
    p = make_params((1, 12, 9, 7), (10, 12, 3, 3), 1, 1)
    x, w, b = random_inputs(p, np.random.default_rng(5))
    for algorithm in ("direct", "im2col", "winograd2"):
        out = conv2d(x, w, b, 1, 1, activation="relu", algorithm=algorithm)
        assert_matches(out, reference(p, x, w, b, "relu"), f"{algorithm} with shader checks {checks}")
    if checks == "all":
        assert not asked, "all checks: the plain create_shader_module"
    else:
        assert asked and set(asked) == {webgpu.SHADER_CHECKS[checks]}


def test_each_value_has_its_own_pipelines(monkeypatch):
    gpu = get_gpu()
    source = "@compute @workgroup_size(1) fn main() {}"
    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", "all")
    plain = gpu.pipeline(source)
    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", "bounds")
    assert gpu.pipeline(source) is not plain and gpu.pipeline(source) is gpu.pipeline(source)


def test_the_default_drops_only_the_loop_counters(monkeypatch):
    monkeypatch.delenv("CONVROUTE_SHADER_CHECKS", raising=False)
    assert shader_checks() == "bounds"
    assert webgpu.SHADER_CHECKS["bounds"] & 0x1 and not webgpu.SHADER_CHECKS["bounds"] & 0x2
    monkeypatch.setattr(settings, "process_webgpu_implementation", lambda: "dawn")
    assert shader_checks() == "all"


def test_bad_values_are_clear_errors(monkeypatch):
    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", "some")
    with pytest.raises(ValueError, match="CONVROUTE_SHADER_CHECKS='some': use one of all, bounds, none"):
        shader_checks()
    monkeypatch.setattr(webgpu, "IMPLEMENTATION", "dawn")
    with pytest.raises(ValueError, match="need wgpu-native"):
        webgpu.shader_module(get_gpu().device, "@compute @workgroup_size(1) fn main() {}", "bounds")

"""Environment switches share one spelling rule; a misspelt value names the variable."""

from __future__ import annotations

import pytest

from convroute import cache
from convroute.frontend.program import env_fuse_residual
from convroute.router import env_force_direct
from convroute.settings import env_flag, webgpu_implementation


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("on", True), ("yes", True),
                                             ("0", False), ("False", False), ("off", False), ("no", False)])
def test_every_switch_reads_the_same_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("CONVROUTE_FORCE_DIRECT", value)
    monkeypatch.setenv("CONVROUTE_FUSE_RESIDUAL", value)
    assert env_force_direct() is expected and env_fuse_residual() is expected


def test_unset_or_empty_gives_the_default_and_nonsense_is_refused(monkeypatch):
    monkeypatch.delenv("CONVROUTE_X", raising=False)
    assert env_flag("CONVROUTE_X", True) and not env_flag("CONVROUTE_X", False)
    monkeypatch.setenv("CONVROUTE_X", "")
    assert env_flag("CONVROUTE_X", True)
    monkeypatch.setenv("CONVROUTE_X", "maybe")
    with pytest.raises(ValueError, match="CONVROUTE_X='maybe'"):
        env_flag("CONVROUTE_X", True)


def test_the_webgpu_implementation_is_named_or_refused(monkeypatch):
    monkeypatch.delenv("CONVROUTE_WEBGPU", raising=False)
    assert webgpu_implementation() == "wgpu-native"
    monkeypatch.setenv("CONVROUTE_WEBGPU", " Dawn ")
    assert webgpu_implementation() == "dawn"
    monkeypatch.setenv("CONVROUTE_WEBGPU", "vulkan")
    with pytest.raises(ValueError, match="CONVROUTE_WEBGPU='vulkan'.*wgpu-native, dawn"):
        webgpu_implementation()


def test_files_keep_naming_the_implementation_the_process_runs_on(monkeypatch):
    """device.webgpu imports one implementation for good: a later CONVROUTE_WEBGPU must not rename files."""
    before, version = cache.device_file("calibration", "GPU X|vulkan"), cache.webgpu_version()
    monkeypatch.setenv("CONVROUTE_WEBGPU", "dawn" if "-dawn-" not in before.name else "wgpu-native")
    assert cache.device_file("calibration", "GPU X|vulkan") == before and cache.webgpu_version() == version


def test_dawn_measurements_have_files_and_a_build_of_their_own(monkeypatch):
    monkeypatch.setattr(cache, "process_webgpu_implementation", lambda: "wgpu-native")
    native, native_version = cache.device_file("calibration", "GPU X|vulkan"), cache.webgpu_version()
    monkeypatch.setattr(cache, "process_webgpu_implementation", lambda: "dawn")
    dawn = cache.device_file("calibration", "GPU X|vulkan")
    assert dawn != native and dawn.name.startswith("calibration-dawn-gpu-x-")
    assert cache.webgpu_version().startswith("wgpudawn ") and not native_version.startswith("wgpudawn")

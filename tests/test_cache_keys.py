"""Measurement files are keyed by build: convroute's version, a hash of the kernel sources and wgpu's version.

A file of another build (kernels rewritten, a new wgpu or convroute) or without a stamp is ignored with one
warning line that names why and what to run; autotune then measures again. Two processes saving at once
leave a valid file (temp file + rename).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from convroute import cache
from convroute.cache import CacheWarning, build_stamp, device_file, file_header, read_json
from convroute.calibration import profile as calib
from convroute.device.profile import DeviceProfile
from convroute.params import make_params
from convroute.router import autotune as autotune_mod
from convroute.router import route_params
from test_policies import fresh_memory  # noqa: F401 (autouse: each test starts like a new process)

SRC = Path(__file__).resolve().parent.parent / "src"
PROFILE = DeviceProfile("nvidia", "Test GPU 9000", "test driver 1.2.3", vendor_id=0x10DE, backend="Vulkan")


def small_calibration(profile: DeviceProfile = PROFILE, samples: int = 3) -> calib.Calibration:
    shapes = [make_params((1, 8 + i, 10, 10), (8, 8 + i, 3, 3), padding=1) for i in range(samples)]
    return calib.Calibration(profile.key, calib.device_record(profile), "test", "test",
                             [calib.Sample(p, {"direct": 1.0 + i, "im2col": 2.0}, {}) for i, p in enumerate(shapes)])


def restamp(path: Path, build) -> None:
    data = json.loads(path.read_text())
    if build is None:
        del data["build"]
    else:
        data["build"] = build
    path.write_text(json.dumps(data))


def test_the_build_stamp_names_convroute_the_kernels_and_wgpu():
    import wgpu

    stamp = build_stamp()
    assert stamp["wgpu"] == f"{wgpu.__version__} (shader checks: bounds)"  # the default: see settings
    assert cache.webgpu_version() == stamp["wgpu"]
    assert stamp["convroute"] not in ("", "unknown")
    assert len(stamp["kernels"]) == 12 and int(stamp["kernels"], 16) >= 0
    assert file_header("f", 3, "dev", "float16") == {"format": "f", "version": 3, "device_key": "dev",
                                                     "dtype": "float16", "build": stamp}
    assert calib.save_calibration(small_calibration()) is not None
    assert json.loads(calib.profile_path(PROFILE).read_text())["build"] == stamp


def test_a_source_tree_run_stamps_the_version_an_install_would(monkeypatch):
    """Run from src/ without being installed (as on a device machine, PYTHONPATH=src), convroute reads its version
    from pyproject.toml, so its files and an installed copy's of the same kernels are one build."""
    installed = cache._version("convroute")

    def not_installed(package):
        raise cache.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(cache.metadata, "version", not_installed)
    assert cache._version("convroute") == cache.source_tree_version() == installed != "unknown"
    assert cache._version("wgpu") == "unknown"


def test_shader_checks_make_another_build(monkeypatch):
    import wgpu

    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", "all")
    assert cache.webgpu_version() == wgpu.__version__
    monkeypatch.setenv("CONVROUTE_SHADER_CHECKS", "none")
    assert cache.webgpu_version() == f"{wgpu.__version__} (shader checks: none)"


def test_kernel_hash_is_deterministic_and_follows_every_kernel_module(monkeypatch, tmp_path):
    """Code edits move the hash; comments, docstrings and blank lines do not (a '#' inside a string is code)."""
    copy = tmp_path / "kernels"
    shutil.copytree(cache.KERNELS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "KERNELS_DIR", copy)

    def module_docstring_edited(text: str) -> str:
        start = text.index('"""') + 3
        return text[:start] + "Edited. " + text[start:]

    edits = [(None, None), (None, None),
             ("gemm_tiles.py", lambda t: t + "# a comment\n\n"),
             ("gemm_tiles.py", lambda t: t.replace("annotations\n", "annotations  # trailing\n", 1)),
             ("winograd.py", module_docstring_edited),
             ("gemm_tiles.py", lambda t: t + "EDITED = 1\n"),
             ("winograd.py", lambda t: t + 'MARK = "# not a comment"\n'),
             ("winograd.py", lambda t: t.replace('"# not a comment"', '"# not a comment either"'))]
    hashes = []
    for name, edit in edits:
        if name:
            path = copy / name
            path.write_text(edit(path.read_text()))
        cache.kernel_hash.cache_clear()
        hashes.append(cache.kernel_hash())
    cache.kernel_hash.cache_clear()
    assert len(set(hashes[:5])) == 1, hashes
    assert len(set(hashes[4:])) == 4, hashes


@pytest.mark.parametrize("stale", ["kernels", "wgpu", "convroute", "no stamp"])
def test_a_calibration_of_another_build_is_ignored_with_one_line_saying_why(stale):
    path = calib.save_calibration(small_calibration())
    cache.forget()
    assert calib.load_calibration(PROFILE) is not None
    old = dict(build_stamp(), **{stale: "0.0.1" if stale != "kernels" else "abc123abc123"})
    restamp(path, None if stale == "no stamp" else old)
    cache.forget()
    with pytest.warns(CacheWarning) as caught:
        assert calib.load_calibration(PROFILE) is None
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and str(path) in message and "run `convroute calibrate`" in message
    assert build_stamp()["kernels"] in message
    assert ("no build stamp" if stale == "no stamp" else old[stale]) in message


def test_a_stale_float16_calibration_names_its_own_command():
    cal = small_calibration()
    cal.dtype = "float16"
    path = calib.save_calibration(cal)
    restamp(path, dict(build_stamp(), kernels="0" * 12))
    with pytest.warns(CacheWarning, match=r"run `convroute calibrate --dtype float16`"):
        assert calib.load_calibration(PROFILE, "float16") is None


@pytest.mark.gpu
def test_a_stale_autotune_cache_is_measured_again(monkeypatch):
    from convroute.device.gpu import get_gpu
    from convroute.measure.timing import TimingSettings

    monkeypatch.setattr(autotune_mod, "SETTINGS", TimingSettings(warmup=1, repeats=3, min_repeats=3, budget_s=0.02))
    gpu = get_gpu()
    p = make_params((1, 8, 6, 6), (8, 1, 3, 3), padding=1, groups=8)  # two candidates: direct, depthwise
    first = route_params(p, gpu.profile, "autotune")
    assert "tuned now" in first.reason
    path = autotune_mod.AutotuneCache(gpu.profile.key).path
    data = json.loads(path.read_text())
    entry = next(iter(data["entries"].values()))
    assert data["build"] == build_stamp()
    entry["times_ms"] = {name: 1e-6 if name == "direct" else 1e3 for name in entry["times_ms"]}
    entry["algorithm"] = "direct"  # the stale winner, were the file trusted
    data["build"] = dict(build_stamp(), kernels="0" * 12)
    path.write_text(json.dumps(data))
    autotune_mod.AutotuneCache._memory.clear()
    with pytest.warns(CacheWarning, match="0{12}.*tuned again"):
        again = route_params(p, gpu.profile, "autotune")
    assert "tuned now" in again.reason and "1e-06" not in again.reason
    assert json.loads(path.read_text())["build"] == build_stamp()  # rewritten by this build


WRITER = """
import sys
from convroute.device.profile import DeviceProfile
from convroute.calibration import profile as calib
from convroute.params import make_params
profile = DeviceProfile("nvidia", {name!r}, {driver!r}, backend="Vulkan")
samples = [calib.Sample(make_params((1, 8, 10, 10), (8, 8, 3, 3)), {{"direct": 1.0}}, {{}})] * int(sys.argv[1])
cal = calib.Calibration(profile.key, calib.device_record(profile), "test", "test", samples)
for _ in range(int(sys.argv[2])):
    assert calib.save_calibration(cal) is not None
"""


def test_two_processes_saving_at_once_leave_a_valid_file(tmp_path):
    """Two writers (different sample counts, so a torn file would show) race 40 saves each while this process
    reads: every read is one writer's whole file, and so is the last."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(name=PROFILE.name, driver=PROFILE.driver))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    writers = [subprocess.Popen([sys.executable, str(script), str(n), "40"], env=env) for n in (40, 90)]
    path = device_file("calibration", PROFILE.key)
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # a torn or half-written file would warn
        while any(w.poll() is None for w in writers):
            data = read_json(path, calib.FORMAT, calib.VERSION, PROFILE.key)
            if data is not None:
                seen.add(len(data["samples"]))
        assert [w.wait() for w in writers] == [0, 0]
        final = calib.load_calibration(PROFILE)
    assert final is not None and len(final.samples) in (40, 90)
    assert seen <= {40, 90}
    assert not list(path.parent.glob("*.tmp")), "temporary files left behind"


def test_saved_files_are_readable_by_other_users_of_a_shared_cache_dir():
    path = calib.save_calibration(small_calibration())
    assert path.stat().st_mode & 0o044 == 0o044

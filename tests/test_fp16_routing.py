"""dtype as a routing input: per-dtype calibration and autotune files, the float16 -> float32 calibration
fallback (said in the reason and warned), per-dtype exclusions and tolerance, seed skipping algorithms without
kernels for the dtype, and `bench --dtype float16` (with --compare) end to end on the adapter in use.

The routing tests use synthetic calibrations and never time anything; the GPU tests use tiny shapes.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest

import convroute
from conftest import F16_HEADERS, random_inputs, reference, rel_error
from convroute import cache
from convroute.bench.compare_layers import CompareReport, ConvrouteEngine, EngineResult, Measurement, ratio_table
from convroute.cache import CacheWarning
from convroute.calibration import profile as calib
from convroute.calibration import run as calibration_run
from convroute.calibration.grid import full_grid, tiny_grid
from convroute.calibration.run import measure_shape
from convroute.cli.main import main as cli_main
from convroute.device.gpu import get_gpu
from convroute.device.profile import DeviceProfile
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision
from convroute.measure.timing import TimingSettings
from convroute.measure.workload import Workload
from convroute.params import make_params
from convroute.router import Decision, route_params
from convroute.router import autotune as autotune_mod
from test_policies import fresh_memory  # noqa: F401 (autouse: each test starts like a new process)

FAST = TimingSettings(warmup=1, repeats=3, min_repeats=3, budget_s=0.02)
NVIDIA = DeviceProfile("nvidia", "Test GPU 9000", "test driver 1.2.3", vendor_id=0x10DE, backend="Vulkan")
DENSE3 = make_params((1, 64, 20, 20), (64, 64, 3, 3), padding=1)
WIDE3 = make_params((1, 64, 20, 20), (128, 64, 3, 3), padding=1)  # seed: im2col (C_out >= 128)

needs_f16 = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features,
                               reason=f"the adapter lacks {F16_FEATURE}")


def fastest(winner: str):
    """Synthetic measurements: `winner` 4x faster than every other algorithm on every shape."""
    def rule(p):
        return {n: (0.25 if n == winner else 1.0) * (4e-8 * p.flops / 2 + 0.01) for n in ALGORITHMS}
    return rule


def fake_calibration(profile: DeviceProfile, rule, dtype: str = "float32", excluded=None) -> calib.Calibration:
    samples = []
    for p in tiny_grid() + full_grid()[::4]:
        times = {n: t for n, t in rule(p).items() if ALGORITHMS[n].unsupported(p) is None}
        samples.append(calib.Sample(p, times, {}))
    cal = calib.Calibration(profile.key, calib.device_record(profile), "fake", "test", samples, excluded or {},
                            dtype=dtype)
    assert calib.save_calibration(cal) is not None
    return cal


def quiet_route(*args, **kwargs) -> Decision:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        return route_params(*args, **kwargs)


# -- routing (pure) ----------------------------------------------------------------------------------------

def test_the_picks_follow_each_dtypes_calibration():
    fake_calibration(NVIDIA, fastest("im2col"), "float32")
    fake_calibration(NVIDIA, fastest("winograd4"), "float16")
    d32 = route_params(DENSE3, NVIDIA, "calibrated")
    d16 = route_params(DENSE3, NVIDIA, "calibrated", dtype="float16")
    assert (d32.algorithm, d32.dtype) == ("im2col", "float32")
    assert (d16.algorithm, d16.dtype) == ("winograd4", "float16")
    assert d32.reason.startswith("calibrated: im2col predicted")
    assert d16.reason.startswith("calibrated (float16): winograd4 predicted")
    assert "dtype float16" in str(d16) and "dtype" not in str(d32)
    # numpy and torch spellings name the same dtype
    assert route_params(DENSE3, NVIDIA, "calibrated", dtype=np.float16).algorithm == "winograd4"
    assert convroute.route((1, 64, 20, 20), (64, 64, 3, 3), padding=1, device=NVIDIA, policy="calibrated",
                           dtype="half").algorithm == "winograd4"


def test_float16_without_its_calibration_uses_float32_and_says_so():
    fake_calibration(NVIDIA, fastest("im2col"), "float32")
    with pytest.warns(CacheWarning, match=r"no float16 calibration profile .*convroute calibrate --dtype float16"):
        d = route_params(DENSE3, NVIDIA, "calibrated", dtype="float16")
    assert d.algorithm == "im2col" and d.dtype == "float16"
    assert d.reason.startswith("calibrated (float32 profile: no float16 calibration for this device, run "
                               "`convroute calibrate --dtype float16`): im2col predicted"), d.reason


def test_float32_never_falls_back_to_a_float16_calibration():
    fake_calibration(NVIDIA, fastest("winograd4"), "float16")
    with pytest.warns(CacheWarning, match=r"no calibration profile .*\(run `convroute calibrate` on it\)"):
        d = route_params(DENSE3, NVIDIA, "calibrated")
    assert d.reason.startswith("no calibration profile") and d.algorithm == "direct"  # seed's choice


def test_no_calibration_at_all_routes_float16_as_seed_and_names_the_command():
    with pytest.warns(CacheWarning, match=r"convroute calibrate --dtype float16"):
        d = route_params(DENSE3, NVIDIA, "calibrated", dtype="float16")
    assert d.reason.startswith("no calibration profile for this device -> seed:") and d.algorithm == "direct"


def test_exclusions_are_per_dtype():
    wrong = {"winograd4": "wrong result on conv2d ... in float16: relative error 0.5 (tolerance 0.01)"}
    fake_calibration(NVIDIA, fastest("winograd4"), "float32")
    fake_calibration(NVIDIA, fastest("winograd4"), "float16", excluded=wrong)
    assert route_params(DENSE3, NVIDIA, "calibrated").algorithm == "winograd4"
    d16 = route_params(DENSE3, NVIDIA, "calibrated", dtype="float16")
    assert d16.algorithm != "winograd4"
    assert "winograd4 excluded (excluded by this device's float16 calibration: wrong result" in d16.reason
    assert quiet_route(DENSE3, NVIDIA, "seed", dtype="float16").algorithm == "direct"  # seed's pick was allowed


def test_float32_exclusions_apply_to_float16_routed_on_the_float32_calibration():
    fake_calibration(NVIDIA, fastest("im2col"), "float32", excluded={"im2col": "wrong result (0.3)"})
    d = quiet_route(WIDE3, NVIDIA, "seed", dtype="float16")
    assert d.algorithm != "im2col"
    assert "float32 calibration (it has no float16 one): wrong result (0.3)" in d.reason


def test_seed_ignores_dtype_but_skips_algorithms_without_kernels_for_it(monkeypatch):
    assert route_params(WIDE3, NVIDIA, "seed").algorithm == "im2col"
    assert route_params(WIDE3, NVIDIA, "seed", dtype="float16").algorithm == "im2col"  # ET-VK's rule has no dtype

    def no_f16(cls, precision: Precision):
        return "no f16 shaders yet" if precision.dtype == "float16" else None

    monkeypatch.setattr(ALGORITHMS["im2col"], "unsupported_precision", classmethod(no_f16))
    assert route_params(WIDE3, NVIDIA, "seed").algorithm == "im2col"
    d = route_params(WIDE3, NVIDIA, "seed", dtype="float16")
    assert d.algorithm == "direct" and "im2col is excluded" in d.reason and "no float16 kernels: no f16 shaders yet" \
        in d.reason
    fake_calibration(NVIDIA, fastest("im2col"), "float16")
    d = route_params(WIDE3, NVIDIA, "calibrated", dtype="float16")
    assert d.algorithm != "im2col" and "im2col excluded (no float16 kernels" in d.reason


@pytest.mark.parametrize("bad", ["float64", "int8", "bf16", 3])
def test_bad_dtypes_are_clear_errors(bad):
    with pytest.raises(ValueError, match=r"unknown dtype .*'float32', 'float16'"):
        route_params(DENSE3, NVIDIA, "seed", dtype=bad)
    with pytest.raises(ValueError, match="unknown dtype"):
        calib.load_calibration(NVIDIA, bad)


def test_bad_dtype_on_the_command_line(capsys):
    for command in (["route", "--input", "1,8,9,9", "--weight", "8,8,3,3", "--device", "nvidia"],
                    ["bench", "--suite", "resnet18"], ["calibrate", "--quick"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(command + ["--dtype", "float64"])
        assert exit_.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_route_command_takes_the_dtype(capsys):
    assert cli_main(["route", "--input", "1,8,9,9", "--weight", "8,8,3,3", "--padding", "1", "--device", "nvidia",
                     "--dtype", "float16"]) == 0
    assert re.search(r"dtype\s+float16", capsys.readouterr().out)


# -- files -------------------------------------------------------------------------------------------------

def test_cache_files_per_dtype_and_float32_names_unchanged():
    f32, f16 = calib.profile_path(NVIDIA), calib.profile_path(NVIDIA, "float16")
    assert f32 != f16 and f32.parent == f16.parent
    assert re.fullmatch(r"calibration-test-gpu-9000-[0-9a-f]{12}\.json", f32.name), f32.name  # as before dtypes
    assert re.fullmatch(r"calibration-float16-test-gpu-9000-[0-9a-f]{12}\.json", f16.name), f16.name
    a32, a16 = autotune_mod.AutotuneCache(NVIDIA.key).path, autotune_mod.AutotuneCache(NVIDIA.key, "float16").path
    assert a32 != a16 and "float16" in a16.name and "float16" not in a32.name
    fake_calibration(NVIDIA, fastest("im2col"), "float16")
    assert json.loads(f16.read_text())["dtype"] == "float16" and not f32.exists()
    assert calib.load_calibration(NVIDIA) is None
    assert calib.load_calibration(NVIDIA, "float16").dtype == "float16"


def test_a_file_of_another_dtype_is_refused():
    fake_calibration(NVIDIA, fastest("im2col"), "float16")
    calib.profile_path(NVIDIA, "float16").rename(calib.profile_path(NVIDIA))  # an fp16 profile under the fp32 name
    with pytest.warns(CacheWarning, match="measured in 'float16', expected 'float32'"):
        assert calib.load_calibration(NVIDIA) is None


def test_a_float32_file_without_a_dtype_field_still_loads():
    """Profiles written before dtypes existed stay valid."""
    fake_calibration(NVIDIA, fastest("im2col"), "float32")
    path = calib.profile_path(NVIDIA)
    data = json.loads(path.read_text())
    del data["dtype"]
    path.write_text(json.dumps(data))
    cache.forget()
    assert calib.load_calibration(NVIDIA).dtype == "float32"
    assert route_params(DENSE3, NVIDIA, "calibrated").algorithm == "im2col"


# -- measurements on the adapter in use ------------------------------------------------------------------

def recorded_sources(monkeypatch, gpu) -> list[str]:
    sources, real = [], gpu.pipeline

    def recording(source, constants=None):
        sources.append(source)
        return real(source, constants)

    monkeypatch.setattr(gpu, "pipeline", recording)
    return sources


@needs_f16
def test_calibration_tolerance_is_per_dtype(monkeypatch):
    """An error of 5e-3 is wrong in float32 (>= 1e-4) but within float16's bound (1e-2)."""
    gpu = get_gpu()
    p = make_params((1, 4, 6, 6), (4, 4, 3, 3), padding=1)
    monkeypatch.setattr(Workload, "error", lambda self, kernel: 5e-3)
    algorithms = {"direct": ALGORITHMS["direct"]}
    excluded32, excluded16 = {}, {}
    sample32, _ = measure_shape(gpu, p, algorithms, excluded32, FAST)
    sample16, _ = measure_shape(gpu, p, algorithms, excluded16, FAST, Precision("float16"))
    assert "direct" in excluded32 and "tolerance 0.0001" in excluded32["direct"] and not sample32.times_ms
    assert not excluded16 and sample16.times_ms["direct"] > 0


@needs_f16
def test_calibrate_float16_measures_f16_kernels_into_its_own_file(monkeypatch, capsys):
    gpu = get_gpu()
    sources = recorded_sources(monkeypatch, gpu)
    monkeypatch.setattr(calibration_run, "ALGORITHMS", {n: ALGORITHMS[n] for n in ("direct", "pointwise")})
    assert cli_main(["calibrate", "--grid", "tiny", "--dtype", "float16", "--no-progress", "--per-shape", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "in float16" in out and "calibration-float16-" in out
    assert sources and all(s.startswith(F16_HEADERS) for s in sources)  # the self-test's winograd4 sums in f32
    cal = calib.load_calibration(gpu.profile, "float16")
    assert cal is not None and cal.dtype == "float16" and calib.load_calibration(gpu.profile) is None
    assert all(0 < e < 1e-2 for s in cal.samples for e in s.errors.values())
    assert any(e > 1e-5 for s in cal.samples for e in s.errors.values())  # f16 rounding, not an f32 run


@needs_f16
def test_autotune_tunes_float16_separately(monkeypatch):
    gpu = get_gpu()
    p = make_params((1, 8, 7, 7), (8, 8, 3, 3), padding=1)
    sources = recorded_sources(monkeypatch, gpu)
    d16 = route_params(p, gpu.profile, "autotune", dtype="float16")
    assert d16.reason.startswith("autotune (float16): ") and "tuned now" in d16.reason
    assert sources and all(s.startswith(F16_HEADERS) for s in sources)
    assert autotune_mod.AutotuneCache(gpu.profile.key, "float16").path.exists()
    assert not autotune_mod.AutotuneCache(gpu.profile.key).path.exists()
    assert "cached" in route_params(p, gpu.profile, "autotune", dtype="float16").reason
    assert "tuned now" in route_params(p, gpu.profile, "autotune").reason  # fp32 has its own entries


@needs_f16
def test_conv2d_in_float16_routes_with_the_float16_calibration():
    gpu = get_gpu()
    fake_calibration(gpu.profile, fastest("implicit_gemm"), "float16")
    p = make_params((1, 6, 9, 9), (8, 6, 3, 3), padding=1)
    x, w, b = random_inputs(p, np.random.default_rng(4))
    layer = convroute.Conv2d(w, b, padding=1, policy="calibrated", dtype="float16")
    out = layer(x)
    assert layer.decision.algorithm == "implicit_gemm" and layer.decision.dtype == "float16"
    assert layer.decision.reason.startswith("calibrated (float16)")
    assert out.dtype == np.float16 and rel_error(out, reference(p, x, w, b)) <= 1e-2


@needs_f16
def test_compare_chain_runs_in_float16():
    """convroute's chained engine in float16 reads and writes f16 buffers and computes the chain."""
    gpu = get_gpu()
    p = make_params((1, 6, 7, 7), (6, 6, 3, 3), padding=1)  # shape-preserving: a true chain
    x, w, b = random_inputs(p, np.random.default_rng(8))
    engine = ConvrouteEngine(gpu, "seed", "float16")
    assert engine.name == "convroute-seed-fp16" and engine.precision == "fp16"
    once, _, release = engine.prepare(p, x, w, b, 2)
    try:
        out = once()
    finally:
        release()
    ref = reference(p, reference(p, x, w, b).astype(np.float32), w, b)
    assert out.dtype == np.float16 and rel_error(out, ref) <= 1e-2


def test_float16_needs_shader_f16(monkeypatch, tmp_path, capsys):
    gpu = get_gpu()
    monkeypatch.setattr(gpu, "profile", replace(gpu.profile, features=frozenset()))
    layers = tmp_path / "one.json"
    layers.write_text(json.dumps({"name": "one", "layers": [{"name": "a", "c_in": 4, "h": 5, "w": 5, "c_out": 4,
                                                             "kernel": 3, "padding": 1}]}))
    assert cli_main(["bench", "--layers", str(layers), "--dtype", "float16", "--no-progress"]) == 2
    assert cli_main(["calibrate", "--grid", "tiny", "--dtype", "float16", "--no-progress"]) == 2
    assert capsys.readouterr().err.count("needs the adapter feature 'shader-f16'") == 2


TINY = {"name": "tiny16", "layers": [
    {"name": "same", "c_in": 8, "h": 9, "w": 9, "c_out": 8, "kernel": 3, "padding": 1, "count": 2},
    {"name": "pw", "c_in": 8, "h": 9, "w": 9, "c_out": 12, "kernel": 1},
    {"name": "dw", "c_in": 8, "h": 9, "w": 9, "c_out": 8, "kernel": 3, "padding": 1, "groups": 8},
]}


@needs_f16
def test_cli_bench_float16_with_compare(tmp_path, capsys):
    pytest.importorskip("torch")
    fake_calibration(get_gpu().profile, fastest("direct"), "float32")  # no float16 one: bench must say so
    layers, out = tmp_path / "tiny16.json", tmp_path / "out.json"
    layers.write_text(json.dumps(TINY))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert cli_main(["bench", "--layers", str(layers), "--dtype", "float16", "--policy", "seed,calibrated",
                         "--compare", "torch,ncnn", "--chain", "2", "--budget", "0.02", "--repeats", "3",
                         "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["dtype"] == "float16" and "float16" in printed
    assert any("no float16 calibration" in note for note in data["notes"])
    for layer in data["layers"]:  # every algorithm checked in f16: within 1e-2, above f32 rounding
        assert layer["errors"] and all(e < 1e-2 for e in layer["errors"].values()), layer
        assert max(layer["errors"].values()) > 1e-5
        assert "float32 profile: no float16 calibration" in layer["reasons"]["calibrated"]
    compare, info = data["compare"], data["compare_info"]
    assert info["dtype"] == "float16"
    assert {"convroute-seed-fp16", "convroute-calibrated-fp16", "torch-fp16", "ncnn-vk16", "ncnn-vk32"} <= set(compare)
    assert compare["torch-fp16"]["precision"] == "fp16" and "fp16" in compare["torch-fp16"]["detail"]
    for layer in compare["torch-fp16"]["layers"]:
        assert layer["ms"] > 0 and layer["difference"] < 5e-2
    seed = compare["convroute-seed-fp16"]["layers"]
    assert [m["algorithm"] for m in seed] == [layer["choices"]["seed"] for layer in data["layers"]]
    if compare["ncnn-vk16"]["available"]:
        [headline] = [h for h in info["headline"] if h["convroute"] == "convroute-seed-fp16"]
        assert headline["peer"] == "ncnn-vk16" and headline["subset"] == ["same", "dw"]
        assert "headline, tiny16 batch 1: convroute-seed-fp16 / ncnn-vk16 = " in printed
    else:
        assert info["headline"] == []


def synthetic(suite: str, ours: str, values: dict[str, list]) -> CompareReport:
    params = [make_params((1, 4, 6, 6), (4, 4, 3, 3), 1, 1)] * 2
    engines = {name: EngineResult(name, precision="fp16" if name.endswith("16") else "fp32",
                                  layers=[Measurement(ms=v) if v else Measurement(reason="n/a: x") for v in ms])
               for name, ms in ({ours: [1.0, 1.0]} | values).items()}
    return CompareReport(suite, 1, 10, 1.0, {"name": "test"}, ["a", "b"], [1, 2], params, engines, dtype="float16")


def test_headline_and_per_suite_table():
    one = synthetic("net1", "convroute-seed-fp16", {"ncnn-vk32": [1.0, 4.0], "ncnn-vk16": [2.0, None]})
    two = synthetic("net2", "convroute-seed-fp16", {"ncnn-vk16": [0.5, 0.5]})
    assert one.peers == ["ncnn-vk16", "ncnn-vk32"]  # convroute's precision first
    [headline] = one.headline()
    assert headline["peer"] == "ncnn-vk16" and headline["ratio"] == 0.5 and headline["subset"] == ["a"]
    assert one.agreement("ncnn-vk32") == 5e-2  # compared with convroute's fp16 output: fp16's bound
    text = ratio_table([one, two])
    lines = text.splitlines()
    assert "/ ncnn-vk16" in lines[0] and "/ ncnn-vk32" in lines[0]
    assert re.search(r"net1\s+convroute-seed-fp16\s+0\.500 \(1/2\)\s+0\.333 \(2/2\)", text), text
    assert re.search(r"net2\s+convroute-seed-fp16\s+2\.000 \(2/2\)\s+-", text), text


@needs_f16
def test_workload_in_float16():
    """Workload(precision=float16) holds f16 buffers and builds f16 kernels: its error is f16 rounding."""
    work = Workload(get_gpu(), make_params((1, 4, 5, 5), (4, 4, 1, 1)), rotations=1, precision=Precision("float16"))
    try:
        kernel = work.kernel(ALGORITHMS["pointwise"])
        assert kernel.dtype == "float16" and kernel.epilogue == Epilogue()
        assert 1e-6 < work.error(kernel) < 1e-2
    finally:
        work.release()


def test_cli_bench_several_suites_in_one_command(tmp_path, capsys):
    pytest.importorskip("torch")
    files = []
    for name in ("netA", "netB"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"name": name, "layers": [{"name": "a", "c_in": 4, "h": 6, "w": 6, "c_out": 4,
                                                              "kernel": 3, "padding": 1}]}))
        files.append(str(path))
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    assert cli_main(["bench", "--suite", ",".join(files), "--policy", "seed", "--compare", "torch", "--chain", "2",
                     "--budget", "0.02", "--repeats", "3", "--no-progress", "--json", str(out),
                     "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "== netA ==" in printed and "== netB ==" in printed
    assert re.search(r"netA\s+convroute-seed\s+\d+\.\d{3} \(1/1\)", printed)
    assert re.search(r"netB\s+convroute-seed\s+\d+\.\d{3} \(1/1\)", printed)
    data = json.loads(out.read_text())
    assert [d["suite"] for d in data["suites"]] == ["netA", "netB"]
    assert all(d["compare_info"]["ratios"] for d in data["suites"])
    for name in ("netA", "netB"):
        assert (tmp_path / f"out-{name}.png").exists() and (tmp_path / f"out-{name}-compare.png").exists()

"""The device self-test: its checker catches wrong and unwritten outputs, its findings are kept beside the
calibration (keyed like it, written atomically, kept across runs), routing obeys them per shape class under
every policy and says why, and `convroute selftest` / `convroute calibrate` run it."""

from __future__ import annotations

import json
import os
import random
import shlex
from dataclasses import replace

import numpy as np
import pytest

from convroute import Conv2d
from convroute.bench import selftest
from convroute.bench.selftest import (
    Case,
    Reference,
    check_case,
    draw_case,
    max_relative_error,
    random_picker,
    reference,
    run_cases,
    selftest_result,
)
from convroute.cache import CacheWarning
from convroute.calibration import profile as calib
from convroute.calibration import run as calibration_run
from convroute.calibration import selftest_results as results
from convroute.cli.main import main as cli_main
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS
from convroute.kernels.common import F16_FEATURE
from convroute.kernels.depthwise import Depthwise
from convroute.kernels.direct import Direct
from convroute.kernels.transposed import Transposed
from convroute.params import make_params
from convroute.router import route_params
from test_fuzz import synthetic_calibration

STRIDED_DW = make_params((1, 6, 9, 9), (6, 1, 3, 3), stride=2, padding=1, groups=6)
UNIT_DW = make_params((1, 6, 9, 9), (6, 1, 3, 3), stride=1, padding=1, groups=6)
OTHER_STRIDED_DW = make_params((2, 8, 11, 7), (8, 1, 3, 5), stride=(1, 2), padding=2, groups=8)


def wrong_when_strided(monkeypatch, cls=Depthwise):
    """`cls` adds 1 to every output of a strided conv: a kernel bug confined to one shape class."""
    prepare = cls.prepare

    def bad_prepare(self, weight, bias):
        prepare(self, weight, bias + (1.0 if max(self.p.stride) > 1 else 0.0))

    monkeypatch.setattr(cls, "prepare", bad_prepare)


def saved_findings(cases, dtype="float32"):
    gpu = get_gpu()
    tally, seconds = run_cases(gpu, cases)
    result = selftest_result(gpu, tally, dtype, seconds)
    assert results.save_selftest(result) is not None
    return tally, result


# -- the checker ---------------------------------------------------------------------------------------------

def test_max_relative_error_counts_one_bad_element_and_unwritten_outputs():
    ref = np.ones((1, 2, 30, 30))
    out = ref.copy()
    out[0, 1, 3, 4] += 0.01
    assert max_relative_error(out, ref) == pytest.approx(0.01)
    out[0, 0, 0, 0] = np.nan
    assert max_relative_error(out, ref) == float("inf")
    assert max_relative_error(ref[:, :1], ref) == float("inf")


def test_errors_are_measured_at_the_scale_the_kernel_summed_at():
    """The CI fuzz's float16 winograd4 case (seed 1636212181): sums up to ~1.5 clamped to 0..0.25. Its error is
    2 f16 ulps of the sums, 1.1e-2 of the clamped maximum; against the sums' maximum it passes. A kernel that
    skipped the clamp must still fail."""
    case = Case(make_params((3, 1, 5, 7), (1, 1, 3, 3)), activation=("clamp", 0.0, 0.25), dtype="float16", seed=1)
    if F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("the device has no shader-f16")
    (outcome,) = check_case(case, get_gpu(), ["winograd4"])
    x, w, b = case.inputs()
    ref = Reference.of(case, x, w, b)
    assert ref.scale > 4 * float(np.max(np.abs(ref.values)))
    assert not outcome.wrong, outcome.line()
    unclamped = Reference.of(replace(case, activation=None), x, w, b).values
    assert ref.error(unclamped) > 0.5


SOFTPLUS_JUMP = Case(make_params((1, 2, 7, 7), (3, 2, 3, 3), padding=(1, 1)), bias=False,
                     activation=("softplus", 2.0, 1.0), dtype="float16", seed=484)


def test_sums_that_round_across_softplus_threshold_may_take_either_side():
    """Fuzz seed 1218558262 (lavapipe and the H100): one sum is 0.5004, f16 winograd4 gives 0.5000, and
    softplus(beta 2, threshold 1) jumps there from 0.657 to 0.5. Only elements within the tolerance of the jump
    may match its other side: softplus without its linear part still fails."""
    x, w, b = SOFTPLUS_JUMP.inputs()
    ref = Reference.of(SOFTPLUS_JUMP, x, w, b)
    moved = ref.across != ref.values
    assert 0 < moved.sum() < 5
    assert ref.error(ref.values) == 0 and ref.error(ref.across) == 0
    smooth = Reference.of(replace(SOFTPLUS_JUMP, activation=("softplus", 2.0, 99.0)), x, w, b).values
    assert ref.error(smooth) > 0.1
    if F16_FEATURE in get_gpu().profile.features:
        (outcome,) = check_case(SOFTPLUS_JUMP, get_gpu(), ["winograd4"])
        assert not outcome.wrong, outcome.line()


def test_the_checker_catches_a_wrong_and_an_unwritten_output(monkeypatch):
    gpu = get_gpu()
    wrong_when_strided(monkeypatch)
    case = Case(STRIDED_DW, bias=True, activation="silu", seed=3)
    by_algorithm = {o.algorithm: o for o in check_case(case, gpu)}
    assert by_algorithm["depthwise"].wrong and by_algorithm["depthwise"].error > 0.1
    assert not by_algorithm["direct"].wrong and by_algorithm["direct"].error < 1e-5
    line = by_algorithm["depthwise"].line()
    assert "\n" not in line and line.startswith("WRONG depthwise (float32): relative error")
    assert line.endswith(case.repro("depthwise"))
    monkeypatch.setattr(Direct, "bind", lambda self, x, y, n: [])  # writes nothing: the poison shows
    (unwritten,) = check_case(case, gpu, ["direct"])
    assert unwritten.wrong and unwritten.error == float("inf")


def test_policy_runs_report_the_routed_algorithm(monkeypatch):
    gpu = get_gpu()
    synthetic_calibration(gpu, "float32")
    case = Case(UNIT_DW, activation=("clamp", -0.5, 0.75), seed=4)
    outcomes = check_case(case, gpu, policies=["seed", "calibrated", "autotune"])
    policies = {o.policy: o for o in outcomes if o.policy}
    assert set(policies) == {"seed", "calibrated", "autotune"}
    assert policies["seed"].algorithm == "depthwise"
    assert all(o.algorithm in ALGORITHMS and not o.wrong for o in outcomes)


def test_the_generator_spans_every_shape_class_and_stays_small():
    pick = random_picker(random.Random(0))
    cases = [draw_case(pick, ("float32", "float16")) for _ in range(3000)]
    classes = {results.shape_class(c.params) for c in cases}
    assert len(classes) == 16
    assert {type(c.activation).__name__ for c in cases} == {"NoneType", "str", "tuple"}
    assert {c.activation for c in cases if isinstance(c.activation, str)} == \
        set(selftest.ACTIVATIONS) - {None, "clamp", *selftest.ACTIVATION_PARAMETERS}
    assert {c.activation[0] for c in cases if isinstance(c.activation, tuple)} == \
        {"clamp", *selftest.ACTIVATION_PARAMETERS}
    for name, cls in ALGORITHMS.items():
        assert sum(cls.unsupported(c.params) is None for c in cases) >= 30, name
    assert any(c.params.is_depthwise and c.params.c_out > c.params.c_in for c in cases)  # channel multipliers
    assert any(c.params.transposed and c.params.output_padding != (0, 0) for c in cases)
    assert {c.params.kh for c in cases} == set(range(1, 8)) and {c.params.n for c in cases} == {1, 2, 3}
    assert max(c.params.n * c.params.c_out * c.params.ho * c.params.wo for c in cases) < 60000
    assert {c.dtype for c in cases} == {"float32", "float16"} and len({c.bias for c in cases}) == 2


@pytest.mark.parametrize("activation", [("clamp", -1.0, -0.125), ("elu", 1.6732632423543772, 1.0507009873554805,
                                                                   1.0), ("leaky_relu", -0.5)])
def test_a_repro_line_rebuilds_its_case(activation):
    case = draw_case(random_picker(random.Random(7)), ("float16",))
    case = replace(case, activation=activation)
    args = shlex.split(case.repro("direct"))[3:]
    parser = __import__("convroute.cli.main", fromlist=["_"]).build_parser()
    parsed = parser.parse_args(args)
    from convroute.bench.selftest import parse_activation

    assert make_params(parsed.input, parsed.weight, parsed.stride, parsed.padding, parsed.dilation, parsed.groups,
                       transposed=parsed.transposed, output_padding=parsed.output_padding) == case.params
    assert (parsed.bias, parse_activation(parsed.activation), parsed.dtype, parsed.seed, parsed.algorithm) == \
        (case.bias, case.activation, case.dtype, case.seed, "direct")


# -- routing obeys the findings ------------------------------------------------------------------------------

def test_a_wrong_algorithm_is_excluded_for_its_shape_class_under_every_policy(monkeypatch):
    gpu = get_gpu()
    wrong_when_strided(monkeypatch)
    tally, result = saved_findings([Case(STRIDED_DW, seed=1), Case(UNIT_DW, seed=2)])
    assert [(f.algorithm, f.shape_class) for f in result.findings] == \
        [("depthwise", "conv2d, groups>1, stride>1, dilation=1")]
    assert tally.algorithms["depthwise"].runs == 2 and tally.algorithms["depthwise"].wrong == 1

    seed = route_params(OTHER_STRIDED_DW, gpu.profile, "seed")
    assert seed.algorithm == "direct"
    assert "depthwise is excluded on this device (excluded by this device's self-test: wrong 1x on conv2d, " \
           "groups>1, stride>1, dilation=1 convs in float32" in seed.reason
    assert "repro: python -m convroute.cli.main selftest --input 1,6,9,9 --weight 6,1,3,3" in seed.reason
    assert route_params(UNIT_DW, gpu.profile, "seed").algorithm == "depthwise"  # other classes keep it
    synthetic_calibration(gpu, "float32")
    calibrated = route_params(OTHER_STRIDED_DW, gpu.profile, "calibrated")
    assert calibrated.algorithm != "depthwise" and "depthwise excluded (excluded by this device's self-test" \
        in calibrated.reason
    assert route_params(OTHER_STRIDED_DW, gpu.profile, "autotune").algorithm != "depthwise"
    f16 = route_params(OTHER_STRIDED_DW, gpu.profile, "seed", dtype="float16")
    assert f16.algorithm == "direct" and "this device's float32 self-test" in f16.reason  # index bugs hit both

    x, w, b = Case(OTHER_STRIDED_DW, seed=5).inputs()
    layer = Conv2d(w, b, OTHER_STRIDED_DW.stride, OTHER_STRIDED_DW.padding, groups=8)
    y = layer(x)
    assert layer.decision.algorithm == "direct" and "self-test" in layer.decision.reason
    assert max_relative_error(y, reference(Case(OTHER_STRIDED_DW), x, w, b)) < 1e-4


def test_wrong_in_several_shape_classes_is_excluded_everywhere(monkeypatch):
    gpu = get_gpu()
    finding = results.Finding("im2col", "", 1, 0.5, "python -m convroute.cli.main selftest ...", "2026-01-01")
    classes = ["conv2d, groups=1, stride>1, dilation=1", "conv2d, groups=1, stride=1, dilation>1",
               "conv2d, groups=1, stride>1, dilation>1"]
    result = results.SelftestResult(gpu.profile.key, calib.device_record(gpu.profile),
                                     findings=[replace(finding, shape_class=c) for c in classes])
    assert results.save_selftest(result) is not None
    p = make_params((1, 8, 9, 9), (130, 8, 3, 3), padding=1)  # seed: im2col (C_out >= 128), unit stride
    d = route_params(p, gpu.profile, "seed")
    assert d.algorithm == "direct" and "wrong on 3 shape classes in float32, so not trusted on any" in d.reason


def test_the_transposed_kernel_excluded_on_its_class_is_an_error_naming_why(monkeypatch):
    """transposed is the only algorithm for conv_transpose2d: excluded, the call fails and says why instead
    of returning a wrong result."""
    wrong_when_strided(monkeypatch, Transposed)
    p = make_params((1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1, groups=2, transposed=True)
    saved_findings([Case(p, seed=1)])
    x, w, b = Case(p).inputs()
    with pytest.raises(RuntimeError, match="every algorithm that can run conv_transpose2d .* excluded on this "
                                           "device: transposed: excluded by this device's self-test: wrong 1x"):
        Conv2d(w, b, 2, 1, groups=2, transposed=True)(x)
    unit = make_params((1, 4, 5, 5), (4, 2, 3, 3), padding=1, groups=2, transposed=True)
    assert route_params(unit, get_gpu().profile, "seed").algorithm == "transposed"


# -- the file ------------------------------------------------------------------------------------------------

def test_the_file_is_keyed_like_the_calibration_and_refused_when_foreign(monkeypatch):
    gpu = get_gpu()
    path = results.selftest_path(gpu.profile)
    assert path.parent == calib.profile_path(gpu.profile).parent
    assert path.name.replace("selftest-", "calibration-") == calib.profile_path(gpu.profile).name
    assert results.selftest_path(gpu.profile, "float16").name.startswith("selftest-float16-")
    wrong_when_strided(monkeypatch)
    saved_findings([Case(STRIDED_DW, seed=1)])
    data = json.loads(path.read_text())
    assert data["format"] == "convroute-selftest" and data["device_key"] == gpu.profile.key
    assert route_params(STRIDED_DW, gpu.profile, "seed").algorithm == "direct"
    data["device_key"] = "another GPU | another driver | Vulkan"
    path.write_text(json.dumps(data))
    with pytest.warns(CacheWarning, match="made on another device or driver"):
        assert route_params(STRIDED_DW, gpu.profile, "seed").algorithm == "depthwise"
    path.write_text("{ not json")
    with pytest.warns(CacheWarning, match="corrupt JSON"):
        assert route_params(STRIDED_DW, gpu.profile, "seed").algorithm == "depthwise"


def test_saving_is_atomic(monkeypatch):
    gpu = get_gpu()
    wrong_when_strided(monkeypatch)
    _, result = saved_findings([Case(STRIDED_DW, seed=1)])
    path = results.selftest_path(gpu.profile)
    before = path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.warns(CacheWarning, match="disk full"):
        assert results.save_selftest(replace(result, findings=[], cases=99)) is None
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_findings_outlive_a_later_run_unless_fresh():
    with pytest.MonkeyPatch.context() as patch:
        wrong_when_strided(patch)
        _, first = saved_findings([Case(STRIDED_DW, seed=1)])
    _, clean = saved_findings([Case(UNIT_DW, seed=2)])
    assert not clean.findings
    merged = clean.merged_with(first)
    assert [f.algorithm for f in merged.findings] == ["depthwise"] and merged.cases == 1
    assert clean.merged_with(None).findings == []


# -- the commands ----------------------------------------------------------------------------------------------

def test_selftest_command_reports_saves_and_its_repro_lines_run(capsys):
    assert cli_main(["selftest", "--cases", "6", "--dtype", "float32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "float32: 6 cases in" in out and "algorithm" in out and "worst error" in out
    assert "saved " in out and results.selftest_path(get_gpu().profile).exists()
    repros = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("worst ")]
    assert repros and all(r.startswith("python -m convroute.cli.main selftest --input ") for r in repros)
    assert cli_main(shlex.split(repros[0])[3:]) == 0
    assert " ok" in capsys.readouterr().out


def test_selftest_command_finds_and_excludes_a_wrong_algorithm(monkeypatch, capsys):
    wrong_when_strided(monkeypatch)
    one = ["selftest", "--input", "1,6,9,9", "--weight", "6,1,3,3", "--stride", "2", "--padding", "1", "--groups",
           "6", "--algorithm", "depthwise,direct"]
    assert cli_main(one) == 1
    out = capsys.readouterr().out
    assert "WRONG" in out and "direct" in out
    assert cli_main(["selftest", "--cases", "25", "--dtype", "float32", "--no-progress", "--seed", "3"]) == 1
    out = capsys.readouterr().out
    assert "WRONG depthwise: python -m convroute.cli.main selftest" in out
    assert "EXCLUDED depthwise on conv2d, groups>1, stride>1" in out
    assert route_params(OTHER_STRIDED_DW, get_gpu().profile, "seed").algorithm == "direct"


def test_selftest_command_dtype_without_shader_f16(monkeypatch, capsys):
    gpu = get_gpu()
    monkeypatch.setattr(gpu, "profile", replace(gpu.profile, features=frozenset()))
    assert cli_main(["selftest", "--cases", "2", "--dtype", "float16"]) == 2
    assert "shader-f16" in capsys.readouterr().err
    assert cli_main(["selftest", "--cases", "2", "--no-progress", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "float16 skipped" in out and "float32: 2 cases" in out


def test_calibrate_runs_the_selftest(monkeypatch, capsys):
    gpu = get_gpu()
    monkeypatch.setattr(calibration_run, "ALGORITHMS", {n: ALGORITHMS[n] for n in ("direct", "pointwise")})
    assert cli_main(["calibrate", "--grid", "tiny", "--no-progress", "--per-shape", "0.02",
                     "--selftest-cases", "3"]) == 0
    out = capsys.readouterr().out
    assert "self-test: up to 3 random convs in float32" in out and "float32: 3 cases in" in out
    assert results.load_selftest(gpu.profile).cases == 3

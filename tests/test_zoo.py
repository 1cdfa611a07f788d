"""`convroute zoo`: the default zoo's list, and one small zoo run on the adapter in use (two of the smallest models
at 32 px, 2 rounds, torch on the CPU as the peer, and a model that fails) checked for its tables, JSON, plot and
failing row. No timed assertions."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys

import pytest

torch = pytest.importorskip("torch")
import convroute.frontend as frontend  # noqa: E402 (before torchvision, which loads triton: see frontend)

pytest.importorskip("torchvision")
pytest.importorskip("timm")
from convroute.bench import zoo as bench_zoo  # noqa: E402
from convroute.bench.compare_model import OURS, EngineRun, ModelComparison  # noqa: E402
from convroute.cli import zoo_cmd  # noqa: E402
from convroute.cli.main import main  # noqa: E402
from convroute.frontend import zoo  # noqa: E402
from convroute.report.latency import Latency  # noqa: E402
from convroute.report.table import COLUMNS, width_limit  # noqa: E402

MODELS = ["squeezenet1_1", "timm:lcnet_050", "alexnet"]  # alexnet cannot run at 32 px: its row is a failure


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    json_path, plot_path = out / "zoo.json", out / "zoo.png"
    argv = ["zoo", *MODELS, "--size", "32", "--runs", "2", "--compare", "torch-cpu", "--json", str(json_path),
            "--plot", str(plot_path), "--no-progress"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # capsys is function-scoped
        code = main(argv)
    return code, text.getvalue(), json.loads(json_path.read_text()), plot_path, json_path


def test_list_names_at_least_30_models_of_every_torchvision_family_and_15_timm_families(capsys):
    assert main(["zoo", "--list"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()[1:]
    assert len(lines) == len(zoo.DEFAULT_ZOO) >= 30
    assert f"{len(zoo.DEFAULT_ZOO)} models" in text.splitlines()[0]
    for family in zoo.FAMILIES:
        assert any(line.split()[0] == family for line in lines), family
    timm_names = [name for name in zoo.DEFAULT_ZOO.values() if zoo.is_timm(name)]
    assert len(timm_names) >= 15
    for needed in ("cspdarknet", "tresnet", "resnest", "ecaresnet"):
        assert any(needed in name for name in timm_names), needed
    for name in zoo.DEFAULT_ZOO.values():
        zoo.check_name(name)  # every default model exists in this torchvision / timm
        assert name in text


def test_settled_batch_norms_keep_activations_within_float16():
    """Convs that each scale their input up 10x, between batch norms: random statistics pass the growth on (past
    float16's 65504 after eight), statistics settled on random images normalise it away."""
    import torch

    def net():
        torch.manual_seed(0)
        layers = [torch.nn.Conv2d(3, 16, 3, padding=1)]
        for _ in range(8):
            conv = torch.nn.Conv2d(16, 16, 3, padding=1)
            with torch.no_grad():
                conv.weight.mul_(10)
            layers += [conv, torch.nn.BatchNorm2d(16), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers).eval()

    x = torch.randn(1, 3, 32, 32)
    randomized, settled = net(), net()
    zoo.randomize_batch_norms(randomized, 1)
    zoo.settle_batch_norms(settled, 1, 32)
    with torch.no_grad():
        assert randomized(x).abs().max() > 65504 and settled(x).abs().max() < 100
    norm = settled[2]
    assert norm.running_mean.abs().max() > 0.1 and norm.running_var.std() > 0  # not identity statistics
    assert not settled.training and norm._forward_pre_hooks == {}


def test_default_sizes_follow_timm_and_torchvision():
    assert zoo.default_size("resnet18") == 224
    assert zoo.default_size("inception_v3") == 299
    assert zoo.default_size("timm:cspdarknet53") == 256
    assert zoo.default_size("timm:xception41") == 299


def test_unknown_models_and_peers_are_clear_errors(capsys):
    assert main(["zoo", "resnet18", "no_such_net"]) == 2
    assert "unknown model 'no_such_net'" in capsys.readouterr().err
    assert main(["zoo", "timm:no_such_net"]) == 2
    assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
    assert main(["zoo", "resnet18", "--compare", "torch-cpu,nope"]) == 2
    assert "nope: unknown engine" in capsys.readouterr().err


def test_timm_names_without_timm_say_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(zoo.UnknownModel, match="pip install timm"):
        zoo.check_name("timm:resnet50d")


def test_a_model_that_fails_to_compile_is_a_row_with_its_error_under_a_progress_bar(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise frontend.CompileError("no lowering for op frobnicate")

    monkeypatch.setattr(bench_zoo.frontend, "compile", refuse)
    seen = []
    report = bench_zoo.run_zoo(["squeezenet1_1"], sizes={"squeezenet1_1": 32}, batch=1, policy=None,
                               dtype="float32", peers=["torch-cpu"], runs=1, on_row=lambda r: seen.append(len(r.rows)))
    err = capsys.readouterr().err
    assert seen == [1] and "zoo: 100%" in err and "1/1" in err
    (row,) = report.rows
    assert row.error == "compile: CompileError: no lowering for op frobnicate"
    assert row.compile_s is None and row.comparison is None and row.ours is None
    assert row.to_json()["error"] == row.error and row.to_json()["rel_error"] is None


def test_a_model_whose_output_is_all_zeros_is_a_row_with_its_error_not_a_pass(monkeypatch):
    """A check against an all-zero reference cannot fail: the row says so instead of an error of 0."""
    def zero_head(name, seed):
        head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
        head(torch.zeros(1, 3, 32, 32))
        torch.nn.init.zeros_(head[2].weight)
        torch.nn.init.zeros_(head[2].bias)
        return head.eval()

    monkeypatch.setattr(bench_zoo.zoo, "build_any", zero_head)
    report = bench_zoo.run_zoo(["squeezenet1_1"], sizes={"squeezenet1_1": 32}, batch=1, policy=None,
                               dtype="float32", peers=[], runs=0)
    (row,) = report.rows
    assert row.error.startswith("torch: ValueError: the model's float64 output is all zeros"), row.error
    assert row.rel_error is None


def test_timm_weights_left_at_zero_are_drawn_at_random():
    timm = pytest.importorskip("timm")
    model = zoo.build_any("timm:resmlp_12_224", 0)
    assert all(p.any() for p in model.parameters() if p.ndim >= 2)
    assert not timm.create_model("resmlp_12_224", pretrained=False).head.weight.any()  # timm's own init


def fake_row(name: str, ours_ms: float, peer_ms: dict[str, float], cpu_ops=None) -> bench_zoo.ZooRow:
    comparison = ModelComparison(name, (1, 3, 8, 8), "float32", {"name": "fake"}, 1)
    for engine, ms in {OURS: ours_ms, **peer_ms}.items():
        comparison.engines[engine] = EngineRun(engine, "", "fp32", latency=Latency(ms, ms, ms, 1), error=0.0)
    return bench_zoo.ZooRow(name, (1, 3, 8, 8), compile_s=0.1, cpu_ops=cpu_ops or {}, comparison=comparison)


def test_slower_models_beyond_the_rounds_spread_are_told_from_ties():
    def row(name, ours, peer):
        comparison = ModelComparison(name, (1, 3, 8, 8), "float32", {"name": "fake"}, 5)
        for engine, (p10, median, p90) in {OURS: ours, "a": peer}.items():
            comparison.engines[engine] = EngineRun(engine, "", "fp32", latency=Latency(median, p10, p90, 5), error=0.0)
        return bench_zoo.ZooRow(name, (1, 3, 8, 8), compile_s=0.1, comparison=comparison)

    report = bench_zoo.ZooReport(["a"], "seed", "float32", 1, 5)
    report.rows = [row("tie", (1.0, 1.05, 1.1), (0.98, 1.0, 1.02)), row("slow", (1.45, 1.5, 1.6), (0.98, 1.0, 1.02)),
                   row("fast", (0.5, 0.6, 0.7), (0.98, 1.0, 1.02))]
    assert [r.beyond_spread("a") for r in report.rows] == [False, True, False]
    assert report.rows[1].ratio_spread("a") == (pytest.approx(1.45 / 1.02), pytest.approx(1.6 / 0.98))
    text = bench_zoo.summary_table(report)
    assert "slower than a on 2 of 3 models: slow 1.50, tie 1.05" in text
    assert "beyond the rounds' spread (convroute's p10 over a's p90) on 1: slow" in text


def test_summary_ranks_by_the_first_peer_worst_first_with_geometric_means():
    report = bench_zoo.ZooReport(["a", "b"], "seed", "float32", 1, 1)
    report.rows = [fake_row("fast", 1.0, {"a": 4.0, "b": 1.0}), fake_row("slow", 2.0, {"a": 1.0, "b": 1.0},
                                                                         {"leaky_relu": 3}),
                   bench_zoo.ZooRow("broken", (1, 3, 8, 8), error="compile: X: y")]
    assert [r.name for r in report.ranked()] == ["slow", "fast", "broken"]
    assert report.geomean("a") == (pytest.approx(math.sqrt(0.5)), 2)  # ratios 0.25 and 2
    assert report.geomean("a", without_cpu_ops=True) == (pytest.approx(0.25), 1)
    text = bench_zoo.summary_table(report)
    lines = text.splitlines()
    assert lines[2].startswith("slow*") and lines[3].startswith("fast") and lines[4].startswith("broken")
    assert "geometric mean (2/2)" in text and "geometric mean, no CPU ops (1/1)" in text
    assert "slower than a on 1 of 2 models: slow 2.00" in text and "slower than b on 1 of 2 models: slow 2.00" in text
    assert "leaky_relu x3" in bench_zoo.models_table(report)
    data = report.to_json()
    assert data["geomean"]["a"] == {"ratio": pytest.approx(math.sqrt(0.5)), "models": 2, "ratio_without_cpu_ops": 0.25,
                                    "models_without_cpu_ops": 1}


def test_an_error_torch_itself_makes_is_the_models_conditioning_not_wrong():
    """Over the tolerance: '!' (wrong, exit code 1) unless within CONDITIONING x torch's own error ('?')."""
    def row(rel, own):
        return bench_zoo.ZooRow("m", (1, 3, 8, 8), compile_s=0.1, rel_error=rel, torch_error=own)
    tol = 1e-4
    assert row(5e-5, 1e-7).error_mark(tol) == ""
    assert row(4.8e-3, 1.4e-3).error_mark(tol) == "?"  # timm fbnetv3_b at 224 px with random weights
    assert row(0.18, 3e-7).error_mark(tol) == "!"  # repghostnet_050's batch-norm folding bug (session 22)
    assert row(2e-3, None).error_mark(tol) == "!"
    report = bench_zoo.ZooReport([], "seed", "float32", 0, 1)
    report.rows = [row(4.8e-3, 1.4e-3)]
    assert "4.8e-03?" in bench_zoo.models_table(report)
    args = argparse.Namespace(json=None, plot=None)
    assert zoo_cmd.show(report, args) == 0
    report.rows.append(row(0.18, 3e-7))
    assert zoo_cmd.show(report, args) == 1


def test_zoo_prints_both_tables_within_120_columns(small_zoo):
    code, text, *_ = small_zoo
    assert code == 1  # alexnet failed
    assert all(len(line) <= 120 for line in text.splitlines()), max(text.splitlines(), key=len)
    assert "compile s" in text and "GPU pass" in text and "/torch" in text and "geometric mean (2)" in text
    assert "FAILED alexnet: torch: RuntimeError: Given input size" in text  # the whole error, wrapped
    for name in MODELS:
        assert any(line.startswith(name) for line in text.splitlines()), name


def test_zoo_json_has_every_field_per_model(small_zoo):
    _, _, data, *_ = small_zoo
    assert data["peers"] == ["torch-cpu"] and data["runs"] == 2 and data["dtype"] == "float32"
    assert data["device"]["name"] and data["policy"] == "seed"
    rows = {row["model"]: row for row in data["models"]}
    assert list(rows) == MODELS
    for name in MODELS[:2]:
        row = rows[name]
        assert row["error"] is None and row["source"] == ("timm" if "timm" in name else "torchvision")
        assert row["input_shape"] == [1, 3, 32, 32] and row["compile_s"] > 0 and row["first_call_s"] > 0
        assert row["wall_s"] > row["compile_s"] + row["first_call_s"]
        assert 0 < row["torch_error"] < 1e-5  # against float64
        assert row["rel_error"] < 1e-4 and row["gpu_ops"] == sum(row["gpu_ops_by_op"].values()) > 0
        assert row["cpu_ops"] == {}
        ours, peer = row["engines"]["convroute"], row["engines"]["torch-cpu"]
        assert ours["p10_ms"] <= ours["median_ms"] <= ours["p90_ms"] and ours["runs"] == 2
        assert ours["gpu_pass"] is None or ours["gpu_pass"]["median_ms"] > 0
        assert row["ratios"]["torch-cpu"] == pytest.approx(ours["median_ms"] / peer["median_ms"])
    assert rows["alexnet"]["error"].startswith("torch: RuntimeError") and "engines" not in rows["alexnet"]
    ratios = [rows[name]["ratios"]["torch-cpu"] for name in MODELS[:2]]
    assert data["geomean"]["torch-cpu"]["ratio"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]))
    assert data["geomean"]["torch-cpu"]["models"] == 2


def test_zoo_plot_is_written(small_zoo):
    plot_path = small_zoo[3]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.stat().st_size > 10_000


def test_saved_zoos_print_again_and_join(small_zoo, tmp_path, capsys):
    _, text, data, _, json_path = small_zoo
    assert main(["zoo", "--from-json", str(json_path)]) == 1  # alexnet's failure again
    again = capsys.readouterr().out
    assert again.splitlines()[3:] == text.splitlines()[3:len(again.splitlines())]  # the tables, not the paths
    joined = tmp_path / "joined.json"
    other = dict(data, peers=["ncnn-vk32"], models=data["models"][:1])
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["zoo", "--from-json", str(json_path), str(tmp_path / "other.json"), "--json", str(joined)]) == 1
    merged = json.loads(joined.read_text())
    assert merged["models"] == data["models"] + data["models"][:1] and merged["peers"] == ["torch-cpu", "ncnn-vk32"]
    rerun = dict(data, models=[dict(data["models"][0], model="alexnet")])  # alexnet, failed above, run again
    (tmp_path / "rerun.json").write_text(json.dumps(rerun))
    capsys.readouterr()
    assert main(["zoo", "--from-json", str(json_path), str(tmp_path / "rerun.json"), "--json", str(joined)]) == 0
    rows = [row["model"] for row in json.loads(joined.read_text())["models"]]
    assert rows == MODELS and "FAILED" not in capsys.readouterr().out  # in the failure's place
    assert main(["zoo", "--from-json", str(tmp_path / "missing.json")]) == 2


def test_three_peers_and_the_longest_default_names_fit_120_columns():
    peers = ["torch-cuda-graph", "ncnn-vk32", "ncnn-vk16"]
    report = bench_zoo.ZooReport(peers, "calibrated", "float32", 1, 30, {"name": "NVIDIA H200", "backend": "Vulkan"})
    longest = sorted(zoo.DEFAULT_ZOO.values(), key=len)[-3:]
    report.rows = [fake_row(name, 1234.5, dict.fromkeys(peers, 0.123), {"index.Tensor": 2, "leaky_relu": 40})
                   for name in longest]
    with width_limit(COLUMNS):  # as the command line sets it
        lines = bench_zoo.zoo_text(report).splitlines()
    assert max(map(len, lines)) <= COLUMNS, max(lines, key=len)
    assert "~" not in "\n".join(lines)  # nothing was cut to fit: the short peer names make room


def test_runs_0_compiles_and_checks_only(capsys):
    assert main(["zoo", "squeezenet1_1", "--size", "32", "--runs", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith("squeezenet1_1")]
    compile_s, rel_error, torch_error, gpu_ops, cpu_ops = line.split()[2:]
    assert float(compile_s) > 0 and float(rel_error) < 1e-4 and int(gpu_ops) > 0 and cpu_ops == "0"
    assert 0 < float(torch_error) < 1e-5
    assert "nothing timed" in text and "geometric mean" not in text and "p50" not in text


def test_each_models_program_is_freed_before_the_next(monkeypatch):
    import weakref

    programs = []
    compile_ = bench_zoo.frontend.compile

    def kept(*args, **kwargs):
        program = compile_(*args, **kwargs)
        programs.append(weakref.ref(program))
        return program

    monkeypatch.setattr(bench_zoo.frontend, "compile", kept)
    alive = []
    bench_zoo.run_zoo(["squeezenet1_1"], sizes={"squeezenet1_1": 32}, batch=1, policy=None, dtype="float32",
                      peers=[], runs=0, progress=False, on_row=lambda r: alive.append(programs[-1]() is not None))
    assert alive == [False]


def test_float16_zoo_reports_torchs_own_float16_error(capsys):
    """The torch err column is torch's own error in the zoo's dtype, so a float16 error over the tolerance can be
    told apart from a model that float16 itself cannot hold."""
    assert main(["zoo", "squeezenet1_1", "--size", "32", "--runs", "0", "--dtype", "float16", "--no-progress"]) == 0
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith("squeezenet1_1")]
    rel_error, torch_error = line.split()[3:5]
    assert 1e-5 < float(torch_error) < 1e-2 and float(rel_error.rstrip("!")) < 1e-2  # float16, not float32's ~1e-7
    assert "torch's own in float16" in text

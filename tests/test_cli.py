"""The command line: devices, route, conv and suite, through main([...]); missing optional packages."""

from __future__ import annotations

import json
import sys

import pytest

from convroute.cli.common import check_extras
from convroute.cli.main import COMMANDS, main
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS


def test_commands_registered():
    assert {"devices", "route", "conv", "suite"} <= set(COMMANDS)


def test_devices_lists_and_marks_the_adapter_in_use(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    name = get_gpu().profile.name
    marked = [line for line in out.splitlines() if line.startswith("* [")]
    assert len(marked) == 1 and name in marked[0]
    for words in ("vendor", "type", "backend", "driver", "max-storage-buffer-binding-size",
                  "max-compute-workgroups-per-dimension", "timestamp-query", "shader-f16", "subgroup",
                  f"family {get_gpu().profile.family}"):
        assert words in out


def test_devices_reports_an_unmatched_adapter_choice(capsys, monkeypatch):
    monkeypatch.setenv("CONVROUTE_ADAPTER", "no-such-gpu")
    assert main(["devices"]) == 1
    captured = capsys.readouterr()
    assert "no-such-gpu" in captured.err and "[0]" in captured.out and "* [" not in captured.out


SHAPE = ["--input", "1,64,56,56", "--weight", "128,64,3,3", "--stride", "1", "--padding", "1"]


@pytest.mark.parametrize(("args", "algorithm", "words"), [
    (SHAPE + ["--device", "mali"], "im2col", "Mali"),
    (["--input", "1,64,56,56", "--weight", "64,64,3,3", "--padding", "1", "--device", "adreno"], "direct",
     "C_out 64 < 128"),
    (SHAPE + ["--device", "nvidia", "--force-direct"], "direct", "force_direct"),
    (["--input", "1,256,14,14", "--weight", "256,128,3,3", "--stride", "2", "--padding", "1,1",
      "--output-padding", "1", "--transposed", "--device", "mali"], "transposed", "never"),
    (["--input", "1,32,56,56", "--weight", "32,1,3,3", "--padding", "1", "--groups", "32", "--device", "mali"],
     "depthwise", "depthwise"),
    (["--input", "2,64,28,28", "--weight", "64,64,3,3", "--dilation", "2", "--padding", "2", "--device", "mali"],
     "direct", "dilation"),
])
def test_route(capsys, args, algorithm, words):
    assert main(["route"] + args) == 0
    out = capsys.readouterr().out
    assert f"algorithm {algorithm}\n" in out and words in out


def test_route_force_direct_from_environment(capsys, monkeypatch):
    monkeypatch.setenv("CONVROUTE_FORCE_DIRECT", "1")
    assert main(["route"] + SHAPE + ["--device", "mali"]) == 0
    assert "algorithm direct" in capsys.readouterr().out


def test_route_every_family(capsys):
    assert main(["route"] + SHAPE[:4] + ["--weight", "64,64,3,3", "--device", "all"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["mali"] == "im2col"
    assert all(rows[f] == "direct" for f in ("adreno", "nvidia", "amd", "intel", "apple", "powervr", "cpu"))


@pytest.mark.parametrize(("args", "words"), [
    (["--input", "1,64,56,56", "--weight", "128,32,3,3"], "channel mismatch"),
    (SHAPE + ["--device", "voodoo"], "unknown device family 'voodoo'"),
    (SHAPE + ["--stride", "0"], "stride must be positive"),
    (SHAPE + ["--policy", "fastest"], "unknown policy 'fastest'"),
])
def test_route_bad_input(capsys, args, words):
    assert main(["route"] + args) == 2
    assert words in capsys.readouterr().err


def test_route_unparsable_shape(capsys):
    with pytest.raises(SystemExit) as info:
        main(["route", "--input", "1,a,56,56", "--weight", "1,1,1,1"])
    assert info.value.code == 2
    assert "expected comma-separated integers" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["--input", "2,6,11,9", "--weight", "8,6,3,2", "--stride", "2,1", "--padding", "1,0"],
    ["--input", "1,8,9,9", "--weight", "8,1,3,3", "--groups", "8", "--padding", "1"],
    ["--input", "1,8,9,9", "--weight", "5,8,1,1"],
    ["--input", "1,8,5,5", "--weight", "8,4,3,3", "--stride", "2", "--output-padding", "1", "--transposed"],
], ids=["dense", "depthwise", "pointwise", "transposed"])
def test_conv_runs_and_checks_every_applicable_algorithm(capsys, args):
    assert main(["conv", *args, "--budget", "0.05", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "reference: torch float64" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ALGORITHMS]
    assert rows and all(row[-3] == "ok" for row in rows)
    assert sum("(routed)" in line for line in out.splitlines()) == 1
    assert all(float(row[-2]) > 0 for row in rows)


def test_conv_one_forced_algorithm_and_bad_ones(capsys):
    base = ["conv", "--input", "1,4,8,8", "--weight", "8,4,3,3", "--padding", "1", "--budget", "0.05"]
    assert main(base + ["--algorithm", "direct"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["direct"]]
    assert rows == ["direct"]
    assert main(base + ["--algorithm", "pointwise"]) == 2
    assert "pointwise needs a 1x1 kernel" in capsys.readouterr().err
    assert main(base + ["--algorithm", "fft"]) == 2
    assert "unknown algorithm 'fft'" in capsys.readouterr().err


def test_suite_on_a_users_layer_file(capsys, tmp_path):
    layers = {"name": "tiny", "layers": [
        {"name": "stem", "c_in": 3, "h": 20, "w": 18, "c_out": 16, "kernel": 3, "stride": 2, "padding": 1},
        {"name": "dw", "c_in": 16, "h": 10, "w": 9, "c_out": 16, "kernel": [3, 3], "padding": 1, "groups": 16,
         "count": 2},
        {"name": "up", "c_in": 16, "h": 10, "w": 9, "c_out": 8, "kernel": [2, 2], "stride": 2, "transposed": True},
    ]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(layers))
    assert main(["suite", "--layers", str(path), "--batch", "2", "--budget", "0.05", "--no-progress",
                 "--reasons"]) == 0
    out = capsys.readouterr().out
    assert "tiny, batch 2" in out and "for the 4 convs (3 distinct)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["stem"], ["dw"],
                                                                                               ["up"])}
    assert rows["dw"][-4] == "depthwise" and rows["up"][-4] == "transposed"
    assert all(row[-2] == "ok" for row in rows.values())
    assert "dw: depthwise" in out


def test_suite_rejects_a_bad_layer_file(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"layers": [{"name": "x", "c_in": 3, "h": 8, "w": 8, "kernel": 3}]}))
    assert main(["suite", "--layers", str(path)]) == 2
    assert "layer 0 (x): missing key(s) c_out" in capsys.readouterr().err


def test_missing_extras_stop_a_command_before_it_starts(tmp_path, capsys, monkeypatch):
    """One line naming the extra to install, before any work (the bench here would fail the test)."""
    from convroute.cli import bench_cmd

    monkeypatch.setattr(bench_cmd, "run_bench", lambda *a, **k: pytest.fail("the bench started"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--suite", "resnet18", "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: convroute bench --plot needs matplotlib, which is not installed: "
                   "pip install 'convroute[report]'"]
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert main(["run", "--model", "resnet18"]) == 2
    assert "convroute run needs torch and torchvision, which are not installed: pip install 'convroute[torch]'" in \
        capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "ncnn", None)
    assert not check_extras({"report": ("tqdm",), "peers": ("ncnn",)}, "the bar", required=False)
    assert capsys.readouterr().err.strip() == ("note: the bar needs tqdm and ncnn, which are not installed: "
                                                "pip install 'convroute[report,peers]'")


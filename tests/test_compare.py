"""`convroute bench --compare`: the chained comparison with torch (CPU here) and ncnn, its JSON, totals and the
handling of engines that are missing or cannot time a layer. No timed assertions: only structure, arithmetic
and that every engine computed the same chain."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from convroute.bench.compare_layers import (
    CompareReport,
    EngineResult,
    Measurement,
    compare_summary,
    compare_table,
    run_compare,
)
from convroute.bench.suites import parse_suite
from convroute.cli.main import main as cli_main
from convroute.device.gpu import get_gpu
from convroute.params import make_params
from convroute.peers import shape_preserving
from convroute.peers.ncnn_engines import NcnnLayerEngine as NcnnEngine

TINY = {"name": "tiny", "layers": [
    {"name": "same", "c_in": 8, "h": 9, "w": 11, "c_out": 8, "kernel": 3, "padding": 1, "count": 3},
    {"name": "down", "c_in": 8, "h": 9, "w": 11, "c_out": 12, "kernel": 3, "stride": 2, "padding": 1},
    {"name": "dw", "c_in": 12, "h": 7, "w": 7, "c_out": 12, "kernel": 3, "padding": 1, "groups": 12, "count": 2},
]}


def ncnn_vulkan() -> str | None:
    """None when ncnn's Vulkan can run here, else why not."""
    try:
        import ncnn
    except ImportError:
        return "ncnn is not installed"
    return None if ncnn.get_gpu_count() > 0 else "ncnn finds no Vulkan device"


@pytest.fixture
def no_ncnn(monkeypatch):
    monkeypatch.setitem(sys.modules, "ncnn", None)  # `import ncnn` raises ImportError


def test_cli_compare_json_totals_and_plot(tmp_path, no_ncnn, capsys):
    pytest.importorskip("torch")
    layers, out, png = tmp_path / "tiny.json", tmp_path / "out.json", tmp_path / "out.png"
    layers.write_text(json.dumps(TINY))
    assert cli_main(["bench", "--layers", str(layers), "--policy", "seed", "--compare", "torch,ncnn", "--chain", "3",
                     "--budget", "0.05", "--repeats", "3", "--no-progress", "--json", str(out),
                     "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "convroute-seed algo" in printed and "torch ms" in printed
    assert "ncnn-vk32" in printed and "unavailable: ncnn is not installed" in printed
    assert "convroute-seed / torch" in printed
    data = json.loads(out.read_text())
    assert {"totals_ms", "layers", "vs_oracle", "compare", "compare_info"} <= set(data)  # bench's keys unchanged
    compare = data["compare"]
    assert set(compare) == {"convroute-seed", "torch", "ncnn-vk32", "ncnn-vk16"}
    for name in ("ncnn-vk32", "ncnn-vk16"):
        assert compare[name]["available"] is False and "not installed" in compare[name]["reason"]
        assert compare[name]["total_ms"] is None and compare[name]["layers"] == []
    ours, torch_ = compare["convroute-seed"], compare["torch"]
    counts = [layer.get("count", 1) for layer in TINY["layers"]]
    for engine in (ours, torch_):
        assert engine["available"] and engine["subset"] == "all"
        assert [layer["name"] for layer in engine["layers"]] == ["same", "down", "dw"]
        assert all(layer["ms"] > 0 and layer["runs"] >= 2 for layer in engine["layers"])
        assert math.isclose(engine["total_ms"], sum(c * layer["ms"] for c, layer in zip(counts, engine["layers"],
                                                                                        strict=True)))
    # the algorithm timed is the one the seed policy routes to (as bench's own table says)
    assert [layer["algorithm"] for layer in ours["layers"]] == [layer["choices"]["seed"] for layer in data["layers"]]
    # torch computed the same chain: its output agrees with convroute's (fp32, no TF32 on CPU)
    assert all(layer["difference"] < 1e-4 for layer in torch_["layers"])
    [ratio] = data["compare_info"]["ratios"]
    assert ratio["peer"] == "torch" and ratio["subset"] == "all"
    assert math.isclose(ratio["ratio"], ours["total_ms"] / torch_["total_ms"])
    assert data["compare_info"]["chain"] == 3
    assert data["compare_info"]["common"]["subset"] == "all"
    assert png.stat().st_size > 5_000 and (tmp_path / "out-compare.png").stat().st_size > 5_000


def report_of(engines: dict[str, list], counts=(3, 1, 2)) -> CompareReport:
    """A synthetic report: engine -> per-layer ms (None: n/a), or a string (unavailable)."""
    names = ["a", "b", "c"]
    params = [make_params((1, 4, 6, 6), (4, 4, 3, 3), 1, 1)] * 3
    results = {}
    for name, values in engines.items():
        if isinstance(values, str):
            results[name] = EngineResult(name, reason=values)
        else:
            results[name] = EngineResult(name, layers=[
                Measurement(ms=v, algorithm="direct" if name.startswith("convroute") else None, runs=5)
                if v is not None else Measurement(reason="n/a: not shape-preserving") for v in values])
    return CompareReport("syn", 1, 10, 1.0, {"name": "test"}, names, list(counts), params, results)


def test_weighted_totals_subsets_and_ratios():
    report = report_of({"convroute-seed": [1.0, 2.0, 4.0], "torch": [2.0, 2.0, 2.0],
                        "ncnn-vk32": [0.5, None, 8.0], "ncnn-vk16": "ncnn finds no Vulkan device"})
    data = report.to_json()
    compare = data["compare"]
    assert compare["convroute-seed"]["total_ms"] == 3 * 1 + 2 + 2 * 4
    assert compare["torch"]["total_ms"] == 3 * 2 + 2 + 2 * 2
    assert compare["ncnn-vk32"]["total_ms"] == 3 * 0.5 + 2 * 8 and compare["ncnn-vk32"]["subset"] == ["a", "c"]
    assert compare["ncnn-vk16"]["available"] is False and compare["ncnn-vk16"]["total_ms"] is None
    ratios = {r["peer"]: r for r in data["compare_info"]["ratios"]}
    assert set(ratios) == {"torch", "ncnn-vk32"}  # nothing to compare with an unavailable engine
    assert ratios["torch"]["subset"] == "all" and math.isclose(ratios["torch"]["ratio"], 13 / 12)
    assert ratios["ncnn-vk32"]["subset"] == ["a", "c"]
    assert math.isclose(ratios["ncnn-vk32"]["ratio"], (3 * 1 + 2 * 4) / (3 * 0.5 + 2 * 8))
    common = data["compare_info"]["common"]
    assert common["subset"] == ["a", "c"]
    assert common["totals_ms"] == {"convroute-seed": 11.0, "torch": 10.0, "ncnn-vk32": 17.5}
    table = compare_table(report)
    assert "n/a" in table and "ncnn-vk16" not in table  # unavailable engines get no column
    summary = compare_summary(report)
    assert "unavailable: ncnn finds no Vulkan device" in summary
    assert "2 of 3 layers (a, c)" in summary and "all 3 layers" in summary
    json.dumps(data)  # serialisable


def test_ncnn_applicability():
    same = make_params((1, 8, 9, 9), (8, 8, 3, 3), 1, 1)
    assert shape_preserving(same) and NcnnEngine.unsupported(same) is None
    assert NcnnEngine.unsupported(make_params((1, 8, 9, 9), (8, 1, 3, 3), 1, 1, groups=8)) is None
    down = make_params((1, 8, 9, 9), (8, 8, 3, 3), 2, 1)
    assert not shape_preserving(down) and "shape-preserving" in NcnnEngine.unsupported(down)
    assert "shape-preserving" in NcnnEngine.unsupported(make_params((1, 8, 9, 9), (16, 8, 1, 1)))
    assert "batch" in NcnnEngine.unsupported(same.with_batch(2))
    up = make_params((1, 8, 9, 9), (8, 8, 3, 3), 1, 1, transposed=True)
    assert shape_preserving(up) and "transposed" in NcnnEngine.unsupported(up)


def test_missing_engines_are_unavailable_not_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "ncnn", types.SimpleNamespace(get_gpu_count=lambda: 0))
    suite = parse_suite({"layers": TINY["layers"][:1]})
    report = run_compare(get_gpu(), suite, 1, ["seed"], ["torch", "ncnn"], chain=2, budget_s=0.02, progress=False)
    assert "not installed" in report.engines["torch"].reason
    assert "no Vulkan device" in report.engines["ncnn-vk32"].reason
    assert report.engines["convroute-seed"].layers[0].ms > 0
    assert report.to_json()["compare_info"]["ratios"] == []
    with pytest.raises(ValueError, match="unknown engine"):
        run_compare(get_gpu(), suite, 1, ["seed"], ["tflite"], progress=False)


def test_cli_rejects_bad_chain(capsys):
    assert cli_main(["bench", "--compare", "torch", "--chain", "0"]) == 2
    assert "--chain" in capsys.readouterr().err


@pytest.mark.skipif(ncnn_vulkan() is not None, reason=str(ncnn_vulkan()))
def test_ncnn_vulkan_chain_agrees_with_convroute():
    suite = parse_suite(TINY)
    report = run_compare(get_gpu(), suite, 1, ["seed"], ["ncnn"], chain=3, budget_s=0.05, progress=False)
    for name, limit in (("ncnn-vk32", 1e-4), ("ncnn-vk16", 5e-2)):
        same, down, dw = report.engines[name].layers
        assert same.ms > 0 and dw.ms > 0
        assert same.difference < limit and dw.difference < limit  # ncnn ran the same chain
        assert down.ms is None and down.reason.startswith("n/a") and "shape-preserving" in down.reason
    assert report.to_json()["compare"]["ncnn-vk32"]["subset"] == ["same", "dw"]
    assert "ERR" not in compare_table(report) and not report.notes

"""The command line's output fits 120 columns by default (`run`, `bench`, `route` on the adapter in use, at tiny
sizes), `--wide` lifts the limit, and the pieces that do it: report.table's fitting and wrapping, and the
progress bar's time left shown only once it means something."""

from __future__ import annotations

import json

import pytest

from convroute.cli import route_cmd
from convroute.cli.main import main
from convroute.report import progress
from convroute.report.table import COLUMNS, fit_text, format_table, output_width, width_limit

LAYERS = {"name": "tiny", "layers": [
    {"name": "layer1.0.conv1_with_a_name_longer_than_the_column", "c_in": 8, "h": 8, "w": 8, "c_out": 8,
     "kernel": [3, 3], "padding": [1, 1], "count": 2},
    {"name": "pw", "c_in": 8, "h": 8, "w": 8, "c_out": 16, "kernel": [1, 1]},
    {"name": "dw", "c_in": 8, "h": 8, "w": 8, "c_out": 8, "kernel": [3, 3], "groups": 8, "padding": 1}]}


def long_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > COLUMNS]


def test_run_output_fits(capsys):
    assert main(["run", "--model", "resnet18", "--size", "32", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "routing table:" in out and "layer4.1.conv2" in out and ": OK" in out
    assert long_lines(out) == []


def test_bench_output_fits(capsys, tmp_path):
    layers = tmp_path / "tiny.json"
    layers.write_text(json.dumps(LAYERS))
    assert main(["bench", "--layers", str(layers), "--policy", "seed,etvk", "--budget", "0.005", "--repeats", "3",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "winograd4" in out and "etvk regret" in out and "layers run" in out
    assert long_lines(out) == []


@pytest.mark.parametrize("how", [[], ["--device", "all", "--policy", "etvk"], ["--device", "mali", "--policy", "etvk"],
                                 ["--device", "all", "--policy", "derived", "--force-direct"]])
def test_route_output_fits(capsys, how):
    # etvk's reason on a Mali for this shape is 115 characters long
    assert main(["route", "--input", "1,64,56,56", "--weight", "64,64,3,3", "--padding", "1"] + how) == 0
    out = capsys.readouterr().out
    assert "im2col" in out or "direct" in out
    assert long_lines(out) == []


def test_wide_lifts_the_limit_for_the_command(monkeypatch):
    seen = []
    monkeypatch.setattr(route_cmd, "run", lambda args: seen.append(output_width()) or 0)
    shape = ["--input", "1,8,8,8", "--weight", "8,8,1,1"]
    assert main(["route"] + shape) == 0 and main(["route"] + shape + ["--wide"]) == 0
    assert seen == [COLUMNS, None] and output_width() is None  # the limit lasts one command


def test_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "add_arguments" not in out and "convroute.cli" not in out
    for name in ("devices", "route", "conv", "run", "calibrate", "bench", "suite", "selftest", "derive-rule"):
        assert [line for line in out.splitlines() if line.split()[:1] == [name]], f"no line for {name}"
    assert long_lines(out) == []


HEAD = ["layer", "n", "shape", "direct", "im2col", "pointwise", "depthwise", "transposed", "implicit_gemm",
        "winograd2", "winograd4", "seed regret", "etvk regret", "calibrated regret"]
ROWS = [[f"layer{i}.0.conv1_with_a_long_name", "2", "64x56x56>64 k3s1"] + [f"{i}2.345*sc"] * 8 + ["62%"] * 3
        for i in range(3)]


def test_tables_are_whole_without_a_limit():
    text = format_table(HEAD, ROWS, left=3)
    assert len(text.splitlines()) == 2 + len(ROWS) and "~" not in text and long_lines(text)


def test_a_wide_table_of_numbers_goes_on_in_blocks_that_repeat_the_text_columns():
    with width_limit(COLUMNS):
        text = format_table(HEAD, ROWS, left=3)
    assert long_lines(text) == []
    blocks = text.split("\n\n")
    assert len(blocks) >= 2 and all(b.startswith("layer ") for b in blocks)
    assert all(column in text for column in HEAD) and "~" not in text
    assert text.count("layer0.0.conv1_with_a_long_name") == len(blocks)  # the text columns whole, in every block


def test_a_long_text_column_is_cut_and_the_cut_is_said():
    rows = [["features.1.block.0.0", "depthwise", "depthwise (C_out == groups == C_in == 16) -> depthwise path " * 3]]
    with width_limit(COLUMNS):
        text = format_table(["conv", "algorithm", "reason"], rows, left=3)
    lines = text.splitlines()
    assert long_lines(text) == [] and lines[2].endswith("~") and "--wide" in lines[-1]
    assert lines[2].startswith("features.1.block.0.0  depthwise  depthwise (C_out")


def test_long_prose_lines_wrap_with_every_word_kept():
    line = "check against torch: " + " ".join(f"word{i}" for i in range(60))
    with width_limit(COLUMNS):
        text = fit_text(f"short\n{line}\n  indented {line}")
    assert long_lines(text) == [] and text.split() == f"short {line} indented {line}".split()
    assert fit_text(line) == line  # no limit outside a command


@pytest.mark.parametrize(("total", "after"), [(None, None), (5, 3), (40, 4), (300, 30)])
def test_the_time_left_waits_for_enough_items(total, after):
    assert progress.eta_after(total) == after


def test_the_bar_shows_the_time_left_only_after_enough_items():
    pytest.importorskip("tqdm")
    bar = progress.progress_bar(list(range(40)), "calibrating", "shape")
    shown = []
    for _ in bar:
        shown.append("remaining" in bar.bar.bar_format)
    assert shown == [False] * 4 + [True] * 36

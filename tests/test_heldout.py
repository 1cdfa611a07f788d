"""Held-out layers (bench/heldout.py): the shipped files are convs of >= 10 networks outside the grid and the
suites, with every dilated conv of DeepLabV3 and FCN; the recorder sees functional and transposed convs by
module; scoring reports totals and the worst layer per network (regret, bench, derive-rule, calibrate)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import convroute.frontend  # noqa: E402, F401  (before torchvision: see convroute.frontend)
from convroute.bench import heldout  # noqa: E402
from convroute.bench.heldout_score import heldout_text, in_turn, score_heldout  # noqa: E402
from convroute.bench.suite import BenchReport, LayerResult, short_name, summary, table  # noqa: E402
from convroute.bench.suites import HELDOUT, load_suite, parse_suite  # noqa: E402
from convroute.calibration import profile as calib  # noqa: E402
from convroute.calibration.grid import tiny_grid  # noqa: E402
from convroute.cli.derive_rule_cmd import regret_table  # noqa: E402
from convroute.device.profile import DeviceProfile  # noqa: E402
from convroute.kernels import ALGORITHMS  # noqa: E402
from convroute.params import make_params  # noqa: E402
from convroute.router.derive import derive_rule, shape_key  # noqa: E402
from convroute.router.regret import BenchLayer, BenchSuite, network_of, score_layers  # noqa: E402

NVIDIA = DeviceProfile.for_family("nvidia")
DENSE = make_params((1, 64, 12, 12), (64, 64, 3, 3), padding=1)
DILATED = make_params((1, 64, 12, 12), (64, 64, 3, 3), padding=4, dilation=4)


def dilated_convs(name: str, size: int) -> set[str]:
    """Every dilated conv a torchvision segmentation model runs at `size` px (on the meta device: shapes only)."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval().to("meta")
    recorder = heldout.ConvRecorder()
    with recorder.watching(model):
        model(torch.empty(1, 3, size, size, device="meta"))
    return {shape_key(p) for _, p in recorder.convs if max(p.dilation) > 1}


@pytest.mark.parametrize("name", HELDOUT)
def test_shipped_files_hold_unseen_convs_of_ten_networks(name):
    suite = load_suite(name)
    preset = heldout.PRESETS[name]
    networks = {network_of(x.name) for x in suite.layers}
    assert len(networks) >= 10 and networks == set(preset.networks)
    known = heldout.known_shapes()
    assert not [x.name for x in suite.layers if shape_key(x.conv) in known]  # else regenerate (see the file)
    keys = {shape_key(x.conv) for x in suite.layers}
    for net in ("deeplabv3_resnet50", "fcn_resnet50"):
        wanted = dilated_convs(net, preset.seg_size)
        assert wanted and wanted <= keys, net


def test_recorder_names_functional_and_transposed_convs_by_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.blur = torch.nn.Identity()

        def forward(self, x):
            y = self.up(x)
            return torch.nn.functional.conv2d(y, torch.ones(4, 1, 3, 3), padding=2, dilation=2, groups=4)

    recorder, net = heldout.ConvRecorder(), Net()
    with recorder.watching(net):
        net(torch.randn(2, 8, 5, 5))
    (up_name, up), (fn_name, fn) = recorder.convs
    assert (up_name, up.transposed, up.c_in, up.c_out, up.n, up.h) == ("up", True, 8, 4, 1, 5)
    assert (fn_name, fn.dilation, fn.groups, fn.h) == ("conv", (2, 2), 4, 10)


def test_distinct_counts_convs_and_names_a_module_by_its_input_size_where_it_ran_several():
    small = make_params((1, 64, 6, 6), (64, 64, 3, 3), padding=1)
    convs = [("head", DENSE), ("head", small), ("head", DENSE), ("stem", DILATED)]
    assert heldout.distinct(convs) == [("head@12x12", DENSE, 2), ("head@6x6", small, 1), ("stem", DILATED, 1)]


@pytest.mark.parametrize("name", HELDOUT)
def test_shipped_layer_names_are_unique(name):
    names = [x.name for x in load_suite(name).layers]
    assert len(set(names)) == len(names)


def test_pick_keeps_every_dilated_conv_then_the_heaviest():
    layers = [(f"m{i}", make_params((1, 8 * (i + 1), 10, 10), (8, 8 * (i + 1), 3, 3), padding=1), 1) for i in range(9)]
    layers.insert(4, ("aspp", DILATED, 1))
    kept = heldout.pick(layers, 4)
    names = [name for name, _, _ in kept]
    assert len(kept) == 4 and "aspp" in names and "m8" in names  # dilated, then the heaviest
    assert names == [n for n, _, _ in layers if n in names]  # in the network's order
    assert heldout.pick(layers[:3], 4) == layers[:3]


def bench(*layers) -> BenchSuite:
    return BenchSuite("held", calib.device_record(NVIDIA), list(layers))


def test_score_layers_per_network_with_the_worst_layer():
    suite = bench(BenchLayer("netA/dense", 2, DENSE, {"direct": 2.0, "im2col": 1.0}),
                  BenchLayer("netA/aspp", 1, DILATED, {"direct": 6.0, "im2col": 1.0}),
                  BenchLayer("netB/dense", 1, DENSE, {"direct": 2.0, "im2col": 1.0}))
    score = score_layers(suite, NVIDIA, None, None)
    assert score["vs_oracle"]["seed"] == pytest.approx((2 * 2 + 6 + 2) / 4)  # seed: direct on all (C_out 64)
    assert score["worst"]["seed"] == (6.0, "netA/aspp")
    assert score["networks"]["netA"]["vs_oracle"]["seed"] == pytest.approx(10 / 3)
    assert score["networks"]["netB"]["worst"]["etvk"] == (2.0, "netB/dense")
    text = regret_table([score], "held out")
    assert "w6.00" in text and "  netA" in text and "  netB" in text


def test_bench_summary_names_the_worst_layer_and_each_network():
    rows = []
    long = "ssdlite320_mobilenet_v3_large/backbone.features.1.0.1.block.1.0.conv"
    for name, times in (("netA/c1", {"direct": 3.0, "im2col": 1.0}), (long, {"direct": 1.0, "im2col": 2.0})):
        r = LayerResult(name, 1, DENSE, times)
        r.choices = {"seed": "direct", "calibrated": "direct", "etvk": "im2col"}
        rows.append(r)
    report = BenchReport("held", 1, {"name": "dev"}, "wall", ["seed", "calibrated", "etvk"], rows)
    text = summary(report)
    assert "worst layer 3.00x (netA/c1)" in text
    assert "per network" in text and "netA" in text and "ssdlite320_mobilenet_v3_large" in text
    assert all(len(line) <= 120 for line in text.splitlines()), text
    data = report.to_json()
    assert data["worst_layer"]["seed"] == {"ratio": 3.0, "layer": "netA/c1"}
    assert data["networks"]["ssdlite320_mobilenet_v3_large"]["vs_oracle"]["etvk"] == 2.0
    assert "netA/c1" in table(report)
    assert short_name("deeplabv3_resnet50/backbone.layer4.0.conv2") == "deeplabv~.layer4.0.conv2"


def test_networks_in_turn_dilated_first():
    suite = parse_suite({"layers": [
        {"name": "a/1", "c_in": 8, "h": 6, "w": 6, "c_out": 8, "kernel": 1},
        {"name": "a/2", "c_in": 8, "h": 6, "w": 6, "c_out": 8, "kernel": 3, "dilation": 2, "padding": 2},
        {"name": "b/1", "c_in": 8, "h": 6, "w": 6, "c_out": 8, "kernel": 1}]})
    assert [x.name for x in in_turn(list(suite.layers))] == ["a/2", "b/1", "a/1"]


def planted(p) -> dict[str, float]:
    """direct is 10x slower on dilated convs, else the fastest."""
    slow = 10.0 if max(p.dilation) > 1 else 0.5
    return {n: (slow if n == "direct" else 1.0) * p.flops * 1e-8 + 0.01 for n in ALGORITHMS
            if ALGORITHMS[n].unsupported(p) is None}


def fake_calibration(profile, shapes) -> calib.Calibration:
    samples = [calib.Sample(p, planted(p), {}) for p in shapes]
    return calib.Calibration(profile.key, calib.device_record(profile), "full", "fake", samples)


def test_derived_rule_can_split_on_dilation():
    from convroute.calibration.grid import conv, full_grid

    shapes = full_grid()[::3] + [conv(c, c, s, 3, dilation=d) for c in (16, 64) for s in (10, 20) for d in (2, 6)]
    rule, _ = derive_rule([fake_calibration(NVIDIA, shapes)], depth=1, min_gain=0.0)
    assert rule.chooser.feature == "dilation", rule.chooser
    assert rule.route(DILATED, NVIDIA, {})[0] != "direct" and rule.route(DENSE, NVIDIA, {})[0] == "direct"


@pytest.mark.gpu
def test_score_heldout_measures_within_the_budget_and_reports(tmp_path):
    from convroute.device.gpu import get_gpu

    gpu = get_gpu()
    path = tmp_path / "tiny.json"
    path.write_text("""{"name": "tiny", "layers": [
      {"name": "netA/aspp", "c_in": 8, "h": 8, "w": 8, "c_out": 8, "kernel": 3, "dilation": 2, "padding": 2},
      {"name": "netA/grid", "c_in": 8, "h": 10, "w": 10, "c_out": 8, "kernel": 3, "padding": 1},
      {"name": "ssdlite320_mobilenet_v3_large/backbone.features.1.0.1.block.1.0.conv", "c_in": 8, "h": 8, "w": 8,
       "c_out": 16, "kernel": 1, "count": 2},
      {"name": "ssdlite320_mobilenet_v3_large/dup", "c_in": 8, "h": 8, "w": 8, "c_out": 8, "kernel": 3,
       "dilation": 2, "padding": 2}]}""")
    cal = fake_calibration(gpu.profile, tiny_grid())
    score = score_heldout(gpu, cal, str(path), budget_s=60, progress=False)
    assert score.in_grid == ["netA/grid"] and not score.skipped and not score.failed
    assert set(score.scores["networks"]) == {"netA", "ssdlite320_mobilenet_v3_large"}
    assert {"calibrated", "seed", "etvk"} <= set(score.scores["vs_oracle"])
    assert min(score.scores["vs_oracle"].values()) >= 1.0
    text = heldout_text(score)
    assert "3 of 3 layers measured" in text and "worst layer under calibrated" in text and "calibration shapes" in text
    assert all(len(line) <= 120 for line in text.splitlines()), text
    skipped = score_heldout(gpu, cal, str(path), budget_s=0.0, progress=False)
    assert not skipped.layers and len(skipped.skipped) == 3
    assert "skipped, the time budget ran out: 3 layer(s) of 2 network(s)" in heldout_text(skipped)


@pytest.mark.gpu
def test_calibrate_ends_with_the_heldout_score(tmp_path, capsys):
    from convroute.cli.main import main

    path = tmp_path / "tiny.json"
    path.write_text('{"name": "tiny", "layers": [{"name": "netA/d", "c_in": 8, "h": 7, "w": 7, "c_out": 8, '
                    '"kernel": 3, "dilation": 3, "padding": 3}, {"name": "netB/p", "c_in": 8, "h": 7, "w": 7, '
                    '"c_out": 12, "kernel": 1}]}')
    args = ["calibrate", "--grid", "tiny", "--selftest-cases", "0", "--dry-run", "--no-progress"]
    assert main(args) == 0
    assert "held-out layers" not in capsys.readouterr().out  # grids but the full one (--quick too): none unless asked
    assert main(args + ["--heldout", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "held-out layers (tiny: 2 networks outside the grid and the suites): 2 of 2 layers measured" in printed
    assert "netA" in printed and "netB" in printed and "worst layer under calibrated" in printed


def test_cli_regenerates_a_network_of_the_shipped_file(tmp_path, capsys):
    from convroute.cli.main import main

    out = tmp_path / "lraspp.json"
    net = "lraspp_mobilenet_v3_large"
    assert main(["heldout", "--preset", "heldout_small", "--networks", net, "--out", str(out)]) == 0
    assert "of 1 networks" in capsys.readouterr().err
    shipped = [x for x in load_suite("heldout_small").layers if network_of(x.name) == net]
    assert load_suite(str(out)).layers == tuple(shipped) and len(shipped) == 4
    assert main(["heldout", "--preset", "heldout_small", "--networks", "ssd300_vgg16"]) == 2
    assert "not in preset heldout_small" in capsys.readouterr().err


def test_score_heldout_measures_a_far_pick_again(tmp_path, monkeypatch):
    """calibrate's held-out score confirms, as the bench does: a layer whose seed pick (direct: C_out < 128 on
    NVIDIA) measured 3x the fastest once and level twice more is scored by the medians."""
    from types import SimpleNamespace

    from convroute.bench import heldout_score
    from convroute.bench import suite as bench_suite

    rounds = iter([3.0, 1.0, 1.0])

    def measure(gpu, result, settings, check, precision=None):
        result.times_ms.update({n: 1.0 for n in ("im2col", "implicit_gemm")} | {"direct": next(rounds)})
    monkeypatch.setattr(heldout_score, "measure_layer", measure)
    monkeypatch.setattr(bench_suite, "measure_layer", measure)
    path = tmp_path / "one.json"
    path.write_text('{"name": "one", "layers": [{"name": "net/conv", "c_in": 64, "h": 28, "w": 28, "c_out": 64,'
                    ' "kernel": 3, "stride": 2, "padding": 1}]}')
    score = score_heldout(SimpleNamespace(profile=NVIDIA), fake_calibration(NVIDIA, tiny_grid()), str(path), 60,
                          progress=False)
    assert score.confirmed == 1 and score.layers[0].times_ms["direct"] == 1.0
    assert score.scores["vs_oracle"]["seed"] == pytest.approx(1.0)
    assert "measured 2 more times" in heldout_text(score)


def test_scores_route_calibrated_as_compiling_does_with_the_measured_times():
    """Outside the calibrated range compiling times the top candidates; the scores (calibrate's held-out table,
    derive-rule's) take the fastest of those from the measured times instead of the prediction alone."""
    from convroute.router.calibrated import calibrated_route, refined_route
    from convroute.router.regret import choices

    cal = fake_calibration(NVIDIA, tiny_grid())
    far = make_params((1, 512, 40, 40), (512, 512, 3, 3), 1, 24, 24)  # nothing like the tiny grid
    predicted = calibrated_route(far, NVIDIA, {}, "float32", cal, refine=False)[0]
    times = {n: 1.0 for n in ALGORITHMS if ALGORITHMS[n].unsupported(far) is None} | {predicted: 9.0}
    refined = refined_route(far, NVIDIA, {}, cal, times)
    assert refined != predicted and times[refined] == 1.0
    assert choices(BenchLayer("net/far", 1, far, times), NVIDIA, None, cal)["calibrated"] == refined
    inside = tiny_grid()[0]
    assert refined_route(inside, NVIDIA, {}, cal, {}) == calibrated_route(inside, NVIDIA, {}, "float32", cal,
                                                                          refine=False)[0]

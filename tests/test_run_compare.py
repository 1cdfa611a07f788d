"""`convroute run --compare`: whole-model latency of convroute and peer engines in interleaved rounds, with
p10/p50/p90, ratios, the JSON schema and engines that cannot run listed with their reason. No timed assertions."""

from __future__ import annotations

import json
import math
import sys

import pytest

torch = pytest.importorskip("torch")
import convroute.frontend as frontend  # noqa: E402 (before torchvision, which loads triton: see frontend)

pytest.importorskip("torchvision")
from convroute import peers  # noqa: E402
from convroute.bench import compare_model as cm  # noqa: E402
from convroute.cli.main import main  # noqa: E402
from convroute.peers.base import ModelEngine, Unavailable  # noqa: E402
from convroute.report.latency import Latency  # noqa: E402


def ncnn_here() -> str | None:
    """None when ncnn (Vulkan) and pnnx can run here, else why not."""
    try:
        import ncnn
        import pnnx  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed"
    return None if ncnn.get_gpu_count() > 0 else "ncnn finds no Vulkan device"


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    return model, x, ref, frontend.compile(model, (x,))


class Recorder(ModelEngine):
    """A fake peer: its runs append its name to a shared log."""

    def __init__(self, name, log, output):
        self.name, self.detail, self.log, self.output = name, f"fake {name}", log, output

    def once(self):
        self.log.append(self.name)
        return self.output


def test_interleaved_rounds_time_each_engines_second_call_in_a_row():
    log = []
    ticks = iter(range(10_000))
    runners = {name: (lambda n=name: log.append(n)) for name in "ABC"}
    rounds = cm.interleaved(runners, 4, warmup_rounds=2, warmup_s=5.0, clock=lambda: next(ticks))
    warm = len(log) - 4 * 6
    assert warm % 3 == 0 and warm // 3 >= 2 and log[:warm] == list("ABC") * (warm // 3)
    assert log[warm:] == list("AABBCC" "BBCCAA" "CCAABB" "AABBCC")  # each engine after each other one
    assert {name: len(t) for name, t in rounds.settled.items()} == {"A": 4, "B": 4, "C": 4}
    assert {name: len(t) for name, t in rounds.after_switch.items()} == {"A": 4, "B": 4, "C": 4}
    with pytest.raises(ValueError, match="rounds"):
        cm.interleaved(runners, 0)


def test_the_first_call_after_another_engine_is_not_the_timed_one():
    """An engine whose first call in a row is slow (a context switch) is timed on its second."""
    now = [0.0]
    last = [None]

    def runner(name, cost, switch):
        def run():
            now[0] += cost + (switch if last[0] != name else 0.0)
            last[0] = name
        return run

    runners = {"A": runner("A", 1.0, 5.0), "B": runner("B", 2.0, 0.0)}
    rounds = cm.interleaved(runners, 3, warmup_rounds=1, warmup_s=0.0, clock=lambda: now[0])
    assert rounds.settled == {"A": [1.0] * 3, "B": [2.0] * 3}
    assert rounds.after_switch == {"A": [6.0] * 3, "B": [2.0] * 3}


def test_latency_percentiles():
    lat = Latency.of([0.001 * v for v in range(1, 11)])  # 1..10 ms
    assert math.isclose(lat.median_ms, 5.5) and math.isclose(lat.p10_ms, 1.9) and math.isclose(lat.p90_ms, 9.1)
    assert lat.runs == 10 and "p10 1.90, p90 9.10, 10 runs" in lat.text()
    with pytest.raises(ValueError):
        Latency.of([])


def test_compare_model_interleaves_checks_and_lists_what_cannot_run(tiny, monkeypatch):
    model, x, ref, program = tiny
    log = []
    calls = []
    real_call = type(program).__call__

    def counted(self, *args):
        log.append("convroute")
        return real_call(self, *args)

    monkeypatch.setattr(type(program), "__call__", counted)

    def gone(model, x, precision, key):
        raise Unavailable("no such device here")

    def broken(model, x, precision, key):
        raise RuntimeError("capture failed")

    def failing(model, x, precision, key):
        engine = Recorder("fails", log, ref)
        engine.once = lambda: (_ for _ in ()).throw(RuntimeError("device lost"))
        return engine

    def recorded(name, output):
        def build(model_, x_, precision, key):
            calls.append((name, precision, key))
            return Recorder(name, log, output)
        return build

    monkeypatch.setattr(peers, "MODEL_ENGINES", {
        "A": recorded("A", ref), "B": recorded("B", ref * 1.5), "gone": gone,
        "broken": broken, "fails": failing})
    c = cm.compare_model(program, model, x, ["A", "gone", "B", "broken", "fails"], name="tiny", key="k", rounds=5,
                         reference=ref)
    once = len(log) - 5 * 6  # the check run and the warm-up rounds, then each engine twice a round
    assert log[:once] == ["convroute", "A", "B"] * (once // 3) and once // 3 >= 1 + cm.WARMUP_ROUNDS
    pairs = [["convroute"] * 2, ["A"] * 2, ["B"] * 2]  # the order rotates each round
    assert log[once:] == [name for r in range(5) for pair in pairs[r % 3:] + pairs[:r % 3] for name in pair]
    assert calls == [("A", "fp32", "k"), ("B", "fp32", "k")]
    assert list(c.timed) == ["convroute", "A", "B"] and all(e.latency.runs == 5 for e in c.timed.values())
    assert c.engines["convroute"].error < 1e-5 and c.engines["A"].error == 0
    assert math.isclose(c.engines["B"].error, 0.5, rel_tol=1e-6)
    assert c.unavailable["gone"] == "no such device here"
    assert "set-up failed: RuntimeError: capture failed" in c.unavailable["broken"]
    assert "first run failed: RuntimeError: device lost" in c.unavailable["fails"]
    ratios = c.ratios()
    assert set(ratios) == {"A", "B"}
    assert math.isclose(ratios["A"], c.engines["convroute"].latency.median_ms / c.engines["A"].latency.median_ms)
    text = cm.comparison_text(c)
    assert "fails: unavailable: first run failed" in text and "fake A" in text and "p90 ms" in text
    assert "input upload, forward, output download" in text.splitlines()[0]
    gpu_pass, call = c.engines["convroute"].gpu_pass, c.engines["convroute"].latency
    assert gpu_pass.runs == cm.GPU_PASS_RUNS and 0 < gpu_pass.p10_ms <= gpu_pass.median_ms <= gpu_pass.p90_ms
    assert gpu_pass.median_ms < 2 * call.median_ms  # a part of the call (lavapipe's pass is most of it)
    assert "GPU pass alone (GPU timestamps)" in text
    assert all(e.gpu_pass is None for name, e in c.engines.items() if name != "convroute")


def test_gpu_pass_needs_timestamps(tiny, monkeypatch):
    model, x, ref, program = tiny
    passes = program.gpu_pass_times(3)
    assert len(passes) == 3 and all(0 < t < 1 for t in passes)
    device = type("Device", (), {"features": frozenset()})()
    with monkeypatch.context() as patched:
        patched.setattr(program, "gpu", type("Gpu", (), {"device": device})())
        assert program.gpu_pass_times(3) is None
    monkeypatch.setattr(program, "gpu_pass_times", lambda runs: None)
    c = cm.compare_model(program, model, x, [], name="tiny", key="k", rounds=2, reference=ref)
    assert c.engines["convroute"].gpu_pass is None and "GPU pass alone" not in cm.comparison_text(c)
    assert c.to_json()["engines"]["convroute"]["gpu_pass"] is None


def test_torch_cpu_peer_in_both_precisions(tiny):
    model, x, ref, _ = tiny
    for precision, bound in (("fp32", 1e-6), ("fp16", 1e-2)):
        engine = peers.model_engine("torch-cpu", model, x, precision, "unused")
        assert engine.precision == precision and "cpu" in engine.detail
        assert cm.output_error(engine.once(), ref) < bound
    with pytest.raises(ValueError, match="unknown engine"):
        peers.model_engine("tflite", model, x, "fp32", "k")


def test_convroute_in_the_other_dtype_is_timed_in_the_same_rounds(tiny):
    model, x, ref, program = tiny
    c = cm.compare_model(program, model, x, ["convroute-float16", "convroute-float32"], name="tiny", key="k",
                         rounds=2, reference=ref)
    fp16 = c.engines["convroute-float16"]
    assert fp16.latency.runs == 2 and fp16.precision == "fp16" and 1e-6 < fp16.error < 1e-2
    assert "float16" in fp16.detail and c.ratios()["convroute-float16"] > 0
    assert c.engines["convroute-float32"].reason == "it is the compared program itself (float32)"
    # each program's dispatches (the f16 one's input cast included, where it has one) and GPU pass, side by side
    ours = c.engines["convroute"]
    assert ours.dispatches == program.plan_dispatches() > 0 and fp16.dispatches >= ours.dispatches - 1
    assert (ours.gpu_pass is None) == (fp16.gpu_pass is None)
    assert c.to_json()["engines"]["convroute-float16"]["dispatches"] == fp16.dispatches


def test_convroute_under_another_policy_is_timed_in_the_same_rounds(tiny, monkeypatch):
    model, x, ref, program = tiny  # compiled under the default policy, seed
    compiled = []
    real = frontend.compile
    monkeypatch.setattr(frontend, "compile", lambda *a, **k: (compiled.append(k), real(*a, **k))[1])
    c = cm.compare_model(program, model, x, ["convroute-etvk", "convroute-seed", "convroute-float16"], name="tiny",
                         key="k", rounds=2, reference=ref)
    etvk = c.engines["convroute-etvk"]
    assert etvk.latency.runs == 2 and etvk.precision == "fp32" and etvk.error < 1e-5
    assert etvk.detail.startswith("convroute etvk policy, float32") and c.ratios()["convroute-etvk"] > 0
    assert c.engines["convroute-seed"].reason == "it is the compared program itself (seed)"
    assert compiled == [dict(dtype="float32", policy="etvk"), dict(dtype="float16", policy="seed")]


def test_cli_compare_json_and_unavailable_engines(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ncnn", None)  # as where the [peers] extra is not installed
    out = tmp_path / "out.json"
    assert main(["run", "--model", "resnet18", "--size", "32", "--runs", "3", "--compare",
                 "torch-cpu,torch-cuda,ncnn-vk32", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "note: --compare ncnn-vk32 needs ncnn" in captured.err and "pip install 'convroute[peers]'" in captured.err
    printed = captured.out
    assert "median ms" in printed and "p10 ms" in printed and "p90 ms" in printed
    assert "ncnn-vk32: unavailable: ncnn is not installed" in printed
    data = json.loads(out.read_text())
    assert set(data["engines"]) == {"convroute", "torch-cpu"} | ({"torch-cuda"} if torch.cuda.is_available() else set())
    for entry in data["engines"].values():
        assert {"median_ms", "p10_ms", "p90_ms", "runs"} <= set(entry) and entry["runs"] == 3
        assert 0 < entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"]
        assert entry["after_switch_median_ms"] > 0
    assert set(data["ratios"]) == set(data["engines"]) - {"convroute"}
    assert 0 < data["engines"]["convroute"]["gpu_pass"]["median_ms"]
    assert data["engines"]["torch-cpu"]["gpu_pass"] is None
    assert math.isclose(data["ratios"]["torch-cpu"],
                        data["engines"]["convroute"]["median_ms"] / data["engines"]["torch-cpu"]["median_ms"])
    assert "not installed" in data["unavailable"]["ncnn-vk32"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in data["unavailable"]["torch-cuda"]
    assert data["model"] == "resnet18" and data["batch"] == 1 and data["dtype"] == "float32"
    assert main(["run", "--compare", "tflite"]) == 2
    assert "unknown engine" in capsys.readouterr().err


@pytest.mark.skipif(ncnn_here() is not None, reason=str(ncnn_here()))
def test_ncnn_peers_run_the_converted_model(tiny):
    model, x, ref, program = tiny
    c = cm.compare_model(program, model, x, ["ncnn-vk32", "ncnn-cpu", "ncnn-vk16"], name="tiny", key="tiny-12px",
                         rounds=2, reference=ref)
    assert not c.unavailable, c.unavailable
    assert c.engines["ncnn-vk32"].error < 1e-4 and c.engines["ncnn-cpu"].error < 1e-4
    assert c.engines["ncnn-vk16"].error < 1e-2
    big = cm.compare_model(program, model, torch.randn(2, 3, 12, 12), ["ncnn-cpu"], name="tiny", key="tiny-b2",
                           rounds=1, reference=torch.cat([ref, ref]))
    assert "batch 1 only" in big.unavailable["ncnn-cpu"]


def test_cli_runs_a_segmentation_model_and_checks_its_dict_output(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["run", "--model", "lraspp_mobilenet_v3_large", "--size", "32", "--runs", "1", "--compare",
                 "torch-cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "check of output 'out' against torch (CPU, float32)" in printed and "FAILED" not in printed
    data = json.loads(out.read_text())
    assert data["engines"]["torch-cpu"]["error"] == 0 and data["engines"]["convroute"]["error"] < 1e-4


def test_dict_outputs_are_compared_key_by_key():
    from convroute.cli.run_cmd import named_outputs

    a, b = torch.ones(2), torch.zeros(3)
    assert [label for label, _, _ in named_outputs({"out": a, "aux": b}, {"aux": b, "out": a})] == \
        [" of output 'aux'", " of output 'out'"]
    with pytest.raises(ValueError, match=r"convroute gave outputs \['out'\], torch \['aux', 'out'\]"):
        named_outputs({"out": a}, {"out": a, "aux": b})
    assert cm.output_error({"out": a, "aux": b + 1}, {"aux": b, "out": a}) == pytest.approx(3 ** 0.5 / 2 ** 0.5)

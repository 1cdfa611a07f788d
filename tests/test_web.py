"""Browser bundles (convroute export-web) run in headless Chromium under Playwright: whole models against torch,
the page's measured routing, the float16 path where the adapter has shader-f16, and the refusals. One browser
for the module; skipped when Playwright or Chromium is missing. Direct's kernels are left out of the bundles:
SwiftShader's shader compiler stalls on them for minutes."""

import json

import pytest
import torch

from convroute.frontend import compile as compile_program
from convroute.frontend import zoo
from convroute.frontend.web import NotForBrowser, export_web
from convroute.frontend.web.browser import BLANK, BrowserMissing, adapter_info, chromium, open_page, run_bundle, serve
from convroute.frontend.web.compare import ort_dist, write_compare
from convroute.measure.reference import max_relative_error

EXCLUDE = ("direct",)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    try:
        with serve(root) as url, chromium() as browser:
            page = open_page(browser, url + BLANK)
            info = adapter_info(page)
            if info is None:
                pytest.skip("this Chromium has no WebGPU adapter")
            yield root, page, info
    except BrowserMissing as exc:
        pytest.skip(str(exc))


def run_in_page(site, name, model, x, options=None, **export):
    root, page, _ = site
    export_web(model, (x,), root / name, exclude=EXCLUDE, name=name, **export)
    return run_bundle(page, name, x.numpy(), options)


def check_against_torch(site, name, model, x, tolerance=1e-4, family="auto", **export):
    got = run_in_page(site, name, model, x, {"route": "default", "family": family}, candidates=1, dtype="float32",
                      **export)
    want = model(x).detach()
    err = max_relative_error(torch.tensor(got["y"]).reshape(want.shape), want)
    assert err < tolerance, f"{name}: relative error {err:.2e}"
    assert got["routes"]["dtype"] == "float32"
    return got


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_model_matches_torch(site, name):
    """The plan the page picks for its adapter (on a software adapter such as SwiftShader, the "cpu" plan). The
    GPU plan runs in the page in the routing test; every plan and candidate is replayed in test_web_replay.py."""
    model = zoo.build(name)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = check_against_torch(site, name, model, x)
    assert all(layer["chosen"] != "direct" for layer in got["routes"]["layers"])
    software = "swiftshader" in json.dumps(site[2]).lower()
    assert got["routes"]["family"] == ("cpu" if software else "unknown"), got["routes"]["familyReason"]


class CpuForms(torch.nn.Module):
    """The ops whose kernels take another form on CPU adapters (session 18): a standalone batch norm, a
    squeeze-excitation block, a broadcasting multiply, a max pool, a one-row linear."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.reduce, self.expand = torch.nn.Conv2d(16, 4, 1), torch.nn.Conv2d(4, 16, 1)
        self.scale = torch.nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(self.bn(x)))
        x = x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        x = torch.nn.functional.max_pool2d(x * self.scale, 3, 2, 1)
        return self.fc(x.flatten(1))


def test_cpu_forms_match_torch(site):
    """The same WGSL on the page's adapter as on lavapipe: on SwiftShader, the "cpu" plan's forms of those ops."""
    torch.manual_seed(5)
    model = CpuForms().eval()
    with torch.no_grad():
        zoo.randomize_batch_norms(model, 5)
    got = check_against_torch(site, "cpu_forms", model, torch.randn(1, 3, 16, 16))
    assert got["routes"]["dtype"] == "float32"


def test_attention_matches_torch(site, monkeypatch):
    """bmm's shader under Tint and SwiftShader (the bundle's GPU plans carry it too)."""
    from test_bmm import Attention
    torch.manual_seed(6)
    check_against_torch(site, "attention", Attention().eval(), torch.randn(1, 16, 5, 6))


class OneSidedClamps(torch.nn.Module):
    """clamp(min=...) with no upper bound, in a conv's epilogue and on its own (EdgeNeXt's norm): the open bound's
    WGSL literal must be one Tint takes (3.4028235e38 is not: it rounds past the largest f32)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x).clamp(min=0.05)
        return y * (y.sum(1, keepdim=True).clamp(min=1e-3) ** -0.5)


@pytest.mark.parametrize("family", ["unknown", "cpu"])
def test_open_clamp_bounds_compile_under_tint(site, family):
    torch.manual_seed(7)
    check_against_torch(site, f"open_clamp_{family}", OneSidedClamps().eval(), torch.randn(1, 3, 6, 7), family=family)


class ShuffleFold(torch.nn.Module):
    """Session 24's new kernels: a channel shuffle (concat view), torch's fold (scatter-add), a variance."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.branch = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        y = torch.cat([a, torch.relu(self.branch(b))], 1)
        y = y.view(1, 2, 4, 8, 8).transpose(1, 2).contiguous().view(1, 8, 8, 8)
        cols = torch.nn.functional.unfold(y, 3, padding=1, stride=2)
        return torch.nn.functional.fold(cols, 8, 3, padding=1, stride=2) + y.var((2, 3), keepdim=True)


@pytest.mark.parametrize("family", ["unknown", "cpu"])
def test_concat_views_and_scatters_match_torch(site, family):
    torch.manual_seed(8)
    got = check_against_torch(site, f"shuffle_fold_{family}", ShuffleFold().eval(), torch.randn(1, 3, 8, 8),
                              family=family)
    assert got["routes"]["family"] == family


def test_transposed_convs_match_torch(site):
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(6, 3, 3, stride=1, padding=1, output_padding=0)).eval()
    x = torch.randn(1, 3, 12, 12)
    got = check_against_torch(site, "transposed", model, x)
    assert [layer["chosen"] for layer in got["routes"]["layers"]].count("transposed") == 2


def test_measured_routing_picks_the_fastest_candidate(site):
    """The page times every candidate of each conv and keeps the fastest; timed again afterwards (each
    candidate alone, fresh rounds), the kept one is still within noise of the fastest, on every conv. The GPU
    plan, whose candidates differ most on SwiftShader (its workgroup kernels wait on barriers there)."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 1)).eval()
    x = torch.randn(1, 8, 16, 16)
    root, page, _ = site
    got = run_in_page(site, "routed", model, x, {"budgetMs": 20000, "family": "unknown"}, candidates="all",
                      dtype="float32", weights_budget=None)
    want = model(x).detach()
    assert max_relative_error(torch.tensor(got["y"]).reshape(want.shape), want) < 1e-4
    layers = got["routes"]["layers"]
    assert len(layers) == 3 and all(layer["source"] == "measured" for layer in layers)
    again = page.evaluate("""async ([bundle, names]) => {
      const C = (await import('./' + bundle + '/convroute.js')).default;
      const m = await C.load(bundle + '/manifest.json', {route: 'default', cache: false, family: 'unknown'});
      const out = {};
      for (const n of names) out[n] = await m.timeLayer(n, {rounds: 9});
      return out;
    }""", ["routed", [layer["layer"] for layer in layers]])
    spread = []
    for layer in layers:
        times, retimed = layer["timesMs"], again[layer["layer"]]
        assert set(times) == set(layer["candidates"]) and len(times) >= 2, layer
        assert layer["chosen"] == min(times, key=times.get)
        assert retimed[layer["chosen"]] <= 2 * min(retimed.values()), (layer, retimed)  # 2x: a loaded CI box
        spread.append(max(retimed.values()) / min(retimed.values()))
    assert max(spread) > 3, f"the candidates run alike ({spread}): the check would not tell a wrong choice"


def test_demo_page_classifies_and_caches_its_routes(site):
    """index.html runs the bundle, shows the routing table; a second visit reads the routes from IndexedDB."""
    root, page, _ = site
    torch.manual_seed(8)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 8 * 8, 10)).eval()
    export_web(model, (torch.randn(1, 3, 8, 8),), root / "demo", exclude=EXCLUDE, dtype="float32")
    base = page.url.rsplit("/", 1)[0]
    sources = []
    for _ in range(2):
        demo = page.context.new_page()
        demo.goto(f"{base}/demo/index.html?budget=3000")
        demo.wait_for_function("() => window.convrouteResult || window.convrouteError", timeout=120_000)
        assert demo.evaluate("() => window.convrouteError || null") is None
        result = demo.evaluate("() => window.convrouteResult")
        assert len(result["top"]) == 5 and demo.locator("#routes tr").count() == 2
        sources.append(result["routes"]["layers"][0]["source"])
        demo.close()
    assert sources == ["measured", "cached"]


def test_float16_where_the_adapter_has_shader_f16(site):
    root, page, info = site
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 1), torch.nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.randn(1, 3, 16, 16)
    got = run_in_page(site, "auto_dtype", model, x, {"route": "default"}, candidates=1, dtype="auto")
    want = model(x).detach()
    err = max_relative_error(torch.tensor(got["y"]).reshape(want.shape), want)
    routes = got["routes"]
    if "shader-f16" not in info["features"]:
        assert routes["dtype"] == "float32" and routes["dtypeReason"] == "the adapter has no shader-f16"
        assert err < 1e-4
        pytest.skip(f"the adapter ({info['vendor']} {info['architecture']}) has no shader-f16: the float32 plan "
                    f"ran, as stated in routes()")
    assert routes["dtype"] == "float16" and err < 1e-2, err


def test_cpu_steps_are_refused(tmp_path):
    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.sort(torch.nn.functional.relu(x), dim=-1).values

    with pytest.raises(NotForBrowser, match="on the CPU .*sort.*: convroute has no GPU kernel for sort"):
        export_web(Sorts(), (torch.randn(1, 3, 8, 8),), tmp_path, dtype="float32")


def test_excluded_algorithms_stay_out_of_convs_the_graph_passes_made(tmp_path):
    """Grouped convs a concat joins merge into one conv (frontend/siblings) after the export had routed the
    graph's own convs off `exclude`: timm mixnet_s's bundle carried direct for its merged convs, and SwiftShader
    dropped the WebGPU instance compiling it. A grouped conv of the model's own is refused by name; convs that
    run alone stay apart rather than merge into a grouped conv no algorithm would take (res2net's splits)."""
    from test_siblings import Mixed
    torch.manual_seed(0)
    x = torch.randn(1, 3, 7, 7)
    with pytest.raises(NotForBrowser, match=r"no algorithm is left for it after excluding direct .*groups=2"):
        export_web(Mixed((8, 8), (3, 3), groups_per_chunk=2).eval(), (x,), tmp_path / "grouped", dtype="float32",
                   exclude=("direct",))
    manifest = export_web(Mixed((8, 8), (3, 5), groups_per_chunk=1).eval(), (x,), tmp_path / "dense",
                          dtype="float32", exclude=("direct",))
    plan = json.loads((tmp_path / "dense" / manifest["plans"]["float32"]["plan"]).read_text())
    convs = [step for step in plan["steps"] if step["op"] == "convolution"]
    assert [step["name"] for step in convs] == ["stem", "convs.0", "convs.1"], [step["name"] for step in convs]
    assert all("direct" not in json.dumps(step) for step in convs)


def test_bundle_of_resnet18_float16_is_small(tmp_path):
    """The default export (candidates included) stays within 1.1x the weights plus 200 KB: candidates whose
    weights need a layout of their own are carried only within the weights budget."""
    model = zoo.build("resnet18")
    x = torch.randn(1, 3, 32, 32)
    manifest = export_web(model, (x,), tmp_path / "default", dtype="float16")
    weights = 2 * sum(p.numel() for p in model.parameters())
    total = sum(f.stat().st_size for f in (tmp_path / "default").rglob("*") if f.is_file())
    assert total <= 1.1 * weights + 200_000, (total, weights)
    assert list(manifest["plans"]) == ["float16"] and manifest["plans"]["float16"]["routed"] == 20
    plan = json.loads((tmp_path / "default" / "plan-float16.json").read_text())
    assert plan["features"] == ["shader-f16"]
    assert not any("atomic" in f.read_text() for f in (tmp_path / "default" / "shaders").iterdir())
    unbounded = export_web(model, (x,), tmp_path / "unbounded", dtype="float16", weights_budget=None)
    assert unbounded["plans"]["float16"]["weight_bytes"] > 1.5 * manifest["plans"]["float16"]["weight_bytes"]


def test_software_adapter_plan_has_no_barriers_textures_or_wide_gathers(tmp_path):
    """The "cpu" plan: register tiles on buffers (a barrier is a coroutine switch on SwiftShader and textures
    load slower than buffers there), and implicit GEMM tiles gathering 4 columns (SwiftShader's compiler
    takes over 100 s on 16 and its GPU process dies)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 16, 1, stride=2), torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
    export_web(model, (torch.randn(1, 3, 16, 16),), tmp_path, dtype="float32", family="cpu", candidates="all",
               weights_budget=None)
    sources = [f.read_text() for f in (tmp_path / "shaders").iterdir()]
    assert not any("workgroupBarrier" in s or "texture" in s for s in sources)
    gathers = [s for s in sources if "fn gather(" in s]
    assert gathers and all("pix0_3" in s and "pix1_0" not in s for s in gathers)


def test_program_exports_itself(tmp_path):
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    program = compile_program(model, torch.randn(1, 3, 8, 8))
    manifest = program.export_web(tmp_path, candidates=1)
    assert manifest["input_shape"] == [1, 3, 8, 8] and list(manifest["plans"]) == ["float32", "cpu-float32"]
    assert manifest["plans"]["float32"]["weight_bytes"] >= 4 * (4 * 3 * 9 + 4)


def test_bench_page_against_onnx_runtime_web(site):
    """bench.html runs both engines on one input: their outputs agree and each has its percentiles."""
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    try:
        ort_dist()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    root, page, _ = site
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    export_web(model, (x,), root / "cmp", exclude=EXCLUDE, dtype="float32", candidates=1)
    write_compare(model, x, root / "cmp")
    bench = page.context.new_page()
    bench.goto(page.url.rsplit("/", 1)[0] + "/cmp/bench.html?rounds=3&cache=0")
    bench.wait_for_function("() => window.benchResult || window.benchError", timeout=180_000)
    assert bench.evaluate("() => window.benchError || null") is None
    result = bench.evaluate("() => window.benchResult")
    assert [r["engine"] for r in result["rows"]] == ["convroute", "onnxruntime-web"]
    assert all(r["p10"] <= r["median"] <= r["p90"] for r in result["rows"]) and result["ratio"] > 0
    assert result["relDiff"] < 1e-4


def test_open_demo_serves_the_bundle_and_opens_its_page(tmp_path):
    import urllib.request

    from convroute.frontend.web.browser import open_demo

    (tmp_path / "index.html").write_text("<title>demo</title>")
    fetched = []
    url = open_demo(tmp_path, opener=lambda u: fetched.append(urllib.request.urlopen(u).read()), wait=lambda: None)
    assert url.endswith("/index.html") and fetched == [b"<title>demo</title>"]


def test_cli_export_web(tmp_path, capsys):
    from convroute.cli.main import main

    out = tmp_path / "bundle"
    assert main(["export-web", "--model", "resnet18", "--size", "32", "--dtype", "float16", "--candidates", "1",
                 "--exclude", "direct", "--out", str(out)]) == 0
    assert "float16: plan-float16.json" in capsys.readouterr().out
    assert {"manifest.json", "plan-float16.json", "weights-float16.bin", "convroute.js", "index.html"} <= {
        f.name for f in out.iterdir()}
    assert main(["bench-web", str(out)]) == 2 and "bench.html is missing" in capsys.readouterr().err

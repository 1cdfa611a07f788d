"""`torch.compile(model, backend="convroute")`: whole models and graph breaks match torch, options reach
convroute.compile, a graph convroute cannot compile runs on torch with a warning, the entry point is declared."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from convroute.frontend import ExportError, dynamo  # noqa: E402 (before torchvision: see frontend)

torchvision = pytest.importorskip("torchvision")
from convroute.frontend.zoo import randomize_batch_norms  # noqa: E402


@pytest.fixture
def compiled(monkeypatch):
    """Every Program the backend builds, with the options it was built with."""
    torch._dynamo.reset()
    built = []
    real = dynamo.frontend.compile

    def spy(module, inputs, **options):
        program = real(module, inputs, **options)
        built.append((program, options))
        return program

    monkeypatch.setattr(dynamo.frontend, "compile", spy)
    yield built
    torch._dynamo.reset()


def relative_error(out, ref) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def reference(model, x):
    with torch.no_grad():
        return model.double()(x.double())


class Branchy(torch.nn.Module):
    """A branch on a tensor value: Dynamo breaks the graph there and compiles each side separately."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        if y.mean() > 0.3:
            return self.up(y) + y
        return self.down(y) * 2


def test_resnet18_matches_torch(compiled):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    randomize_batch_norms(model, 0)
    x = torch.randn(1, 3, 32, 32)
    fast = torch.compile(model, backend="convroute")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynamo.FallbackWarning)
        with torch.no_grad():
            out = fast(x)
    assert relative_error(out, reference(model, x)) < 1e-4
    [(program, options)] = compiled  # one graph, compiled once, with the defaults
    assert options == {"policy": "seed", "device": None, "dtype": "float32"}
    summary = program.summary()
    assert summary.convs == summary.convs_on_gpu == 20


def test_graph_break_model_matches_torch_on_both_sides(compiled):
    torch.manual_seed(1)
    model = Branchy().eval()
    fast = torch.compile(model, backend="convroute")
    taken = set()
    with torch.no_grad():
        for shift in (3.0, -3.0, 3.0):  # the stem's bias decides the branch
            model.stem.bias.fill_(shift)  # changed in place: the backend recompiles the graph
            x = torch.randn(1, 3, 10, 12)
            out = fast(x)
            ref = reference(model, x)
            model.float()
            taken.add(tuple(ref.shape))
            assert relative_error(out, ref) < 1e-4
    assert taken == {(1, 8, 10, 12), (1, 4, 10, 12)}  # both branches ran
    graphs = {str(program.model.gm.graph) for program, _ in compiled}
    assert len(graphs) == 3  # the graph before the break, and one for each side


def test_options_pass_through(compiled):
    torch.manual_seed(2)
    model = Branchy().eval()
    x = torch.randn(2, 3, 8, 8)
    fast = torch.compile(model, backend="convroute", options={"policy": "calibrated", "dtype": "float16"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no calibration here: calibrated routing says it falls back
        with torch.no_grad():
            out = fast(x)
    assert relative_error(out, reference(model, x)) <= 1e-2
    assert compiled and all(o["policy"] == "calibrated" and o["dtype"] == "float16" for _, o in compiled)
    assert all(program.dtype == "float16" for program, _ in compiled)
    with pytest.raises(Exception, match="unknown convroute option"):
        torch.compile(Branchy().eval(), backend="convroute", options={"polcy": "seed"})(x)


class ScalesItsInput(torch.nn.Module):
    """Writes to its input: a Program returns new tensors, so convroute leaves this graph to torch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        x.mul_(2)
        return self.conv(x)


def test_a_graph_convroute_cannot_compile_runs_on_torch_with_a_warning(monkeypatch):
    torch._dynamo.reset()
    model = ScalesItsInput().eval()
    x = torch.randn(1, 3, 5, 5)
    mine, theirs = x.clone(), x.clone()
    with pytest.warns(dynamo.FallbackWarning, match="changes its input"), torch.no_grad():
        out = torch.compile(model, backend="convroute")(mine)
        ref = model(theirs)
    assert torch.equal(out, ref) and torch.equal(mine, theirs)
    torch._dynamo.reset()

    def refuse(module, inputs, **options):
        raise ExportError("not this one")

    monkeypatch.setattr(dynamo.frontend, "compile", refuse)
    model = Branchy().eval()
    x = torch.randn(1, 3, 6, 6)
    with pytest.warns(dynamo.FallbackWarning, match="not this one"), torch.no_grad():
        out = torch.compile(model, backend="convroute")(x)
        ref = model(x)
    assert torch.equal(out, ref)
    with pytest.raises(Exception, match="not this one"):
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="convroute", options={"strict": True})(x)
    torch._dynamo.reset()


def test_backend_is_registered_and_declared_as_an_entry_point():
    assert "convroute" in torch._dynamo.list_backends()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["torch_dynamo_backends"]["convroute"]
    module, _, name = target.partition(":")
    assert module == dynamo.__name__ and getattr(dynamo, name) is dynamo.convroute_backend

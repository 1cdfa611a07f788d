"""`torch.compile(model, backend="convroute")`: convroute as a TorchDynamo backend.

Dynamo hands the backend one FX graph per captured region (graph breaks, e.g. Python control flow on
tensor values, split a model into several and run the Python between them itself), with example inputs.
The graph's parameters and buffers arrive as inputs; the backend holds them as constants of a small
module around the graph (the weights convroute prepacks) and compiles that module with `convroute.compile`
for the remaining inputs. A graph convroute cannot compile runs on torch, with a warning.

Options (`torch.compile(..., options={...})`): policy, dtype, device as for `convroute.compile`, and
strict=True to raise instead of falling back. Registered under the name "convroute" through the
`torch_dynamo_backends` entry point, and on import of this module when that entry point is not installed.

Weights are read when a graph is compiled; a graph whose parameters are replaced or changed in place is
compiled again on its next call. convroute runs inference: outputs carry no gradient.
"""

from __future__ import annotations

import copy
import warnings
from importlib.metadata import entry_points

# isort: off
import convroute.frontend as frontend  # before torch._dynamo, which imports triton (see convroute.frontend)
import torch
from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend
# isort: on

NAME = "convroute"
OPTIONS = {"policy": "seed", "dtype": "float32", "device": None, "strict": False}


class FallbackWarning(UserWarning):
    """A graph convroute could not compile runs on torch instead."""


def convroute_backend(gm: torch.fx.GraphModule, example_inputs, *, options: dict | None = None, mode=None):
    """The backend: returns a callable taking the graph's inputs and returning its outputs."""
    return CompiledGraph(gm, list(example_inputs), _settings(options, mode))


def _settings(options, mode) -> dict:
    if mode not in (None, "default"):
        raise ValueError(f"the convroute backend has no modes (got mode={mode!r}); pass options= instead")
    unknown = set(options or {}) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown convroute option(s) {', '.join(sorted(unknown))}; known: {', '.join(OPTIONS)}")
    return OPTIONS | dict(options or {})


class CompiledGraph:
    """One Dynamo graph on convroute: a Program per set of non-tensor inputs (sizes under dynamic shapes),
    built on the first call with them (outside Dynamo's tracing, whose symbolic shapes would leak into
    torch.export's)."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list, settings: dict):
        self.gm, self.settings = gm, settings
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise ValueError(f"the graph has {len(placeholders)} inputs, its example {len(example_inputs)}")
        mutated = _mutated_inputs(placeholders)
        self.weights = [i for i, (node, value) in enumerate(zip(placeholders, example_inputs, strict=True))
                        if _is_weight(node, value)]
        self.data = [i for i, value in enumerate(example_inputs)
                     if isinstance(value, torch.Tensor) and i not in self.weights]
        self.programs: dict[tuple, frontend.Program] = {}
        self.held: list = []  # (weight, its version) the programs were built from
        self.on_torch = False  # set when convroute could not compile the graph
        self.refusal = f"the graph changes its input(s) {', '.join(mutated)} in place" if mutated else None
        self.warned_grad = False

    def __call__(self, *args):
        if self.on_torch:
            return self.gm(*args)
        program = self._program(args)
        if program is None:
            return self.gm(*args)
        data = [args[i] for i in self.data]
        if torch.is_grad_enabled() and not self.warned_grad and \
                any(t.requires_grad for t in args if isinstance(t, torch.Tensor)):
            self.warned_grad = True
            warnings.warn("the convroute backend runs inference only: its outputs carry no gradient "
                          "(call the model under torch.no_grad() or torch.inference_mode())", stacklevel=2)
        outputs = program(*data)
        device = data[0].device if data else torch.device("cpu")
        if device.type != "cpu":
            outputs = type(outputs)(o.to(device) if isinstance(o, torch.Tensor) else o for o in outputs)
        return outputs

    def _program(self, args) -> frontend.Program | None:
        if self.programs and any(args[i] is not t or t._version != v
                                 for i, (t, v) in zip(self.weights, self.held, strict=True)):
            self.programs.clear()  # new or changed weights
        key = _fixed(args, self.data)
        if key in self.programs:
            return self.programs[key]
        self.held = [(args[i], args[i]._version) for i in self.weights]
        module = _Bound(self.gm, args, self.weights, self.data)
        try:
            if self.refusal:  # a Program's outputs are new tensors: the caller would not see the change
                raise ValueError(self.refusal)
            program = frontend.compile(module, [args[i] for i in self.data], policy=self.settings["policy"],
                                       device=self.settings["device"], dtype=self.settings["dtype"])
        except Exception as err:
            if self.settings["strict"]:
                raise
            self.on_torch = True
            ops = sum(node.op in ("call_function", "call_method", "call_module") for node in self.gm.graph.nodes)
            reason = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"convroute could not compile a graph of {ops} ops ({type(err).__name__}: {reason}); "
                          f"torch runs it", FallbackWarning, stacklevel=3)
            return None
        self.programs[key] = program
        return program


class _Bound(torch.nn.Module):
    """The graph with its weights held as buffers and its non-tensor inputs fixed: what torch.export sees."""

    def __init__(self, gm: torch.fx.GraphModule, args: list, weights: list[int], data: list[int]):
        super().__init__()
        self.gm, self.data, self.weights = _plain(gm), data, weights
        self.fixed = [None if i in weights or i in data else a for i, a in enumerate(args)]
        for i in weights:
            self.register_buffer(f"input_{i}", args[i].detach())

    def forward(self, *data):
        args = list(self.fixed)
        for i, value in zip(self.data, data, strict=True):
            args[i] = value
        for i in self.weights:
            args[i] = getattr(self, f"input_{i}")
        return self.gm(*args)


def _plain(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the graph without Dynamo's metadata: its symbolic shapes and guards (on Dynamo's sources)
    would otherwise leak into torch.export's own."""
    graph = copy.deepcopy(gm.graph)
    for node in graph.nodes:
        node.meta = {}
    return torch.fx.GraphModule(gm, graph)


def _mutated_inputs(placeholders: list[torch.fx.Node]) -> list[str]:
    """Inputs an in-place op (`x.add_(...)`, `relu(x, inplace=True)`) writes to."""
    mutated = []
    for node in placeholders:
        for user in node.users:
            name = getattr(user.target, "__name__", str(user.target))
            in_place = name.endswith("_") and not name.startswith("__") or user.kwargs.get("inplace") is True
            if in_place and user.args and user.args[0] is node:
                mutated.append(node.name)
    return mutated


def _is_weight(node: torch.fx.Node, value) -> bool:
    """A parameter or buffer of a module (Dynamo lifts them to graph inputs)."""
    if not isinstance(value, torch.Tensor):
        return False
    if isinstance(value, torch.nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = source.name if source is not None else ""
    return "._buffers[" in name or "._parameters[" in name


def _fixed(args, data: list[int]) -> tuple:
    return tuple(a for i, a in enumerate(args) if not isinstance(a, torch.Tensor) and i not in data)


def _entry_point_installed() -> bool:
    return any(ep.name == NAME for ep in entry_points(group="torch_dynamo_backends"))


if NAME not in _COMPILER_FNS and not _entry_point_installed():  # torch loads an installed entry point itself
    register_backend(convroute_backend, name=NAME)

"""The front end's graph: a flat, topologically ordered list of torch calls over named values.

Built from a `torch.export.ExportedProgram`. Every node keeps a torch callable and its arguments, so
any node can always run on the CPU through torch (and its shapes can be inferred on meta tensors);
the GPU lowering reads the same arguments. Fusion passes attach an activation (`act`) to a node, and to a
conv a `residual` value added before that activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from convroute.kernels.common import Epilogue

aten = torch.ops.aten


@dataclass(frozen=True)
class Ref:
    """A reference to a named value: a user input, a constant or a node's output."""

    name: str


@dataclass
class Node:
    name: str
    target: object
    args: tuple
    kwargs: dict = field(default_factory=dict)
    act: Epilogue | None = None
    notes: list[str] = field(default_factory=list)
    module: str = ""  # the nn.Module path the call came from, for tables
    meta: object = None  # the result's shape/dtype as meta tensors (or a plain value), from the export
    residual: Ref | None = None  # a value of the result's shape added to it before `act` (a fused residual add)
    depthwise: Node | None = None  # a depthwise conv computed inside this 1x1 conv (args[0] is then its input)

    @property
    def op(self) -> str:
        return op_name(self.target)

    def conv_input(self) -> Ref:
        """The value a conv reads: args[0], or the result of the depthwise conv fused into it (whose input then
        sits in args[0])."""
        return Ref(self.depthwise.name) if self.depthwise else self.args[0]

    def refs(self) -> list[Ref]:
        inner = self.depthwise.args[1:] if self.depthwise else ()  # its weights; its input is args[0]
        return list(iter_refs((self.args, self.kwargs, self.residual, inner)))

    def arg(self, index: int, name: str, default=None):
        """An argument given by position or by name."""
        return self.args[index] if len(self.args) > index else self.kwargs.get(name, default)


@dataclass
class Graph:
    inputs: list[str]
    constants: dict[str, object]
    nodes: list[Node]
    outputs: list
    out_spec: object = None
    input_meta: list = field(default_factory=list)

    def users(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for ref in node.refs():
                users.setdefault(ref.name, []).append(node)
        return users

    def output_names(self) -> set[str]:
        return {r.name for r in iter_refs(self.outputs)}

    def replace_uses(self, old: str, new) -> None:
        """Point every use of value `old` at `new` (a Ref or a literal)."""
        def swap(r):
            return new if r.name == old else r
        for node in self.nodes:
            node.args = map_refs(node.args, swap)
            node.kwargs = map_refs(node.kwargs, swap)
            node.residual = map_refs(node.residual, swap)
        self.outputs = map_refs(self.outputs, swap)


def read_once(g: Graph) -> Callable[[Node | None], bool]:
    """A test for graph passes: the node exists, one node reads its result and it is no model output (readers as
    `g` has them now, before the pass changes it)."""
    users, outputs = g.users(), g.output_names()
    return lambda node: node is not None and len(users.get(node.name, [])) == 1 and node.name not in outputs


PLAIN_RESHAPES = ("view", "reshape", "_unsafe_view")  # same elements, same order: only the shape changes


def value_meta(g: Graph, name: str, producers: dict[str, Node]):
    """A value's meta: its node's result's, an input's, or the constant itself (None for an unknown name)."""
    if name in producers:
        return producers[name].meta
    return g.input_meta[g.inputs.index(name)] if name in g.inputs else g.constants.get(name)


def conv_pair(value) -> tuple[int, int]:
    """A conv argument (stride, padding, dilation) given as one number or a list, as (height, width)."""
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return value[0], value[-1]


def tap_window(pads: list, kernels: list, dilation: tuple[int, int]):
    """(padding, kernel size, per-kernel tap offsets) of one conv holding kernels of these `pads` and sizes, per
    axis, or None: each kernel's taps must land on its own input positions (offset = (merged padding - its
    padding) / dilation). Shared by the concat siblings and the summed convs."""
    padding = tuple(max(p[a] for p in pads) for a in range(2))
    gaps = [tuple(padding[a] - p[a] for a in range(2)) for p in pads]
    if any(gap[a] % dilation[a] for gap in gaps for a in range(2)):
        return None
    offsets = [tuple(gap[a] // dilation[a] for a in range(2)) for gap in gaps]
    size = tuple(max(o[a] + k[a] for o, k in zip(offsets, kernels, strict=True)) for a in range(2))
    return padding, size, offsets


def through(ref, ops: tuple, producers: dict, once: Callable[[Node | None], bool], passed: list) -> Node | None:
    """The node making `ref` (a Ref, else None), looked for past a chain of `ops` nodes that `once` accepts; their
    names are appended to `passed`."""
    node = producers.get(ref.name) if isinstance(ref, Ref) else None
    while once(node) and node.op in ops and isinstance(node.args[0], Ref):
        passed.append(node.name)
        node = producers.get(node.args[0].name)
    return node


def op_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        overload = target._overloadname
        base = target.overloadpacket.__name__
        return base if overload == "default" else f"{base}.{overload}"
    return getattr(target, "__name__", str(target))


def iter_refs(obj):
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_refs(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_refs(item)


def map_refs(obj, fn):
    if isinstance(obj, Ref):
        return fn(obj)
    if isinstance(obj, list):
        return [map_refs(item, fn) for item in obj]
    if isinstance(obj, tuple):
        return tuple(map_refs(item, fn) for item in obj)
    if isinstance(obj, dict):
        return {k: map_refs(v, fn) for k, v in obj.items()}
    return obj


def batch_norm_eval(x, weight, bias, mean, var, momentum, eps):
    """Eval-mode batch norm's first output (the graph's multi-output op, reduced to what is used)."""
    return aten._native_batch_norm_legit_no_training.default(x, weight, bias, mean, var, momentum, eps)[0]


def layer_norm(x, normalized_shape, weight, bias, eps):
    """Layer norm's first output (native_layer_norm's mean and rstd outputs dropped when unused)."""
    return aten.native_layer_norm.default(x, normalized_shape, weight, bias, eps)[0]


def from_exported(ep) -> Graph:
    """Translate an ExportedProgram (after decompositions) into a Graph."""
    from torch.export.graph_signature import InputKind, OutputKind

    constants: dict[str, object] = {}
    inputs: list[str] = []
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            inputs.append(name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            source = ep.state_dict if spec.target in ep.state_dict else ep.constants
            constants[name] = source[spec.target].detach()
        else:
            raise RuntimeError(f"convroute cannot run a model whose export has {spec.kind.name} inputs "
                               f"({spec.target})")
    nodes: list[Node] = []
    placeholders = {}
    for fx_node in ep.graph.nodes:
        if fx_node.op == "placeholder":
            placeholders[fx_node.name] = _meta(fx_node.meta.get("val"))
        elif fx_node.op == "get_attr":
            constants[fx_node.name] = getattr(ep.graph_module, fx_node.target)
        elif fx_node.op == "call_function":
            args = _from_fx(fx_node.args)
            kwargs = _from_fx(dict(fx_node.kwargs))
            nodes.append(Node(fx_node.name, fx_node.target, args, kwargs, module=_module_path(fx_node),
                              meta=_meta(fx_node.meta.get("val"))))
        elif fx_node.op == "output":
            results = list(fx_node.args[0])
    kinds = [spec.kind for spec in ep.graph_signature.output_specs]
    outputs = [_from_fx(r) for r, kind in zip(results, kinds, strict=True) if kind == OutputKind.USER_OUTPUT]
    return Graph(inputs, constants, nodes, outputs, ep.call_spec.out_spec, [placeholders[n] for n in inputs])


def _from_fx(obj):
    if isinstance(obj, torch.fx.Node):
        return Ref(obj.name)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_fx(item) for item in obj)
    if isinstance(obj, dict):
        return {k: _from_fx(v) for k, v in obj.items()}
    return obj


def _meta(val):
    """Fake tensors -> meta tensors of the same shape and dtype (nothing of the tracing context kept)."""
    if isinstance(val, torch.Tensor):
        return torch.empty(tuple(int(d) for d in val.shape), dtype=val.dtype, device="meta")
    if isinstance(val, (list, tuple)):
        return type(val)(_meta(v) for v in val)
    return val


def _module_path(fx_node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").replace("L['self']", "")

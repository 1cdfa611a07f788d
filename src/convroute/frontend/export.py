"""torch.export a model (translated directly where exact, see direct.py, else decomposed to core ATen),
then simplify its graph: fold constants, drop identities, fold eval-mode
BatchNorm into the preceding conv and fuse the activation that follows a conv / linear / add."""

from __future__ import annotations

import operator

import torch

from convroute.frontend.direct import translate
from convroute.frontend.graph import Graph, Node, Ref, batch_norm_eval, from_exported, iter_refs, layer_norm, map_refs
from convroute.kernels.common import SELU, Epilogue

aten = torch.ops.aten

# Ops kept whole (not decomposed) because convroute runs them as one kernel or fuses them.
KEEP = ("hardswish.default", "hardsigmoid.default", "silu.default", "gelu.default", "linear.default",
        "upsample_nearest2d.vec", "upsample_nearest2d.default", "upsample_bilinear2d.vec",
        "upsample_bilinear2d.default", "_upsample_nearest_exact2d.vec", "_upsample_nearest_exact2d.default",
        "hardtanh.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default",
        "pad.default")  # a reflect pad: one gather, not an index.Tensor per padded dim
# Activations of the epilogue's table (kernels/common.TABLE) kept whole too, so they fuse as one epilogue.
KEEP_ACTIVATIONS = ("leaky_relu.default", "elu.default", "celu.default", "selu.default", "mish.default",
                    "softplus.default", "log_sigmoid.default", "relu6.default")

IDENTITY = ("clone", "alias", "detach", "lift_fresh_copy", "contiguous")

# Producers that can take a fused activation (conv and linear also absorb hardsigmoid, see _fusable).
FUSE_INTO = ("convolution", "linear", "add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "batch_norm_eval",
             "group_norm", "group_norm_values", "instance_norm", "batch_stats_norm")


# Elementwise math whose kernels take a fused activation too (ops-elem).
FUSE_INTO += ("pow.Tensor_Scalar", "pow.Scalar", "pow.Tensor_Tensor", "maximum", "minimum", "where.self",
              "where_compare", "clamp.Tensor", "sqrt", "rsqrt", "exp", "log", "neg", "abs", "reciprocal")


class CompileError(RuntimeError):
    """The model could not be compiled: one line naming the node and its op (the cause stays chained)."""


CompileError.__module__ = "convroute"  # tracebacks read `convroute.CompileError: node ...`


def node_error(node: Node, exc: Exception) -> CompileError:
    target = node.target if isinstance(node.target, torch._ops.OpOverload) else getattr(node.target, "__name__",
                                                                                          node.target)
    where = f" in {node.module}" if node.module else ""
    reason = " ".join(str(exc).split()) or "no message"
    return CompileError(f"node {node.name!r} ({target}){where}: {type(exc).__name__}: {reason}")


class ExportError(CompileError):
    """torch.export could not capture the model; the message carries torch's reason."""


ExportError.__module__ = "convroute"


def export_model(model, example_inputs: tuple) -> Graph:
    """Export for the example's exact shapes (a batch-dynamic export costs several times longer; a
    Program re-exports once per new input shape instead)."""
    try:
        ep = torch.export.export(model.eval(), tuple(example_inputs))
    except Exception as exc:
        reason = str(exc).strip().split("\n\n")[0]
        raise ExportError(f"torch.export could not export {type(model).__name__}: {type(exc).__name__}: "
                          f"{reason} (convroute runs what torch.export can capture: no Python control flow "
                          f"that depends on tensor values)") from exc
    return _graph(ep)


def _graph(ep) -> Graph:
    graph = translate(ep)
    if graph is None:  # ops beyond the direct translation: decompose to core ATen (re-traces the graph)
        table = torch.export.default_decompositions()
        for name in KEEP + KEEP_ACTIVATIONS:
            packet, _, overload = name.partition(".")
            table.pop(getattr(getattr(aten, packet), overload), None)
        graph = from_exported(ep.run_decompositions(table))
    try:
        simplify(graph)
    except CompileError:
        raise
    except Exception as exc:
        raise CompileError(f"simplifying the exported graph failed: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}") from exc
    return graph


def simplify(g: Graph) -> None:
    fold_constants(g)
    inline_scalars(g)
    reduce_multi_output(g)
    constant_pads(g)
    split_into_slices(g)
    drop_identities(g)
    fold_batch_norms(g)
    guard_rows_by_their_max(g)
    fuse_comparisons(g)
    fuse_activations(g)
    drop_dead(g)


def is_const(g: Graph, obj) -> bool:
    return all(r.name in g.constants for r in iter_refs(obj))


def fold_constants(g: Graph) -> None:
    """Evaluate once, at compile time, every call that depends on constants only (e.g. weight transposes)."""
    kept = []
    for node in g.nodes:
        seeded = isinstance(node.target, torch._ops.OpOverload) and \
            torch.Tag.nondeterministic_seeded in node.target.tags
        if is_const(g, (node.args, node.kwargs)) and not seeded:
            def value(r):
                return g.constants[r.name]
            try:
                g.constants[node.name] = node.target(*map_refs(node.args, value), **map_refs(node.kwargs, value))
            except Exception as exc:
                raise node_error(node, exc) from exc
        else:
            kept.append(node)
    g.nodes = kept


def inline_scalars(g: Graph) -> None:
    """Calls that yield a plain number for these static shapes (e.g. sym_size) become literals."""
    kept = []
    for node in g.nodes:
        if isinstance(node.meta, (int, float, bool)) and not isinstance(node.meta, torch.SymInt):
            g.replace_uses(node.name, node.meta)
        else:
            kept.append(node)
    g.nodes = kept


def reduce_multi_output(g: Graph) -> None:
    """max_pool2d_with_indices / eval batch norm whose extra outputs are unused become single-output calls."""
    users = g.users()
    singles = {aten.max_pool2d_with_indices.default: aten.max_pool2d.default,
               aten._native_batch_norm_legit_no_training.default: batch_norm_eval,
               aten.native_layer_norm.default: layer_norm, **FIRST_OUTPUTS}
    drop = set()
    for node in g.nodes:
        if node.target not in singles or node.name in g.output_names():
            continue
        outputs = g.output_names()
        getters = [u for u in users.get(node.name, []) if users.get(u.name) or u.name in outputs]  # dead ones go
        if all(u.target is operator.getitem and u.args[1] == 0 for u in getters):
            node.target = singles[node.target]
            node.meta = node.meta[0]
            for u in getters:
                g.replace_uses(u.name, Ref(node.name))
                drop.add(u.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


def max_values(x, dim, keepdim=False):
    """max.dim's values (its indices dropped when unused)."""
    return aten.max.dim(x, dim, keepdim)[0]


def min_values(x, dim, keepdim=False):
    """min.dim's values (its indices dropped when unused)."""
    return aten.min.dim(x, dim, keepdim)[0]


def group_norm_values(x, weight, bias, n, c, plane, groups, eps):
    """native_group_norm's normalized output (its mean and rstd dropped when unused)."""
    return aten.native_group_norm.default(x, weight, bias, n, c, plane, groups, eps)[0]


def batch_stats_norm(x, weight, bias, training, momentum, eps):
    """_native_batch_norm_legit.no_stats's normalized output: a batch norm by the input's own statistics (what an
    instance norm decomposes to, over a (1, N*C, ...) view)."""
    return aten._native_batch_norm_legit.no_stats(x, weight, bias, training, momentum, eps)[0]


def adaptive_max_pool2d_values(x, output_size):
    """adaptive_max_pool2d's values (its indices dropped when unused)."""
    return aten.adaptive_max_pool2d.default(x, output_size)[0]


# Multi-output ops whose first output alone is used, reduced by reduce_multi_output as the ones above.
FIRST_OUTPUTS = {aten.max.dim: max_values, aten.min.dim: min_values, aten.native_group_norm.default: group_norm_values,
                 aten._native_batch_norm_legit.no_stats: batch_stats_norm,
                 aten.adaptive_max_pool2d.default: adaptive_max_pool2d_values}


def constant_pads(g: Graph) -> None:
    """pad(mode='constant') becomes constant_pad_nd (a padded strided copy); the other modes stay pad (a gather)."""
    for node in g.nodes:
        if node.target is aten.pad.default and node.arg(2, "mode", "constant") == "constant":
            node.args = (node.args[0], node.args[1], node.arg(3, "value", None) or 0.0)
            node.target, node.kwargs = aten.constant_pad_nd.default, {}


SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int, aten.chunk.default}


def split_into_slices(g: Graph) -> None:
    """split / split_with_sizes / chunk / unbind read through getitem become one slice (or select) per piece, so each
    piece is a plain single-output node (a strided copy on the GPU)."""
    users = g.users()
    pieces = {}
    for node in g.nodes:
        getters = users.get(node.name, [])
        if node.target not in SPLITS or node.name in g.output_names() or \
                not all(u.target is operator.getitem and isinstance(u.args[1], int) for u in getters):
            continue
        dim = node.arg(1, "dim", 0) if node.target is aten.unbind.int else node.arg(2, "dim", 0)
        starts = [0]
        for m in node.meta[:-1]:
            starts.append(starts[-1] + (1 if node.target is aten.unbind.int else m.shape[dim]))
        for u in getters:
            i = u.args[1]
            if node.target is aten.unbind.int:
                args = (node.args[0], dim, starts[i])
                target = aten.select.int
            else:
                args = (node.args[0], dim, starts[i], starts[i] + node.meta[i].shape[dim])
                target = aten.slice.Tensor
            pieces[u.name] = Node(u.name, target, args, module=u.module or node.module, meta=u.meta)
    g.nodes = [pieces.get(n.name, n) for n in g.nodes]


def drop_identities(g: Graph) -> None:
    """Copies, inert dropouts and neutral arithmetic (_neutral) become the value they read."""
    metas = dict(zip(g.inputs, g.input_meta, strict=True))
    kept = []
    for node in g.nodes:
        inert_dropout = node.op == "dropout" and not (node.args[2] if len(node.args) > 2 else False)
        if node.op in IDENTITY or inert_dropout or _neutral(node, metas):
            g.replace_uses(node.name, node.args[0])
        else:
            kept.append(node)
            metas[node.name] = node.meta
    g.nodes = kept


NEUTRAL = {"add.Tensor": 0, "sub.Tensor": 0, "mul.Tensor": 1, "div.Tensor": 1}


def _neutral(node: Node, metas: dict) -> bool:
    """x + 0, x - 0, x * 1 or x / 1 with a plain number, of x's own shape and dtype: x itself (MobileOne's blocks
    start their sum from `0 + branch`, which would cost a dispatch and keep the branches from merging)."""
    value = NEUTRAL.get(node.op)
    if value is None or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1 or not isinstance(node.args[0], Ref):
        return False
    other, x = node.args[1], metas.get(node.args[0].name)
    return not isinstance(other, bool) and isinstance(other, (int, float)) and other == value \
        and isinstance(x, torch.Tensor) and isinstance(node.meta, torch.Tensor) \
        and x.shape == node.meta.shape and x.dtype == node.meta.dtype


def fold_batch_norms(g: Graph) -> None:
    """conv -> eval batch norm [-> its fused activation]  ==>  conv with scaled weight and shifted bias (computed
    in float64), taking the batch norm's activation; only for a conv with no activation, residual or fused
    depthwise of its own (export runs it before fusing any; build_plan again after merging summed convs)."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    drop = set()
    for bn in g.nodes:
        if bn.target is not batch_norm_eval:
            continue
        x, weight, bias, mean, var, _momentum, eps = bn.args
        conv = producers.get(x.name) if isinstance(x, Ref) else None
        if conv is None or conv.op != "convolution" or not _single_use(g, users, conv) or \
                not is_const(g, (conv.args[1:3], bn.args[1:5])) or conv.act is not None \
                or conv.residual is not None or conv.depthwise is not None:
            continue
        w = g.constants[conv.args[1].name].double()
        b = _const_or_none(g, conv.args[2])
        c_out = w.shape[1] * conv.args[8] if conv.args[6] else w.shape[0]
        b = torch.zeros(c_out, dtype=torch.float64) if b is None else b.double()
        gamma = _const_or_none(g, weight)
        beta = _const_or_none(g, bias)
        scale = 1.0 / torch.sqrt(g.constants[var.name].double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -g.constants[mean.name].double() * scale + (0.0 if beta is None else beta.double())
        if conv.args[6]:  # transposed: weight [C_in, C_out/groups, kh, kw]
            groups = conv.args[8]
            ws = w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
            ws = ws * scale.reshape(groups, 1, -1, *(1,) * (w.ndim - 2))
            w = ws.reshape(w.shape)
        else:
            w = w * scale.reshape(-1, *(1,) * (w.ndim - 1))  # 2-D or 1-D (conv1d) kernels
        dtype = g.constants[conv.args[1].name].dtype  # a half model keeps half weights (for CPU steps)
        set_weights(g, conv, w.to(dtype), (b * scale + shift).to(dtype))
        conv.act = bn.act
        conv.notes += [f"batch norm {bn.module or bn.name} folded", *bn.notes]
        g.replace_uses(bn.name, Ref(conv.name))
        users[conv.name] = users.pop(bn.name, [])  # a second batch norm reading the first may fold only if alone
        drop.add(bn.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


def fuse_activations(g: Graph) -> None:
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    drop = set()
    for node in g.nodes:
        act = activation_of(node)
        if act is None or not isinstance(node.args[0], Ref):
            continue
        src = producers.get(node.args[0].name)
        if src is None or src.act is not None or src.name in drop or not _single_use(g, users, src) \
                or not _fusable(g, src, act):
            continue
        if act.kind == "hardsigmoid" and src.op in ("convolution", "linear"):
            _absorb_hardsigmoid(g, src)
            src.act = Epilogue("clamp", 0.0, 1.0)
        else:
            src.act = act
        src.notes.append(f"{node.op} fused")
        g.replace_uses(node.name, Ref(src.name))
        drop.add(node.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


COMPARISONS = ("gt", "ge", "lt", "le", "eq", "ne")


def where_compare(op: str, lhs, rhs, a, b):
    """torch.where(lhs OP rhs, a, b): a `where` whose condition is a comparison, as one node (the GPU computes
    the comparison inline: it stores no bool tensors)."""
    return torch.where(getattr(torch, op)(lhs, rhs), a, b)


def guard_rows_by_their_max(g: Graph) -> None:
    """scaled_dot_product_attention's export guards rows of scores s that are all -inf (fully masked):
    where(not(any(not(s == -inf), d, keepdim)), full_like(softmax(s, d), 0), softmax(s, d)). Its booleans would
    run on the CPU; the same test as a row max: where_compare("eq", amax(s, d, keepdim), -inf, 0, softmax(s, d))
    (a row is all -inf exactly when its max is), all of it float work on the GPU. The unused nodes go (drop_dead)."""
    producers = {n.name: n for n in g.nodes}

    def made_by(arg, op):
        node = producers.get(arg.name) if isinstance(arg, Ref) else None
        return node if node is not None and node.op == op else None
    nodes = []
    for where in g.nodes:
        found = _masked_row_guard(where, made_by) if where.op == "where.self" and len(where.args) == 3 else None
        if found is not None:
            dim, softmax = found
            shape = list(softmax.meta.shape)
            shape[dim % len(shape)] = 1
            rowmax = Node(f"{where.name}_rowmax", aten.amax.default, (softmax.args[0], [dim], True),
                          module=where.module, meta=softmax.meta.new_empty(shape))
            nodes.append(rowmax)
            where.target, where.args = where_compare, ("eq", Ref(rowmax.name), float("-inf"), 0.0, Ref(softmax.name))
            where.notes.append("softmax's all -inf row guard as a row max")
        nodes.append(where)
    g.nodes = nodes


def _masked_row_guard(where: Node, made_by):
    """(dim, the softmax node) when `where` is that guard, else None."""
    cond, fill, softmax = where.args
    softmax = made_by(softmax, "_softmax")
    full = made_by(fill, "full_like")
    outer = made_by(cond, "logical_not")
    any_dim = made_by(outer.args[0], "any.dim") if outer else None
    inner = made_by(any_dim.args[0], "logical_not") if any_dim else None
    eq = made_by(inner.args[0], "eq.Scalar") if inner else None
    if None in (softmax, full, eq) or full.args[0] != Ref(softmax.name) or full.args[1] != 0 \
            or eq.args[0] != softmax.args[0] or eq.args[1] != float("-inf") \
            or not (len(any_dim.args) > 2 and any_dim.args[2]) or not isinstance(softmax.meta, torch.Tensor):
        return None
    ndim = softmax.meta.ndim
    dim = any_dim.args[1]
    if dim % ndim != softmax.args[1] % ndim:
        return None
    return dim, softmax


def fuse_comparisons(g: Graph) -> None:
    """where(cmp(l, r), a, b)  ==>  where_compare("cmp", l, r, a, b); the comparison goes when nothing else
    reads it (drop_dead)."""
    producers = {n.name: n for n in g.nodes}
    for node in g.nodes:
        cond = node.args[0] if node.target is aten.where.self else None
        cmp = producers.get(cond.name) if isinstance(cond, Ref) else None
        op = cmp.op.split(".")[0] if cmp is not None else None
        if op not in COMPARISONS or len(cmp.args) != 2:
            continue
        node.target, node.args = where_compare, (op, *cmp.args, *node.args[1:])
        node.notes.append(f"{cmp.op} fused")


def fuse_residual_adds(g: Graph, takes_residual) -> None:
    """conv -> add(conv, r) [-> activation fused into the add]  ==>  conv adding r before that activation in its
    store, where `takes_residual(conv)` says the conv's kernel can (the routed algorithm's store adds it).

    Only for a conv with no activation of its own whose result the add alone reads, and an r of the result's
    exact shape and dtype (no broadcast). The conv moves to the add's place in the order, so r (e.g. a
    downsample computed after the main path) exists when it runs; its inputs came earlier still."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    metas = dict(zip(g.inputs, g.input_meta, strict=True)) | {n.name: n.meta for n in g.nodes}
    moved: dict[str, Node] = {}  # add name -> the conv that takes its place
    for add in g.nodes:
        if add.op != "add.Tensor" or add.kwargs.get("alpha", 1) != 1 or len(add.args) != 2:
            continue
        for main, other in (add.args, add.args[::-1]):
            conv = producers.get(main.name) if isinstance(main, Ref) else None
            if conv is None or not _residual_fits(g, conv, other, add, metas) or not _single_use(g, users, conv) \
                    or not takes_residual(conv):
                continue
            conv.residual, conv.act = other, add.act
            conv.notes += ["residual add fused", *add.notes]
            g.replace_uses(add.name, Ref(conv.name))
            moved[add.name] = conv
            break
    placed = {c.name for c in moved.values()}
    g.nodes = [moved.get(n.name, n) for n in g.nodes if n.name not in placed]


def fuse_depthwise_pointwise(g: Graph, wanted) -> None:
    """depthwise conv d -> 1x1 conv c  ==>  c reading d's input and computing d in its kernel (c.depthwise = d),
    where d has no residual, c alone reads d's result, and `wanted(d, c)` (the device and the kernels agree)."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    fused = set()
    for conv in g.nodes:
        src = conv.args[0] if conv.op == "convolution" and conv.depthwise is None else None
        dw = producers.get(src.name) if isinstance(src, Ref) else None
        if dw is None or dw.op != "convolution" or dw.residual is not None or dw.depthwise is not None \
                or not _single_use(g, users, dw) or not wanted(dw, conv):
            continue
        conv.depthwise = dw
        conv.args = (dw.args[0], *conv.args[1:])
        conv.notes.append("depthwise conv before it fused")
        fused.add(dw.name)
    g.nodes = [n for n in g.nodes if n.name not in fused]


def _residual_fits(g: Graph, conv: Node, other, add: Node, metas: dict) -> bool:
    if conv.op != "convolution" or conv.act is not None or conv.residual is not None:
        return False
    if not isinstance(other, Ref) or other.name == conv.name or other.name in g.constants:
        return False
    shapes = [m for m in (conv.meta, metas.get(other.name), add.meta) if isinstance(m, torch.Tensor)]
    return len(shapes) == 3 and len({(tuple(m.shape), m.dtype) for m in shapes}) == 1


def activation_of(node: Node):
    """The Epilogue an activation node applies, None if it is not one."""
    op = node.op
    if op in ACTIVATION_OPS:
        return table_activation(node)
    if op in ("clamp_min", "clamp_max") and isinstance(node.arg(1, op[-3:]), (int, float)):
        bound = float(node.arg(1, op[-3:]))
        return Epilogue("clamp", bound, float("inf")) if op == "clamp_min" else Epilogue("clamp", -float("inf"), bound)
    if op == "hardtanh":
        lo, hi = float(node.arg(1, "min_val", -1.0)), float(node.arg(2, "max_val", 1.0))
        return Epilogue("relu6") if (lo, hi) == (0.0, 6.0) else Epilogue("clamp", lo, hi)
    if op == "clamp":
        lo, hi = node.arg(1, "min"), node.arg(2, "max")
        if all(v is None or isinstance(v, (int, float)) for v in (lo, hi)) and (lo, hi) != (None, None):
            return Epilogue("clamp", -float("inf") if lo is None else float(lo),
                            float("inf") if hi is None else float(hi))
    return None


# activation op -> (kind in the epilogue's table, its parameters from the node); scalars only
ACTIVATION_OPS = {
    **{op: (op, lambda n: ()) for op in ("relu", "relu6", "hardswish", "silu", "sigmoid", "hardsigmoid", "tanh",
                                         "mish")},
    "leaky_relu": ("leaky_relu", lambda n: (n.arg(1, "negative_slope", 0.01),)),
    "elu": ("elu", lambda n: (n.arg(1, "alpha", 1.0), n.arg(2, "scale", 1.0), n.arg(3, "input_scale", 1.0))),
    "celu": ("elu", lambda n: _celu(n.arg(1, "alpha", 1.0))),
    "selu": ("elu", lambda n: SELU),
    "softplus": ("softplus", lambda n: (n.arg(1, "beta", 1.0), n.arg(2, "threshold", 20.0))),
    "log_sigmoid": ("logsigmoid", lambda n: ()),
    "gelu": ("gelu", lambda n: ()),
}


def _celu(alpha):
    return (alpha, 1.0, 1.0 / alpha) if isinstance(alpha, (int, float)) and alpha != 0 else (alpha,)


def table_activation(node: Node) -> Epilogue | None:
    """The Epilogue of an op in ACTIVATION_OPS, None when a parameter is not a plain number."""
    kind, params = ACTIVATION_OPS[node.op]
    if node.op == "gelu":
        approximate = node.arg(1, "approximate", "none")
        if approximate not in ("none", "tanh"):
            return None
        kind = "gelu_tanh" if approximate == "tanh" else "gelu"
    values = params(node)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    try:
        return Epilogue.parse((kind, *values))
    except ValueError:
        return None


def _fusable(g: Graph, src: Node, act) -> bool:
    if src.op not in FUSE_INTO:
        return False
    if src.op in ("convolution", "linear"):
        return is_const(g, src.args[1:3])  # weights must be known to prepack (and to absorb hardsigmoid)
    return True


def _absorb_hardsigmoid(g: Graph, src: Node) -> None:
    """hardsigmoid(z) = clamp(z/6 + 1/2, 0, 1): scale the weights and bias, then clamp."""
    dtype = g.constants[src.args[1].name].dtype
    w = g.constants[src.args[1].name].double()
    b = _const_or_none(g, src.args[2])
    c_out = w.shape[0] if src.op == "linear" or not src.args[6] else w.shape[1] * src.args[8]
    b = torch.zeros(c_out, dtype=torch.float64) if b is None else b.double()
    set_weights(g, src, (w / 6).to(dtype), (b / 6 + 0.5).to(dtype))


def set_weights(g: Graph, node: Node, weight, bias) -> None:
    """`node` (a conv or linear) reading new constants `weight` and `bias` (folds of scales into it)."""
    g.constants[f"{node.name}_weight"] = weight
    g.constants[f"{node.name}_bias"] = bias
    args = list(node.args) + [None] * (3 - len(node.args))
    args[1], args[2] = Ref(f"{node.name}_weight"), Ref(f"{node.name}_bias")
    node.args = tuple(args)


def _const_or_none(g: Graph, arg):
    return None if arg is None else g.constants[arg.name]


def _single_use(g: Graph, users, node: Node) -> bool:
    return len(users.get(node.name, [])) == 1 and node.name not in g.output_names()


def drop_dead(g: Graph) -> None:
    """Remove calls whose results nothing uses (asserts included), back to front."""
    live = g.output_names()
    kept = []
    for node in reversed(g.nodes):
        mutates = isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
        if node.name in live or mutates:
            kept.append(node)
            live.update(r.name for r in node.refs())
    g.nodes = kept[::-1]
    g.constants = {k: v for k, v in g.constants.items() if k in live}

"""Chains ending in a sum or a mean, as one row kernel: the sum of a product (split attention's paths weighted
by their softmax, then summed: timm's ResNeSt and selective-kernel blocks), with that softmax taken in too where
it runs along the summed dim, and the sum or mean of a sum or mean (ResNeSt's sum over its paths, then the mean
over H and W)."""

from __future__ import annotations

import math

import torch

from convroute.frontend.graph import PLAIN_RESHAPES, Graph, Node, Ref, read_once, through, value_meta
from convroute.frontend.lower import Context, GpuOp, Unsupported, _buffers, _operands, _reduced_dims, out_meta
from convroute.kernels.reduce import Reduce, WeightedSum, broadcast_strides, dense_strides, row_problem

SUMS = {"sum.dim_IntList": 1.0, "sum": 1.0, "mean.dim": None, "mean": None}  # None: divide by the count


def weighted_sum(a, b, dims, scale: float, shape, softmax=None):
    """torch's form of a fused chain (for CPU steps and shapes): scale * the sum over `dims` of a (times b when b
    is not None, broadcasting), as `shape`. `softmax` (dim, b's shape): b holds logits, and the product takes
    their softmax along dim, reshaped to b's shape."""
    if softmax is not None:
        b = torch.softmax(b, softmax[0]).reshape(softmax[1])
    return ((a if b is None else a * b).sum(dim=list(dims)) * scale).reshape(shape)


def fuse_reductions(g: Graph) -> None:
    """sum / mean over dims of (a * b)  ==>  one weighted_sum node; sum / mean of a sum / mean (or of such a
    node)  ==>  one weighted_sum over both reductions' dims. Only where every value inside the chain is read
    once, nothing in it casts or carries a fused activation, and the row kernel takes the merged shape."""
    producers = {n.name: n for n in g.nodes}
    once = read_once(g)
    # node name -> (a, b, shape of a * b, dims, scale, where each dim of the node's result sits in that shape,
    # softmax: None or (dim, b's shape) as weighted_sum takes it)
    forms: dict[str, tuple] = {}
    fused: dict[str, Node] = {}
    gone: set[str] = set()
    for node in g.nodes:
        own = _reduction(node, producers, g)
        if own is None:
            continue
        x, shape, dims, scale = own
        keepdim = node.meta.ndim == len(shape)
        forms[node.name] = (x, None, shape, dims, scale, _result_dims(list(range(len(shape))), dims, keepdim), None)
        inner = producers.get(x.name)
        if not once(inner):
            continue
        notes, taken_too = [f"{inner.op} {inner.name} fused in"], []
        if inner.name in forms:
            a, b, inner_shape, inner_dims, inner_scale, inner_result, softmax = forms[inner.name]
            if softmax is not None:
                continue  # the softmax runs along the one dim its sum reduces
            form = (a, b, inner_shape, sorted(set(inner_dims) | {inner_result[d] for d in dims}),
                    inner_scale * scale, _result_dims(inner_result, dims, keepdim), None)
        elif _plain_product(inner, shape):
            form = (inner.args[0], inner.args[1], shape, dims, scale, forms[node.name][5], None)
            taken = _softmax_weights(form, producers, once, g)
            if taken is not None:
                form, taken_too = taken
                notes.append(f"softmax {taken_too[-1]} fused in")
        else:
            continue
        if _row_problem(form, node.meta.dtype, producers, g) is not None:
            continue
        forms[node.name] = form
        a, b, _, form_dims, form_scale, _, softmax = form
        fused[node.name] = Node(node.name, weighted_sum, (a, b, tuple(form_dims), form_scale,
                                                          tuple(node.meta.shape), softmax),
                                module=node.module, meta=node.meta,
                                notes=[*fused.pop(inner.name, inner).notes, *notes])
        gone.update([inner.name, *taken_too])
    g.nodes = [fused.get(n.name, n) for n in g.nodes if n.name not in gone]


def _result_dims(source: list[int], dims, keepdim: bool) -> list[int]:
    """Where each dim of a reduction's result sits in the chain's shape: `source` says it for the reduction's input,
    and the reduced `dims` stay (as size 1) only with keepdim."""
    return list(source) if keepdim else [s for i, s in enumerate(source) if i not in dims]


def _reduction(node: Node, producers: dict, g: Graph):
    """(x, x's shape, dims, scale) for a sum or mean node without a cast, an activation or a residual; else None."""
    if node.op not in SUMS or node.act is not None or node.residual is not None or node.kwargs.get("dtype") \
            or not isinstance(node.args[0], Ref) or not isinstance(node.meta, torch.Tensor):
        return None
    x = node.args[0]
    meta = value_meta(g, x.name, producers)
    if not isinstance(meta, torch.Tensor) or meta.dtype != node.meta.dtype or not meta.is_floating_point():
        return None
    shape = tuple(meta.shape)
    dims = _reduced_dims(node, len(shape))
    count = math.prod(shape[d] for d in dims)
    if count == 0:
        return None
    return x, shape, dims, SUMS[node.op] or 1.0 / count


def _softmax_weights(form, producers: dict, once, g: Graph) -> tuple | None:
    """(the form with b's logits and softmax set, the names of the softmax node and the reshapes after it) when
    one operand of a one-dim product form is softmax(logits) seen through reshapes, each read once, and the
    softmax's rows are the sum's rows: b's dim that the sum reduces has the softmax dim's size and, b being a
    reshape of the dense softmax result, its stride."""
    a, b, shape, dims = form[:4]
    if len(dims) != 1:
        return None
    for x, w in ((a, b), (b, a)):
        passed: list[str] = []
        source = through(w, PLAIN_RESHAPES, producers, once, passed)
        if not once(source) or source.op not in ("softmax.int", "_softmax") or source.act is not None \
                or source.residual is not None or source.kwargs.get("dtype") is not None \
                or not isinstance(source.args[0], Ref):
            continue
        logits, weights = value_meta(g, source.args[0].name, producers), value_meta(g, w.name, producers)
        if not isinstance(logits, torch.Tensor) or logits.dtype != source.meta.dtype:
            continue  # half_to_float
        dim = int(source.args[1]) % logits.ndim
        k = dims[0] - (len(shape) - weights.ndim)
        if k < 0 or weights.shape[k] != logits.shape[dim] or weights.shape[k] != shape[dims[0]] \
                or dense_strides(weights.shape)[k] != dense_strides(logits.shape)[dim]:
            continue
        return (x, source.args[0], *form[2:6], (dim, tuple(weights.shape))), [*passed, source.name]
    return None


def _plain_product(node: Node, shape) -> bool:
    return node.op == "mul.Tensor" and node.act is None and node.residual is None and len(node.args) == 2 \
        and all(isinstance(a, Ref) for a in node.args) and tuple(node.meta.shape) == shape


def _row_problem(form, dtype, producers: dict, g: Graph) -> str | None:
    """Why the row kernel cannot take the chain `form` (of a result of `dtype`), or None."""
    a, b, shape, dims, softmax = *form[:4], form[6]
    strides = []
    for operand in (a, b) if b is not None else (a,):
        meta = value_meta(g, operand.name, producers)
        if not isinstance(meta, torch.Tensor) or meta.dtype != dtype:
            return f"{operand.name} is not a {dtype} tensor"
        meta_shape = softmax[1] if softmax is not None and operand is b else meta.shape
        strides.append(broadcast_strides(meta_shape, shape) if b is not None else dense_strides(shape))
    return row_problem(shape, dims, strides)


def lower_weighted_sum(ctx: Context, node: Node) -> GpuOp:
    a, b, dims, scale, _, softmax = node.args
    out_meta(node)
    operands, inputs, shapes = _operands(ctx, (a,) if b is None else (a, b))
    if softmax is not None:
        shapes[1] = softmax[1]  # the logits, read as the reshape of their softmax that b was
    shape = torch.broadcast_shapes(*shapes)
    try:
        if b is None:
            kernel = Reduce(ctx.gpu, "sum", shape, dims, ctx.precision, scale)
        else:
            kernel = WeightedSum(ctx.gpu, shapes[0], shapes[1], shape, dims, ctx.precision, scale,
                                 softmax_b=softmax is not None)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    work = math.prod(shape) * len(shapes)
    return GpuOp(node, inputs, lambda ins, y: kernel.bind(*_buffers(operands, ins), y), work)

"""A channel concat read only through reshapes and one permute (ShuffleNet's channel shuffle: cat -> view ->
transpose -> view) runs as one dispatch that reads the concat's inputs where the permute's copy would read the
concat (kernels.concat.ConcatView): the concat's copies go (a graph pass build_plan runs)."""

from __future__ import annotations

import torch

from convroute.frontend.graph import PLAIN_RESHAPES, Graph, Node, Ref, read_once, through
from convroute.frontend.lower import Context, GpuOp, Unsupported, out_meta
from convroute.kernels.concat import MAX_VIEW_INPUTS, ConcatView

PERMUTES = ("transpose.int", "permute")


def concat_view(xs, dim: int, shape, dims):
    """torch's form: the concat of xs along dim, reshaped to `shape` and permuted by `dims`."""
    return torch.cat(xs, dim).reshape(shape).permute(dims)


def fuse_concat_views(g: Graph) -> int:
    """cat(xs) -> reshapes -> transpose / permute  ==>  one concat_view node in the permute's place, where the
    concat and each reshape are read once and none is a model output; returns how many."""
    producers = {n.name: n for n in g.nodes}
    once = read_once(g)
    fused: dict[str, Node] = {}
    gone: set[str] = set()
    for node in g.nodes:
        if node.op not in PERMUTES or not isinstance(node.args[0], Ref) or not isinstance(node.meta, torch.Tensor):
            continue
        passed: list[str] = []
        source = through(node.args[0], PLAIN_RESHAPES, producers, once, passed)
        xs = source.args[0] if once(source) and source.op == "cat" else None
        if not passed or xs is None or not 1 <= len(xs) <= MAX_VIEW_INPUTS \
                or not all(isinstance(x, Ref) and x.name not in g.constants for x in xs) \
                or not isinstance(producers[passed[0]].meta, torch.Tensor):
            continue
        shape = list(producers[passed[0]].meta.shape)
        rank = len(shape)
        if node.op == "permute":
            dims = [d % rank for d in node.args[1]]
        else:
            dims = list(range(rank))
            a, b = node.args[1] % rank, node.args[2] % rank
            dims[a], dims[b] = dims[b], dims[a]
        args = (list(xs), source.arg(1, "dim", 0), shape, dims)
        fused[node.name] = Node(node.name, concat_view, args, module=node.module, meta=node.meta,
                                notes=[f"the concat {source.module or source.name} read in place by this "
                                       f"{node.op} (one dispatch, no concat copies)"])
        gone |= {source.name, *passed}
    g.nodes = [fused.get(n.name, n) for n in g.nodes if n.name not in gone]
    return len(fused)


def lower_concat_view(ctx: Context, node: Node) -> GpuOp:
    xs, dim, shape, dims = node.args
    metas = [ctx.tensor(x) for x in xs]
    out = out_meta(node)
    dense = torch.empty(shape, device="meta").permute(dims)
    try:
        kernel = ConcatView(ctx.gpu, [tuple(m.shape) for m in metas], dim, tuple(out.shape), dense.stride(),
                            ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name for x in xs], lambda ins, y: kernel.bind(ins, y), out.numel())

"""Graph passes that take dispatches away at planning time (build_plan runs them before the residual and
depthwise fusions): a layer scale folded into the conv before it, a batch norm after a channel concat of convs
folded into those convs, and squeeze-excitation and ECA blocks in two dispatches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convroute.frontend.export import is_const, set_weights
from convroute.frontend.graph import Graph, Node, Ref, batch_norm_eval, read_once, through, value_meta
from convroute.frontend.lower import Context, GpuOp, out_meta
from convroute.kernels.common import Epilogue
from convroute.kernels.squeeze_excite import EfficientChannelAttention, make_squeeze_excite

SE_ACTS = {"none": lambda v: v, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu,
           "sigmoid": torch.sigmoid}  # the Epilogue kinds squeeze_excite's torch form knows, with "clamp"


def fold_batch_norm_through_concat(g: Graph) -> None:
    """cat([conv_1, ..., conv_k], dim=1) -> eval batch norm [-> its fused activation]  ==>  each conv scaled and
    shifted by its channels' slice of the batch norm and taking the activation; the batch norm goes (MixNet's
    mixed convs). Only where every concat input is a conv that the concat alone reads, with constant weights,
    no activation or residual of its own, and not transposed."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    outputs = g.output_names()
    drop = set()
    for bn in g.nodes:
        cat = producers.get(bn.args[0].name) if bn.target is batch_norm_eval and isinstance(bn.args[0], Ref) \
            else None
        if cat is None or cat.op != "cat" or len(users.get(cat.name, [])) != 1 or cat.name in outputs \
                or not isinstance(cat.meta, torch.Tensor) or cat.meta.ndim != 4 \
                or cat.arg(1, "dim", 0) % 4 != 1 or not is_const(g, bn.args[1:5]):
            continue
        convs = [producers.get(t.name) if isinstance(t, Ref) else None for t in cat.args[0]]
        if not all(plain_conv(g, c, users, outputs) for c in convs) or len({c.name for c in convs}) != len(convs):
            continue
        scale, shift = batch_norm_affine(g, bn)
        start = 0
        for conv in convs:
            width = conv.meta.shape[1]
            _scale_conv(g, conv, scale[start:start + width], shift[start:start + width])
            conv.act = bn.act
            conv.notes.append(f"batch norm {bn.module or bn.name} after the concat folded")
            start += width
        cat.meta = bn.meta
        g.replace_uses(bn.name, Ref(cat.name))
        users[cat.name] = users.pop(bn.name, [])  # a second batch norm reading the first may fold only if alone
        drop.add(bn.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


def fold_layer_scales(g: Graph) -> None:
    """conv -> mul by a constant with one value per output channel (or one number), or div by one  ==>  the conv
    with its weights and bias scaled (ConvNeXt's layer scale), so that the residual add after it can go into the
    conv's store. Only for a conv plain_conv allows; the mul's own fused activation moves to the conv."""
    producers = {n.name: n for n in g.nodes}
    users = g.users()
    outputs = g.output_names()
    drop = set()
    for node in g.nodes:
        if node.op not in ("mul.Tensor", "div.Tensor") or node.residual is not None or len(node.args) != 2:
            continue
        found = _scaled(g, node, producers)
        conv = producers.get(found[0].name) if found is not None else None
        if not plain_conv(g, conv, users, outputs):
            continue
        scale = found[1]
        _scale_conv(g, conv, scale, torch.zeros_like(scale))
        conv.act = node.act
        conv.notes.append(f"layer scale {node.module or node.name} folded")
        g.replace_uses(node.name, Ref(conv.name))
        users[conv.name] = users.pop(node.name, [])
        drop.add(node.name)
    g.nodes = [n for n in g.nodes if n.name not in drop]


def fold_affine_pairs(g: Graph) -> int:
    """x * s + t (or x / s, and - t) with s and t numbers or constants of one value per channel, x 4-D  ==>  one
    eval batch norm of x with weight s and bias t (mean 0, variance 1, eps 0): one dispatch instead of two
    (HGNetV2's learnable affine blocks after every activation). The mul is read by the add alone; the add's
    fused activation moves to the norm. Returns how many pairs went."""
    producers = {n.name: n for n in g.nodes}
    once = read_once(g)
    drop = set()
    for add in g.nodes:
        if add.op not in ("add.Tensor", "sub.Tensor") or add.residual is not None or len(add.args) != 2 \
                or add.kwargs.get("alpha", 1) != 1:
            continue
        for mul_arg, shift_arg in ((0, 1), (1, 0)) if add.op == "add.Tensor" else ((0, 1),):
            mul = producers.get(add.args[mul_arg].name) if isinstance(add.args[mul_arg], Ref) else None
            if not once(mul) or mul.op not in ("mul.Tensor", "div.Tensor") or mul.act is not None \
                    or mul.residual is not None or len(mul.args) != 2 or not _same_meta(mul.meta, add.meta) \
                    or add.meta.ndim != 4:
                continue
            shift = _per_channel(g, add.args[shift_arg], add.meta)
            found = _scaled(g, mul, producers)
            if shift is None or found is None:
                continue
            x, scale = found
            name = f"{add.name}_affine"
            dtype = add.meta.dtype
            for part, value in (("weight", scale), ("bias", -shift if add.op == "sub.Tensor" else shift),
                                ("mean", torch.zeros_like(scale)), ("var", torch.ones_like(scale))):
                g.constants[f"{name}_{part}"] = value.to(dtype)
            add.target = batch_norm_eval
            add.args = (x, *(Ref(f"{name}_{part}") for part in ("weight", "bias", "mean", "var")), 0.0, 0.0)
            add.kwargs = {}
            add.notes.append(f"{mul.op} {mul.module or mul.name} and {add.op} as one affine (batch norm)")
            drop.add(mul.name)
            break
    g.nodes = [n for n in g.nodes if n.name not in drop]
    return len(drop)


def _scaled(g: Graph, mul: Node, producers: dict):
    """(x, its per-channel scale) of `mul` (x * s, s * x or x / s with s per channel and x of the result's shape),
    else None."""
    for x_arg, s_arg in ((0, 1), (1, 0)) if mul.op == "mul.Tensor" else ((0, 1),):
        x = mul.args[x_arg]
        x_meta = value_meta(g, x.name, producers) if isinstance(x, Ref) and x.name not in g.constants else None
        scale = _per_channel(g, mul.args[s_arg], mul.meta) if _same_meta(x_meta, mul.meta) else None
        if scale is None:
            continue
        if mul.op == "div.Tensor":
            if bool((scale == 0).any()):  # x / 0 stays torch's
                return None
            scale = 1.0 / scale
        return x, scale
    return None


def _same_meta(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype


def _per_channel(g: Graph, value, meta: torch.Tensor):
    """`value` (a number, or a constant broadcasting along the channels of `meta` [N, C, ...] only) as C float64
    values, else None."""
    channels = meta.shape[1] if meta.ndim >= 2 else 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((channels,), float(value), dtype=torch.float64)
    if not isinstance(value, Ref) or value.name not in g.constants:
        return None
    t = g.constants[value.name]
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim > meta.ndim:
        return None
    shape = (1,) * (meta.ndim - t.ndim) + tuple(t.shape)
    if any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return t.double().reshape(-1).expand(channels).clone()


def plain_conv(g: Graph, conv: Node | None, users: dict, outputs: set) -> bool:
    """A conv that a pass may rewrite freely: not transposed, constant weights, no activation, residual or fused
    depthwise of its own, one reader and no model output."""
    return conv is not None and conv.op == "convolution" and conv.act is None and conv.residual is None \
        and conv.depthwise is None and not conv.args[6] and is_const(g, conv.args[1:3]) \
        and len(users.get(conv.name, [])) == 1 and conv.name not in outputs


def batch_norm_affine(g: Graph, bn: Node):
    """The batch norm as y = x * scale + shift per channel, in float64."""
    _x, weight, bias, mean, var, _momentum, eps = bn.args
    scale = 1.0 / torch.sqrt(g.constants[var.name].double() + eps)
    if weight is not None:
        scale = scale * g.constants[weight.name].double()
    shift = -g.constants[mean.name].double() * scale
    if bias is not None:
        shift = shift + g.constants[bias.name].double()
    return scale, shift


def _scale_conv(g: Graph, conv: Node, scale, shift) -> None:
    w = g.constants[conv.args[1].name]
    b = conv.arg(2, "bias")
    bias = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else g.constants[b.name].double()
    set_weights(g, conv, (w.double() * scale.reshape(-1, *(1,) * (w.ndim - 1))).to(w.dtype),
                (bias * scale + shift).to(w.dtype))


def squeeze_excite(x, pooled, w1, b1, w2, b2, act1: Epilogue, act2: Epilogue, act: Epilogue):
    """torch's form of a fused squeeze-excitation block (for CPU steps and shapes): act(x * gate) with
    gate = act2(conv2(act1(conv1(pooled)))), both convs 1x1."""
    gate = _apply(act2, F.conv2d(_apply(act1, F.conv2d(pooled, w1, b1)), w2, b2))
    return _apply(act, x * gate)


def _apply(act: Epilogue, v):
    if act.kind == "clamp":
        return v.clamp(act.lo, act.hi)
    return SE_ACTS[act.kind](v)


def fuse_squeeze_excite(g: Graph) -> None:
    """mean over H, W (or adaptive_avg_pool2d to 1x1) p of x -> 1x1 conv (+ act1) -> 1x1 conv (+ act2) -> x * gate
    ==>  the pool, then one squeeze_excite node in the mul's place. Only where the pool, the convs and the gate
    are read once each (x may have other readers), the convs are plain 1x1 convs with constant weights and every
    activation is one squeeze_excite knows."""
    producers = {n.name: n for n in g.nodes}
    once = read_once(g)
    fused: dict[str, Node] = {}
    gone: set[str] = set()
    for mul in g.nodes:
        if mul.op != "mul.Tensor" or len(mul.args) != 2 or not all(isinstance(a, Ref) for a in mul.args) \
                or not _known(mul.act):
            continue
        for x, gate in (mul.args, mul.args[::-1]):
            chain = _se_chain(g, producers, once, x, gate)
            if chain is None or not isinstance(mul.meta, torch.Tensor) or mul.meta.shape != g_meta(g, x, producers):
                continue
            pool, conv1, conv2 = chain
            args = (x, Ref(pool.name), conv1.args[1], conv1.args[2], conv2.args[1], conv2.args[2],
                    conv1.act or Epilogue(), conv2.act or Epilogue(), mul.act or Epilogue())
            fused[mul.name] = Node(mul.name, squeeze_excite, args, module=mul.module, meta=mul.meta,
                                   notes=[f"squeeze-excitation ({conv1.module or conv1.name}, "
                                          f"{conv2.module or conv2.name}, the gate) in one dispatch after the pool"])
            gone |= {conv1.name, conv2.name}
            break
    g.nodes = [fused.get(n.name, n) for n in g.nodes if n.name not in gone]


def g_meta(g: Graph, ref: Ref, producers: dict):
    node = producers.get(ref.name)
    if node is not None:
        return node.meta.shape if isinstance(node.meta, torch.Tensor) else None
    if ref.name in g.inputs:
        return g.input_meta[g.inputs.index(ref.name)].shape
    return None


def _known(act) -> bool:
    return act is None or (isinstance(act, Epilogue) and (act.kind in SE_ACTS or act.kind == "clamp"))


def _se_chain(g: Graph, producers: dict, once, x: Ref, gate: Ref):
    """(pool, conv1, conv2) when `gate` is conv2(conv1(pool(x))) as fuse_squeeze_excite needs, else None."""
    conv2 = producers.get(gate.name)
    conv1 = producers.get(conv2.args[0].name) if once(conv2) and conv2.op == "convolution" else None
    pool = producers.get(conv1.args[0].name) if once(conv1) and conv1.op == "convolution" else None
    if not once(pool) or x.name in g.constants or pool.args[0] != x or not _global_mean(pool):
        return None
    for conv in (conv1, conv2):
        if conv.residual is not None or conv.depthwise is not None or conv.args[6] or conv.args[8] != 1 \
                or not is_const(g, conv.args[1:3]) or not _known(conv.act) \
                or tuple(g.constants[conv.args[1].name].shape[2:]) != (1, 1) or any(p != 0 for p in conv.args[4]) \
                or any(s != 1 for s in conv.args[3]):
            return None
    return pool, conv1, conv2


def _global_mean(pool: Node, keepdim: bool = True) -> bool:
    """A mean over H and W of a 4-D value (keeping them as 1x1, or, unless `keepdim`, dropping them too)."""
    meta = pool.meta
    if not isinstance(meta, torch.Tensor) or meta.ndim not in (2, 4) or (meta.ndim == 2 and keepdim) \
            or tuple(meta.shape[2:]) not in ((1, 1), ()):
        return False
    if pool.op == "mean.dim":
        return {d % 4 for d in pool.args[1]} == {2, 3} and pool.arg(2, "keepdim", False) == (meta.ndim == 4) \
            and pool.kwargs.get("dtype") is None
    return pool.op in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d") and meta.ndim == 4


def lower_squeeze_excite(ctx: Context, node: Node) -> GpuOp:
    x, pooled, w1, b1, w2, b2, act1, act2, act = node.args
    meta, out = ctx.tensor(x), out_meta(node)
    weight1, weight2 = ctx.const(w1, "weight").numpy(), ctx.const(w2, "weight").numpy()
    bias1, bias2 = ctx.const(b1, "bias"), ctx.const(b2, "bias")
    kernel = make_squeeze_excite(ctx.gpu, tuple(meta.shape), weight1, None if bias1 is None else bias1.numpy(), act1,
                           weight2, None if bias2 is None else bias2.numpy(), act2, act, ctx.precision)
    flops = 2 * meta.shape[0] * weight1.size * 2 + out.numel()
    return GpuOp(node, [x.name, pooled.name], lambda ins, y: kernel.bind(ins[0], ins[1], y), flops)


RESHAPES = ("view", "reshape", "_unsafe_view", "unsqueeze", "squeeze.dim", "expand")


def channel_attention(x, pooled, taps, bias, padding: int, dilation: int, act2: Epilogue, act: Epilogue):
    """torch's form of a fused ECA block: act(x * act2(conv1d over the channels of pooled))."""
    n, c = x.shape[:2]
    gate = F.conv1d(pooled.reshape(n, 1, c), taps, bias, padding=padding, dilation=dilation)
    return _apply(act, x * _apply(act2, gate).reshape(n, c, 1, 1))


def fuse_channel_attention(g: Graph) -> None:
    """mean over H, W p of x -> reshape to [N, 1, C] -> conv1d (one in, one out channel, + act2) -> reshape /
    expand to x's shape -> x * gate  ==>  the pool, then one channel_attention node in the mul's place (timm's
    EcaModule). Every value between the pool and the mul must be read once; x may have other readers."""
    producers = {n.name: n for n in g.nodes}
    once = read_once(g)
    fused: dict[str, Node] = {}
    gone: set[str] = set()
    for mul in g.nodes:
        if mul.op != "mul.Tensor" or len(mul.args) != 2 or not all(isinstance(a, Ref) for a in mul.args) \
                or not _known(mul.act) or not isinstance(mul.meta, torch.Tensor) or mul.meta.ndim != 4:
            continue
        for x, gate in (mul.args, mul.args[::-1]):
            passed: list[str] = []
            conv = through(gate, RESHAPES, producers, once, passed)
            if not once(conv) or conv.op != "convolution" or not _eca_conv(g, conv, mul.meta.shape):
                continue
            pool = through(conv.args[0], RESHAPES, producers, once, passed)
            if not once(pool) or pool.args[0] != x or not _global_mean(pool, keepdim=False) \
                    or g_meta(g, x, producers) != mul.meta.shape:
                continue
            args = (x, Ref(pool.name), conv.args[1], conv.args[2], conv.args[4][0], conv.args[5][0],
                    conv.act or Epilogue(), mul.act or Epilogue())
            fused[mul.name] = Node(mul.name, channel_attention, args, module=mul.module, meta=mul.meta,
                                   notes=[f"channel attention ({conv.module or conv.name}, the gate) in one "
                                          f"dispatch after the pool"])
            gone |= {conv.name, *passed}
            break
    g.nodes = [fused.get(n.name, n) for n in g.nodes if n.name not in gone]


def _eca_conv(g: Graph, conv: Node, shape) -> bool:
    """A conv1d over a [N, 1, C] value with one in and one out channel, keeping the C positions."""
    if conv.residual is not None or conv.args[6] or conv.args[8] != 1 or not is_const(g, conv.args[1:3]) \
            or not _known(conv.act) or list(conv.args[3]) != [1]:
        return False
    weight = g.constants[conv.args[1].name]
    meta = conv.meta
    return weight.ndim == 3 and tuple(weight.shape[:2]) == (1, 1) and isinstance(meta, torch.Tensor) \
        and tuple(meta.shape) == (shape[0], 1, shape[1])


def lower_channel_attention(ctx: Context, node: Node) -> GpuOp:
    x, pooled, taps, bias, padding, dilation, act2, act = node.args
    meta, out = ctx.tensor(x), out_meta(node)
    w, b = ctx.const(taps, "weight"), ctx.const(bias, "bias")
    kernel = EfficientChannelAttention(ctx.gpu, tuple(meta.shape), w.numpy(), 0.0 if b is None else float(b[0]),
                                       padding, dilation, act2, act, ctx.precision)
    flops = 2 * meta.shape[0] * meta.shape[1] * w.numel() + out.numel()
    return GpuOp(node, [x.name, pooled.name], lambda ins, y: kernel.bind(ins[0], ins[1], y), flops)

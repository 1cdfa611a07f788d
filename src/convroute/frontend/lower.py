"""Lowering: which graph nodes run on the GPU and with which kernel.

`LOWERINGS[op name](ctx, node) -> GpuOp` prepares one node for the GPU (weights prepacked, pipelines
compiled) or raises `Unsupported(reason)`, in which case the node runs on the CPU through torch.
View-like nodes whose result stays dense (reshapes, `ALIASES`, and any view that keeps the element
order) need no kernel: their result shares the input's buffer. Other views (permute, slice, select,
expand, ...) and constant pads are one strided copy (kernels/layout.py). Every kernel is built
for the program's storage precision (`Context.precision`: float32, or float16 with f32 arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from convroute.device.gpu import Gpu
from convroute.device.profile import DeviceProfile
from convroute.frontend.export import ACTIVATION_OPS, activation_of
from convroute.frontend.graph import Node, Ref, iter_refs, map_refs
from convroute.kernels import ALGORITHMS
from convroute.kernels.bmm import BatchedMatmul
from convroute.kernels.common import FP32, Epilogue, Precision
from convroute.kernels.concat import Concat
from convroute.kernels.depthwise_pointwise import NAME as DEPTHWISE_POINTWISE
from convroute.kernels.depthwise_pointwise import DepthwisePointwise, unfusable
from convroute.kernels.elementwise import (
    BINARY_EXPR,
    COMPARE_EXPR,
    UNARY_EXPR,
    Binary,
    ChannelAffine,
    Elementwise,
    Unary,
)
from convroute.kernels.gather import Gather, ScatterAdd
from convroute.kernels.layout import StridedCopy
from convroute.kernels.linear import GemmLinear, Gemv, Linear, RegisterLinear, TexLinear
from convroute.kernels.norm import GroupNorm, LayerNorm
from convroute.kernels.pool import Pool2d
from convroute.kernels.reduce import Reduce, Softmax, Variance
from convroute.kernels.resize import Upsample2d
from convroute.params import ConvParams, make_params
from convroute.router import Decision, route_params
from convroute.router.exclusions import avoid_blocked, blocked_algorithms

GPU_DTYPES = (torch.float32, torch.float16)  # tensors that live on the GPU (stored in the program's precision)
ALIASES = ("view", "reshape", "_unsafe_view", "flatten.using_ints", "squeeze", "squeeze.dim", "squeeze.dims",
           "unsqueeze", "_to_copy")


class Unsupported(Exception):
    """This node cannot run on the GPU; the message says why (it runs on the CPU instead)."""


@dataclass
class GpuOp:
    """A node prepared for the GPU. `bind(input buffers, output buffer)` records its dispatches."""

    node: Node
    inputs: list[str]
    bind: Callable
    flops: int
    params: ConvParams | None = None
    decision: Decision | None = None
    inner: ConvParams | None = None  # the depthwise conv a depthwise+pointwise op computes first
    float32_input: str | None = None  # its first input, bound as that input's float32 upload (plan.input_staging)


@dataclass
class Context:
    gpu: Gpu
    profile: DeviceProfile
    policy: str | None
    constants: dict
    metas: dict  # value name -> meta tensor
    precision: Precision = FP32  # how GPU values are stored
    decisions: dict = field(default_factory=dict)  # conv node name -> its routing Decision (routed once)
    avoid: frozenset = frozenset()  # algorithms no conv is routed to (a browser export's `exclude`)
    float32_inputs: frozenset = frozenset()  # f16 programs' inputs uploaded as float32 (plan.input_staging)

    def is_dynamic(self, arg) -> bool:
        return isinstance(arg, Ref) and arg.name not in self.constants

    def const(self, arg, what: str):
        """A compile-time tensor argument (None stays None); Unsupported when it is computed at run time."""
        if arg is None:
            return None
        if self.is_dynamic(arg):
            raise Unsupported(f"its {what} is computed at run time")
        value = self.constants[arg.name] if isinstance(arg, Ref) else arg
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise Unsupported(f"its {what} is not a floating-point tensor")
        return value.detach().cpu().to(torch.float32)

    def tensor(self, arg, what: str = "input"):
        """Meta tensor of a dynamic float32 / float16 argument."""
        if not self.is_dynamic(arg):
            raise Unsupported(f"its {what} is not a run-time tensor")
        meta = self.metas.get(arg.name)
        if not isinstance(meta, torch.Tensor):
            raise Unsupported(f"its {what} is not a tensor")
        if meta.dtype not in GPU_DTYPES:
            raise Unsupported(f"its {what} has dtype {meta.dtype} (the GPU takes float32 and float16 tensors)")
        return meta


def out_meta(node: Node):
    if not isinstance(node.meta, torch.Tensor) or node.meta.dtype not in GPU_DTYPES:
        raise Unsupported("its result is not a float32 or float16 tensor")
    return node.meta


def conv_params(ctx: Context, node: Node) -> ConvParams:
    """The conv's parameters; for a 1x1 conv with a depthwise conv fused in, the 1x1's own (its input is the
    depthwise conv's result)."""
    x, w = node.conv_input(), node.args[1]
    stride, padding, dilation, transposed, output_padding, groups = node.args[3:9]
    xm = ctx.tensor(x)
    weight = ctx.const(w, "weight")
    if weight.ndim == 3 and xm.ndim == 3:
        return conv1d_params(xm, weight, stride, padding, dilation, transposed, output_padding, groups)
    if weight.ndim == 5 and xm.ndim == 5:
        return conv3d_params(xm, weight, stride, padding, dilation, transposed, groups)
    if weight.ndim != 4 or xm.ndim != 4:
        raise Unsupported(f"only 1-D and 2-D convolutions over NCL / NCHW inputs run on the GPU "
                          f"(input {tuple(xm.shape)})")
    return make_params(tuple(xm.shape), tuple(weight.shape), list(stride), list(padding), list(dilation), groups,
                       transposed=transposed, output_padding=list(output_padding))


def conv1d_params(xm, weight, stride, padding, dilation, transposed, output_padding, groups) -> ConvParams:
    """A conv1d over (N, C, L) as the 2-D conv over (N, C, 1, L) with a (.., .., 1, K) kernel: same memory,
    routed like any 2-D conv."""
    def row(values, h):
        return [h, int(list(values)[0])]
    return make_params((*xm.shape[:2], 1, xm.shape[2]), (*weight.shape[:2], 1, weight.shape[2]), row(stride, 1),
                       row(padding, 0), row(dilation, 1), groups, transposed=transposed,
                       output_padding=row(output_padding, 0))


def conv3d_params(xm, weight, stride, padding, dilation, transposed, groups) -> ConvParams:
    """A conv3d over (N, C, D, H, W) whose kernel is 1 along W (stride 1 there and along H, no padding along W;
    timm's LambdaNet: (r, r, 1)) is the 2-D conv over (N, C, D, H * W) with its taps along H * W dilated by W:
    input (h, w) sits at h * W + w, a tap j rows of H away at (h + j) * W + w, and padding H by p zeros is
    padding H * W by p * W (an index leaves [0, H * W) exactly when h + j leaves [0, H)). Same memory, no copy."""
    width = xm.shape[4]
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if transposed or weight.shape[4] != 1 or stride[1:] != [1, 1] or padding[2] != 0 or dilation[2] != 1:
        raise Unsupported("a 3-D convolution runs on the GPU only with a kernel of 1 along its last axis (stride 1 "
                          "along the last two, no padding along the last); this one has kernel "
                          f"{tuple(weight.shape[2:])}, stride {tuple(stride)}, padding {tuple(padding)}")
    return make_params((*xm.shape[:3], xm.shape[3] * width), tuple(weight.shape[:4]), [stride[0], 1],
                       [padding[0], padding[1] * width], [dilation[0], dilation[1] * width], groups)


def route_conv(ctx: Context, node: Node, p: ConvParams) -> Decision:
    """The conv's routing decision (made once per node, also for convs the graph passes made), moved off the
    algorithms in ctx.avoid to the first other applicable one; Unsupported when none is left."""
    if node.name not in ctx.decisions:
        ctx.decisions[node.name] = _decide(ctx, p)
    return ctx.decisions[node.name]


def routable(ctx: Context, p: ConvParams) -> bool:
    """Whether a conv of `p` has an algorithm left after ctx.avoid (graph passes ask before making one; with
    nothing avoided, direct takes any conv)."""
    if not ctx.avoid:
        return True
    try:
        _decide(ctx, p)
    except Unsupported:
        return False
    return True


def _decide(ctx: Context, p: ConvParams) -> Decision:
    d = route_params(p, ctx.profile, ctx.policy, dtype=ctx.precision.dtype)
    if d.algorithm in ctx.avoid:
        blocked = blocked_algorithms(p, ctx.profile, ctx.precision.dtype)
        blocked |= dict.fromkeys(ctx.avoid, "left out by the export")
        try:
            algorithm, reason = avoid_blocked(p, d.algorithm, d.reason, blocked)
        except RuntimeError:
            raise Unsupported(f"no algorithm is left for it after excluding {', '.join(sorted(ctx.avoid))} "
                              f"({p.describe()})") from None
        d = replace(d, algorithm=algorithm, reason=reason)
    return d


FUSED_POINTWISE = ("pointwise", "implicit_gemm", "im2col")  # 1x1 paths that read their input as a GEMM's B


def fuses_depthwise(ctx: Context, dw: Node, conv: Node) -> bool:
    """Whether the depthwise conv `dw` runs inside the 1x1 conv `conv` that reads it (export's
    fuse_depthwise_pointwise asks): on GPUs (workgroup-tiled GEMMs; a CPU adapter's GEMM is the register-tile
    kernel), for a pair the kernel takes, routed to `depthwise` and to a GEMM over the 1x1's input, which the
    fused kernel replaces with one GEMM whose B load computes the depthwise output."""
    if ctx.profile.gemm_style != "workgroup":
        return False
    try:
        pd, pc = conv_params(ctx, dw), conv_params(ctx, conv)  # Unsupported where a weight is not a constant
    except (Unsupported, ValueError):
        return False
    return unfusable(pd, pc) is None and _routed(ctx, dw) == "depthwise" and _routed(ctx, conv) in FUSED_POINTWISE


def _routed(ctx: Context, node: Node) -> str | None:
    """The algorithm the conv `node` is routed to, None where it cannot run on the GPU (graph passes ask)."""
    try:
        return route_conv(ctx, node, conv_params(ctx, node)).algorithm
    except (Unsupported, ValueError):
        return None


def routed_to_winograd(ctx: Context, node: Node) -> bool:
    algorithm = _routed(ctx, node)
    return algorithm is not None and algorithm.startswith("winograd")


def takes_residual(ctx: Context, node: Node) -> bool:
    """Whether the conv `node` would run with an algorithm whose store can add a residual (export's
    fuse_residual_adds asks before fusing)."""
    algorithm = _routed(ctx, node)
    return algorithm is not None and ALGORITHMS[algorithm].fuses_residual


def lower_conv(ctx: Context, node: Node) -> GpuOp:
    p = conv_params(ctx, node)
    weight, bias = ctx.const(node.args[1], "weight"), ctx.const(node.args[2], "bias")
    weight = weight.reshape(p.weight_shape)  # a conv1d's kernel as a 1-row 2-D kernel, a (kd, kh, 1) one as 2-D
    decision = route_conv(ctx, node, p)
    inputs = [node.args[0].name]
    if node.residual is not None:
        if math.prod(ctx.tensor(node.residual, "residual").shape) != math.prod(p.output_shape):
            raise Unsupported(f"its residual is not of the output's shape {p.output_shape}")
        inputs.append(node.residual.name)
    bias = None if bias is None else bias.numpy()
    inner = None
    reads_float32 = (node.depthwise is None and inputs[0] in ctx.float32_inputs
                     and ALGORITHMS[decision.algorithm].reads_float32_input)
    if node.depthwise is not None:
        kernel, decision, inner = _depthwise_pointwise(ctx, node, p, weight.numpy(), bias, decision)
    else:
        kernel = ALGORITHMS[decision.algorithm](ctx.gpu, p, weight.numpy(), bias, node.act or Epilogue(),
                                                dtype=ctx.precision.dtype, accumulate=ctx.precision.accumulate,
                                                residual=node.residual is not None,
                                                input_dtype="float32" if reads_float32 else None)

    def bind(ins, out):
        return kernel.bind(ins[0], out, p.n, *ins[1:])
    return GpuOp(node, inputs, bind, p.flops + (inner.flops if inner else 0), p, decision, inner=inner,
                 float32_input=inputs[0] if reads_float32 else None)


def _depthwise_pointwise(ctx: Context, node: Node, p: ConvParams, weight, bias, decision: Decision):
    """(kernel, decision, depthwise params) of a 1x1 conv with the depthwise conv before it fused in."""
    dw = node.depthwise
    pd = conv_params(ctx, dw)
    dw_bias = ctx.const(dw.args[2], "bias")
    kernel = DepthwisePointwise(ctx.gpu, pd, p, ctx.const(dw.args[1], "weight").reshape(pd.weight_shape).numpy(),
                                None if dw_bias is None else dw_bias.numpy(), dw.act or Epilogue(), weight, bias,
                                node.act or Epilogue(), ctx.precision, residual=node.residual is not None)
    inner = route_conv(ctx, dw, pd)
    fused = Decision(DEPTHWISE_POINTWISE, f"the depthwise conv before it ({inner.algorithm}: {inner.reason}) and "
                     f"this 1x1 ({decision.algorithm}: {decision.reason}) as one GEMM computing the depthwise "
                     f"output in its B load", decision.policy, decision.device, decision.dtype,
                     decision.force_direct)
    return kernel, fused, pd


def lower_activation(ctx: Context, node: Node) -> GpuOp:
    x = node.args[0]
    meta = ctx.tensor(x)
    act = activation_of(node)
    if act is None:
        raise Unsupported("its parameters or bounds are tensors (the GPU kernel takes constant ones)")
    kernel = Unary(ctx.gpu, act, meta.numel(), ctx.precision)
    return GpuOp(node, [x.name], lambda ins, out: kernel.bind(ins[0], out), meta.numel())


def lower_binary(ctx: Context, node: Node) -> GpuOp:
    op = node.op.split(".")[0]
    if node.kwargs.get("rounding_mode") is not None:
        raise Unsupported("div with a rounding mode")
    alpha = node.kwargs.get("alpha", 1)
    out = out_meta(node)
    operands, inputs, shapes = _operands(ctx, node.args[:2])
    try:
        kernel = Binary(ctx.gpu, op, shapes[0], shapes[1], tuple(out.shape), node.act, float(alpha), ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None

    def bind(ins, y):
        return kernel.bind(*_buffers(operands, ins), y)
    return GpuOp(node, inputs, bind, out.numel())


def _operands(ctx: Context, args) -> tuple[list, list[str], list[tuple]]:
    """(per argument: its index among the node's inputs, or the uploaded buffer of a constant or a number;
    the inputs' names; the arguments' shapes)."""
    operands, inputs, shapes = [], [], []
    for a in args:
        if ctx.is_dynamic(a):
            shapes.append(tuple(ctx.tensor(a).shape))
            operands.append(len(inputs))
            inputs.append(a.name)
        else:
            value = _const_operand(ctx, a)
            shapes.append(tuple(value.shape))
            operands.append(ctx.gpu.upload(value.numpy().reshape(-1), "constant operand", ctx.precision.numpy))
    return operands, inputs, shapes


def _buffers(operands: list, ins: list) -> list:
    """_operands' entries as the buffers to bind: the node's input buffers `ins` by index, uploads as they are."""
    return [ins[o] if isinstance(o, int) else o for o in operands]


def lower_mm(ctx: Context, node: Node) -> GpuOp:
    """mm(a, b): a linear layer when b is a constant (W^T), else a bmm of one (either operand at run time)."""
    if not ctx.is_dynamic(node.args[1]):
        return lower_linear(ctx, node)
    return lower_bmm(ctx, node)


def lower_bmm(ctx: Context, node: Node) -> GpuOp:
    """bmm(a, c) and mm(a, c) (a batch of one), either operand computed at run time (kernels/bmm)."""
    out_meta(node)
    operands, inputs, shapes = _operands(ctx, node.args[:2])
    (batch, m, k), (_, _, n) = [(1, *shape) if node.op == "mm" else shape for shape in shapes]
    try:
        kernel = BatchedMatmul(ctx.gpu, batch, m, k, n, ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None

    def bind(ins, y):
        return kernel.bind(*_buffers(operands, ins), y)
    return GpuOp(node, inputs, bind, kernel.flops)


def lower_batch_norm(ctx: Context, node: Node) -> GpuOp:
    x, weight, bias, mean, var, _momentum, eps = node.args
    meta = ctx.tensor(x)
    if meta.ndim < 2:
        raise Unsupported("batch norm over a tensor without a channel dimension")
    scale = 1.0 / torch.sqrt(ctx.const(var, "running var").double() + eps)
    if weight is not None:
        scale = scale * ctx.const(weight, "weight").double()
    shift = -ctx.const(mean, "running mean").double() * scale
    if bias is not None:
        shift = shift + ctx.const(bias, "bias").double()
    kernel = ChannelAffine(ctx.gpu, tuple(meta.shape), scale.float().numpy(), shift.float().numpy(), node.act,
                           ctx.precision)
    return GpuOp(node, [x.name], lambda ins, out: kernel.bind(ins[0], out), 2 * meta.numel())


def _planes(meta, out):
    if meta.ndim not in (3, 4):
        raise Unsupported(f"pooling over a {meta.ndim}-D tensor")
    return math.prod(meta.shape[:-2]), meta.shape[-2], meta.shape[-1], out.shape[-2], out.shape[-1]


def _pair(value, default=None):
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return default
    if isinstance(value, int):
        return (value, value)
    return tuple(value) if len(value) == 2 else (value[0], value[0])


def lower_pool(ctx: Context, node: Node) -> GpuOp:
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    planes, h, w, ho, wo = _planes(meta, out)
    if node.op == "max_pool2d":
        kernel = _pair(node.arg(1, "kernel_size"))
        pool = Pool2d(ctx.gpu, "max", planes, h, w, ho, wo, kernel, _pair(node.arg(2, "stride"), kernel),
                      _pair(node.arg(3, "padding", 0)), _pair(node.arg(4, "dilation", 1)), precision=ctx.precision)
        flops = out.numel() * kernel[0] * kernel[1]
    elif node.op == "avg_pool2d":
        kernel = _pair(node.arg(1, "kernel_size"))
        pool = Pool2d(ctx.gpu, "avg", planes, h, w, ho, wo, kernel, _pair(node.arg(2, "stride"), kernel),
                      _pair(node.arg(3, "padding", 0)), count_include_pad=node.arg(5, "count_include_pad", True),
                      divisor_override=node.arg(6, "divisor_override"), precision=ctx.precision)
        flops = out.numel() * kernel[0] * kernel[1]
    else:  # adaptive average pooling, or mean over the last two dimensions
        if node.op == "mean.dim":
            dims = {d % meta.ndim for d in node.args[1] or ()}
            if dims != {meta.ndim - 1, meta.ndim - 2} or node.kwargs.get("dtype") not in (None, meta.dtype):
                raise Unsupported(f"mean over dims {list(node.args[1])} (the GPU kernel reduces H and W)")
            ho = wo = 1
        pool = Pool2d(ctx.gpu, "adaptive", planes, h, w, ho, wo, precision=ctx.precision)
        flops = meta.numel()
    return GpuOp(node, [x.name], lambda ins, y: pool.bind(ins[0], y), flops)


def lower_linear(ctx: Context, node: Node) -> GpuOp:
    if node.op == "linear":
        x, weight, bias = node.args[0], ctx.const(node.args[1], "weight"), ctx.const(node.arg(2, "bias"), "bias")
    else:  # addmm(bias, x, mat2) / mm(x, mat2) with a constant mat2 = W^T
        if node.op == "addmm" and (node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1):
            raise Unsupported("addmm with beta or alpha != 1")
        x, mat2 = (node.args[1], node.args[2]) if node.op == "addmm" else (node.args[0], node.args[1])
        weight = ctx.const(mat2, "matrix").t()
        bias = ctx.const(node.args[0], "bias") if node.op == "addmm" else None
        if bias is not None and bias.numel() != weight.shape[0]:
            raise Unsupported("addmm whose bias is not one value per output feature")
    meta = ctx.tensor(x)
    if weight.ndim != 2 or meta.shape[-1] != weight.shape[1]:
        raise Unsupported(f"linear of {tuple(meta.shape)} by weight {tuple(weight.shape)}")
    rows = meta.numel() // weight.shape[1]
    shape = tuple(weight.shape)
    kind = Gemv if Gemv.fits(ctx.gpu, shape, rows, ctx.precision) else \
        GemmLinear if GemmLinear.fits(ctx.gpu, shape, ctx.precision) else \
        RegisterLinear if RegisterLinear.fits(ctx.gpu, shape, rows, ctx.precision) else \
        TexLinear if TexLinear.fits(ctx.gpu, shape, rows) else Linear
    kernel = kind(ctx.gpu, weight.numpy(), None if bias is None else bias.reshape(-1).numpy(), node.act,
                  precision=ctx.precision)
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y, rows), rows * kernel.flops_per_row)


def lower_cat(ctx: Context, node: Node) -> GpuOp:
    """A concat of run-time tensors and constants (ViT's class token), the constants uploaded once."""
    tensors, dim = node.args[0], node.arg(1, "dim", 0)
    operands, inputs, shapes = _operands(ctx, tensors)
    out = out_meta(node)
    kernel = Concat(ctx.gpu, shapes, dim, ctx.precision)

    def bind(ins, y):
        return kernel.bind(_buffers(operands, ins), y)
    return GpuOp(node, inputs, bind, out.numel())


def lower_upsample(ctx: Context, node: Node) -> GpuOp:
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    planes, h, w, ho, wo = _planes(meta, out)
    bilinear = node.op.startswith("upsample_bilinear2d")
    mode = "bilinear" if bilinear else "nearest-exact" if "exact" in node.op else "nearest"
    align = bool(node.args[2]) if bilinear else False
    rest = node.args[3:] if bilinear else node.args[2:]
    if node.op.endswith(".vec"):
        scales = rest[0] if rest else None
    else:
        scales = tuple(rest[:2]) if len(rest) >= 2 else None
    kernel = Upsample2d(ctx.gpu, mode, planes, h, w, ho, wo, scales, align, ctx.precision)
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), out.numel() * (4 if bilinear else 1))


def is_view_op(target) -> bool:
    """An ATen op whose one tensor result aliases its input (permute, slice, select, expand, view, ...)."""
    if not isinstance(target, torch._ops.OpOverload):
        return False
    returns = target._schema.returns
    return len(returns) == 1 and returns[0].alias_info is not None and not returns[0].alias_info.is_write \
        and str(returns[0].type) == "Tensor"


def view_layout(ctx: Context, node: Node):
    """(strides, offset, dense) in elements of a view op's result over its dense input, from torch on meta
    tensors; dense: the result's elements lie in row-major order from the offset on."""
    def meta(r: Ref):
        value = ctx.metas.get(r.name) if ctx.is_dynamic(r) else ctx.constants[r.name]
        return value.to("meta") if isinstance(value, torch.Tensor) else value
    result = node.target(*map_refs(node.args, meta), **map_refs(node.kwargs, meta))
    return tuple(result.stride()), result.storage_offset(), result.is_contiguous()


def lower_layout(ctx: Context, node: Node) -> GpuOp:
    """A view that changes the layout (permute, slice, select, expand, ...) or a constant pad: one strided copy."""
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    if node.op == "constant_pad_nd":
        pads = list(node.args[1])
        value = float(node.arg(2, "value", 0.0))
        strides, offset, bounds = list(_dense_strides(meta.shape)), 0, []
        lows = [0] * meta.ndim
        highs = [0] * meta.ndim
        for i in range(len(pads) // 2):
            lows[meta.ndim - 1 - i], highs[meta.ndim - 1 - i] = pads[2 * i], pads[2 * i + 1]
        for k, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
            if lo < 0:  # a negative pad crops: start further in
                offset += -lo * strides[k]
            bounds.append((max(lo, 0), meta.shape[k] - max(-lo, 0) - max(-hi, 0)))
        kernel = StridedCopy(ctx.gpu, tuple(out.shape), strides, offset, bounds, value, ctx.precision)
    else:
        strides, offset, _ = view_layout(ctx, node)
        kernel = StridedCopy(ctx.gpu, tuple(out.shape), strides, offset, precision=ctx.precision)
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), out.numel())


def _dense_strides(shape) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def lower_layer_norm(ctx: Context, node: Node) -> GpuOp:
    x, shape, weight, bias, eps = node.args
    meta, out = ctx.tensor(x), out_meta(node)
    width = math.prod(shape)
    if tuple(meta.shape[meta.ndim - len(shape):]) != tuple(shape):
        raise Unsupported(f"layer norm over {tuple(shape)} of a {tuple(meta.shape)} tensor")
    w, b = ctx.const(weight, "weight"), ctx.const(bias, "bias")
    kernel = LayerNorm(ctx.gpu, meta.numel() // max(width, 1), width, None if w is None else w.reshape(-1).numpy(),
                       None if b is None else b.reshape(-1).numpy(), float(eps), node.act, ctx.precision)
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), 8 * out.numel())


# -- elementwise math beyond add/sub/mul/div (ops-elem) ---------------------------------------------------

def _const_operand(ctx: Context, arg) -> torch.Tensor:
    """A compile-time operand (a constant tensor of any dtype, or a number) as float32."""
    value = ctx.constants[arg.name] if isinstance(arg, Ref) else arg
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float32)
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    raise Unsupported(f"its operand {value!r} is not a tensor or a number")


def _elementwise(ctx: Context, node: Node, expr: str, operands, scalars: dict | None = None) -> GpuOp:
    """`expr` over u0, u1, ... = `operands` (run-time tensors, constant tensors or numbers) broadcast to the
    node's result, with the node's fused activation."""
    out = out_meta(node)
    sources, inputs, shapes = _operands(ctx, operands)
    try:
        kernel = Elementwise(ctx.gpu, expr, shapes, tuple(out.shape), node.act, ctx.precision, scalars)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None

    def bind(ins, y):
        return kernel.bind(*_buffers(sources, ins), y)
    return GpuOp(node, inputs, bind, out.numel())


def lower_math(ctx: Context, node: Node) -> GpuOp:
    return _elementwise(ctx, node, UNARY_EXPR[node.op], [node.args[0]])


POW_EXPR = {2.0: "u0 * u0", 3.0: "u0 * u0 * u0", 1.0: "u0", -1.0: "1.0 / u0", 0.5: "sqrt(u0)",
            -0.5: "inverseSqrt(u0)"}


def lower_pow(ctx: Context, node: Node) -> GpuOp:
    base, exponent = node.args[:2]
    if node.op == "pow.Tensor_Scalar":
        if not isinstance(exponent, (int, float)):
            raise Unsupported("its exponent is not a number")
        expr = POW_EXPR.get(float(exponent))
        return _elementwise(ctx, node, expr, [base]) if expr else \
            _elementwise(ctx, node, "pow_real(u0, e)", [base], {"e": float(exponent)})
    if node.op == "pow.Scalar":
        if not isinstance(base, (int, float)):
            raise Unsupported("its base is not a number")
        return _elementwise(ctx, node, "pow_real(b, u0)", [exponent], {"b": float(base)})
    return _elementwise(ctx, node, "pow_real(u0, u1)", [base, exponent])


def lower_min_max(ctx: Context, node: Node) -> GpuOp:
    return _elementwise(ctx, node, BINARY_EXPR[node.op], node.args[:2])


def lower_where(ctx: Context, node: Node) -> GpuOp:
    """where(cond, a, b) with a constant cond, or where_compare(op, l, r, a, b): the comparison computed inline."""
    if node.op == "where.self":
        if ctx.is_dynamic(node.args[0]):
            raise Unsupported("its condition is a run-time bool tensor (the GPU takes conditions that are "
                              "constants or comparisons of float tensors)")
        return _elementwise(ctx, node, "select(u2, u1, u0 != 0.0)", node.args[:3])
    op, lhs, rhs, a, b = node.args
    return _elementwise(ctx, node, f"select(u3, u2, u0 {COMPARE_EXPR[op]} u1)", [lhs, rhs, a, b])


def lower_clamp_tensor(ctx: Context, node: Node) -> GpuOp:
    x, lo, hi = node.args[0], node.arg(1, "min"), node.arg(2, "max")
    operands, expr = [x], "u0"
    for bound, fn in ((lo, "max"), (hi, "min")):
        if bound is not None:
            expr = f"{fn}({expr}, u{len(operands)})"
            operands.append(bound)
    return _elementwise(ctx, node, f"select({expr}, u0, is_nan(u0))", operands)


ELEMENTWISE_LOWERINGS = {
    **{name: lower_math for name in UNARY_EXPR},
    **{f"pow.{kind}": lower_pow for kind in ("Tensor_Scalar", "Scalar", "Tensor_Tensor")},
    "maximum": lower_min_max,
    "minimum": lower_min_max,
    "where.self": lower_where,
    "where_compare": lower_where,
    "clamp.Tensor": lower_clamp_tensor,
    **{name: lower_activation for name in (*ACTIVATION_OPS, "clamp_min", "clamp_max")},
}


def _reduced_dims(node: Node, ndim: int) -> list[int]:
    """The dims a reduction node reduces (all of them when its dim argument is absent or empty)."""
    dims = node.arg(1, "dim") if len(node.args) > 1 or "dim" in node.kwargs else None
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    return [d % max(ndim, 1) for d in ([dims] if isinstance(dims, int) else dims)]


REDUCTION_KINDS = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin", "max_values": "amax",
                   "min_values": "amin"}


def lower_reduce(ctx: Context, node: Node) -> GpuOp:
    """sum / mean / amax / amin (and max.dim / min.dim values) over any dims: one row-reduction kernel. A mean
    over H and W of an NCHW tensor stays the pooling kernel's (global average pooling)."""
    x = node.args[0]
    meta = ctx.tensor(x)
    out_meta(node)
    if node.kwargs.get("dtype") not in (None, meta.dtype):
        raise Unsupported(f"a reduction that casts to {node.kwargs['dtype']}")
    dims = _reduced_dims(node, meta.ndim)
    if node.op == "mean.dim" and meta.ndim in (3, 4) and set(dims) == {meta.ndim - 1, meta.ndim - 2}:
        return lower_pool(ctx, node)
    try:
        kernel = Reduce(ctx.gpu, REDUCTION_KINDS[node.op.split(".")[0]], tuple(meta.shape), dims, ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), meta.numel())


def lower_variance(ctx: Context, node: Node) -> GpuOp:
    """var / std over any dims (correction, or var.dim's unbiased flag): one row kernel of two passes."""
    x = node.args[0]
    meta = ctx.tensor(x)
    out_meta(node)
    if node.op.endswith(".dim"):  # (x, dim, unbiased, keepdim)
        correction = 1.0 if node.arg(2, "unbiased", True) else 0.0
    else:
        correction = node.kwargs.get("correction")
        correction = 1.0 if correction is None else float(correction)
    try:
        kernel = Variance(ctx.gpu, tuple(meta.shape), _reduced_dims(node, meta.ndim), correction,
                          node.op.startswith("std"), ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), 3 * meta.numel())


def lower_softmax(ctx: Context, node: Node) -> GpuOp:
    """softmax / log_softmax along one dim (_softmax's half_to_float and softmax.int's dtype must not cast)."""
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    if out.dtype != meta.dtype:
        raise Unsupported(f"a softmax that casts {meta.dtype} to {out.dtype}")
    kind = "log_softmax" if "log_softmax" in node.op else "softmax"
    try:
        kernel = Softmax(ctx.gpu, kind, tuple(meta.shape), int(node.args[1]) % max(meta.ndim, 1), ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), 4 * meta.numel())


def lower_group_norm(ctx: Context, node: Node) -> GpuOp:
    """group_norm, native_group_norm's values, instance_norm (by the input's statistics; by running statistics it is
    a per-channel affine, as an eval batch norm) and a batch-statistics batch norm over a batch of one (an instance
    norm decomposed): one workgroup per group, the activation after it fused."""
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    if meta.ndim < 2:
        raise Unsupported("a norm over a tensor without a channel dimension")
    n, c, plane = meta.shape[0], meta.shape[1], math.prod(meta.shape[2:])
    if node.op == "group_norm":
        groups, weight, bias, eps = node.args[1], node.arg(2, "weight"), node.arg(3, "bias"), node.arg(4, "eps", 1e-5)
    elif node.op == "group_norm_values":
        weight, bias, groups, eps = node.args[1], node.args[2], node.args[6], node.args[7]
    elif node.op == "instance_norm":
        weight, bias, mean, var, use_input_stats, _momentum, eps = node.args[1:8]
        if not use_input_stats:
            return lower_batch_norm(ctx, Node(node.name, node.target, (x, weight, bias, mean, var, _momentum, eps),
                                              act=node.act, meta=node.meta))
        groups = c
    else:  # batch_stats_norm: per channel over the batch and the plane; rows only with a batch of one
        weight, bias, eps = node.args[1], node.args[2], node.args[5]
        if n != 1:
            raise Unsupported(f"a batch norm by batch statistics over a batch of {n}")
        groups = c
    w, b = ctx.const(weight, "weight"), ctx.const(bias, "bias")
    try:
        kernel = GroupNorm(ctx.gpu, n, c, plane, int(groups), None if w is None else w.reshape(-1).numpy(),
                           None if b is None else b.reshape(-1).numpy(), float(eps), node.act, ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), 8 * out.numel())


def lower_adaptive_max_pool(ctx: Context, node: Node) -> GpuOp:
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    planes, h, w, ho, wo = _planes(meta, out)
    try:
        pool = Pool2d(ctx.gpu, "adaptive_max", planes, h, w, ho, wo, precision=ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: pool.bind(ins[0], y), meta.numel())


GATHERS = ("index.Tensor", "_unsafe_index.Tensor", "index_select", "gather", "flip", "roll", "repeat", "pad",
           "pixel_shuffle", "pixel_unshuffle", *(f"{kind}_pad{d}d" for kind in ("reflection", "replication")
                                                   for d in (1, 2, 3)))


def lower_gather(ctx: Context, node: Node) -> GpuOp:
    """An op that only moves x's elements, by indices and sizes known at compile time (GATHERS): one gather
    through a table of source offsets, found by running the op on 1, 2, ... in x's shape (float64: exact; a 0
    would be a fill). Constant pads arrive as constant_pad_nd (export.constant_pads: a padded strided copy)."""
    x = node.args[0]
    meta, out = ctx.tensor(x), out_meta(node)
    rest = (node.args[1:], node.kwargs)
    if any(ctx.is_dynamic(r) for r in iter_refs(rest)):
        raise Unsupported("its indices are computed at run time")
    if node.op in ("pixel_shuffle", "pixel_unshuffle"):
        return _pixel_shuffle(ctx, node, meta, out)
    args, kwargs = list(node.args), dict(node.kwargs)
    count = meta.numel()
    args[0] = torch.arange(1, count + 1, dtype=torch.float64).reshape(meta.shape)
    args[1:] = map_refs(args[1:], lambda r: ctx.constants[r.name])
    kwargs = map_refs(kwargs, lambda r: ctx.constants[r.name])
    with torch.no_grad():
        offsets = node.target(*args, **kwargs)
    if not isinstance(offsets, torch.Tensor) or tuple(offsets.shape) != tuple(out.shape):
        raise Unsupported("it does not give one tensor of its result's shape")
    try:
        kernel = Gather(ctx.gpu, offsets.to(torch.int64).numpy() - 1, precision=ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    return GpuOp(node, [x.name], lambda ins, y: kernel.bind(ins[0], y), out.numel())


def lower_index_put(ctx: Context, node: Node) -> GpuOp:
    """out = base with values put (accumulate: added) at indices known at compile time (torch's fold, a
    scatter-add by constant indices): one ScatterAdd gather. The pairs (destination, value element) come from
    running the indexing on an arange of base's elements; base is a GPU value or a constant (uploaded as
    elementwise operands are; zeros: none)."""
    base, indices, values = node.args[:3]
    accumulate = bool(node.arg(3, "accumulate", False))
    if any(ctx.is_dynamic(r) for r in iter_refs(indices)):
        raise Unsupported("its indices are computed at run time")
    vmeta, out = ctx.tensor(values, "values"), out_meta(node)
    positions = torch.arange(out.numel()).reshape(out.shape)
    with torch.no_grad():
        dest = torch.ops.aten.index.Tensor(positions, map_refs(list(indices), lambda r: ctx.constants[r.name]))
        try:
            src = torch.arange(vmeta.numel()).reshape(vmeta.shape).expand(dest.shape)
        except RuntimeError:
            raise Unsupported(f"its values {tuple(vmeta.shape)} do not broadcast to {tuple(dest.shape)}") from None
    dest, src = dest.reshape(-1), src.reshape(-1)
    if not accumulate and torch.unique(dest).numel() != dest.numel():
        raise Unsupported("it writes an element twice without accumulate (which value lands is undefined)")
    order = torch.argsort(dest, stable=True)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(dest, minlength=out.numel()).cumsum(0)])
    args = [values, base] if ctx.is_dynamic(base) or ctx.const(base, "base").any() else [values]  # zeros: none
    try:
        kernel = ScatterAdd(ctx.gpu, offsets.numpy(), src[order].numpy(), not accumulate, len(args) == 2,
                            ctx.precision)
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    operands, inputs, _ = _operands(ctx, args)
    return GpuOp(node, inputs, lambda ins, y: kernel.bind(_buffers(operands, ins), y), dest.numel())


def _pixel_shuffle(ctx: Context, node: Node, meta, out) -> GpuOp:
    """pixel_shuffle / pixel_unshuffle by r: a permuted 6-D view of x (batch dims merged) copied densely, which is
    the result's layout: one strided copy, no table."""
    r, (c, h, w) = int(node.args[1]), meta.shape[-3:]
    batch = math.prod(meta.shape[:-3])
    view = torch.empty(tuple(meta.shape), device="meta")
    if node.op == "pixel_shuffle":  # (B, C r r, H, W) -> (B, C, H, r, W, r)
        view = view.reshape(batch, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
    else:  # (B, C, H r, W r) -> (B, C, r, r, H, W)
        view = view.reshape(batch, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4)
    kernel = StridedCopy(ctx.gpu, tuple(view.shape), view.stride(), 0, precision=ctx.precision)
    return GpuOp(node, [node.args[0].name], lambda ins, y: kernel.bind(ins[0], y), out.numel())


LOWERINGS = {
    "convolution": lower_conv,
    **{name: lower_activation for name in ("relu", "hardtanh", "clamp", "hardswish", "silu", "sigmoid",
                                           "hardsigmoid", "gelu", "tanh")},
    **{f"{op}.{kind}": lower_binary for op in ("add", "sub", "mul", "div") for kind in ("Tensor", "Scalar")},
    "batch_norm_eval": lower_batch_norm,
    **{name: lower_pool for name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d")},
    **{name: lower_linear for name in ("linear", "addmm")},
    "mm": lower_mm,
    "bmm": lower_bmm,
    "cat": lower_cat,
    "constant_pad_nd": lower_layout,
    "layer_norm": lower_layer_norm,
    **{f"{base}.{ov}": lower_upsample for base in ("upsample_nearest2d", "_upsample_nearest_exact2d",
                                                    "upsample_bilinear2d") for ov in ("vec", "default")},
    **{name: lower_reduce for name in ("sum.dim_IntList", "sum", "mean.dim", "mean", "amax", "amin", "max_values",
                                       "min_values")},
    **{name: lower_softmax for name in ("_softmax", "_log_softmax", "softmax.int", "log_softmax.int")},
    **{f"{kind}.{overload}": lower_variance for kind in ("var", "std") for overload in ("correction", "dim")},
    **{name: lower_group_norm for name in ("group_norm", "group_norm_values", "instance_norm", "batch_stats_norm")},
    **{name: lower_gather for name in GATHERS},
    **{name: lower_index_put for name in ("index_put", "_unsafe_index_put")},
    "adaptive_max_pool2d_values": lower_adaptive_max_pool,
}
LOWERINGS.update(ELEMENTWISE_LOWERINGS)


def is_alias(ctx: Context, node: Node) -> bool:
    """A view-like call over a dense tensor whose result is dense too (a reshape, or a permute / slice /
    expand that keeps the element order): it can share the input's buffer. A cast between float32 and
    float16 is one too when the program stores float16 (the stored bits do not change)."""
    if not node.args or not ctx.is_dynamic(node.args[0]):
        return False
    src, out = ctx.metas.get(node.args[0].name), node.meta
    if not (isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor)) or out.numel() != src.numel():
        return False
    if src.dtype not in GPU_DTYPES or out.dtype not in GPU_DTYPES:
        return False
    if node.op not in ALIASES:
        if not is_view_op(node.target) or out.dtype != src.dtype:
            return False
        _, offset, dense = view_layout(ctx, node)
        return dense and offset == 0
    if node.op == "_to_copy" and (set(node.kwargs) - {"dtype"} or node.kwargs.get("dtype") not in GPU_DTYPES):
        return False
    return out.dtype == src.dtype or ctx.precision.dtype == "float16"


def lower(ctx: Context, node: Node) -> GpuOp:
    lowering = LOWERINGS.get(node.op)
    if lowering is None and is_view_op(node.target):
        lowering = lower_layout
    if lowering is None:
        raise Unsupported(f"convroute has no GPU kernel for {node.op}")
    return lowering(ctx, node)


def cpu_flops(node: Node, constants: dict, metas: dict) -> int:
    """FLOPs of a node run by torch: torch's flop counter (matmul/conv-like ops), else one per output element."""
    from torch.utils.flop_counter import FlopCounterMode

    def meta(r: Ref):
        value = constants[r.name] if r.name in constants else metas.get(r.name)
        return value.to("meta") if isinstance(value, torch.Tensor) else value
    counted = 0
    try:
        with FlopCounterMode(display=False) as counter:
            node.target(*map_refs(node.args, meta), **map_refs(node.kwargs, meta))
        counted = counter.get_total_flops()
    except Exception:  # noqa: BLE001 - ops without meta kernels count by their output size
        pass
    return int(counted) or _numel(node.meta)


def _numel(meta) -> int:
    if isinstance(meta, torch.Tensor):
        return meta.numel()
    if isinstance(meta, (list, tuple)):
        return sum(_numel(m) for m in meta)
    return 0


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float32).numpy())

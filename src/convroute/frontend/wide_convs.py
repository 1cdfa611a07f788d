"""Convs whose weights pass the device's largest storage binding run as convs over chunks of their output
channels, joined by a channel concat (a graph pass build_plan runs): split, not sent to the CPU. timm's VGG head
(a 7x7 conv 512 -> 4096: 411 MB of fp32 weights) meets lavapipe's and a browser's 128 MiB binding.

Packed weights are the GPU GEMMs' matrices (`packed_bytes`: K and C_out padded to whole tiles, C_out to
gemm.M_ALIGN = 128 channels), WINOGRAD_POSITIONS of them where Winograd takes the conv (F(4x4, 3x3) keeps a
6x6 transform of each 3x3 kernel). A conv is split where its routed algorithm's packed weights would pass the
binding, into the fewest equal chunks that fit whatever algorithm each chunk is routed to (a 3x3 stride-1 conv
counts as Winograd). A conv that fits stays whole: on lavapipe, splitting wide_resnet50_2's 1024-channel 3x3
convs in two (against Winograd's factor, while they route to im2col) made the model 1.15x slower. Convs of
groups 1 with constant weights, transposed ones too; the concat is free where its slabs can be views
(frontend/views.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from convroute.frontend.export import is_const
from convroute.frontend.graph import Graph, Node, Ref, aten
from convroute.kernels import gemm
from convroute.kernels.common import ceil_div
from convroute.params import pair

WINOGRAD_POSITIONS = 36
CHANNEL_STEP = 8  # chunk widths are multiples of this (vector stores, view offsets)


def packed_bytes(k: int, c_out: int, itemsize: int, winograd: bool = False) -> int:
    """Bytes of a GEMM's packed weights for C_out channels of K = C_in x kh x kw inputs each (gemm.pack_weights'
    padding; CPU adapters' register tiles pad less); Winograd packs a C_out x C_in matrix per position."""
    positions, k = (WINOGRAD_POSITIONS, k // 9) if winograd else (1, k)
    return positions * gemm.padded_k(k) * ceil_div(c_out, gemm.M_ALIGN) * gemm.M_ALIGN * itemsize


def split_wide_convs(g: Graph, max_binding_bytes: int, itemsize: int, winograd: Callable[[Node], bool]) -> int:
    """Split every conv whose packed weights would pass one binding (`winograd(conv)`: whether it is routed to
    a Winograd algorithm); returns how many were split."""
    split = 0
    nodes = []
    for node in g.nodes:
        width = _chunk_width(g, node, max_binding_bytes, itemsize, winograd)
        if width is None:
            nodes.append(node)
            continue
        nodes += _chunks(g, node, width)
        split += 1
    g.nodes = nodes
    return split


def _chunk_width(g: Graph, node: Node, max_binding_bytes: int, itemsize: int,
                 winograd: Callable[[Node], bool]) -> int | None:
    """Output channels per chunk, or None where the conv stays whole."""
    if node.op != "convolution" or node.arg(8, "groups", 1) != 1 or node.residual is not None \
            or node.depthwise is not None or not is_const(g, node.args[1:3]) or not isinstance(node.meta, torch.Tensor):
        return None
    weight = g.constants[node.args[1].name]
    c_out = weight.shape[_out_axis(node)]
    k = weight.numel() // c_out
    winograd_shaped = tuple(weight.shape[2:]) == (3, 3) and not _out_axis(node) \
        and pair(node.arg(3, "stride", 1), "stride") == (1, 1) \
        and pair(node.arg(5, "dilation", 1), "dilation") == (1, 1)
    if packed_bytes(k, c_out, itemsize) > max_binding_bytes:
        as_winograd = winograd_shaped
    elif winograd_shaped and packed_bytes(k, c_out, itemsize, True) > max_binding_bytes and winograd(node):
        as_winograd = True
    else:
        return None
    blocks = max_binding_bytes // packed_bytes(k, gemm.M_ALIGN, itemsize, as_winograd)
    if blocks:
        fits = blocks * gemm.M_ALIGN
    else:  # narrower than one padded block: only CPU adapters' register tiles can take such chunks
        per_channel = k * itemsize * (WINOGRAD_POSITIONS / 9 if as_winograd else 1)
        fits = int(max_binding_bytes // per_channel) // CHANNEL_STEP * CHANNEL_STEP
    if fits < CHANNEL_STEP:
        return None  # one channel's weights alone are too large: the lowering says so
    chunks = math.ceil(c_out / fits)
    return math.ceil(c_out / chunks / CHANNEL_STEP) * CHANNEL_STEP


def _chunks(g: Graph, conv: Node, width: int) -> list[Node]:
    """The chunk convs and, under the conv's own name, the concat of their results."""
    weight = g.constants[conv.args[1].name]
    bias = g.constants[conv.args[2].name] if isinstance(conv.args[2], Ref) else None
    axis = _out_axis(conv)
    c_out = weight.shape[axis]
    parts = []
    for begin in range(0, c_out, width):
        end = min(begin + width, c_out)
        name = f"{conv.name}_out{begin}"
        g.constants[f"{name}_weight"] = weight.narrow(axis, begin, end - begin).contiguous()
        b = None
        if bias is not None:
            g.constants[f"{name}_bias"] = bias[begin:end].contiguous()
            b = Ref(f"{name}_bias")
        meta = conv.meta.new_empty((conv.meta.shape[0], end - begin, *conv.meta.shape[2:]))
        parts.append(Node(name, conv.target, (conv.args[0], Ref(f"{name}_weight"), b, *conv.args[3:]),
                          dict(conv.kwargs), conv.act, [*conv.notes, f"output channels {begin}-{end - 1} of "
                          f"{c_out}: the weights pass one storage binding"], conv.module, meta))
    cat = Node(conv.name, aten.cat.default, ([Ref(p.name) for p in parts], 1), module=conv.module, meta=conv.meta,
               notes=[f"joins the {len(parts)} output-channel chunks of conv {conv.module or conv.name}"])
    return [*parts, cat]


def _out_axis(conv: Node) -> int:
    """The weight's output-channel axis: 0, or 1 for a transposed conv ([C_in, C_out, kh, kw] at groups 1)."""
    return 1 if conv.arg(6, "transposed", False) else 0

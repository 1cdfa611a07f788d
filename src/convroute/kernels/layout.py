"""Layout changes as one strided copy: permute, transpose, slice, select, expand, any view of a dense
tensor, and constant padding.

out[i] = x[offset + sum_k idx_k * stride_k], where idx is i's row-major index in the output shape (rank up
to 6, left-padded with size-1 dims). Strides may be 0 (expand). With padding, dim k reads source index
idx_k - lo_k, and an output element whose source index falls outside [0, extent_k) gets the fill value;
the wrap-around of u32 subtraction makes one comparison check both ends. All index arithmetic is u32 (no
signed remainders; every view of a dense tensor has non-negative strides and offset). CPU adapters copy
without padding as elementwise's rows and strips do (`elementwise.row_strips`: no division per element).
"""

from __future__ import annotations

import math

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.common import FP32, Precision, storage
from convroute.kernels.elementwise import CPU_WG, collapse, cpu_form, row_strips
from convroute.kernels.flat import f32_bits, flat_shader, launch

MAX_RANK = 6
PARAMS = (["total", "offset", "fill"] + [f"s{k}" for k in range(MAX_RANK)] + [f"st{k}" for k in range(MAX_RANK)]
          + [f"lo{k}" for k in range(MAX_RANK)] + [f"n{k}" for k in range(MAX_RANK)])


def _body(padded: bool) -> str:
    lines = ["  var rest = t;", "  var j = P.offset;", "  var inside = true;"]
    for k in reversed(range(MAX_RANK)):
        lines.append(f"  let i{k} = rest % P.s{k};")
        lines.append(f"  rest = rest / P.s{k};")
        if padded:
            lines.append(f"  let d{k} = i{k} - P.lo{k};")
            lines.append(f"  inside = inside && d{k} < P.n{k};")
            lines.append(f"  j = j + select(0u, d{k} * P.st{k}, d{k} < P.n{k});")
        else:
            lines.append(f"  j = j + i{k} * P.st{k};")
    if padded:
        lines.append("  if (inside) { y[t] = x[j]; } else { y[t] = ST(bitcast<f32>(P.fill)); }")
    else:
        lines.append("  y[t] = x[j];")
    return "\n".join(lines)


def _left_pad(values, fill: int) -> list[int]:
    values = [int(v) for v in values]
    if len(values) > MAX_RANK:
        raise ValueError(f"layout copies take tensors of rank up to {MAX_RANK}, got rank {len(values)}")
    return [fill] * (MAX_RANK - len(values)) + values


class StridedCopy:
    """y (dense, `out_shape`) = the view of x given by `strides` and `offset` (in elements), optionally
    padded: `pads` holds (lo, extent) per output dim; outside lo <= idx < lo + extent y is `fill`."""

    def __init__(self, gpu: Gpu, out_shape, strides, offset: int = 0, pads=None, fill: float = 0.0,
                 precision: Precision = FP32):
        if len(strides) != len(out_shape) or any(s < 0 for s in strides) or offset < 0:
            raise ValueError(f"strided copy needs one non-negative stride per output dim and a non-negative "
                             f"offset, got strides {tuple(strides)}, offset {offset} for shape {tuple(out_shape)}")
        self.gpu = gpu
        total = math.prod(out_shape)
        if total >= 2**32:
            raise ValueError(f"strided copy of {total} elements exceeds u32 indexing")
        padded = pads is not None
        los = [lo for lo, _ in pads] if padded else [0] * len(out_shape)
        extents = [n for _, n in pads] if padded else list(out_shape)
        self.values = dict(total=total, offset=offset, fill=f32_bits(fill),
                           **dict(zip([f"s{k}" for k in range(MAX_RANK)], _left_pad(out_shape, 1), strict=True)),
                           **dict(zip([f"st{k}" for k in range(MAX_RANK)], _left_pad(strides, 0), strict=True)),
                           **dict(zip([f"lo{k}" for k in range(MAX_RANK)], _left_pad(los, 0), strict=True)),
                           **dict(zip([f"n{k}" for k in range(MAX_RANK)], _left_pad(extents, 1), strict=True)))
        self.cpu_invocations = None  # set for the CPU adapters' form
        if cpu_form(gpu) and not padded and total:
            dims, cols = collapse(out_shape, [list(strides)])
            self.cpu_invocations, self.source = row_strips(dims, cols, "u0", {}, None, precision, [offset])
        else:
            self.source = flat_shader(PARAMS, storage("x", "y!"), _body(padded), precision=precision)
        gpu.pipeline(self.source)

    def bind(self, x, y) -> list[Dispatch]:
        if not self.values["total"]:
            return []
        if self.cpu_invocations is not None:
            return [self.gpu.dispatch(self.source, [x, y], self.cpu_invocations, CPU_WG)]
        return [launch(self.gpu, self.source, PARAMS, self.values, [x, y])]

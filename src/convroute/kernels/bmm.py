"""Batched matrix products, y[b] = a[b] @ c[b] for dense row-major a (batch, m, k) and c (batch, k, n): the
attention of hybrid CNNs (timm's EdgeNeXt, EfficientViT, BoTNet, HaloNet, LambdaNet, EfficientFormerV2 reach
torch's bmm through matmul), where both operands are computed at run time.

An invocation per 4 x 4 block of y: per k step four loads of a and four of c feed 16 multiply-adds, summed in
f32 in either precision. Loads clamp to the last row / column (edges compute a few values they do not store).
The parameter block is a storage buffer, not a uniform (common.storage_frame: the k loop's bound would make
lavapipe recompile the shader at every dispatch).
"""

from __future__ import annotations

from convroute.device.gpu import Dispatch, Gpu
from convroute.kernels.base import storage_params
from convroute.kernels.common import FP32, Precision, ceil_div, storage, storage_frame

WG = 64
BLOCK = 4
PARAMS = ["total", "m", "k", "n", "tm", "tn"]


def shader(precision: Precision) -> str:
    out = [storage_frame(precision.wgsl(), PARAMS, storage("a", "c", "y!"), "", WG),
           f"  let t = (wid.x + wid.y * nwg.x) * {WG}u + lid_x;",
           "  if (t >= p.total) { return; }",
           f"  let col0 = (t % p.tn) * {BLOCK}u;",
           f"  let row0 = ((t / p.tn) % p.tm) * {BLOCK}u;",
           "  let batch = t / (p.tn * p.tm);",
           "  let abase = batch * p.m * p.k;",
           "  let cbase = batch * p.k * p.n;"]
    for i in range(BLOCK):
        out.append(f"  let ar{i} = abase + min(row0 + {i}u, p.m - 1u) * p.k;")
        out.append(f"  let cc{i} = cbase + min(col0 + {i}u, p.n - 1u);")
        out.append(f"  var s{i} = vec4<f32>(0.0);")
    out.append("  for (var kk = 0u; kk < p.k; kk++) {")
    out.append("    let row = kk * p.n;")
    out.append("    let cv = vec4<f32>(" + ", ".join(f"f32(c[cc{j} + row])" for j in range(BLOCK)) + ");")
    out += [f"    s{i} += f32(a[ar{i} + kk]) * cv;" for i in range(BLOCK)]
    out.append("  }")
    out.append("  let ybase = batch * p.m * p.n;")
    for i in range(BLOCK):
        for j in range(BLOCK):
            out.append(f"  if (row0 + {i}u < p.m && col0 + {j}u < p.n) "
                       f"{{ y[ybase + (row0 + {i}u) * p.n + col0 + {j}u] = ST(s{i}[{j}]); }}")
    return "\n".join(out) + "\n}\n"


class BatchedMatmul:
    def __init__(self, gpu: Gpu, batch: int, m: int, k: int, n: int, precision: Precision = FP32):
        if min(batch, m, k, n) < 1:
            raise ValueError(f"a batched matrix product of ({batch}, {m}, {k}) by ({batch}, {k}, {n}) is empty")
        self.gpu, self.source = gpu, shader(precision)
        tm, tn = ceil_div(m, BLOCK), ceil_div(n, BLOCK)
        self.values = dict(total=batch * tm * tn, m=m, k=k, n=n, tm=tm, tn=tn)
        self.params = storage_params(gpu, PARAMS, self.values, "bmm parameters")
        self.flops = 2 * batch * m * k * n
        gpu.pipeline(self.source)

    def bind(self, a, c, y) -> list[Dispatch]:
        return [self.gpu.dispatch(self.source, [self.params, a, c, y], self.values["total"], WG)]

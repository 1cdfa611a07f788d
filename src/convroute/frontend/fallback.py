"""CPU partitions: nodes the GPU cannot run execute through torch, between GPU submits.

Their GPU-resident inputs are downloaded, the torch op runs (then adds any fused residual and applies any
fused activation), and results that later GPU nodes read are uploaded into their planned buffers. With
float16 storage the boundaries convert: GPU f16 -> the value's own dtype (float32, or float16 in a half
model) for torch, and back to f16 on upload.
"""

from __future__ import annotations

import numpy as np
import torch

from convroute.frontend.graph import Node, map_refs
from convroute.kernels.common import Epilogue


def apply_act(t: torch.Tensor, act: Epilogue | None) -> torch.Tensor:
    """The fused activation on a CPU step's result, by the table's float64 reference (the kernels' meaning)."""
    if act is None or act.kind == "none":
        return t
    return torch.from_numpy(act.reference(t.detach().cpu().double().numpy())).to(t.dtype)


def run_on_cpu(node: Node, env: dict, constants: dict):
    """Run one node through torch; `env` holds the CPU copies of run-time values."""
    def value(r):
        return env[r.name] if r.name in env else constants[r.name]
    args = map_refs(node.args, value)
    if node.depthwise is not None:  # a 1x1 conv with the depthwise conv before it fused in: that one first
        args = (run_on_cpu(node.depthwise, env, constants), *args[1:])
    with torch.no_grad():
        out = node.target(*args, **map_refs(node.kwargs, value))
        out = out + value(node.residual) if node.residual is not None else out
        out = apply_act(out, node.act) if node.act is not None else out
        # a later view must not meet a strided result (a view after a transpose would fail)
        return out.contiguous() if isinstance(out, torch.Tensor) else out


def download(gpu, buffer, meta, stored=np.float32) -> torch.Tensor:
    """A GPU value of element type `stored` as a tensor of the value's own dtype (`meta.dtype`)."""
    return torch.from_numpy(gpu.read(buffer, tuple(meta.shape), stored)).to(meta.dtype)


def host_array(tensor: torch.Tensor, stored=np.float32) -> np.ndarray:
    """`tensor` as a numpy array of the stored dtype."""
    # torch casts to float16 ~8x faster than numpy (0.07 vs 0.57 ms for a 3x224x224 image, one thread)
    return tensor.detach().cpu().to(torch.float16 if np.dtype(stored) == np.float16 else torch.float32).numpy()


def upload(gpu, buffer, tensor: torch.Tensor, stored=np.float32) -> None:
    data = host_array(tensor, stored)
    if data.size:
        gpu.write(buffer, data, stored)

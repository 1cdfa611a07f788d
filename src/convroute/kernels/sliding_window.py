"""The frame of the one-shader convs (depthwise, transposed): prepacked weights and bias, and one flat launch
(kernels/flat.py) of one shader over [parameters, x, weights, bias, y] per bind."""

from __future__ import annotations

import re

import numpy as np

from convroute.device.gpu import Dispatch
from convroute.kernels.base import ConvKernel
from convroute.kernels.common import Precision, storage
from convroute.kernels.flat import flat_shader, launch


class FlatConv(ConvKernel):
    PARAMS: list[str] = []  # the shader's parameter block, named as shape_values names them; ends with "total"
    BUFFERS = storage("x", "wt", "bias:f32", "y!")

    def compile(self, weights: np.ndarray, bias: np.ndarray, body: str, blocks: tuple[str, str],
                baked: dict | None = None, sums: Precision | None = None) -> None:
        """Upload the packed weights and bias; compile `body`, a template of {sum}, {open_block} and
        {close_block} (Precision.block_sums with `blocks`) run for each t < P.total. `baked`: parameters
        written into the shader as literals instead of read from P (loops over them unroll, divisions by them
        fold; one pipeline per layer shape). `sums`: the shader's precision when it differs from the kernel's
        (the same storage type, other sums)."""
        sums = sums or self.precision
        self.w_buf = self.upload(weights, "packed weights")
        self.b_buf = self.gpu.upload(bias, "bias")
        if baked:
            body = re.sub(r"\bP\.(\w+)\b", lambda m: f"{int(baked[m[1]])}u" if m[1] in baked else m[0], body)
        self.source = flat_shader(self.PARAMS, self.BUFFERS, body.format(**sums.block_sums(*blocks)),
                                  self.epilogue.wgsl(), sums)
        self.gpu.pipeline(self.source)

    def launch(self, x, y, **values) -> list[Dispatch]:
        """The one dispatch over `values['total']` invocations; `values` adds to (or overrides) shape_values."""
        return [launch(self.gpu, self.source, self.PARAMS, self.shape_values(**values), [x, self.w_buf, self.b_buf, y])]

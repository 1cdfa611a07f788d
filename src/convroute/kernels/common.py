"""Pieces every kernel shares: the fused epilogue, uniform parameter blocks, flat invocation index."""

from __future__ import annotations

import math
from dataclasses import dataclass

ACTIVATIONS = ("none", "relu", "relu6", "clamp", "hardswish", "silu", "sigmoid")

# Invocation index of a 1-D launch that Gpu.grid may have folded into two dimensions.
FLAT_INDEX = "(wid.x + wid.y * nwg.x) * WG + lid_x"
ENTRY_ARGS = ("@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, "
              "@builtin(local_invocation_index) lid_x: u32")


@dataclass(frozen=True)
class Epilogue:
    """Bias is added by every kernel; this is the activation applied after it."""

    kind: str = "none"
    lo: float = -math.inf
    hi: float = math.inf

    @classmethod
    def parse(cls, activation) -> Epilogue:
        """None, a name, an Epilogue, or ("clamp", lo, hi)."""
        if activation is None:
            return cls()
        if isinstance(activation, Epilogue):
            return activation
        if isinstance(activation, str):
            if activation not in ACTIVATIONS or activation == "clamp":
                raise ValueError(f"unknown activation {activation!r}; use one of "
                                 f"{', '.join(a for a in ACTIVATIONS if a != 'clamp')} or ('clamp', lo, hi)")
            return cls(activation)
        if isinstance(activation, tuple) and len(activation) == 3 and activation[0] == "clamp":
            lo, hi = float(activation[1]), float(activation[2])
            if lo > hi:
                raise ValueError(f"clamp activation needs lo <= hi, got ({lo}, {hi})")
            return cls("clamp", lo, hi)
        raise ValueError(f"unknown activation {activation!r}")

    def wgsl(self) -> str:
        """`fn act(v: f32) -> f32`; comparisons via select() so NaN propagates as in PyTorch."""
        body = {
            "none": "return v;",
            "relu": "return select(v, 0.0, v < 0.0);",
            "relu6": "return select(select(v, 0.0, v < 0.0), 6.0, v > 6.0);",
            "clamp": f"return select(select(v, {_f32(self.lo)}, v < {_f32(self.lo)}), {_f32(self.hi)}, "
                     f"v > {_f32(self.hi)});",
            "hardswish": "return v * select(select(v + 3.0, 0.0, v + 3.0 < 0.0), 6.0, v + 3.0 > 6.0) / 6.0;",
            "silu": "return v / (1.0 + exp(-v));",
            "sigmoid": "return 1.0 / (1.0 + exp(-v));",
        }[self.kind]
        return f"fn act(v: f32) -> f32 {{ {body} }}\n"


def _f32(x: float) -> str:
    if math.isinf(x):
        return "3.4028235e38" if x > 0 else "-3.4028235e38"
    return f"{float(x)!r}"


def uniform_block(names: list[str]) -> str:
    """WGSL struct + binding for a block of u32 parameters, in the order `pack` writes them."""
    fields = "".join(f"  {n}: u32,\n" for n in names)
    return f"struct Params {{\n{fields}}}\n"


def pack(names: list[str], values: dict) -> list[int]:
    """Values in struct order, padded to a multiple of 4 words (uniform buffers need 16-byte sizes)."""
    words = [int(values[n]) for n in names]
    words += [0] * (-len(words) % 4)
    return words


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)

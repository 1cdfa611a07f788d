"""Convolution parameters: normalisation, validation, output shape, and the record and key files keep.

Every entry point (API, router, CLI, front end) builds a `ConvParams` first, so bad input is
rejected in one place with a message that names the problem.
"""

from __future__ import annotations

from dataclasses import dataclass


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (h, w)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return items


@dataclass(frozen=True)
class ConvParams:
    """Shape of one conv2d (or conv_transpose2d) call, NCHW.

    For a transposed conv the weight is PyTorch's [C_in, C_out/groups, Kh, Kw]; otherwise
    [C_out, C_in/groups, Kh, Kw].
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, int] = (0, 0)

    @property
    def ho(self) -> int:
        return self._out(0)

    @property
    def wo(self) -> int:
        return self._out(1)

    def _out(self, axis: int) -> int:
        size = (self.h, self.w)[axis]
        k = (self.kh, self.kw)[axis]
        s, p, d = self.stride[axis], self.padding[axis], self.dilation[axis]
        if self.transposed:
            return (size - 1) * s - 2 * p + d * (k - 1) + self.output_padding[axis] + 1
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_out, self.ho, self.wo)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        if self.transposed:
            return (self.c_in, self.c_out // self.groups, self.kh, self.kw)
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    @property
    def is_depthwise(self) -> bool:
        """groups == C_in and each group sees one input channel (channel multiplier >= 1)."""
        return not self.transposed and self.groups == self.c_in and self.c_out % self.c_in == 0

    @property
    def is_depthwise_without_multiplier(self) -> bool:
        """C_out == groups == C_in: ET-VK's depthwise method, which seed and etvk routing follow."""
        return not self.transposed and self.c_out == self.groups == self.c_in

    @property
    def is_pointwise(self) -> bool:
        return not self.transposed and self.kh == 1 and self.kw == 1 and self.groups == 1

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the whole call."""
        if self.transposed:
            return 2 * self.n * self.c_in * self.h * self.w * (self.c_out // self.groups) * self.kh * self.kw
        return 2 * self.n * self.c_out * self.ho * self.wo * (self.c_in // self.groups) * self.kh * self.kw

    def with_batch(self, n: int) -> ConvParams:
        return ConvParams(n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.stride,
                          self.padding, self.dilation, self.groups, self.transposed, self.output_padding)

    def describe(self) -> str:
        kind = "conv_transpose2d" if self.transposed else "conv2d"
        return (f"{kind} in={self.input_shape} w={self.weight_shape} stride={self.stride} "
                f"pad={self.padding} dil={self.dilation} groups={self.groups}")


def make_params(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, *,
                transposed=False, output_padding=0) -> ConvParams:
    """Validate a conv call and return its `ConvParams`; raise ValueError/TypeError naming the problem."""
    input_shape, weight_shape = tuple(input_shape), tuple(weight_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input must be 4-D NCHW, got shape {input_shape}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must be 4-D, got shape {weight_shape}")
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    dilation, output_padding = pair(dilation, "dilation"), pair(output_padding, "output_padding")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if min(stride) <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    if min(dilation) <= 0:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if min(output_padding) < 0:
        raise ValueError(f"output_padding must be non-negative, got {output_padding}")
    if groups <= 0:
        raise ValueError(f"groups must be positive, got {groups}")
    n, c_in, h, w = input_shape
    if min(input_shape) <= 0:
        raise ValueError(f"input shape {input_shape} has an empty dimension")
    if min(weight_shape) <= 0:
        raise ValueError(f"weight shape {weight_shape} has an empty dimension")
    if c_in % groups:
        raise ValueError(f"groups={groups} does not divide the {c_in} input channels")
    if transposed:
        w_cin, c_out_g, kh, kw = weight_shape
        if w_cin != c_in:
            raise ValueError(f"channel mismatch: input has {c_in} channels but the transposed weight "
                             f"{weight_shape} expects {w_cin} (weight layout [C_in, C_out/groups, Kh, Kw])")
        c_out = c_out_g * groups
        for axis, name in ((0, "height"), (1, "width")):
            if output_padding[axis] >= max(stride[axis], dilation[axis]):
                raise ValueError(f"output_padding {output_padding} must be smaller than stride or dilation "
                                 f"in {name}")
    else:
        if output_padding != (0, 0):
            raise ValueError("output_padding is only valid for a transposed convolution")
        c_out, w_cin_g, kh, kw = weight_shape
        if c_out % groups:
            raise ValueError(f"groups={groups} does not divide the {c_out} output channels")
        if w_cin_g * groups != c_in:
            raise ValueError(f"channel mismatch: input has {c_in} channels but weight {weight_shape} with "
                             f"groups={groups} expects {w_cin_g * groups}")
    p = ConvParams(n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups, transposed,
                   output_padding)
    if p.ho <= 0 or p.wo <= 0:
        raise ValueError(f"empty output: {p.describe()} gives output {p.output_shape}; the dilated kernel "
                         f"is larger than the padded input")
    return p


def params_to_dict(p: ConvParams) -> dict:
    return {"n": p.n, "c_in": p.c_in, "h": p.h, "w": p.w, "c_out": p.c_out, "kh": p.kh, "kw": p.kw,
            "stride": list(p.stride), "padding": list(p.padding), "dilation": list(p.dilation), "groups": p.groups,
            "transposed": p.transposed, "output_padding": list(p.output_padding)}


def params_from_dict(d: dict) -> ConvParams:
    """Inverse of params_to_dict, validated (ValueError/TypeError/KeyError on a bad record)."""
    if not isinstance(d["groups"], int) or d["groups"] <= 0:
        raise ValueError(f"groups must be a positive int, got {d['groups']!r}")
    if d["transposed"]:
        weight = (d["c_in"], d["c_out"] // d["groups"], d["kh"], d["kw"])
    else:
        weight = (d["c_out"], d["c_in"] // d["groups"], d["kh"], d["kw"])
    p = make_params((d["n"], d["c_in"], d["h"], d["w"]), weight, tuple(d["stride"]), tuple(d["padding"]),
                    tuple(d["dilation"]), d["groups"], transposed=bool(d["transposed"]),
                    output_padding=tuple(d["output_padding"]))
    if p.c_out != d["c_out"]:
        raise ValueError(f"inconsistent record {d}")
    return p


def params_key(p: ConvParams) -> str:
    """A stable text key for one ConvParams (autotune cache keys)."""
    t = "T" if p.transposed else "C"
    return (f"{t} n{p.n} c{p.c_in}x{p.h}x{p.w} o{p.c_out} k{p.kh}x{p.kw} s{p.stride[0]}x{p.stride[1]} "
            f"p{p.padding[0]}x{p.padding[1]} d{p.dilation[0]}x{p.dilation[1]} g{p.groups} "
            f"op{p.output_padding[0]}x{p.output_padding[1]}")

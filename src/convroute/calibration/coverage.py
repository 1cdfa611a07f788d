"""How far a conv lies from what a calibration measured: the nearest measured grid shape, axis by axis.

A conv is covered when one measured shape is close to it on every axis at once (within the axis' tolerance,
in log2 units for sizes): same kind (plain or transposed, depthwise or not), kernel height and width, stride,
dilation, channels per group, groups, output height and width, batch and how the channel counts align to
vec4 loads. The cost model interpolates well between such shapes; past them its linear trends extrapolate,
and a property no measured shape had (dilation 24, a 1x7 kernel) it cannot see at all. Where a conv is not
covered, `calibrated` measures its top candidates instead of trusting the prediction (router.refine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convroute.params import ConvParams


def _align(c: int) -> float:
    """0 for an odd channel count, 1 for a multiple of 2, 2 for a multiple of 4 (vec4 loads)."""
    return float(min(2, (c & -c).bit_length() - 1))


# name: (value of a conv, tolerance, how to print the value)
AXES = {
    "transposed": (lambda p: float(p.transposed), 0.0, lambda p: "transposed" if p.transposed else "not transposed"),
    "depthwise": (lambda p: float(p.is_depthwise), 0.0, lambda p: "depthwise" if p.is_depthwise else "not depthwise"),
    "kernel height": (lambda p: math.log2(p.kh), 0.75, lambda p: f"kernel {p.kh}x{p.kw}"),
    "kernel width": (lambda p: math.log2(p.kw), 0.75, lambda p: f"kernel {p.kh}x{p.kw}"),
    "stride": (lambda p: math.log2(p.stride[0] * p.stride[1]), 0.5, lambda p: f"stride {p.stride[0]}x{p.stride[1]}"),
    "stride aspect": (lambda p: math.log2(p.stride[0] / p.stride[1]), 0.5,
                      lambda p: f"stride {p.stride[0]}x{p.stride[1]}"),
    "dilated": (lambda p: float(max(p.dilation) > 1), 0.0, lambda p: f"dilation {max(p.dilation)}"),
    "dilation": (lambda p: math.log2(max(p.dilation)), 1.0, lambda p: f"dilation {max(p.dilation)}"),
    "input channels": (lambda p: math.log2(p.c_in // p.groups), 1.0, lambda p: f"{p.c_in // p.groups} input "
                       f"channels{' per group' if p.groups > 1 else ''}"),
    "output channels": (lambda p: math.log2(p.c_out // p.groups), 1.0, lambda p: f"{p.c_out // p.groups} output "
                        f"channels{' per group' if p.groups > 1 else ''}"),
    "groups": (lambda p: math.log2(p.groups), 1.5, lambda p: f"{p.groups} groups"),
    "output height": (lambda p: math.log2(p.ho), 1.0, lambda p: f"output {p.ho}x{p.wo}"),
    "output width": (lambda p: math.log2(p.wo), 1.0, lambda p: f"output {p.ho}x{p.wo}"),
    "batch": (lambda p: math.log2(p.n), 1.0, lambda p: f"batch {p.n}"),
    "channel alignment": (lambda p: min(_align(p.c_in), _align(p.c_out)), 1.0,
                          lambda p: f"channels {p.c_in}->{p.c_out}"),
}
_TOLERANCE = np.array([t for _, t, _ in AXES.values()])
MISMATCH = 4.0  # the distance of a different value on an axis of tolerance 0 (a kind: transposed or not, ...)


def coverage_point(p: ConvParams) -> np.ndarray:
    return np.array([value(p) for value, _, _ in AXES.values()])


@dataclass
class Verdict:
    covered: bool
    distance: float  # how far past the tolerances the nearest measured shape is, summed over axes (0: covered)
    nearest: ConvParams | None
    far_axes: list[str]  # what the conv has that the nearest measured shape does not ("dilation 24")

    def why(self) -> str:
        return ", ".join(self.far_axes)


class Coverage:
    """The measured grid shapes of a calibration as points on AXES."""

    def __init__(self, shapes: list[ConvParams]):
        self.shapes = shapes
        self.points = np.array([coverage_point(p) for p in shapes]).reshape(len(shapes), len(AXES))

    def verdict(self, p: ConvParams) -> Verdict:
        if not self.shapes:
            return Verdict(False, math.inf, None, ["no measured shape"])
        diff = np.abs(self.points - coverage_point(p))
        gaps = np.where(_TOLERANCE > 0, diff / np.maximum(_TOLERANCE, 1e-9), np.where(diff > 0, MISMATCH, 0.0))
        excess = np.maximum(gaps - 1.0, 0.0).sum(axis=1)
        i = int(np.argmin(excess))
        labels = dict.fromkeys(AXES[name][2](p) for name, gap in zip(AXES, gaps[i], strict=True) if gap > 1.0)
        return Verdict(bool(excess[i] == 0.0), float(excess[i]), self.shapes[i], list(labels))

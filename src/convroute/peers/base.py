"""What every peer engine shares: the two ways it can decline, and the two shapes of engine (a chain of one
conv layer for `bench --compare`, a whole model for `run --compare`)."""

from __future__ import annotations

from collections.abc import Callable


class Unavailable(Exception):
    """The engine cannot run on this machine at all (not installed, no device, the model did not convert)."""


class NotApplicable(Exception):
    """The engine cannot time this layer with the chained method."""


def shape_preserving(p) -> bool:
    """C_in == C_out, stride 1, same spatial size out: a layer the chained method runs as a true chain."""
    return p.c_in == p.c_out and p.stride == (1, 1) and (p.ho, p.wo) == (p.h, p.w)


def short_precision(dtype: str) -> str:
    return "fp16" if dtype == "float16" else "fp32"


class LayerEngine:
    """One engine's chained runs of a conv layer: `prepare(p, x, weight, bias, chain)` -> (once, gpu_ms or
    None, release); once() runs the whole chain (upload, L layers, download) and returns the output as numpy."""

    name = ""
    precision = "fp32"
    detail = ""

    def prepare(self, p, x, weight, bias, chain):
        raise NotImplementedError


class ModelEngine:
    """A whole model ready to run: `once()` takes the host input to a host output (upload, forward, download)
    and returns the output (torch tensor or numpy array). `detail` names the device and precision."""

    name = ""
    precision = "fp32"
    detail = ""
    once: Callable[[], object]

    def close(self) -> None:
        """Release what the engine holds (device memory, nets)."""

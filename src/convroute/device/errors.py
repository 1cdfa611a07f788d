"""GPU failures as Python exceptions: wgpu's errors (and a lost device) become these, with the operation and
its sizes in the message.

After `DeviceLost`, `get_gpu()` opens a new device on the next call. A `Conv2d` that opened its device itself
re-prepares on the new one and retries the call once; objects bound to the lost device otherwise (a `Gpu`
passed in explicitly, a compiled `Program`) keep raising `DeviceLost` and must be built again.
"""

from __future__ import annotations

from convroute.device.webgpu import wgpu


class GpuError(RuntimeError):
    """The GPU refused or failed an operation (a validation or internal error of wgpu)."""


class GpuOutOfMemory(GpuError, MemoryError):
    """The device ran out of memory for an allocation or a submission."""


class DeviceLost(GpuError):
    """The device is gone (destroyed, driver reset, removed): nothing bound to it can run again."""


AFTER_LOSS = "Conv2d layers re-prepare on it by themselves, compiled programs must be compiled again"
WGPU_ERRORS = (wgpu.GPUError, RuntimeError)  # wgpu-py raises RuntimeError for failed maps and stopped pollers


def is_loss(message: str) -> bool:
    return "lost" in message.lower()


def summary(err: BaseException) -> str:
    """wgpu's message without its 'Validation Error / Caused by:' preamble, on one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if line not in ("Validation Error", "Caused by:")]
    return " / ".join(detail) or type(err).__name__


def translate(err: BaseException, op: str, device: str, lost: bool) -> GpuError:
    """The convroute exception for wgpu's `err` raised during `op` on `device`."""
    text = f"{op} failed on {device}: {summary(err)}"
    if lost:
        return DeviceLost(f"{text}. The GPU device was lost: the next call opens a new one ({AFTER_LOSS})")
    if isinstance(err, wgpu.GPUOutOfMemoryError):
        return GpuOutOfMemory(text)
    return GpuError(text)

"""GPU failures are Python exceptions that name the operation and its sizes, and a lost device is reopened."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import wgpu
from torch import nn

import convroute
import convroute.device.gpu as gpu_module
from conftest import assert_matches, random_inputs, reference
from convroute.device.errors import DeviceLost, GpuError, GpuOutOfMemory, translate
from convroute.device.gpu import Gpu, choose_adapter, get_gpu, list_adapters, word_align
from convroute.params import make_params

pytestmark = pytest.mark.gpu


def with_limits(gpu: Gpu, monkeypatch, **limits) -> None:
    """Make convroute's own checks believe the device allows more than it does, so wgpu sees the request."""
    merged = dict(gpu.profile.limits, **{k.replace("_", "-"): v for k, v in limits.items()})
    monkeypatch.setattr(gpu, "profile", dataclasses.replace(gpu.profile, limits=merged))


def test_exception_types():
    assert issubclass(GpuError, RuntimeError) and issubclass(DeviceLost, GpuError)
    assert issubclass(GpuOutOfMemory, GpuError) and issubclass(GpuOutOfMemory, MemoryError)
    oom = translate(wgpu.GPUOutOfMemoryError("Out of Memory"), "allocating output (64 bytes)", "gpu0", lost=False)
    assert isinstance(oom, GpuOutOfMemory) and str(oom) == "allocating output (64 bytes) failed on gpu0: Out of Memory"
    lost = translate(wgpu.GPUValidationError("Validation Error\n\nCaused by:\n  Parent device is lost"),
                     "writing 64 bytes", "gpu0", lost=True)
    assert isinstance(lost, DeviceLost) and "writing 64 bytes failed on gpu0: Parent device is lost" in str(lost)


def test_a_shader_the_driver_refuses_is_a_gpu_error():
    with pytest.raises(GpuError, match="compiling a compute pipeline .* failed on .*"):
        get_gpu().pipeline("@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }")
    assert get_gpu().lost is None


def test_a_buffer_past_max_buffer_size_is_refused_with_its_size(monkeypatch):
    gpu = get_gpu()
    limit = int(gpu.adapter.limits["max-buffer-size"])
    usage = wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST
    asked = word_align(limit + 1)  # buffers are whole 4-byte words (the H100's limit + 1 is not)
    with pytest.raises(ValueError, match=f"test buffer needs a {asked}-byte buffer.*largest buffer \\({limit}"):
        gpu.buffer(limit + 1, usage, "test buffer")
    with_limits(gpu, monkeypatch, max_buffer_size=2 * limit)  # past convroute's check: wgpu itself refuses
    size = limit + 5 - (limit + 5) % 4
    with pytest.raises(GpuError, match=f"allocating test buffer \\({size} bytes\\) failed on .*"
                                       f"{size} is greater than the maximum buffer size"):
        gpu.buffer(size, usage, "test buffer")
    assert gpu.lost is None
    x = np.ones((1, 2, 4, 4), np.float32)
    assert convroute.conv2d(x, np.ones((3, 2, 1, 1), np.float32)).shape == (1, 3, 4, 4)  # the device still works


def test_a_binding_past_the_device_limit_names_the_conv(monkeypatch):
    gpu = get_gpu()
    real = gpu.profile.max_binding_bytes
    with_limits(gpu, monkeypatch, max_storage_buffer_binding_size=4 * real)
    side = int((real // 4) ** 0.5) + 8  # one 1-channel image just over the real binding limit
    x = np.ones((1, 1, side, side), np.float32)
    with pytest.raises(GpuError, match=f"conv .*{side}, {side}.*binding .*bytes.*failed on .*exceeds"):
        convroute.conv2d(x, np.ones((1, 1, 1, 1), np.float32), algorithm="pointwise")
    assert gpu.lost is None


def test_a_lost_device_is_reopened_on_the_next_call(monkeypatch):
    doomed = Gpu(choose_adapter(list_adapters()))
    monkeypatch.setattr(gpu_module, "_GPU", doomed)  # the original device comes back after the test
    p = make_params((1, 4, 6, 6), (8, 4, 1, 1))  # 1x1 convs only: one pipeline to compile per device
    x, w, b = random_inputs(p, np.random.default_rng(3))
    layer = convroute.Conv2d(w, b)  # opens its device itself: re-prepares after a loss
    pinned = convroute.Conv2d(w, b, gpu=doomed)  # bound to the device it was given
    model = nn.Sequential(nn.Conv2d(4, 8, 1)).eval()
    program = convroute.compile(model, torch.randn(1, 4, 6, 6))
    assert_matches(layer(x), reference(p, x, w, b), "before the loss")
    assert_matches(pinned(x), reference(p, x, w, b), "pinned, before the loss")
    assert layer.gpu is doomed and program.gpu is doomed

    doomed.device.destroy()
    assert_matches(layer(x), reference(p, x, w, b), "the call right after the loss")
    assert doomed.lost is not None and layer.gpu is not doomed and layer.gpu is get_gpu()
    assert_matches(convroute.conv2d(x, w, b), reference(p, x, w, b), "a one-off call")
    with pytest.raises(DeviceLost, match="conv .*lost"):
        pinned(x)
    with pytest.raises(DeviceLost, match="lost"):
        program(torch.randn(1, 4, 6, 6))

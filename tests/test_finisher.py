"""Command buffers finished on the finisher thread (CONVROUTE_FINISH_ASIDE, device/finisher.py): a compiled
model's results stay right call after call, with spinning and blocking read-backs, from two threads at once, and a
finish that fails surfaces as a GpuError at the next call, after which the program goes on."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convroute
from convroute.device.errors import GpuError
from convroute.device.finisher import Finishing
from convroute.device.gpu import get_gpu
from convroute.device.webgpu import wgpu
from test_threads import call_in_two_threads, force_spinning


def compiled(monkeypatch, model, x, aside: bool):
    monkeypatch.setenv("CONVROUTE_FINISH_ASIDE", "1" if aside else "0")
    return convroute.compile(model, (x,))


def checked_calls(program, model, calls: int) -> None:
    for _ in range(calls):
        x = torch.randn(1, 3, 10, 9)
        with torch.no_grad():
            ref = copy.deepcopy(model).double()(x.double())
        err = float((program(x).double() - ref).abs().max() / ref.abs().max())
        assert err < 1e-4, f"relative error {err:.2g}"


def small_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.Conv2d(8, 5, 1), nn.Hardswish()).eval()


@pytest.mark.parametrize("spin", [False, True])
def test_calls_with_the_finish_aside_match_torch(monkeypatch, spin):
    """The next call's command buffer is finished on the finisher thread while this call reads back."""
    if spin:
        force_spinning(monkeypatch, get_gpu(), "C API")
    model = small_model()
    program = compiled(monkeypatch, model, torch.randn(1, 3, 10, 9), aside=True)
    checked_calls(program, model, 6)
    recording = program.plan.segments[-1].recording
    assert recording.aside and isinstance(recording._ready, Finishing)  # it did run aside


def test_the_flag_off_finishes_inline(monkeypatch):
    model = small_model()
    program = compiled(monkeypatch, model, torch.randn(1, 3, 10, 9), aside=False)
    checked_calls(program, model, 2)
    recording = program.plan.segments[-1].recording
    assert not recording.aside and not isinstance(recording._ready, Finishing)


def test_two_threads_share_the_finisher(monkeypatch):
    models = [small_model(), nn.Sequential(nn.Conv2d(3, 6, 1), nn.Sigmoid()).eval()]
    monkeypatch.setenv("CONVROUTE_FINISH_ASIDE", "1")
    programs = [convroute.compile(m, torch.randn(2, 3, 12, 10)) for m in models]
    call_in_two_threads(models, programs, 10)


def test_a_failed_finish_surfaces_at_the_next_call(monkeypatch):
    """The finish of call 2's ahead encoding fails on the finisher thread: call 3 raises it as a GpuError
    (before submitting anything), and call 4 encodes afresh and is right."""
    model = small_model()
    program = compiled(monkeypatch, model, torch.randn(1, 3, 10, 9), aside=True)
    checked_calls(program, model, 1)
    recording = program.plan.segments[-1].recording

    class Failing:
        def finish(self):
            raise wgpu.GPUValidationError("an encoder that does not finish")

    with monkeypatch.context() as patch:
        patch.setattr(recording, "_record", lambda staging: Failing())
        checked_calls(program, model, 1)  # submits what call 1 encoded; its own ahead encoding fails aside
    with pytest.raises(GpuError, match="finishing .* dispatches"):
        program(torch.randn(1, 3, 10, 9))
    checked_calls(program, model, 2)

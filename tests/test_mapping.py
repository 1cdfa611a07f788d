"""The per-call buffer maps through wgpu-native's C API (device/mapping.py): read-backs and uploads right, on
blocking and spinning waits, under many threads, and failures as Python exceptions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from convroute.device import mapping
from convroute.device.errors import GpuError
from convroute.device.gpu import get_gpu

pytestmark = pytest.mark.skipif(not mapping.available(), reason="C API maps need wgpu-native")


@pytest.fixture
def gpu():
    found = get_gpu()
    assert found._maps is not None  # wgpu-native's Gpu maps through mapping.Maps
    return found


@pytest.mark.parametrize("spin", [False, True])
def test_uploads_and_read_backs_round_trip(gpu, monkeypatch, spin):
    """An upload buffer written (mapped ahead or not), copied on the GPU into a storage buffer, read back."""
    monkeypatch.setattr(gpu._maps, "spin", spin)
    rng = np.random.default_rng(7)
    target = gpu.empty(4 * 1000, "target")
    source = gpu.upload_buffer(4 * 1000)
    for ahead in (False, True, True, False):
        data = rng.standard_normal(1000).astype(np.float32)
        gpu.fill(target, np.nan)
        gpu.write_staged(source, data)
        encoder = gpu.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(source, 0, target, 0, 4 * 1000)
        gpu.submit(encoder.finish(), "a copy")
        if ahead:
            gpu.premap(source)
            assert gpu.map_in_flight(source)
        assert np.array_equal(gpu.read(target, (10, 100)), data.reshape(10, 100))


def test_odd_float16_counts_come_back_whole(gpu):
    data = np.arange(7, dtype=np.float16)
    assert np.array_equal(gpu.read(gpu.upload(data, "odd f16", np.float16), (7,), np.float16), data)


def test_a_failed_map_is_a_gpu_error(gpu):
    """A map the device refuses (a storage buffer has no MAP_READ usage) raises, naming the read-back."""
    storage = gpu.empty(64, "not mappable")
    with pytest.raises(GpuError, match="reading back 64 bytes.*could not map"):
        gpu.read_staging(storage, 64, np.float32, 16, (16,))
    assert gpu.lost is None
    assert np.array_equal(gpu.read(gpu.upload(np.ones(4, np.float32)), (4,)), np.ones(4, np.float32))


@pytest.mark.parametrize("mode", ["READ", "WRITE"])
def test_a_map_left_in_flight_is_settled_by_the_next(gpu, mode):
    """A wait interrupted (Ctrl-C) leaves its map in flight: the buffer's next read-back or upload waits for it,
    undoes it and goes on, where a second map of a mapped buffer would fail."""
    data = np.arange(64, dtype=np.float32)
    target = gpu.upload(data, "read target")
    if mode == "READ":
        staging = gpu.take_staging(4 * 64)
        gpu._maps.request(staging, "READ", 4 * 64)  # and no wait: as if interrupted
        gpu._maps.read(staging, 4 * 64, np.float32, 64, (64,))  # settles it, maps again, unmaps
        encoder = gpu.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(target, 0, staging, 0, 4 * 64)
        gpu.submit(encoder.finish(), "a copy")
        assert np.array_equal(gpu._maps.read(staging, 4 * 64, np.float32, 64, (64,)), data)
        return
    source = gpu.upload_buffer(4 * 64)
    gpu._maps.request(source, "WRITE", 4 * 64)
    gpu._maps.request(source, "WRITE", 4 * 64)  # settles the first
    gpu.write_staged(source, data[::-1].copy())
    encoder = gpu.device.create_command_encoder()
    encoder.copy_buffer_to_buffer(source, 0, target, 0, 4 * 64)
    gpu.submit(encoder.finish(), "a copy")
    assert np.array_equal(gpu.read(target, (64,)), data[::-1])


@pytest.mark.parametrize("spin", [False, True])
def test_many_threads_map_at_once(gpu, monkeypatch, spin):
    monkeypatch.setattr(gpu._maps, "spin", spin)
    data = [np.arange(512, dtype=np.float32) * (t + 1) for t in range(8)]
    buffers = [gpu.upload(d, "thread data") for d in data]
    failures = []

    def reader(t: int):
        try:
            for _ in range(30):
                assert np.array_equal(gpu.read(buffers[t], (512,)), data[t])
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads) and not failures, failures


def test_a_recording_refuses_to_copy_from_an_upload_buffer_still_mapped(gpu):
    """wgpu-native aborts the process on a submit that uses a mapped buffer: a program's recording, run again
    without its input written first (its upload buffer is mapped ahead after each call), raises instead."""
    import torch

    import convroute

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 6, 6)
    program = convroute.compile(model, (x,))
    program(x)
    recording = program.plan.segments[0].recording
    with pytest.raises(RuntimeError, match="still mapped"):
        recording.run()
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), rtol=1e-4, atol=1e-5)  # and the program goes on


@pytest.mark.parametrize("maps", ["C API", "wgpu-py"])
def test_a_program_goes_on_after_its_read_back_wait_was_interrupted(gpu, monkeypatch, maps):
    """Ctrl-C in a call's read-back wait leaves the read-back buffer's map in flight, and the next call's command
    buffer (encoded ahead) copies into that buffer: the next call settles the map first (else wgpu-native would
    abort the process at the submit) and returns the right result. Both map paths (wgpu-py's: Dawn's)."""
    import torch

    import convroute

    if maps == "wgpu-py":
        monkeypatch.setattr(gpu, "_maps", None)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 6, 6)
    program = convroute.compile(model, (x,))
    program(x)
    recording = program.plan.segments[0].recording
    staging, nbytes = recording._staging, recording.read[-1]
    if maps == "wgpu-py":  # what Gpu._map does before its wait, which is interrupted
        gpu._premaps[staging] = staging.map_async("READ_NOSYNC", 0, nbytes)
    else:
        gpu._maps.request(staging, "READ", nbytes)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), rtol=1e-4, atol=1e-5)

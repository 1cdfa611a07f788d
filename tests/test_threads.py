"""Many threads at once: one-off conv2d calls, prepared layers shared by all threads (the batch changing
between calls), forced algorithms, fp16 and a shared compiled model, each result checked against torch in
float64."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

import convroute
from conftest import random_inputs, reference
from convroute.device.gpu import QuietPoller, get_gpu
from convroute.params import make_params

THREADS, CALLS = 16, 50
BOUND = {"float32": 1e-4, "float16": 1e-2}

# (input shape, weight shape, conv arguments, algorithm, dtype)
CASES = [
    ((1, 3, 9, 9), (8, 3, 3, 3), dict(padding=1), "auto", "float32"),
    ((2, 8, 6, 5), (12, 8, 1, 1), {}, "pointwise", "float32"),
    ((1, 6, 7, 7), (6, 1, 3, 3), dict(stride=2, padding=1, groups=6), "depthwise", "float32"),
    ((1, 4, 5, 5), (4, 6, 3, 3), dict(stride=2, padding=1, output_padding=1, transposed=True), "transposed",
     "float32"),
    ((1, 4, 8, 8), (8, 4, 3, 3), dict(padding=1), "winograd2", "float32"),
    ((1, 5, 7, 6), (7, 5, 3, 2), dict(stride=(1, 2), dilation=(2, 1)), "im2col", "float32"),
    ((1, 4, 6, 6), (8, 4, 3, 3), dict(padding=1), "direct", "float16"),
]


def max_rel(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.gpu
def test_sixteen_threads_get_right_results():
    fp16 = "shader-f16" in get_gpu().profile.features
    rng = np.random.default_rng(0)
    cases = []  # (params, weight, bias, conv arguments, algorithm, dtype, a prepared layer all threads share)
    for x_shape, w_shape, args, algorithm, dtype in CASES:
        dtype = dtype if fp16 else "float32"
        p = make_params(x_shape, w_shape, **args)
        _, w, b = random_inputs(p, rng)
        cases.append((p, w, b, args, algorithm, dtype, convroute.Conv2d(w, b, **args, algorithm=algorithm,
                                                                        dtype=dtype)))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Sigmoid()).eval()
    program = convroute.compile(model, torch.randn(1, 3, 8, 8))
    model64 = copy.deepcopy(model).double()

    def one_call(k: int, rng: np.random.Generator) -> tuple[str, float, float]:
        """Call k: a case in turn; one call in three a one-off conv2d, else the shared layer with batch 1-3."""
        if k % (len(cases) + 1) == len(cases):
            x = torch.from_numpy(rng.uniform(-1, 1, (1 + k % 2, 3, 8, 8)).astype(np.float32))
            with torch.no_grad():
                ref = model64(x.double())
            return f"compiled model batch {x.shape[0]}", max_rel(program(x).numpy(), ref.numpy()), BOUND["float32"]
        p, w, b, args, algorithm, dtype, layer = cases[k % (len(cases) + 1)]
        one_off = k % 3 == 0
        p = p if one_off else p.with_batch(1 + k % 3)
        x = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
        out = convroute.conv2d(x, w, b, **args, algorithm=algorithm, dtype=dtype) if one_off else layer(x)
        what = f"{'conv2d' if one_off else 'shared Conv2d'} {p.describe()} {algorithm} {dtype}"
        return what, max_rel(out, reference(p, x, w, b)), BOUND[dtype]

    failures, results = [], []
    start = threading.Barrier(THREADS)

    def worker(t: int):
        rng = np.random.default_rng(100 + t)
        start.wait()
        for i in range(CALLS):
            try:
                what, err, bound = one_call(t + i, rng)
                results.append(what)
                if not err < bound:
                    failures.append(f"thread {t} call {i}: {what}: relative error {err:.3g} >= {bound:g}")
            except Exception as exc:  # noqa: BLE001 - every failure is reported with its thread and call
                failures.append(f"thread {t} call {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, f"{len(failures)} of {THREADS * CALLS} calls failed; first: " + "; ".join(failures[:5])
    assert len(results) == THREADS * CALLS


@pytest.mark.gpu
def test_route_from_many_threads():
    """Seed routing for another device, and autotune's cache on this one (entries written beforehand: tuning
    live from 16 threads costs too long here)."""
    from convroute.router.autotune import AutotuneCache
    from convroute.router.exclusions import applicable

    asks = [(((n, 64, 28, 28), (128, 64, 3, 3)), dict(device="nvidia")) for n in (1, 2, 4, 8)]
    for c, winner in ((4, "direct"), (8, "im2col")):
        p = make_params((1, 4, 6, 6), (c, 4, 3, 3), padding=1)
        times = {name: 1.0 if name == winner else 2.0 for name in applicable(p)}
        AutotuneCache(get_gpu().profile.key).put(p, {"algorithm": winner, "times_ms": times, "method": "test",
                                                      "when": "now"})
        asks.append(((p.input_shape, p.weight_shape), dict(policy="autotune")))
    got, errors = [], []

    def worker(t: int):
        try:
            for i in range(50):
                k = (t + i) % len(asks)
                shapes, kwargs = asks[k]
                got.append((k, convroute.route(*shapes, padding=1, **kwargs)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert len(got) == THREADS * 50
    expected = [convroute.route(*shapes, padding=1, **kwargs) for shapes, kwargs in asks]
    assert all(decision == expected[k] for k, decision in got)
    assert [expected[k].algorithm for k in (4, 5)] == ["direct", "im2col"]


@pytest.mark.gpu
def run_in_threads(body, count: int, what: str) -> None:
    """body(t) in `count` threads at once; none may hang or raise."""
    failures = []

    def guarded(t: int):
        try:
            body(t)
        except Exception as err:  # noqa: BLE001 (reported below)
            failures.append(repr(err))

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), f"{what} hung"
    assert not failures, failures


def force_spinning(monkeypatch, gpu, maps: str) -> None:
    """Read-backs that spin on the device, as on GPUs, whatever adapter runs the tests: through the C API
    (device/mapping.py, the default on wgpu-native) or through wgpu-py's promises (Dawn's way)."""
    monkeypatch.setattr(gpu, "_spins", True)
    if maps == "wgpu-py":
        monkeypatch.setattr(gpu, "_maps", None)
        monkeypatch.setattr(gpu, "_quiet", QuietPoller.install(gpu.device))
    else:
        if gpu._maps is None:
            pytest.skip("no C API maps with this WebGPU implementation")
        monkeypatch.setattr(gpu._maps, "spin", True)


@pytest.mark.parametrize("maps", ["C API", "wgpu-py"])
def test_spinning_reads_leave_the_poll_thread_asleep(monkeypatch, maps):
    """GPUs' read-backs spin on the device themselves with wgpu-py's poll thread left asleep: many threads
    reading at once, and others waiting through wgpu-py's own promises (queue.read_buffer, which needs the poll
    thread), all finish with the right bytes."""
    gpu = get_gpu()
    poller = gpu.device._poller
    shipped = poller.get_token
    woken = []

    def counting_token():
        woken.append(threading.current_thread())  # the object: idents are reused
        return shipped()

    monkeypatch.setattr(poller, "get_token", counting_token)
    force_spinning(monkeypatch, gpu, maps)  # after counting_token: QuietPoller hands out the counted tokens
    try:
        data = [np.arange(256, dtype=np.float32) + 1000 * t for t in range(8)]
        buffers = [gpu.upload(d, "test data") for d in data]
        spinners = set()

        def reader(t: int):
            if t % 2:
                spinners.add(threading.current_thread())
                for _ in range(40):
                    assert np.array_equal(gpu.read(buffers[t], (256,)), data[t])
            else:
                for _ in range(40):
                    gpu.wait(buffers[t])

        run_in_threads(reader, 8, "a read-back")
        assert woken and not spinners & set(woken), "a spinning read-back woke the poll thread"
    finally:
        poller.get_token = shipped


def call_in_two_threads(models, programs, calls: int) -> None:
    """programs[i] called `calls` times from thread i with fresh inputs, each result checked against torch."""
    def caller(i: int):
        for _ in range(calls):
            x = torch.randn(2, 3, 12, 10)
            with torch.no_grad():
                ref = copy.deepcopy(models[i]).double()(x.double())
            out = programs[i](x)
            err = float((out.double() - ref).abs().max() / ref.abs().max())
            assert err < 1e-4, f"program {i}: relative error {err:.2g}"

    run_in_threads(caller, len(programs), "a call")


@pytest.mark.parametrize("maps", ["C API", "wgpu-py"])
def test_upload_buffers_mapped_ahead_see_every_fresh_input(monkeypatch, maps):
    """On GPUs a program asks for its upload buffer's next map right after each submit (Gpu.premap); two
    programs called from two threads, each with fresh inputs, match torch every time. Forced on whatever
    adapter runs the tests."""
    gpu = get_gpu()
    force_spinning(monkeypatch, gpu, maps)
    models = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(),
              nn.Sequential(nn.Conv2d(3, 6, 1), nn.Sigmoid()).eval()]
    programs = [convroute.compile(m, torch.randn(2, 3, 12, 10)) for m in models]
    call_in_two_threads(models, programs, 10)
    for program in programs:
        (source, _, _), = program.plan.upload_buffers.values()
        assert program.gpu.map_in_flight(source)  # the next call's map is already asked for

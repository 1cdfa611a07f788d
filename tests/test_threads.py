"""Many threads at once: one-off conv2d calls, shared prepacked layers (batch changing between calls), fp16,
forced algorithms and a shared compiled model, every result checked against torch in float64."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

import convroute
from conftest import random_inputs, reference
from convroute.device.gpu import get_gpu
from convroute.params import make_params

THREADS, CALLS = 16, 50
BOUND = {"float32": 1e-4, "float16": 1e-2}

# (input shape, weight shape, conv arguments, algorithm, dtype) for one-off convroute.conv2d calls
ONE_OFF = [
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
    shared_p = make_params((1, 6, 8, 8), (10, 6, 3, 3), padding=1)
    _, shared_w, shared_b = random_inputs(shared_p, rng)
    shared = convroute.Conv2d(shared_w, shared_b, padding=1, activation="relu")
    shared_half = convroute.Conv2d(shared_w, shared_b, padding=1, dtype="float16") if fp16 else None
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Sigmoid()).eval()
    program = convroute.compile(model, torch.randn(1, 3, 8, 8))
    model64 = copy.deepcopy(model).double()

    def one_call(k: int, rng: np.random.Generator) -> tuple[str, float, float]:
        kind = k % 10
        if kind < len(ONE_OFF):
            x_shape, w_shape, args, algorithm, dtype = ONE_OFF[kind]
            if dtype == "float16" and not fp16:
                dtype = "float32"
            p = make_params(x_shape, w_shape, **args)
            x, w, b = random_inputs(p, rng)
            out = convroute.conv2d(x, w, b, **args, algorithm=algorithm, dtype=dtype)
            return f"conv2d {p.describe()} {algorithm} {dtype}", max_rel(out, reference(p, x, w, b)), BOUND[dtype]
        if kind < 9:
            layer, dtype = (shared_half, "float16") if kind == 8 and fp16 else (shared, "float32")
            batch = 1 + k % 3  # the same layer sees batches 1-3 from different threads
            p = shared_p.with_batch(batch)
            x = rng.uniform(-1, 1, p.input_shape).astype(np.float32)
            act = "relu" if layer is shared else None
            return (f"shared Conv2d batch {batch} {dtype}", max_rel(layer(x), reference(p, x, shared_w, shared_b, act)),
                    BOUND[dtype])
        x = torch.from_numpy(rng.uniform(-1, 1, (1 + k % 2, 3, 8, 8)).astype(np.float32))
        with torch.no_grad():
            ref = model64(x.double())
        return f"compiled model batch {x.shape[0]}", max_rel(program(x).numpy(), ref.numpy()), BOUND["float32"]

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
    assert shared.decision is not None and shared.decision.algorithm


@pytest.mark.gpu
def test_route_from_many_threads():
    shapes = [((n, 64, 28, 28), (128, 64, 3, 3)) for n in (1, 2, 4, 8)]
    expected = [convroute.route(x, w, padding=1, device="nvidia") for x, w in shapes]
    got, errors = {}, []

    def worker(t: int):
        try:
            for i in range(50):
                k = (t + i) % len(shapes)
                got[(t, i)] = (k, convroute.route(*shapes[k], padding=1, device="nvidia"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(decision == expected[k] for k, decision in got.values()) and len(got) == THREADS * 50

"""Whole models with float16 storage: `convroute.compile(model, inputs, dtype="float16")` against a float64
torch reference with the fp16 bound (relative error <= 1e-2): every GPU op kind, torchvision models at reduced
resolution, the CPU-fallback boundary (f16 <-> float32), 2-byte buffer planning and clear errors.

Buffers are poisoned with f16 NaN before each run (conftest), so anything no kernel writes fails.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import convroute.frontend  # noqa: E402, F401 (before torchvision, which loads triton: see frontend)

torchvision = pytest.importorskip("torchvision")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.kernels.common import Precision  # noqa: E402
from test_frontend import (  # noqa: E402
    EncoderDecoder,
    FusionNet,
    NanInf,
    OpsZoo,
    WithUnsupportedOps,
    randomize_batch_norms,
    reference,
    rel_error,
)

pytestmark = pytest.mark.gpu

TOL16 = 1e-2
F16 = Precision("float16")


def outputs(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def check(program, model, *inputs):
    """Every output of the f16 program is float32 (the model's dtype) and within the fp16 bound."""
    got, ref = outputs(program(*inputs)), outputs(reference(model, *inputs))
    for i, (out, want) in enumerate(zip(got, ref, strict=True)):
        assert out.dtype == torch.float32, f"output {i}: dtype {out.dtype}"
        err = rel_error(out, want)
        assert err <= TOL16, f"output {i}: relative error {err:.3g}"


class BigPoolAndLinear(nn.Module):
    """A window above one invocation's budget (a workgroup reduces it), a linear in K slices, a free view."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 20000), nn.Linear(20000, 7)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))))


MODELS = {"fusion": (FusionNet, (2, 3, 9, 11)), "encoder_decoder": (EncoderDecoder, (2, 3, 10, 14)),
          "ops_zoo": (OpsZoo, (2, 3, 9, 13)), "big_pool_linear": (BigPoolAndLinear, (2, 3, 40, 40))}


@pytest.mark.parametrize("name", MODELS)
def test_every_gpu_op_kind_in_float16(name):
    """conv (direct, pointwise, depthwise, transposed; grouped, dilated) with fused BN and activations,
    standalone batch norm and activations, add/sub/mul/div with constants and broadcasting, max/avg/adaptive
    pooling and mean, linear, cat, nearest/bilinear upsampling and views, all on f16 buffers."""
    cls, shape = MODELS[name]
    model = cls().eval()
    with torch.no_grad():
        randomize_batch_norms(model)
    x = torch.randn(shape)
    program = convroute.compile(model, (x,), dtype="float16")
    assert program.dtype == "float16"
    check(program, model, torch.randn(shape))  # fresh input, not the example
    s = program.summary()
    assert not s.cpu_ops, s
    assert s.dtype == "float16" and "float16" in str(s)
    convs = [st for st in program.plan.steps if st.node.op == "convolution"]
    assert all(st.op.decision.dtype == "float16" for st in convs)


def test_buffers_are_planned_in_two_byte_elements():
    model = FusionNet().eval()
    x = torch.randn(2, 3, 9, 11)
    p32, p16 = (convroute.compile(model, (x,), dtype=d) for d in ("float32", "float16"))
    plan = p16.plan
    for name, buf in plan.buffers.items():
        assert buf.size >= 2 * plan.metas[name].numel()
    assert sum(b.size for b in plan.allocated) <= 0.55 * sum(b.size for b in p32.plan.allocated)
    assert "stored as float16" in p16.explain()
    rows = p16.profile(runs=1)
    assert [r["op"] for r in rows] == [st.node.op for st in plan.steps] and sum(r["ms"] for r in rows) > 0


def test_float32_inputs_are_cast_on_the_gpu(monkeypatch):
    """No f32 -> f16 conversion on the host: the input is uploaded as float32 (through its upload buffer, which
    the first segment copies to the input's float32 buffer) and the first dispatch casts it."""
    model = FusionNet().eval()
    x = torch.randn(2, 3, 9, 11)
    program = convroute.compile(model, (x,), dtype="float16")
    written = set()
    real = program.gpu.write_staged
    monkeypatch.setattr(program.gpu, "write_staged", lambda buf, a, dtype=np.float32: (
        written.add((id(buf), a.dtype, np.dtype(dtype))), real(buf, a, dtype))[1])
    check(program, model, x)
    plan = program.plan
    staging, ups = plan.input_staging, plan.upload_buffers
    assert list(staging) == plan.input_uploads == list(ups)
    assert written == {(id(ups[name][0]), np.dtype(np.float32), np.dtype(np.float32)) for name in staging}
    assert all(ups[name][1] is staging[name] for name in staging)
    assert set(plan.segments[0].recording.writes) == {(ups[n][0], staging[n], ups[n][0].size) for n in staging}
    half = convroute.compile(model.half(), (x.half(),), dtype="float16")  # f16 inputs need no cast
    assert not half.plan.input_staging and half(x.half()).dtype == torch.float16


def test_routing_is_for_float16_even_when_routed_for_another_device():
    model = FusionNet().eval()
    program = convroute.compile(model, (torch.randn(1, 3, 9, 11),), device="mali", dtype=torch.float16)
    rows = program.convs()
    assert program.dtype == "float16" and any(r["algorithm"] == "im2col" for r in rows), rows
    check(program, model, torch.randn(1, 3, 9, 11))


@pytest.mark.parametrize("name, size, batches", [("resnet18", 64, (1, 2)), ("mobilenet_v2", 64, (1,))])
def test_torchvision_model_in_float16(name, size, batches):
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        randomize_batch_norms(model)  # trained-like scales: identity BNs shrink MobileNet's values below f16
    program = convroute.compile(model, (torch.randn(1, 3, size, size),), dtype="float16")
    for batch in batches:
        check(program, model, torch.randn(batch, 3, size, size))
        s = program.summary()
        assert s.all_convs_on_gpu and not s.cpu_ops and s.submits == 1, s


class Casts(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x)
        return y.half(), (y.half() * 2).float()


def test_half_models_and_casts():
    """A .half() model runs on the GPU in either storage and returns float16; casts between float32 and
    float16 cost nothing when values are stored as f16 (in float32 storage they round on the CPU)."""
    model = FusionNet().eval()
    with torch.no_grad():
        randomize_batch_norms(model)
    model.half()
    x = torch.randn(2, 3, 9, 11).half()
    for dtype in ("float16", "float32"):
        program = convroute.compile(model, (x,), dtype=dtype)
        out = program(x)
        assert out.dtype == torch.float16 and rel_error(out, reference(model, x)) <= TOL16, dtype
        assert not program.summary().cpu_ops and program.summary().all_convs_on_gpu

    x = torch.randn(1, 3, 6, 7)
    model = Casts().eval()
    p16, p32 = (convroute.compile(model, (x,), dtype=d) for d in ("float16", "float32"))
    with torch.no_grad():
        ref = model(x)
    for program in (p16, p32):
        outs = program(x)
        assert [o.dtype for o in outs] == [torch.float16, torch.float32]
        assert all(rel_error(o, r) <= TOL16 for o, r in zip(outs, ref, strict=True))
    assert p16.summary().gpu_ops.get("_to_copy (no copy)") == 3 and not p16.summary().cpu_ops  # .half() x2, .float()
    assert {op for _, op, _ in p32.summary().cpu_ops} == {"_to_copy"}


class OddFallback(nn.Module):
    """A CPU op between GPU convs on values with an odd element count (f16 transfers pad to whole words)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 3, 3)

    def forward(self, x):
        y = torch.cumsum(F.relu(self.c1(x)), dim=1)
        return self.c2(y * 0.25), y


def test_cpu_fallback_converts_at_the_boundaries():
    model = OddFallback().eval()
    x = torch.randn(1, 3, 5, 7)  # c1's output has 175 elements
    program = convroute.compile(model, (x,), dtype="float16")
    check(program, model, torch.randn(1, 3, 5, 7))
    s = program.summary()
    assert [op for _, op, _ in s.cpu_ops] == ["cumsum"] and s.submits == 2, s

    model = WithUnsupportedOps().eval()
    x = torch.randn(2, 3, 10, 12)
    program = convroute.compile(model, (x,), dtype="float16")
    out, idx = program(x)
    ref, _ = reference(model, x)
    assert out.dtype == torch.float32 and rel_error(out, ref) <= TOL16
    assert idx.dtype == torch.int64 and torch.equal(idx, torch.argmax(out.flatten(1), dim=1))
    assert {"cumsum", "sort", "argmax"} <= {op for _, op, _ in program.summary().cpu_ops}


def test_nan_and_inf_propagate_in_float16():
    x = torch.randn(1, 2, 8, 8)
    x[0, 0, 3, 4], x[0, 1, 0, 0] = float("nan"), float("inf")
    program = convroute.compile(NanInf(), (x,), dtype="float16")
    for i, (out, ref) in enumerate(zip(program(x), NanInf()(x), strict=True)):
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"output {i}: NaN positions differ"
        assert torch.equal(torch.isinf(out), torch.isinf(ref)), f"output {i}: Inf positions differ"
        finite = torch.isfinite(ref)
        assert torch.allclose(out[finite], ref[finite], rtol=2e-3, atol=1e-3), f"output {i}"


def test_a_batch_splits_by_its_float16_size(monkeypatch):
    gpu = get_gpu()
    limits = dict(gpu.profile.limits, **{"max-storage-buffer-binding-size": 48 << 10})
    monkeypatch.setattr(gpu, "profile", dataclasses.replace(gpu.profile, limits=limits))
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    x = torch.randn(7, 3, 16, 16)  # the conv's output: 56 KiB in f16 for the batch, 8 KiB per image (fp32: 3)
    program = convroute.compile(model, (x,), dtype="float16")
    check(program, model, x)
    assert program.batch_split == (7, 6)


@pytest.mark.parametrize("kind", ["gemm", "columns"])
def test_linear_kernels_in_float16(kind):
    """GemmLinear (GPUs' linear; lavapipe's planner never places it) and the weight-by-K layout."""
    from convroute.kernels.linear import GemmLinear, Linear

    gpu = get_gpu()
    rng = np.random.default_rng()
    o, k, m = 130, 513, 5
    w = rng.standard_normal((o, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    layer = GemmLinear(gpu, w, b, "relu", F16) if kind == "gemm" else Linear(gpu, w, b, "relu", False, F16)
    y = gpu.empty(2 * m * o)
    gpu.fill(y, np.nan, np.float16)
    out = gpu.run_and_read(layer.bind(gpu.upload(x, "x", np.float16), y, m), y, (m, o), np.float16)
    ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)
    assert np.isfinite(out).all() and np.linalg.norm(out - ref) / np.linalg.norm(ref) <= TOL16


def test_bad_dtype_and_a_device_without_shader_f16(monkeypatch, capsys):
    from convroute.cli.main import main

    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    for bad in ("int8", "bfloat16", torch.bfloat16):
        with pytest.raises(ValueError, match="unknown dtype"):
            convroute.compile(model, (x,), dtype=bad)
    gpu = get_gpu()
    features = gpu.profile.features - {"shader-f16"}
    monkeypatch.setattr(gpu, "profile", dataclasses.replace(gpu.profile, features=features))
    with pytest.raises(ValueError, match="shader-f16"):
        convroute.compile(model, (x,), dtype="float16")
    assert convroute.compile(model, (x,)).dtype == "float32"  # float32 needs no feature
    assert main(["run", "--model", "resnet18", "--size", "32", "--dtype", "float16"]) == 1
    assert "needs the adapter feature 'shader-f16'" in capsys.readouterr().err


def test_run_command_in_float16(capsys):
    from convroute.cli.main import main

    assert main(["run", "--model", "resnet18", "--size", "32", "--runs", "1", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "dtype float16" in out and "(tolerance 0.01 for float16): OK" in out and "float16)" in out
    with pytest.raises(SystemExit) as info:
        main(["run", "--model", "resnet18", "--dtype", "int4"])
    assert info.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err

"""Whole models through `convroute.compile`: torchvision CNNs against a float64 torch reference, batch-norm
folding and activation fusion, the CPU fallback, clear export errors, reports, and the `run` command.

lavapipe (CI's Vulkan device) is slow, so the torchvision models run at reduced input resolution: 64x64
(ResNet-50 and VGG-11: 32x32, VGG-11's minimum). Every layer type and every conv path still runs.
Outputs are poisoned with NaN before each run (conftest), so anything no kernel writes fails.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from convroute.frontend import ExportError  # noqa: E402 (before torchvision, which loads triton: see frontend)
from convroute.frontend.program import CpuStepsWarning  # noqa: E402

torchvision = pytest.importorskip("torchvision")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from conftest import TOLERANCE  # noqa: E402
from convroute.frontend import zoo  # noqa: E402
from convroute.measure import passes  # noqa: E402

pytestmark = pytest.mark.gpu

# resnet18, mobilenet_v2, mobilenet_v3_small and vgg11 run whole in tests/test_models.py (batch 2, no CPU op)
MODELS = {"resnet50": 32}


def rel_error(out, ref) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), "non-finite outputs (unwritten buffer?)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def reference(model, *inputs):
    """The same model in float64 on the CPU, on one thread (torch's float64 depthwise convs slow down ~100x
    when its threads compete with lavapipe's for two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return copy.deepcopy(model).double()(*(x.double() for x in inputs))
    finally:
        torch.set_num_threads(threads)


def randomize_batch_norms(model) -> None:
    """Random weights leave BN at mean 0 / var 1 / identity affine; give it real statistics to fold."""
    zoo.randomize_batch_norms(model, seed=1)


def checked_program(model, x):
    """`model` (batch norms given real statistics) compiled and checked once against float64."""
    with torch.no_grad():
        randomize_batch_norms(model)
    program = convroute.compile(model, (x,))
    assert rel_error(program(x), reference(model, x)) < TOLERANCE
    return program


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_matches_torch_with_every_conv_on_the_gpu(name):
    size = MODELS[name]
    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad():
        randomize_batch_norms(model)
    program = convroute.compile(model, (torch.randn(1, 3, size, size),))
    for batch in (1, 2):
        x = torch.randn(batch, 3, size, size)
        err = rel_error(program(x), reference(model, x))
        assert err < TOLERANCE, f"{name} batch {batch}: relative error {err:.3g}"
        s = program.summary()
        assert s.input_shapes == [(batch, 3, size, size)]
        assert s.convs > 0 and s.all_convs_on_gpu, f"{name}: convs on the GPU {s.convs_on_gpu}/{s.convs}\n{s}"
        assert not s.cpu_ops, f"{name}: ops fell back to the CPU:\n{s}"
        assert s.submits == 1 and s.gpu_share == 1.0
        assert "batch_norm_eval" not in s.gpu_ops and "relu" not in s.gpu_ops and "hardtanh" not in s.gpu_ops


class FusionNet(nn.Module):
    """Every fusion pattern once: conv+BN+relu, conv+BN+relu6, conv+BN+hardswish, SE with conv+hardsigmoid,
    add+relu, linear+relu."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 5)

    def forward(self, x):
        a = F.relu(self.b1(self.c1(x)))
        b = F.relu6(self.b2(self.c2(a)))
        c = F.hardswish(self.b3(self.c3(b)))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(c.mean((2, 3), keepdim=True)))))
        d = F.relu(c * s + a)
        return self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(d, 1), 1))))


def test_batch_norm_folding_and_activation_fusion(monkeypatch):
    monkeypatch.setenv("CONVROUTE_SQUEEZE_EXCITE", "0")  # keep se1 and se2 as convs (on CPU adapters it is on)
    program = checked_program(FusionNet().eval(), torch.randn(2, 3, 9, 11))
    s = program.summary()
    # no batch norm and no activation is left as its own node: each went into a conv, the add or a linear
    assert s.gpu_ops == {"convolution": 5, "mean.dim": 1, "mul.Tensor": 1, "add.Tensor": 1,
                         "adaptive_avg_pool2d": 1, "linear": 2, "flatten.using_ints (no copy)": 1}, s.gpu_ops
    epilogues = {r["name"]: (r["epilogue"], r["fused"]) for r in program.convs()}
    assert epilogues["c1"] == ("relu", ["batch norm b1 folded", "relu fused"])
    assert epilogues["c2"] == ("relu6", ["batch norm b2 folded", "relu6 fused"])
    assert epilogues["c3"] == ("hardswish", ["batch norm b3 folded", "hardswish fused"])
    assert epilogues["se1"] == ("relu", ["relu fused"])
    assert epilogues["se2"] == ("clamp", ["hardsigmoid fused"])  # hardsigmoid = clamp(z/6 + 1/2, 0, 1)
    add = next(st for st in program.plan.steps if st.node.op == "add.Tensor")
    fc1 = next(st for st in program.plan.steps if st.node.module == "fc1")
    assert add.node.act.kind == "relu" and fc1.node.act.kind == "relu"
    text = program.explain()
    assert "bn+relu" in text and "bn+hardswish" in text and "depthwise" in text and "pointwise" in text


class TwoBatchNorms(nn.Module):
    """timm's RepGhost module: x1 = bn1(conv(x)) is read by a depthwise conv and by a second batch norm, so only
    bn1 may fold into the conv (folding bn2 too would scale what the depthwise conv reads); then a chain
    conv -> bn3 -> bn4 with bn3 read by bn4 alone, where both fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        self.cheap, self.bn_cheap = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6)
        self.tail, self.bn3, self.bn4 = nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5), nn.BatchNorm2d(5)

    def forward(self, x):
        x1 = self.bn1(self.conv(x))
        x2 = self.bn_cheap(self.cheap(x1)) + self.bn2(x1)
        return self.bn4(self.bn3(self.tail(F.relu(x2))))


def test_a_batch_norm_folds_only_into_a_conv_it_alone_reads(monkeypatch):
    monkeypatch.setenv("CONVROUTE_SUMMED_CONVS", "0")  # else bn2 adds into the cheap conv (test_summed_convs)
    program = checked_program(TwoBatchNorms().eval(), torch.randn(1, 4, 8, 8))
    folded = {r["name"]: r["fused"] for r in program.convs()}
    assert folded["conv"] == ["batch norm bn1 folded"], folded
    assert folded["tail"] == ["batch norm bn3 folded", "batch norm bn4 folded"], folded
    assert program.summary().gpu_ops["batch_norm_eval"] == 1  # bn2, standalone


class NeutralArithmetic(nn.Module):
    """x * 1, x / 1, x - 0 and 0 + x with plain numbers: each is x, no dispatch; y * y stays."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = 0 + (self.conv(x) * 1) / 1 - 0
        return y * y


def test_neutral_arithmetic_is_dropped_at_export():
    program = checked_program(NeutralArithmetic().eval(), torch.randn(1, 3, 6, 7))
    assert [s.node.op for s in program.plan.gpu_steps] == ["convolution", "mul.Tensor"]


class ClassToken(nn.Module):
    """ViT's stem: patches from a conv, a learned class token (a constant after export) concatenated in front."""

    def __init__(self):
        super().__init__()
        self.patches, self.cls = nn.Conv2d(3, 8, 4, stride=4), nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        return self.head(torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1))


@pytest.mark.parametrize("batch", [1, 2])
def test_a_concat_with_a_constant_input_runs_on_the_gpu(batch):
    program = checked_program(ClassToken().eval(), torch.randn(batch, 3, 16, 12))
    assert not program.summary().cpu_ops, program.summary()


class EncoderDecoder(nn.Module):
    """Transposed, grouped and dilated convs; batch norm folded into a transposed conv and one left standalone."""

    def __init__(self):
        super().__init__()
        self.enc, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.up, self.bn2 = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6)
        self.bn3 = nn.BatchNorm2d(9)
        self.mix = nn.Conv2d(9, 4, 3, padding=2, dilation=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        e = F.max_pool2d(F.relu(self.bn1(self.enc(x))), 2)
        u = F.relu(self.bn2(self.up(e)))
        cat = F.relu(self.bn3(torch.cat([u, x], 1)))
        y = F.silu(self.mix(cat))
        return torch.sigmoid(self.head(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)))


def test_transposed_grouped_dilated_and_standalone_batch_norm():
    program = checked_program(EncoderDecoder().eval(), torch.randn(2, 3, 10, 14))
    s = program.summary()
    assert not s.cpu_ops, s
    assert s.gpu_ops["convolution"] == 4 and s.gpu_ops["batch_norm_eval"] == 1, s.gpu_ops
    rows = {r["name"]: r for r in program.convs()}
    assert rows["up"]["algorithm"] == "transposed" and rows["up"]["fused"] == ["batch norm bn2 folded", "relu fused"]
    assert rows["mix"]["epilogue"] == "silu" and rows["head"]["epilogue"] == "sigmoid"
    bn3 = next(st for st in program.plan.steps if st.node.op == "batch_norm_eval")
    assert bn3.node.act.kind == "relu"


class WithUnsupportedOps(nn.Module):
    """cumsum and sort have no GPU kernel: they run on the CPU between GPU segments."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, stride=2)

    def forward(self, x):
        y = torch.cumsum(F.relu(self.c1(x)), dim=1)
        flat = torch.sort(y.flatten(2), dim=-1).values  # reads a GPU value through a free view
        z = self.c2(flat.view_as(y) * 0.5)
        return z, torch.argmax(z.flatten(1), dim=1)


def test_unsupported_ops_run_on_the_cpu_and_the_summary_says_so():
    model = WithUnsupportedOps().eval()
    x = torch.randn(2, 3, 10, 12)
    with pytest.warns(CpuStepsWarning, match=r"ops on the CPU through torch \(.*cumsum.*\)") as caught:
        program = convroute.compile(model, (x,))
        out, idx = program(x)
    assert len(caught) == 1  # once per plan, not per call
    ref, ref_idx = reference(model, x)
    assert rel_error(out, ref) < TOLERANCE
    assert torch.equal(idx, ref_idx) and idx.dtype == torch.int64
    s = program.summary()
    cpu = {op for _, op, _ in s.cpu_ops}
    assert {"cumsum", "sort"} <= cpu and "argmax" in cpu, s
    assert all("no GPU kernel" in reason for _, op, reason in s.cpu_ops if op in ("cumsum", "sort")), s
    assert s.all_convs_on_gpu and s.submits >= 2 and 0.0 < s.gpu_share < 1.0
    text = str(s)
    assert "CPU (torch fallback):" in text and "cumsum" in text and "sort" in text


class DataDependentBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x)
        return y * 2 if y.sum() > 0 else y


def test_a_model_torch_cannot_export_gets_a_clear_error():
    with pytest.raises(ExportError, match="torch.export could not export DataDependentBranch") as info:
        convroute.compile(DataDependentBranch(), (torch.randn(1, 3, 8, 8),))
    assert isinstance(info.value, RuntimeError)
    assert "data-dependent" in str(info.value)  # torch's own reason is carried


class OpsZoo(nn.Module):
    """The non-conv GPU ops at awkward parameters, each returned so each is checked."""

    def forward(self, x):
        outs = [
            F.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, ceil_mode=True), F.max_pool2d(x, (3, 2), (2, 1), 1, 2),
            F.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
            F.avg_pool2d(x, 2, divisor_override=3), F.adaptive_avg_pool2d(x, (4, 3)), x.mean((-1, -2)),
            F.interpolate(x, scale_factor=2), F.interpolate(x, size=(7, 20), mode="nearest-exact"),
            F.interpolate(x, scale_factor=2.5, mode="bilinear"),
            F.interpolate(x, size=(7, 20), mode="bilinear", align_corners=True),
            torch.cat([x, F.gelu(x), F.gelu(x, approximate="tanh")], 1), torch.cat([x, torch.tanh(3 * x)], -1),
            F.silu(x) + F.hardswish(x) * torch.sigmoid(x) - F.hardsigmoid(x) / (F.relu6(4 * x) + 1),
            2 - x * x.mean((2, 3), keepdim=True) + torch.clamp(x, -0.3, 0.2),
        ]
        return tuple(outs)


def test_gpu_ops_match_torch():
    model = OpsZoo().eval()
    x = torch.randn(2, 3, 9, 13)
    program = convroute.compile(model, (x,))
    s = program.summary()
    assert not s.cpu_ops, s
    for i, (out, ref) in enumerate(zip(program(x), reference(model, x), strict=True)):
        assert rel_error(out, ref) < TOLERANCE, f"output {i}"


class NanInf(nn.Module):
    def forward(self, x):
        return (F.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 8), F.adaptive_avg_pool2d(x, 1), F.relu(x + 1),
                F.interpolate(x, scale_factor=2, mode="bilinear"), torch.cat([x, torch.sigmoid(x)], 1))


def test_nan_and_inf_propagate_as_in_torch():
    x = torch.randn(1, 2, 8, 8)
    x[0, 0, 3, 4], x[0, 1, 0, 0] = float("nan"), float("inf")
    program = convroute.compile(NanInf(), (x,))
    for i, (out, ref) in enumerate(zip(program(x), NanInf()(x), strict=True)):
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"output {i}: NaN positions differ"
        assert torch.equal(torch.isinf(out), torch.isinf(ref)), f"output {i}: Inf positions differ"
        finite = torch.isfinite(ref)
        assert torch.allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-6), f"output {i}"


def test_every_activation_passes_nan_by_its_bits():
    """WGSL lets compilers assume no NaN (NVIDIA folded relu's select into a max that returned 0 for NaN):
    every activation but the identity returns a NaN input as it is, tested on the bits."""
    from convroute.kernels.common import ACTIVATIONS, NAN_BITS, Epilogue

    kinds = [Epilogue.parse(("clamp", -1.0, 1.0) if k == "clamp" else k) for k in ACTIVATIONS]
    sources = [e.wgsl() for e in kinds]
    assert all((NAN_BITS in src) != (src == "fn act(v: f32) -> f32 { return v; }\n") for src in sources)


def test_global_pooling_of_a_large_map_and_a_big_linear():
    """Windows above one invocation's loop budget (a workgroup reduces them) and a 20000-input linear (K slices)."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 20000), nn.ReLU(),
                          nn.Linear(20000, 7)).eval()
    x = torch.randn(2, 3, 260, 270)
    program = convroute.compile(model, (x,))
    assert rel_error(program(x), reference(model, x)) < TOLERANCE
    assert not program.summary().cpu_ops


@pytest.mark.parametrize("k_inner", [True, False])
def test_linear_kernel_layouts_and_chunks(monkeypatch, k_inner):
    """Both weight layouts, split into column chunks by a small binding limit, K in several slices."""
    from convroute.device.gpu import get_gpu
    from convroute.kernels.linear import K_SLICE, Linear

    gpu = get_gpu()
    limits = dict(gpu.profile.limits, **{"max-storage-buffer-binding-size": 4 << 20})
    monkeypatch.setattr(gpu, "profile", dataclasses.replace(gpu.profile, limits=limits))
    rng = np.random.default_rng()
    k, o, m = K_SLICE + 300, 150, 5
    w = rng.standard_normal((o, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    layer = Linear(gpu, w, b, "relu", k_inner=k_inner)
    assert len(layer.chunks) > 1
    xb, yb = gpu.upload(x), gpu.empty(4 * m * o)
    gpu.fill(yb, np.nan)
    gpu.run(layer.bind(xb, yb, m))
    ref = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0)
    out = gpu.read(yb, (m, o))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < TOLERANCE


def test_batch_size_may_differ_and_plans_are_cached():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.eval()
    program = convroute.compile(model, torch.randn(1, 3, 8, 8))
    for batch in (3, 1, 3):
        x = torch.randn(batch, 3, 8, 8)
        assert rel_error(program(x), reference(model, x)) < TOLERANCE
    assert len(program._plans) == 2
    with pytest.raises(TypeError, match="takes 1 input"):
        program(x, x)


def test_repeated_calls_with_prerecorded_command_buffers_see_fresh_inputs():
    """Each call submits the command buffer encoded after the previous one: interleave two programs whose
    outputs share a staging buffer, and check every call against its own fresh input."""
    a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    b = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sigmoid()).eval()
    pa, pb = convroute.compile(a, torch.randn(1, 3, 10, 10)), convroute.compile(b, torch.randn(1, 3, 10, 10))
    for _ in range(3):
        for model, program in ((a, pa), (b, pb)):
            x = torch.randn(1, 3, 10, 10)
            assert rel_error(program(x), reference(model, x)) < TOLERANCE
    assert pa.plan.segments[-1].recording._ready is not None  # the next run's command buffer is ready


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(2, 4, 1)

    def forward(self, x, y):
        return F.relu(self.c(x) + self.d(y))


class CpuFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.c(torch.cumsum(x, dim=1))


def test_inputs_reach_the_gpu_through_kept_upload_buffers(monkeypatch):
    """Each input has an upload buffer that a call maps and fills and the first segment copies from (no
    queue.write_buffer per call); a program whose first step runs on the CPU uploads as before."""
    model = TwoInputs().eval()
    x, y = torch.randn(2, 3, 9, 7), torch.randn(2, 2, 9, 7)
    program = convroute.compile(model, (x, y))
    from convroute.frontend import program as program_module

    plain_writes = []
    monkeypatch.setattr(program_module, "upload", lambda *args, **kwargs: plain_writes.append(args))
    for _ in range(3):
        x, y = torch.randn(2, 3, 9, 7), torch.randn(2, 2, 9, 7)
        assert rel_error(program(x, y), reference(model, x, y)) < TOLERANCE
    plan = program.plan
    assert not plain_writes and list(plan.upload_buffers) == plan.input_uploads and len(plan.input_uploads) == 2
    targets = {target for _, target, _ in plan.segments[0].recording.writes}
    assert targets == {plan.buffer(name) for name in plan.input_uploads}
    monkeypatch.undo()
    cpu_first = CpuFirst().eval()
    program = convroute.compile(cpu_first, (x,))
    for _ in range(2):
        x = torch.randn(2, 3, 9, 7)
        assert rel_error(program(x), reference(cpu_first, x)) < TOLERANCE
    assert not program.plan.upload_buffers and not program.plan.input_uploads


class MixesImages(nn.Module):
    def forward(self, x):
        return F.relu(x - x.mean(0, keepdim=True))


def test_a_batch_too_large_for_one_binding_runs_in_chunks(monkeypatch):
    from convroute.device.gpu import get_gpu

    gpu = get_gpu()
    limits = dict(gpu.profile.limits, **{"max-storage-buffer-binding-size": 48 << 10})
    monkeypatch.setattr(gpu, "profile", dataclasses.replace(gpu.profile, limits=limits))
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    x = torch.randn(7, 3, 16, 16)  # the conv's output is 112 KiB for the batch, 16 KiB per image
    program = convroute.compile(model, (x,))
    assert rel_error(program(x), reference(model, x)) < TOLERANCE
    assert program.batch_split == (7, 3) and "ran in chunks of 3" in str(program.summary())
    with pytest.raises(ValueError, match="cannot be split"):
        convroute.compile(MixesImages(), (torch.randn(7, 16, 16, 16),))


class TwoInOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(5, 4, 1)

    def forward(self, x, y):
        s = F.relu(self.a(x) + self.b(y))
        return {"sum": s, "pooled": F.avg_pool2d(s, 2).flatten(1)}


def test_several_inputs_and_structured_outputs():
    model = TwoInOut().eval()
    x, y = torch.randn(2, 3, 6, 8), torch.randn(2, 5, 6, 8)
    program = convroute.compile(model, (x, y))
    out, ref = program(x, y), reference(model, x, y)
    assert set(out) == {"sum", "pooled"}
    assert rel_error(out["sum"], ref["sum"]) < TOLERANCE and rel_error(out["pooled"], ref["pooled"]) < TOLERANCE


def test_buffers_are_reused_and_the_program_is_one_submit():
    model = torchvision.models.resnet18(weights=None).eval()
    program = convroute.compile(model, (torch.randn(1, 3, 32, 32),))
    s = program.summary()
    values = len(program.plan.gpu_steps)
    assert s.submits == 1 and s.buffers <= values // 4, f"{s.buffers} buffers for {values} GPU values"


def test_explain_and_profile(capsys, monkeypatch):
    model = FusionNet().eval()
    program = convroute.compile(model, (torch.randn(1, 3, 9, 11),))
    text = program.explain()
    for row in program.convs():
        assert row["algorithm"] in text and row["reason"] in text
    rows = program.profile(runs=3)
    assert [r["op"] for r in rows] == [st.node.op for st in program.plan.steps]
    gpu_ms = sum(r["ms"] for r in rows if r["where"] == "gpu")
    assert all(r["ms"] > 0 for r in rows if r["where"] == "gpu")
    out = capsys.readouterr().out
    assert "per-node times" in out
    if "gpu timestamps" in out:
        # the device's timestamp period is applied: ticks 1000x as long report ~1000x the times
        period = passes.timestamp_period(program.gpu)
        monkeypatch.setattr(passes, "timestamp_period", lambda gpu: 1000.0 * period)
        scaled = sum(r["ms"] for r in program.profile(runs=3) if r["where"] == "gpu")
        assert 30 < scaled / gpu_ms < 30000, f"{scaled:.3g} ms vs {gpu_ms:.3g} ms: period not applied?"
        monkeypatch.undo()
    # wall clock (no timestamp queries): a submit and a wait per node
    monkeypatch.setenv("CONVROUTE_TIMING", "wall")
    program.profile(runs=1)
    assert "wall clock" in capsys.readouterr().out


def test_compile_takes_its_policy_from_convroute_policy(monkeypatch):
    from convroute.frontend import lower

    seen = []

    def spy(p, device, policy=None, **kwargs):
        seen.append(policy)
        return route_params(p, device, "seed", **kwargs)
    route_params = lower.route_params
    monkeypatch.setattr(lower, "route_params", spy)
    model, x = nn.Conv2d(3, 4, 3), torch.randn(1, 3, 6, 6)
    monkeypatch.setenv("CONVROUTE_POLICY", "calibrated")
    assert convroute.compile(model, (x,)).policy == "calibrated" and seen == ["calibrated"]
    assert convroute.compile(model, (x,), policy="seed").policy == "seed" and seen[-1] == "seed"
    monkeypatch.setenv("CONVROUTE_POLICY", "fastest")
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        convroute.compile(model, (x,))


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        convroute.compile(lambda x: x, (torch.randn(1, 3, 4, 4),))
    with pytest.raises(ValueError, match="unknown policy"):
        convroute.compile(nn.ReLU(), (torch.randn(1, 3, 4, 4),), policy="fastest")
    with pytest.raises(TypeError, match="torch tensor"):
        convroute.compile(nn.ReLU(), ("image",))


def test_run_command_prints_error_routing_table_and_latency(capsys):
    from convroute.cli.main import main

    assert main(["run", "--model", "resnet18", "--size", "32", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "relative error" in out and ": OK" in out and "max abs error" in out
    assert "layer4.1.conv2" in out and "im2col" in out and "convroute on the GPU" in out and "torch on the CPU" in out
    assert main(["run", "--model", "no_such_net"]) == 2
    assert "not a torchvision classification or segmentation model" in capsys.readouterr().err


def test_run_and_export_web_take_timm_models(capsys, tmp_path):
    """A user's timm model by the zoo's name (timm:NAME) in `run` and `export-web`; an unknown one is a clear error."""
    pytest.importorskip("timm")
    from convroute.cli.main import main

    assert main(["run", "--model", "timm:lcnet_050", "--size", "32", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "timm:lcnet_050: timm architecture" in out and ": OK" in out and "conv_dw" in out
    assert main(["export-web", "--model", "timm:no_such_net", "--out", str(tmp_path / "x")]) == 2
    assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
    assert main(["export-web", "--model", "no_such_net", "--out", str(tmp_path / "y")]) == 2
    assert "not a torchvision classification model" in capsys.readouterr().err


def test_export_web_without_onnxruntime_web_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    from convroute.cli.main import main

    monkeypatch.setenv("CONVROUTE_ORT_WEB", str(tmp_path / "empty"))
    args = ["export-web", "--model", "squeezenet1_1", "--size", "32", "--compare", "ort", "--out", str(tmp_path / "b")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--compare ort: onnxruntime-web not found" in err and "npm install onnxruntime-web" in err


class Chain(nn.Module):
    """Three convs of equal-size values: the input's buffer is free after the first conv reads it."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))

    def forward(self, x):
        for conv in self.convs:
            x = torch.tanh(conv(x))
        return x


@pytest.mark.parametrize("rerun", ["gpu_pass_times", "profile"])
def test_the_plan_runs_again_on_its_own_over_the_real_input(rerun, capsys):
    """gpu_pass_times and profile run the plan's dispatches without a call: the input's buffer is kept (never
    reused for a later value), and profile runs the nodes in plan order, so the output buffer still holds the
    call's result afterwards (re-run over another value's data it would not)."""
    torch.manual_seed(3)
    model = Chain().eval()
    x = torch.randn(1, 8, 10, 10)
    program = convroute.compile(model, (x,))
    y = program(x).numpy()
    out = program.plan.graph.outputs[0].name
    if rerun == "gpu_pass_times":
        if program.gpu_pass_times(2) is None:
            pytest.skip("no timestamp queries on this adapter")
    else:
        program.profile(x, runs=2)
        assert "in plan order" in capsys.readouterr().out
    again = program.gpu.read(program.plan.buffer(out), y.shape)
    np.testing.assert_allclose(again, y, rtol=1e-6, atol=1e-6)

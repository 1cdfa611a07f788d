"""With `fuse_depthwise=True` (off by default: slower on the H100), a depthwise conv read only by a 1x1 conv runs
inside it (one depthwise+pointwise GEMM) on GPUs: MobileNetV2's inverted residual, routed for an NVIDIA profile,
matches the float64 torch reference in one GEMM dispatch for the pair, and explains both convs; CPU adapters'
profiles keep two kernels; a fused node that falls back to the CPU computes the depthwise conv first. Outputs are
poisoned with NaN before each run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
import convroute.frontend  # noqa: E402, F401 (before the GPU opens: see convroute.frontend)
from test_frontend import rel_error  # noqa: E402
from test_frontend_residual import InvertedResidual, compiled  # noqa: E402

pytestmark = pytest.mark.gpu
FUSED = "depthwise conv before it fused"


def fused_notes(program) -> list[str]:
    return [f for f in program.summary().fused if FUSED in f]


def test_inverted_residual_fuses_depthwise_on_gpus():
    model, x = InvertedResidual(c=8, expand=4), torch.randn(2, 8, 9, 11)
    program, ref = compiled(model, x, device="nvidia", policy="seed", fuse_depthwise=True)
    assert rel_error(program(x), ref) < 1e-4
    assert [f.split(":")[0] for f in fused_notes(program)] == ["project.0"]
    rows = {r["name"]: r for r in program.convs()}
    assert rows["dw.0"]["algorithm"] == rows["project.0"]["algorithm"] == "depthwise+pointwise"
    assert rows["dw.0"]["weight"] == (32, 1, 3, 3) and "depthwise" in rows["project.0"]["reason"]
    apart = convroute.compile(model, (x,), device="nvidia", policy="seed")
    assert fused_notes(apart) == [] and {r["name"]: r for r in apart.convs()}["dw.0"]["algorithm"] == "depthwise"
    fused = [s for s in program.plan.gpu_steps if s.node.depthwise is not None]
    assert len(fused) == 1 and len(fused[0].dispatches) == 1  # one GEMM (no K split at this size)
    assert program.summary().dispatches < apart.summary().dispatches


def test_cpu_adapters_keep_two_kernels():
    model, x = InvertedResidual(), torch.randn(1, 8, 6, 6)
    program, ref = compiled(model, x, device="cpu", policy="seed", fuse_depthwise=True)
    assert fused_notes(program) == []
    assert rel_error(program(x), ref) < 1e-4


def test_a_fused_node_on_the_cpu_fallback_runs_the_depthwise_conv_first():
    from convroute.frontend.fallback import run_on_cpu
    from convroute.frontend.graph import Node, Ref
    from convroute.kernels.common import Epilogue

    conv = torch.ops.aten.convolution.default
    x, wd, wp = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1)
    dw = Node("dw", conv, (Ref("x"), Ref("wd"), None, [2, 2], [1, 1], [1, 1], False, [0, 0], 4),
              act=Epilogue("relu6"))
    pw = Node("pw", conv, (Ref("x"), Ref("wp"), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1), depthwise=dw)
    assert [r.name for r in pw.refs()] == ["x", "wp", "wd"]
    out = run_on_cpu(pw, {"x": x}, {"wd": wd, "wp": wp})
    inner = torch.clamp(F.conv2d(x, wd, stride=2, padding=1, groups=4), 0, 6)
    torch.testing.assert_close(out, F.conv2d(inner, wp))


def test_a_fused_pair_the_gpu_refuses_runs_on_the_cpu_and_is_explained(monkeypatch):
    from convroute.frontend import lower
    from convroute.frontend.lower import Unsupported

    def refuse(*args):
        raise Unsupported("refused for the test")
    monkeypatch.setattr(lower, "_depthwise_pointwise", refuse)
    model, x = InvertedResidual(c=8, expand=2), torch.randn(1, 8, 7, 6)
    program, ref = compiled(model, x, device="nvidia", policy="seed", fuse_depthwise=True)
    assert rel_error(program(x), ref) < 1e-4
    rows = {r["name"]: r for r in program.convs()}
    assert rows["dw.0"]["algorithm"] == rows["project.0"]["algorithm"] == "torch (CPU)"
    assert rows["dw.0"]["input"] == (1, 16, 7, 6) and rows["project.0"]["input"] == (1, 16, 7, 6)

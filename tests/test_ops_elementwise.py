"""Issue 26's activations and elementwise math against torch: the activation table's float64 references, each
parametrised activation fused into a conv's epilogue on every conv path that stores through it (GEMM, direct,
depthwise, Winograd), standalone activations, and broadcasting math up to rank 6 (pow, maximum/minimum, where
with a constant or a comparison condition, clamp with tensor bounds, unary math) in float32 and float16, and a
standalone batch norm's kernel in both of its forms.
Outputs are poisoned with NaN before each run (conftest); inputs are fresh random draws."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convroute  # noqa: E402
from conftest import assert_matches, rel_error, run_guarded  # noqa: E402
from convroute.device.gpu import get_gpu  # noqa: E402
from convroute.kernels import elementwise  # noqa: E402
from convroute.kernels.common import ACTIVATIONS, F16_FEATURE, SELU, Epilogue, Precision  # noqa: E402
from convroute.kernels.elementwise import ChannelAffine  # noqa: E402
from convroute.measure.reference import TOLERANCES  # noqa: E402

# (as Conv2d / Epilogue take it, torch's function): every row of the table, parameters off their defaults
CASES = [
    (("leaky_relu", 0.2), lambda y: F.leaky_relu(y, 0.2)),
    (("leaky_relu", -0.5), lambda y: F.leaky_relu(y, -0.5)),
    (("elu", 0.5, 1.5, 2.0), lambda y: torch.ops.aten.elu(y, 0.5, 1.5, 2.0)),
    (("elu", *SELU), F.selu),
    (("elu", 0.7, 1.0, 1 / 0.7), lambda y: F.celu(y, 0.7)),
    ("mish", F.mish),
    (("softplus", 2.0, 1.0), lambda y: F.softplus(y, 2.0, 1.0)),
    ("softplus", F.softplus),
    ("gelu", F.gelu),
    ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh")),
    ("logsigmoid", F.logsigmoid),
    ("tanh", torch.tanh),
    ("hardsigmoid", F.hardsigmoid),
    ("relu", F.relu),
    ("relu6", F.relu6),
    (("clamp", -0.5, 0.75), lambda y: torch.clamp(y, -0.5, 0.75)),
    ("hardswish", F.hardswish),
    ("silu", F.silu),
    ("sigmoid", torch.sigmoid),
]


@pytest.fixture(params=["float32", "float16"])
def dtype(request):
    from convroute.device.gpu import get_gpu

    if request.param == "float16" and F16_FEATURE not in get_gpu().profile.features:
        pytest.skip("the adapter has no shader-f16")
    return request.param


def test_the_table_references_are_torch():
    """The float64 references (used by the self-test and CPU steps) against torch, on values that reach every
    branch (softplus's threshold, large |v| where exp overflows)."""
    y = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), torch.tensor([-1e4, 1e4, 0.0])])
    assert {Epilogue.parse(a).kind for a, _ in CASES} == set(ACTIVATIONS) - {"none"}
    for activation, fn in CASES:
        ours = Epilogue.parse(activation).reference(y.numpy())
        np.testing.assert_allclose(ours, fn(y).numpy(), rtol=1e-12, atol=1e-12, err_msg=str(activation))


def test_activation_parameters_are_checked():
    with pytest.raises(ValueError, match="takes 1 parameter"):
        Epilogue.parse(("leaky_relu", 0.1, 0.2))
    with pytest.raises(ValueError, match="finite"):
        Epilogue.parse(("elu", float("nan")))
    with pytest.raises(ValueError, match="unknown activation"):
        Epilogue.parse("swish")
    assert Epilogue.parse(("elu", 0.5)).args == (0.5, 1.0, 1.0)
    assert Epilogue.parse("leaky_relu") == Epilogue.parse(("leaky_relu", 0.01))


# one shape per conv path that stores through the shared epilogue
PATHS = {
    "im2col": ((1, 5, 7, 6), (6, 5, 3, 3), 1, 1),
    "pointwise": ((2, 8, 5, 5), (4, 8, 1, 1), 1, 0),
    "direct": ((1, 3, 9, 8), (4, 3, 3, 3), 2, 1),
    "depthwise": ((1, 6, 8, 7), (6, 1, 3, 3), 1, 1),
    "winograd2": ((1, 4, 8, 8), (5, 4, 3, 3), 1, 1),
    "winograd4": ((1, 4, 8, 8), (5, 4, 3, 3), 1, 1),
}


@pytest.mark.gpu
@pytest.mark.parametrize("style", ["registers", "workgroup"])  # a CPU adapter's kernels, and a GPU's
@pytest.mark.parametrize("algorithm", PATHS)
def test_parametrised_activations_fuse_into_every_conv_path(algorithm, style, dtype, monkeypatch):
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    x_shape, w_shape, stride, padding = PATHS[algorithm]
    groups = x_shape[1] if algorithm == "depthwise" else 1
    rng = np.random.default_rng(26)
    index = list(PATHS).index(algorithm)
    for activation, fn in CASES[index::len(PATHS)][:3] if dtype == "float16" else CASES[index::len(PATHS)]:
        x = rng.standard_normal(x_shape).astype(np.float32) * 2
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        if dtype == "float16":
            x, w = x.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32)
        y = convroute.conv2d(x, w, b, stride, padding, groups=groups, activation=activation, algorithm=algorithm,
                             dtype=dtype)
        ref = fn(F.conv2d(*(torch.from_numpy(a).double() for a in (x, w, b)), stride=stride, padding=padding,
                          groups=groups)).numpy()
        assert_matches(np.asarray(y, np.float32), ref, f"{algorithm} {style} {activation} {dtype}",
                       TOLERANCES[dtype])


NEW = CASES[:11]  # the activations issue 26 added; the rest have tests of their own


class Activations(nn.Module):
    """Each new activation once after a conv (fused) and once standalone on a value two ops read."""

    def __init__(self, cases):
        super().__init__()
        self.cases = cases
        self.convs = nn.ModuleList(nn.Conv2d(3, 4, 3, padding=1) for _ in cases)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        fused = [fn(conv(x)) for (_, fn), conv in zip(self.cases, self.convs, strict=True)]
        shared = x * 3
        standalone = [fn(shared) for _, fn in self.cases]
        pooled = F.adaptive_avg_pool2d(fused[0], 1).flatten(1)
        return (*fused, *standalone, shared, F.mish(self.fc(pooled)), F.leaky_relu(fused[1] + fused[2], 0.3))


def check_model(model, inputs, dtype, fused_ops=()):
    program = convroute.compile(model, inputs, dtype=dtype)
    s = program.summary()
    assert not s.cpu_ops, s
    with torch.no_grad():
        refs = model.double()(*(x.double() for x in inputs))
        model.float()
    outs = program(*inputs)
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        err = rel_error(out.double().numpy(), ref.numpy())
        assert err < TOLERANCES[dtype], f"output {i}: relative error {err:.3g} ({dtype})"
    return program, s


@pytest.mark.gpu
def test_activations_fused_and_standalone_in_a_model(dtype):
    torch.manual_seed(1)
    cases = NEW if dtype == "float32" else NEW[1::3]  # float16 compiles its own pipelines: a third of them
    model = Activations(cases).eval()
    program, s = check_model(model, (torch.randn(1, 3, 6, 5),), dtype)
    assert s.gpu_ops["convolution"] == len(cases)
    epilogues = [r["epilogue"] for r in program.convs()]
    assert epilogues == [Epilogue.parse(a).kind for a, _ in cases]
    linear = next(st for st in program.plan.steps if st.node.op == "linear")
    add = next(st for st in program.plan.steps if st.node.op == "add.Tensor")
    assert linear.node.act.kind == "mish" and add.node.act == Epilogue.parse(("leaky_relu", 0.3))


class Math(nn.Module):
    """Broadcasting math up to rank 6 with constant, scalar and run-time operands."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.rand(1, 4, 1, 5) > 0.5)
        self.register_buffer("scale", torch.rand(4, 1, 1) + 0.5)

    def forward(self, x, y):  # x (2, 4, 3, 5), y (4, 1, 5)
        a = x.abs() + 0.5
        six = x.reshape(2, 2, 2, 3, 1, 5)
        return (x + y, x - 2 * y, x * self.scale, x / (y.abs() + 1), torch.sqrt(a), torch.rsqrt(a), torch.exp(x),
                torch.log(a), -x, x.abs(), torch.reciprocal(a), x ** 2, x ** 3, a ** 0.5, a ** -0.5, a ** 1.7,
                a ** -1, 2.0 ** x, a ** y, x ** 5,
                torch.where(x < 0, -a, a) ** (2 * y).round(), torch.maximum(x, y), torch.minimum(x, self.scale),
                torch.where(self.mask, x, y), torch.where(x > y, x, 0.5 * y), torch.where(x <= 0.1, y, x),
                torch.clamp(x, y - 0.5, y + 0.5), torch.clamp(x, min=y),
                torch.ops.aten.clamp_min(x, 0.2), torch.ops.aten.clamp_max(x, -0.1),
                six * six[:, :1, :, :, :, :1],
                six + x.reshape(2, 4, 3, 1, 5)[:1].reshape(1, 2, 2, 3, 1, 5) * 0.5)


@pytest.mark.gpu
@pytest.mark.parametrize("cpu_form", [True, False])
def test_broadcasting_math_up_to_rank_6(dtype, cpu_form, monkeypatch):
    """Both forms of the broadcasting kernel on any adapter: per element (GPUs), per (row, strip) (CPU adapters)."""
    monkeypatch.setattr(elementwise, "cpu_form", lambda gpu: cpu_form)
    torch.manual_seed(2)
    program, s = check_model(Math().eval(), (torch.randn(2, 4, 3, 5), torch.randn(4, 1, 5)), dtype)
    assert {"pow.Tensor_Scalar", "pow.Scalar", "pow.Tensor_Tensor", "maximum", "minimum", "where.self",
            "where_compare", "clamp.Tensor", "sqrt", "rsqrt", "exp", "log", "neg", "abs",
            "reciprocal"} <= \
        set(s.gpu_ops), s.gpu_ops


class Rank7(nn.Module):
    def forward(self, x):
        a = x.reshape(1, 2, 1, 2, 1, 2, 3)
        return a * a[:, :1, :, :, :, :1]


@pytest.mark.gpu
def test_past_rank_6_the_cpu_runs_it_and_the_summary_says_why():
    x = torch.randn(2, 2, 2, 3)
    program = convroute.compile(Rank7(), (x,))
    reasons = [reason for _, op, reason in program.summary().cpu_ops if op == "mul.Tensor"]
    assert reasons and "within rank 6" in reasons[0], program.summary()
    torch.testing.assert_close(program(x), Rank7()(x))


def test_decomposed_graphs_keep_the_activations_whole():
    """An op beyond the direct translation (cumsum) sends the graph through run_decompositions: the table's
    activations must stay single nodes there too (else mish, softplus, celu... become chains of math)."""
    from convroute.frontend.export import export_model

    class Decomposed(nn.Module):
        def forward(self, x):
            y = F.elu(x, 0.5) + F.celu(x, 0.7) + F.selu(x) + F.mish(x) + F.softplus(x, 2, 10) + F.logsigmoid(x)
            return (y + F.gelu(x, approximate="tanh") + F.leaky_relu(x, 0.2) + F.relu6(x)).cumsum(1)

    ops = [n.op for n in export_model(Decomposed(), (torch.randn(2, 3),)).nodes]
    assert ops == ["elu", "celu", "add.Tensor", "selu", "add.Tensor", "mish", "add.Tensor", "softplus", "add.Tensor",
                   "log_sigmoid", "add.Tensor", "gelu", "add.Tensor", "leaky_relu", "add.Tensor", "relu6",
                   "add.Tensor", "cumsum"], ops


@pytest.mark.parametrize("per_plane", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(1, 256, 16, 16), (2, 3, 5, 7), (1, 1024, 2, 2), (2, 8, 40, 40), (1, 6, 9)])
def test_channel_affine_both_forms(shape, dtype, per_plane):
    """A batch norm with nothing to fold into (kernels.elementwise.ChannelAffine), both forms on any adapter:
    per element (GPUs) and per (plane, strip) (CPU adapters; vec4 loads where planes are whole vec4s, several
    strips where planes are long), against float64, the output poisoned with a guard element."""
    gpu = get_gpu()
    if dtype == "float16" and F16_FEATURE not in gpu.profile.features:
        pytest.skip("no shader-f16")
    precision = Precision(dtype)
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(precision.numpy)
    scale, shift = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    ref = Epilogue("silu").reference(x.astype(np.float64) * scale.reshape(1, -1, *[1] * (len(shape) - 2))
                                     + shift.reshape(1, -1, *[1] * (len(shape) - 2)))
    kernel = ChannelAffine(gpu, shape, scale, shift, "silu", precision, per_plane)
    x_buf = gpu.upload(x, "x", precision.numpy)
    out, guard = run_guarded(gpu, lambda y: kernel.bind(x_buf, y), ref.size, precision)
    assert np.isnan(guard), "wrote past the output"
    assert rel_error(out, ref.reshape(-1)) < TOLERANCES[dtype]

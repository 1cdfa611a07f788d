"""float16 convs reading a float32 input themselves (ConvKernel.reads_float32_input, Conv2d's input_dtype): no
cast before the first conv of an f16 program, no host conversion in an f16 layer. Against float64 torch with the
fp16 bound, in both GEMM styles; the input keeps its float32 values (not rounded to f16 first), so a kernel that
read the buffer as f16 would be far off.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_inputs, reference
from convroute import Conv2d, conv2d
from convroute.device.gpu import get_gpu
from convroute.kernels import ALGORITHMS, im2col_tex
from convroute.kernels.common import F16_FEATURE, Epilogue, Precision
from convroute.measure.reference import max_relative_error
from convroute.params import make_params

pytestmark = pytest.mark.skipif(F16_FEATURE not in get_gpu().profile.features,
                                reason=f"the adapter lacks {F16_FEATURE}")

TOL16 = 1e-2
READERS = [name for name, cls in ALGORITHMS.items() if cls.reads_float32_input]
STEM = make_params((2, 3, 19, 17), (8, 3, 3, 3), 2, 1)  # a stem: 3 channels, stride 2
UNIT = make_params((1, 5, 11, 13), (8, 5, 3, 3), 1, 1)  # winograd's shape too
QUADS = make_params((2, 3, 8, 6), (8, 3, 1, 1))  # a 1x1 at stride 1 over planes of whole quads: vec4 loads
STRIDED_1X1 = make_params((1, 3, 9, 7), (8, 3, 1, 1), 2)  # RepVGG's stem branch: scalar loads


def test_the_readers_are_the_ones_whose_kernels_convert_every_input_load():
    assert set(READERS) == {"direct", "im2col", "implicit_gemm", "winograd2", "winograd4", "pointwise"}


@pytest.mark.parametrize("style", ["workgroup", "registers", "registers without textures"])
@pytest.mark.parametrize("p", [STEM, UNIT, QUADS, STRIDED_1X1], ids=["stem", "unit", "quads", "strided 1x1"])
def test_each_reader_matches_torch_on_a_float32_input(monkeypatch, style, p):
    """CPU adapters' GEMMs read textures where they fit; without them they read the input's buffer (for a 1x1
    at stride 1, as quads: gemm_cpu.InputColumns)."""
    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style.split()[0])
    if style.endswith("textures"):
        monkeypatch.setattr(im2col_tex.ColumnTextures, "wanted", staticmethod(lambda kernel: False))
    x, w, b = random_inputs(p, np.random.default_rng(7))
    x *= 3.0  # values f16 rounds visibly
    ref = reference(p, x, w, b, "silu")
    for name in READERS:
        if ALGORITHMS[name].unsupported(p):
            continue
        layer = Conv2d(w, b, p.stride, p.padding, activation="silu", algorithm=name, dtype="float16",
                       input_dtype="float32")
        out = layer(x)
        kernel = next(iter(layer._kernels.values()))
        assert kernel.precision.input == "float32", name
        assert out.dtype == np.float16
        assert max_relative_error(out, ref) <= TOL16, f"{name} ({style})"


def test_other_algorithms_convert_on_upload_instead():
    p = make_params((1, 8, 6, 6), (8, 1, 3, 3), 1, 1, groups=8)
    x, w, b = random_inputs(p, np.random.default_rng(8))
    out = conv2d(x, w, b, 1, 1, groups=8, algorithm="depthwise", dtype="float16", input_dtype="float32")
    assert max_relative_error(out, reference(p, x, w, b)) <= TOL16


def test_bad_input_dtypes_are_refused_by_name():
    with pytest.raises(ValueError, match="only a float32 input may feed a float16 kernel"):
        Precision.parse("float32", None, "float16")
    assert Precision.parse("float16", None, "float16") == Precision.parse("float16")
    assert "alias XT = f32;" in Precision.parse("float16", None, "float32").wgsl()
    assert "alias XT = ST;" in Precision.parse("float16").wgsl()
    p = make_params((1, 8, 6, 6), (8, 1, 3, 3), groups=8)
    with pytest.raises(ValueError, match="'depthwise' cannot read a float32 input"):
        ALGORITHMS["depthwise"](get_gpu(), p, np.ones(p.weight_shape, np.float32), None, Epilogue(),
                                dtype="float16", input_dtype="float32")


# -- programs ---------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn


class Stem(nn.Module):
    """The input feeds a conv only (and, with `shortcut`, also an add: that one reads the f16 copy)."""

    def __init__(self, shortcut: bool = False):
        super().__init__()
        self.shortcut = shortcut
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.conv2(y + x if self.shortcut else y)


def dispatches(program) -> int:
    return sum(len(seg.dispatches) for seg in program.plan.segments if hasattr(seg, "recording"))


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("shortcut", [False, True], ids=["conv only", "conv and add"])
def test_a_program_input_feeds_its_first_conv_as_float32(monkeypatch, style, shortcut):
    import convroute
    from test_frontend import reference as model_reference
    from test_frontend import rel_error

    monkeypatch.setenv("CONVROUTE_GEMM_STYLE", style)
    model = Stem(shortcut).eval()
    x = 3.0 * torch.randn(2, 3, 12, 10)
    counts = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("CONVROUTE_FLOAT32_INPUT", flag)
        program = convroute.compile(model, (x,), dtype="float16")
        assert rel_error(program(x), model_reference(model, x)) <= TOL16, flag
        plan = program.plan
        first = next(s for s in plan.steps if s.where == "gpu")
        name = plan.graph.inputs[0]
        assert first.op.float32_input == (name if flag == "1" else None)
        assert list(plan.input_staging) == [name]
        counts[flag] = dispatches(program)
    # the cast goes where nothing else reads the input; the add of the shortcut still needs the f16 copy
    assert counts["1"] == counts["0"] - (0 if shortcut else 1)

"""depthwise in both styles: the GPUs' shader with the window's geometry as constants (one pipeline per
geometry) and CPU adapters' with it in the parameter block give torch's results."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.device.gpu import get_gpu
from convroute.params import make_params
from test_gemm_cpu import use_style

LAYERS = {
    "3x3-s1": make_params((2, 6, 9, 11), (6, 1, 3, 3), 1, 1, groups=6),
    "3x3-s2": make_params((1, 5, 12, 9), (5, 1, 3, 3), 2, 1, groups=5),
    "5x3-s2-d2-mult2": make_params((1, 3, 13, 10), (6, 1, 5, 3), (2, 1), (4, 1), (2, 1), groups=3),
}


@pytest.mark.parametrize("style", ["workgroup", "registers"])
@pytest.mark.parametrize("layer", LAYERS)
def test_depthwise_in_either_style(monkeypatch, style, layer):
    use_style(monkeypatch, style)
    p = LAYERS[layer]
    x, w, b = random_inputs(p, np.random.default_rng(len(layer)))
    out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, activation="relu6", algorithm="depthwise")
    assert_matches(out, reference(p, x, w, b, "relu6"), f"depthwise ({style}) on {p.describe()}")


def test_gpus_compile_the_geometry_in():
    from convroute.kernels.common import Epilogue
    from convroute.kernels.depthwise import Depthwise

    gpu = get_gpu()
    p = LAYERS["3x3-s2"]
    x, w, b = random_inputs(p, np.random.default_rng(3))
    source = Depthwise(gpu, p, w, b, Epilogue()).source
    assert ("const KH: u32 = 3u;" in source and "const SH: u32 = 2u;" in source) == \
        (gpu.profile.gemm_style == "workgroup")

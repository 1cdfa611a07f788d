"""Every distinct conv of ResNet-50, MobileNetV2 and VGG-16, batch 1 and 3, every applicable algorithm.

The routed algorithm runs through `algorithm="auto"` (so routing + API are covered end to end), every other
registered algorithm that accepts the layer is forced; each is checked against the float64 PyTorch reference
(relative error < 1e-4). VGG-16 runs at batch 1 only: its batch-3 layers took 150 s of CI's lavapipe time with the
direct kernel of session 3; batch > 1 stays covered by ResNet-50, MobileNetV2 and the differential fuzz.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import applicable, assert_matches, random_inputs, reference
from convroute import Conv2d
from convroute.bench.suites import load_suite

CASES = [(suite, layer, batch) for suite in ("resnet50", "mobilenet_v2", "vgg16")
         for layer in load_suite(suite).layers for batch in ((1,) if suite == "vgg16" else (1, 3))]


@pytest.mark.parametrize(("suite", "layer", "batch"), CASES,
                         ids=[f"{s}-{layer.name}-b{b}" for s, layer, b in CASES])
def test_layer_every_algorithm(suite, layer, batch):
    p = layer.params(batch)
    x, w, b = random_inputs(p, np.random.default_rng())
    ref = reference(p, x, w, b)
    args = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups, transposed=p.transposed,
                output_padding=p.output_padding)
    routed = Conv2d(w, b, **args)
    assert_matches(routed(x), ref, f"{suite} {layer.name} batch {batch} routed")
    chosen = routed.decision.algorithm
    names = applicable(p)
    assert chosen in names, f"routed to {chosen!r}, which is not among the applicable algorithms {names}"
    for name in names:
        if name != chosen:
            out = Conv2d(w, b, algorithm=name, **args)(x)
            assert_matches(out, ref, f"{suite} {layer.name} batch {batch} {name}")

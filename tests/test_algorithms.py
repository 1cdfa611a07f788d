"""Every registered algorithm against the float64 PyTorch reference on hypothesis-generated convs.

Each example draws one conv (kind, strides, per-axis paddings, dilations, groups, non-square kernels, odd
sizes, batch, output_padding, activation, bias) and runs every algorithm in ALGORITHMS that accepts it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import ACTIVATIONS, applicable, assert_matches, random_inputs, reference
from convroute import conv2d
from convroute.kernels import ALGORITHMS, direct_cpu
from convroute.params import make_params


@pytest.fixture(autouse=True)
def small_direct_register_tiles(monkeypatch):
    """lavapipe compiles a direct register-tile pipeline at its first dispatch, about 1.5 s for the large tiles,
    once per tile, activation and dtype for small layers (direct_cpu's generic kernel); these take the smallest
    tile (test_direct covers the large ones)."""
    monkeypatch.setattr(direct_cpu, "TILES", (direct_cpu.RegisterTile(4, 4),))


KINDS = ("dense", "pointwise", "depthwise", "grouped", "transposed")
EXPECTED = {"direct", "im2col", "pointwise", "depthwise", "transposed"}
small = st.integers(1, 3)


@st.composite
def convs(draw, kind=None):
    """A valid ConvParams of one kind, small enough for lavapipe on two cores."""
    kind = kind or draw(st.sampled_from(KINDS))
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(small), draw(small))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    groups, output_padding, transposed = 1, (0, 0), False
    if kind == "pointwise":
        kh = kw = 1
        c_in, c_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    elif kind == "depthwise":
        c_in = groups = draw(st.integers(1, 9))
        c_out = c_in * draw(st.sampled_from((1, 1, 2)))
    elif kind == "grouped":
        groups = draw(st.integers(2, 3))
        c_in, c_out = groups * draw(small), groups * draw(small)
    elif kind == "transposed":
        transposed = True
        groups = draw(st.sampled_from((1, 1, 2)))
        c_in, c_out = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True))
    else:
        c_in, c_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    # fit the kernel into the padded input so the output is not empty
    if not transposed:
        kh = max(1, min(kh, (h + 2 * padding[0] - 1) // dilation[0] + 1))
        kw = max(1, min(kw, (w + 2 * padding[1] - 1) // dilation[1] + 1))
    weight = (c_in, c_out // groups, kh, kw) if transposed else (c_out, c_in // groups, kh, kw)
    try:
        return make_params((n, c_in, h, w), weight, stride, padding, dilation, groups, transposed=transposed,
                           output_padding=output_padding)
    except ValueError:  # transposed padding can exceed the output; draw again
        assume(False)


def check_all(p, activation, bias, rng):
    names = applicable(p)
    x, w, b = random_inputs(p, rng, bias)
    ref = reference(p, x, w, b, activation)
    for name in names:
        out = conv2d(x, w, b, p.stride, p.padding, p.dilation, p.groups, transposed=p.transposed,
                     output_padding=p.output_padding, activation=activation, algorithm=name)
        assert_matches(out, ref, f"{name} on {p.describe()} act={activation} bias={bias}")
    return names


property_settings = settings(max_examples=100, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("kind", KINDS)
@property_settings
@given(data=st.data())
def test_every_algorithm_matches_torch(kind, data):
    p = data.draw(convs(kind), label="conv")
    activation = data.draw(st.sampled_from(ACTIVATIONS), label="activation")
    bias = data.draw(st.booleans(), label="bias")
    check_all(p, activation, bias, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_every_activation_on_every_kind(activation):
    """Each activation with bias on one fixed conv of each kind, every applicable algorithm."""
    rng = np.random.default_rng()
    for p in (make_params((2, 6, 9, 7), (8, 6, 3, 2), (2, 1), (1, 0)),
              make_params((2, 6, 9, 7), (5, 6, 1, 1), 1, 0),
              make_params((2, 6, 9, 7), (12, 1, 3, 3), 1, 1, groups=6),
              make_params((2, 6, 9, 7), (6, 2, 3, 3), 2, 1, groups=3),
              make_params((2, 6, 5, 4), (6, 4, 3, 3), 2, 1, transposed=True, output_padding=1)):
        check_all(p, activation, True, rng)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_an_algorithm(kind):
    """Every kind of conv can run: guards against the property test above silently running nothing."""
    p = {"dense": make_params((1, 4, 8, 8), (8, 4, 3, 3), 1, 1),
         "pointwise": make_params((1, 4, 8, 8), (8, 4, 1, 1)),
         "depthwise": make_params((1, 4, 8, 8), (4, 1, 3, 3), 1, 1, groups=4),
         "grouped": make_params((1, 4, 8, 8), (8, 2, 3, 3), 1, 1, groups=2),
         "transposed": make_params((1, 4, 8, 8), (4, 8, 2, 2), 2, transposed=True)}[kind]
    assert applicable(p), f"no registered algorithm runs a {kind} conv ({p.describe()})"


def test_all_five_algorithms_registered():
    assert EXPECTED <= set(ALGORITHMS), f"missing algorithms: {sorted(EXPECTED - set(ALGORITHMS))}"


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
def test_nan_and_inf_propagate(transposed):
    """A NaN or Inf in the input poisons exactly the outputs it reaches, as in PyTorch."""
    rng = np.random.default_rng()
    if transposed:
        p = make_params((1, 4, 6, 6), (4, 4, 3, 3), 1, 1, transposed=True)
    else:
        p = make_params((1, 4, 6, 6), (4, 4, 3, 3), 1, 1)
    x, w, b = random_inputs(p, rng)
    x[0, 1, 2, 3] = np.nan
    x[0, 2, 0, 0] = np.inf
    ref = reference(p, x, w, b)
    for name in applicable(p):
        for activation in (None, "relu"):
            out = conv2d(x, w, b, 1, 1, transposed=transposed, algorithm=name, activation=activation)
            expect = reference(p, x, w, b, activation)
            where = f"{name} act={activation}"
            np.testing.assert_array_equal(np.isnan(out), np.isnan(expect), err_msg=f"{where}: NaN pattern")
            np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expect), err_msg=f"{where}: +Inf")
            np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expect), err_msg=f"{where}: -Inf")
            finite = np.isfinite(expect)
            assert finite.any() and np.isnan(ref).any()
            assert_matches(np.where(finite, out, 0).astype(np.float32), np.where(finite, expect, 0), where)

"""Bad input gets a ValueError/TypeError whose message names the problem; good input in every accepted form
(CPU torch tensors, float16/64, non-contiguous arrays, int or pair arguments) gives PyTorch's result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_matches, random_inputs, reference
from convroute import Conv2d, conv2d, make_params, route
from convroute.device.gpu import get_gpu


def arr(*shape, dtype=np.float32):
    return np.random.default_rng().uniform(-1, 1, shape).astype(dtype)


X = arr(1, 4, 8, 8)
W = arr(8, 4, 3, 3)


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: conv2d(X, arr(8, 3, 3, 3)), ValueError, "channel mismatch: input has 4 channels"),
    (lambda: conv2d(X, arr(3, 8, 2, 2), transposed=True, stride=2), ValueError,
     "channel mismatch: input has 4 channels but the transposed weight"),
    (lambda: conv2d(X, arr(6, 1, 3, 3), groups=3), ValueError, "groups=3 does not divide the 4 input channels"),
    (lambda: conv2d(X, arr(6, 1, 3, 3), groups=4), ValueError, "groups=4 does not divide the 6 output channels"),
    (lambda: conv2d(X, W, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: conv2d(X, W, padding=(1, -2)), ValueError, "padding must be non-negative"),
    (lambda: conv2d(X, W, stride=0), ValueError, "stride must be positive"),
    (lambda: conv2d(X, W, stride=(1, 0)), ValueError, "stride must be positive"),
    (lambda: conv2d(X, W, dilation=0), ValueError, "dilation must be positive"),
    (lambda: conv2d(X, W, groups=0), ValueError, "groups must be positive"),
    (lambda: conv2d(X, arr(8, 4, 9, 3)), ValueError, "empty output"),
    (lambda: conv2d(X, W, dilation=5), ValueError, "empty output"),
    (lambda: conv2d(X, arr(4, 8, 5, 5), transposed=True, padding=6), ValueError, "empty output"),
    (lambda: conv2d(arr(0, 4, 8, 8), W), ValueError, "empty dimension"),
    (lambda: conv2d(X.astype(np.int32), W), TypeError, "input must be a floating-point tensor"),
    (lambda: conv2d(X, W.astype(np.int64)), TypeError, "weight must be a floating-point tensor"),
    (lambda: conv2d(X > 0, W), TypeError, "floating-point"),
    (lambda: conv2d(X.astype(np.complex64), W), TypeError, "floating-point"),
    (lambda: conv2d(torch.ones(1, 4, 8, 8, dtype=torch.int32), W), TypeError, "floating-point"),
    (lambda: conv2d(X.tolist(), W), TypeError, "input must be a numpy array or a torch tensor"),
    (lambda: conv2d(X, W, arr(8).astype(np.int8)), TypeError, "bias must be a floating-point tensor"),
    (lambda: conv2d(X[0], W), ValueError, "input must be 4-D NCHW"),
    (lambda: conv2d(X[None], W), ValueError, "input must be 4-D NCHW"),
    (lambda: conv2d(X, W[0]), ValueError, "weight must be 4-D"),
    (lambda: conv2d(X, W, arr(7)), ValueError, "bias must have shape (8,)"),
    (lambda: conv2d(X, W, arr(8, 1)), ValueError, "bias must have shape (8,)"),
    (lambda: conv2d(X, arr(4, 2, 2, 2), arr(2), transposed=True, groups=2, stride=2), ValueError,
     "bias must have shape (4,)"),
    (lambda: conv2d(X, W, algorithm="fft"), ValueError, "unknown algorithm 'fft'"),
    (lambda: conv2d(X, arr(4, 8, 3, 3), transposed=True, algorithm="im2col"), ValueError,
     "algorithm 'im2col' cannot run conv_transpose2d"),
    (lambda: conv2d(X, W, algorithm="depthwise"), ValueError, "algorithm 'depthwise' cannot run conv2d"),
    (lambda: conv2d(X, W, algorithm="pointwise"), ValueError, "pointwise needs a 1x1 kernel"),
    (lambda: conv2d(X, arr(4, 8, 3, 3), transposed=True, algorithm="direct"), ValueError,
     "algorithm 'direct' cannot run conv_transpose2d"),
    (lambda: conv2d(X, W, algorithm="transposed"), ValueError, "not a transposed convolution"),
    (lambda: conv2d(X, arr(8, 2, 3, 3), groups=2, algorithm="im2col"), ValueError, "needs groups == 1"),
    (lambda: conv2d(X, W, activation="swish"), ValueError, "unknown activation 'swish'"),
    (lambda: conv2d(X, W, activation=("clamp", 1.0, -1.0)), ValueError, "clamp activation needs lo <= hi"),
    (lambda: conv2d(X, W, output_padding=1), ValueError, "output_padding is only valid for a transposed"),
    (lambda: conv2d(X, arr(4, 8, 3, 3), transposed=True, stride=2, output_padding=2), ValueError,
     "output_padding (2, 2) must be smaller than stride or dilation"),
    (lambda: conv2d(X, W, stride=(1, 2, 3)), TypeError, "stride must be an int or a pair of ints"),
    (lambda: conv2d(X, W, padding=1.5), TypeError, "padding must be an int or a pair of ints"),
    (lambda: conv2d(X, W, dilation=True), TypeError, "dilation must be an int or a pair of ints"),
    (lambda: conv2d(X, W, groups=1.0), TypeError, "groups must be an int"),
    (lambda: conv2d(X, W, policy="fastest"), ValueError, "unknown policy 'fastest'"),
    (lambda: conv2d(X, W, device="voodoo"), ValueError, "unknown device family 'voodoo'"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value), f"message {str(info.value)!r} does not name the problem ({words!r})"


def test_prepacked_layer_rejects_a_mismatched_input():
    layer = Conv2d(W, padding=1)
    layer(X)
    with pytest.raises(ValueError, match="channel mismatch: input has 3 channels"):
        layer(arr(1, 3, 8, 8))
    with pytest.raises(ValueError, match="input must be 4-D"):
        layer(arr(4, 8, 8))


def test_unknown_algorithm_rejected_before_any_input():
    with pytest.raises(ValueError, match="unknown algorithm 'winograd'"):
        Conv2d(W, algorithm="winograd")


def test_transposed_image_larger_than_a_storage_binding(monkeypatch):
    """A forward conv's oversized image runs in bands of rows (tests/test_splitting.py); a transposed conv's
    is refused by name."""
    monkeypatch.setitem(get_gpu().profile.limits, "max-storage-buffer-binding-size", 4096)
    with pytest.raises(ValueError, match=r"one image of .* needs 8192 bytes, more than the device's largest "
                                         r"storage binding \(4096 bytes\)"):
        conv2d(arr(2, 8, 16, 16), arr(8, 4, 3, 3), transposed=True, padding=1)  # the gather, whose weights fit


def test_weights_larger_than_a_storage_binding(monkeypatch):
    monkeypatch.setitem(get_gpu().profile.limits, "max-storage-buffer-binding-size", 4096)
    with pytest.raises(ValueError, match="packed weights needs .* bytes, more than this device's largest storage"):
        conv2d(arr(1, 64, 2, 2), arr(64, 64, 1, 1), algorithm="direct")


def test_torch_tensors_and_pair_arguments():
    p = make_params((2, 6, 11, 9), (4, 3, 3, 2), (2, 1), (1, 0), (1, 2), 2)
    x, w, b = random_inputs(p, np.random.default_rng())
    ref = reference(p, x, w, b, "relu6")
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w).requires_grad_(), torch.from_numpy(b)
    for stride, padding, dilation in (((2, 1), (1, 0), (1, 2)), ([2, 1], [1, 0], [1, 2])):
        out = conv2d(xt, wt, bt, stride, padding, dilation, 2, activation="relu6")
        assert isinstance(out, np.ndarray)
        assert_matches(out, ref, f"torch tensors, stride {stride!r}")
    out = conv2d(xt.double(), wt.half().float(), bt.double(), (2, 1), (1, 0), (1, 2), 2, activation="relu6")
    assert_matches(out, reference(p, x, wt.half().float().detach().numpy(), b, "relu6"), "float64 / fp16 weights")


def test_int_arguments_equal_pairs_and_non_contiguous_input():
    p = make_params((1, 5, 10, 10), (7, 5, 3, 3), 2, 1, 2)
    x, w, b = random_inputs(p, np.random.default_rng())
    ref = reference(p, x, w, b)
    x_strided = np.asfortranarray(x)
    assert not x_strided.flags.c_contiguous
    assert_matches(conv2d(x_strided, w, b, 2, 1, 2), ref, "int arguments, Fortran-ordered input")
    assert_matches(conv2d(x, w, b, (2, 2), (1, 1), (2, 2)), ref, "pair arguments")
    assert_matches(conv2d(x.astype(np.float16).astype(np.float64), w, b, 2, 1, 2),
                   reference(p, x.astype(np.float16), w, b), "float64 input of fp16 values")


def test_direct_refuses_loops_past_the_lavapipe_limit():
    if get_gpu().profile.family != "cpu":
        pytest.skip("the loop limit is lavapipe's")
    # direct loops C_in times per invocation on CPU adapters (taps unrolled): 65536, one past the limit
    x = np.random.default_rng(0).standard_normal((1, 65536, 1, 1)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((2, 65536, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="lavapipe silently stops loops"):
        conv2d(x, w, padding=1, algorithm="direct")


def test_an_adapter_choice_that_matches_nothing_is_an_error(monkeypatch):
    import re

    import convroute.device.gpu as gpu_module

    monkeypatch.setenv("CONVROUTE_ADAPTER", "no-such-gpu")
    found = gpu_module.list_adapters()[0].info["device"]
    with pytest.raises(RuntimeError, match="CONVROUTE_ADAPTER='no-such-gpu' matches no adapter; found: .*"):
        gpu_module.choose_adapter(gpu_module.list_adapters())
    monkeypatch.setattr(gpu_module, "_GPU", None)  # as in a fresh process (the open device comes back after)
    with pytest.raises(RuntimeError, match=f"no-such-gpu.*{re.escape(found)}"):
        conv2d(X, W)


def test_the_decision_follows_the_batch(monkeypatch):
    """One layer called with batch 1, 2, then 1: each call routes (and says why) for its own batch."""
    p1 = make_params((1, 4, 8, 8), (8, 4, 3, 3), padding=1)
    x, w, b = random_inputs(p1, np.random.default_rng(5))
    layer = Conv2d(w, b, padding=1)
    for n in (1, 2, 1):
        xn = np.concatenate([x] * n)
        assert_matches(layer(xn), reference(p1.with_batch(n), xn, w, b), f"batch {n}")
        assert layer.decision == route(xn.shape, w.shape, padding=1, dtype="float32")
        assert ("batch > 1" in layer.decision.reason) == (n > 1)


def test_autotuned_algorithm_follows_the_batch():
    """Autotune's measurements are per batch: a batch-2 call must not reuse the batch-1 winner."""
    from convroute.router.autotune import AutotuneCache
    from convroute.router.exclusions import applicable

    p1 = make_params((1, 4, 8, 8), (8, 4, 3, 3), padding=1)
    profile = get_gpu().profile
    names = applicable(p1)
    for n, winner in ((1, "direct"), (2, "im2col")):
        times = {name: 1.0 if name == winner else 2.0 for name in names}
        AutotuneCache(profile.key).put(p1.with_batch(n), {"algorithm": winner, "times_ms": times,
                                                         "method": "test", "when": "now"})
    x, w, b = random_inputs(p1, np.random.default_rng(6))
    layer = Conv2d(w, b, padding=1, policy="autotune")
    for n, winner in ((1, "direct"), (2, "im2col"), (1, "direct")):
        xn = np.concatenate([x] * n)
        assert_matches(layer(xn), reference(p1.with_batch(n), xn, w, b), f"batch {n}")
        assert layer.decision.algorithm == winner and "cached" in layer.decision.reason

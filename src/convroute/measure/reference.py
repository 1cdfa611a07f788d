"""The float64 reference of a conv (PyTorch's when torch is importable, else a numpy one, so results can be
checked without torch), the two relative errors results are judged by, and the bounds they must stay under."""

from __future__ import annotations

import math

import numpy as np

from convroute.params import ConvParams

# relative error at or above which a result is wrong (fp32 gives ~1e-6, fp16 storage ~1e-3)
TOLERANCES = {"float32": 1e-4, "float16": 1e-2}


def reference_conv(p: ConvParams, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The exact result of `p` on (x, weight, bias) in float64, PyTorch semantics and layouts."""
    x = np.asarray(x, np.float64)
    w = np.asarray(weight, np.float64)
    if x.shape != p.input_shape or w.shape != p.weight_shape:
        raise ValueError(f"reference_conv: got input {x.shape} and weight {w.shape} for {p.describe()}")
    if p.transposed:
        y = _transposed(p, x, w)
    else:
        y = _conv(x, w, p.stride, p.padding, p.dilation, p.groups, (p.ho, p.wo))
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return y


def _conv(x, w, stride, padding, dilation, groups, out_hw) -> np.ndarray:
    """Sum over kernel taps of a (grouped) matrix product; memory stays O(input + output)."""
    n, c_in, _, _ = x.shape
    c_out, cin_g, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), (ho, wo) = stride, padding, dilation, out_hw
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    xg = xp.reshape(n, groups, cin_g, xp.shape[2], xp.shape[3])
    wg = w.reshape(groups, c_out // groups, cin_g, kh, kw)
    y = np.zeros((n, groups, c_out // groups, ho * wo))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            tap = xg[:, :, :, rows, cols].reshape(n, groups, cin_g, ho * wo)
            y += np.matmul(wg[:, :, :, i, j], tap)  # [G, Co_g, Ci_g] @ [N, G, Ci_g, P]
    return y.reshape(n, c_out, ho, wo)


def _transposed(p: ConvParams, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """conv_transpose2d as a stride-1 conv of the zero-stuffed input with the flipped, regrouped kernel."""
    n, c_in, h, wd = x.shape
    (sh, sw), (dh, dw), g = p.stride, p.dilation, p.groups
    stuffed = np.zeros((n, c_in, (h - 1) * sh + 1, (wd - 1) * sw + 1))
    stuffed[:, :, ::sh, ::sw] = x
    # full padding d*(k-1) on each side, minus the conv's padding, plus output_padding at the bottom/right
    top, left = dh * (p.kh - 1) - p.padding[0], dw * (p.kw - 1) - p.padding[1]
    bottom, right = top + p.output_padding[0], left + p.output_padding[1]
    stuffed = np.pad(stuffed, ((0, 0), (0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0))))
    stuffed = stuffed[:, :, max(-top, 0):stuffed.shape[2] - max(-bottom, 0),
                      max(-left, 0):stuffed.shape[3] - max(-right, 0)]
    cin_g, cout_g = c_in // g, p.c_out // g
    wc = w.reshape(g, cin_g, cout_g, p.kh, p.kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    wc = wc.reshape(p.c_out, cin_g, p.kh, p.kw)
    return _conv(stuffed, wc, (1, 1), (0, 0), p.dilation, g, (p.ho, p.wo))


def torch_reference(p: ConvParams, x, weight, bias=None) -> np.ndarray:
    """PyTorch's conv2d / conv_transpose2d on float64 copies of the inputs."""
    import torch
    import torch.nn.functional as F

    xt, wt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(weight, np.float64))
    bt = None if bias is None else torch.from_numpy(np.asarray(bias, np.float64))
    with torch.no_grad():
        if p.transposed:
            y = F.conv_transpose2d(xt, wt, bt, p.stride, p.padding, p.output_padding, p.groups, p.dilation)
        else:
            y = F.conv2d(xt, wt, bt, p.stride, p.padding, p.dilation, p.groups)
    return y.numpy()


def float64_reference(p: ConvParams, x, weight, bias=None) -> tuple[np.ndarray, str]:
    """(result, its source): PyTorch's float64 conv when torch is importable, else reference_conv."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return reference_conv(p, x, weight, bias), "numpy float64"
    return torch_reference(p, x, weight, bias), "torch float64"


def norm_relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| (calibration, autotune, the CLI's conv/suite checks, peer comparisons); inf when
    shapes differ or `out` has NaN/Inf where `ref` is finite (an unwritten output)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or (~np.isfinite(out) & np.isfinite(ref)).any():
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def max_relative_error(out: np.ndarray, ref: np.ndarray, scale: float = 0.0) -> float:
    """max|out - ref| / max(max|ref|, scale) (the self-test and the model zoo: one wrong element among thousands
    counts in full); inf when shapes differ or `out` is NaN/Inf where `ref` is finite (an unwritten, poisoned
    output). `scale`: the magnitude the kernel computed at, when an activation bounded the reference below it."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or (~np.isfinite(out) & np.isfinite(ref)).any():
        return math.inf
    if not out.size:
        return 0.0
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), scale, 1e-30))

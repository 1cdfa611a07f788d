"""The `etvk` policy: ET-VK's follow-up to the seed rule (`impl/convolution/conv2d/Conv2d.cpp`, open PR #22782).

A sliding-window conv with groups 1 and dilation 1 takes im2col when C_out >= 128 (the GEMM reads the gathered
matrix back C_out times), or, on a Mali only, when the gather H_out*W_out*C_in*Kh*Kw is at most 32 Mi elements
(small enough to be cheap outright). Every other conv routes as `seed`. Unlike the seed, a Mali no longer takes
im2col whatever the shape: a narrow conv with a large gather stays on the direct path.

The gather is counted per image, as ET-VK does (it rejects batch > 1).
"""

from __future__ import annotations

from convroute.device.profile import DeviceProfile
from convroute.params import ConvParams
from convroute.router.seed import IM2COL_MIN_COUT, batch_note, method_route

MAX_CHEAP_GATHER = 32 * 1024 * 1024  # elements: 33,554,432


def gather_elements(p: ConvParams) -> int:
    """Elements of ET-VK's im2col matrix for one image: H_out*W_out rows of C_in/groups*Kh*Kw."""
    return p.ho * p.wo * (p.c_in // p.groups) * p.kh * p.kw


def etvk_route(p: ConvParams, device: DeviceProfile) -> tuple[str, str]:
    routed = method_route(p)
    if routed:
        return routed
    note = batch_note(p)
    if p.c_out >= IM2COL_MIN_COUT:
        return "im2col", (f"groups 1, dilation 1, Kh*Kw > 1 and C_out {p.c_out} >= {IM2COL_MIN_COUT} "
                          f"-> im2col + GEMM" + note)
    if device.family != "mali":
        return "direct", f"C_out {p.c_out} < {IM2COL_MIN_COUT} on a non-Mali GPU ({device.family}) -> direct" + note
    gather = gather_elements(p)
    if gather <= MAX_CHEAP_GATHER:
        return "im2col", (f"C_out {p.c_out} < {IM2COL_MIN_COUT} on an ARM Mali but the gather "
                          f"H_out*W_out*C_in*Kh*Kw = {gather} <= {MAX_CHEAP_GATHER} is cheap -> im2col + GEMM"
                          + note)
    return "direct", (f"C_out {p.c_out} < {IM2COL_MIN_COUT} on an ARM Mali and the gather H_out*W_out*C_in*Kh*Kw "
                      f"= {gather} > {MAX_CHEAP_GATHER} -> direct" + note)

"""The `seed` policy: ExecuTorch Vulkan's conv routing rule of PR #20059, reproduced exactly, with named
preconditions.

ET-VK first picks a method from the weight shape alone (`get_conv2d_method`): transposed, depthwise
(C_out == groups, one input channel per group), pointwise (1x1 kernel) or sliding window (everything else).
Only sliding-window convs reach the im2col decision (`should_use_conv2d_im2col`); `force_direct` bypasses
that decision and nothing else.
"""

from __future__ import annotations

from convroute.device.profile import DeviceProfile
from convroute.params import ConvParams

IM2COL_MIN_COUT = 128


def is_sliding_window(p: ConvParams) -> bool:
    """ET-VK's SlidingWindow method: not transposed, not depthwise, kernel not 1x1 (grouped 1x1s are pointwise
    there). The convs `force_direct` sends to direct."""
    return not p.transposed and not p.is_depthwise_without_multiplier and (p.kh, p.kw) != (1, 1)


def im2col_candidate(p: ConvParams) -> bool:
    """Where ET-VK asks its im2col heuristic at all: groups 1, dilation 1, Kh*Kw > 1 (not transposed)."""
    return not p.transposed and p.groups == 1 and p.dilation == (1, 1) and p.kh * p.kw > 1


def batch_note(p: ConvParams) -> str:
    return " (ET-VK also rejects batch > 1; convroute runs it the same way)" if p.n > 1 else ""


def method_route(p: ConvParams) -> tuple[str, str] | None:
    """(algorithm, reason) for every conv outside the im2col decision, shared by seed and etvk; None for the
    convs the im2col heuristic decides (see im2col_candidate)."""
    note = batch_note(p)
    if p.transposed:
        if p.dilation != (1, 1):
            return "transposed", ("transposed conv -> transposed path; ET-VK rejects dilated transposed convs, "
                                  "convroute's transposed path handles them")
        return "transposed", ("transposed conv -> transposed path (ET-VK never sends transposed convs to im2col, "
                              "whatever C_out or kernel)" + note)
    if p.is_depthwise_without_multiplier:
        return "depthwise", f"depthwise (C_out == groups == C_in == {p.c_in}) -> depthwise path" + note
    if (p.kh, p.kw) == (1, 1) and p.groups == 1:
        return "pointwise", "1x1 kernel with groups == 1 -> pointwise path" + note
    if p.groups > 1:
        return "direct", (f"grouped conv (groups={p.groups}) that is not depthwise: ET-VK rejects it, "
                          "convroute runs it on the direct path")
    if p.dilation != (1, 1):
        return "direct", f"dilation {p.dilation} != 1 -> direct (im2col needs dilation 1)" + note
    return None


def seed_route(p: ConvParams, device: DeviceProfile) -> tuple[str, str]:
    """(algorithm, reason) for one conv on one device."""
    routed = method_route(p)
    if routed:
        return routed
    # here groups == 1 and the kernel is not 1x1, so Kh*Kw > 1: only the device and C_out decide
    note = batch_note(p)
    if device.family == "mali":
        return "im2col", "groups 1, dilation 1, Kh*Kw > 1 on an ARM Mali -> im2col + GEMM" + note
    if p.c_out >= IM2COL_MIN_COUT:
        return "im2col", (f"groups 1, dilation 1, Kh*Kw > 1 and C_out {p.c_out} >= {IM2COL_MIN_COUT} "
                          f"-> im2col + GEMM" + note)
    return "direct", f"C_out {p.c_out} < {IM2COL_MIN_COUT} on a non-Mali GPU ({device.family}) -> direct" + note

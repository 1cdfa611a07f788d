"""The `seed` policy: ExecuTorch Vulkan's conv routing rule, reproduced exactly, with named preconditions."""

from __future__ import annotations

from convroute.device.profile import DeviceProfile
from convroute.params import ConvParams

IM2COL_MIN_COUT = 128


def seed_route(p: ConvParams, device: DeviceProfile, force_direct: bool = False) -> tuple[str, str]:
    """(algorithm, reason) for one conv on one device."""
    is_transposed = p.transposed
    is_depthwise = not p.transposed and p.c_out == p.groups == p.c_in
    is_1x1 = p.kh == 1 and p.kw == 1
    is_grouped = p.groups > 1
    is_dilated = p.dilation != (1, 1)
    is_mali = device.family == "mali"
    wide_output = p.c_out >= IM2COL_MIN_COUT
    et_vk_note = " (ET-VK also rejects batch > 1; convroute runs it the same way)" if p.n > 1 else ""

    if is_transposed:
        if is_dilated:
            return "transposed", ("transposed conv -> transposed path; ET-VK rejects dilated transposed convs, "
                                  "convroute's transposed path handles them")
        return "transposed", ("transposed conv -> transposed path (ET-VK never sends transposed convs to im2col, "
                              "whatever C_out or kernel)" + et_vk_note)
    if force_direct:
        return "direct", "force_direct is set: every sliding-window conv takes the direct path"
    if is_depthwise:
        return "depthwise", f"depthwise (C_out == groups == C_in == {p.c_in}) -> depthwise path" + et_vk_note
    if is_1x1 and not is_grouped:
        return "pointwise", "1x1 kernel with groups == 1 -> pointwise path" + et_vk_note
    if is_grouped:
        return "direct", (f"grouped conv (groups={p.groups}) that is not depthwise: ET-VK rejects it, "
                          "convroute runs it on the direct path")
    if is_dilated:
        return "direct", f"dilation {p.dilation} != 1 -> direct (im2col needs dilation 1)" + et_vk_note
    # here groups == 1 and the kernel is not 1x1, so Kh*Kw > 1: only the device and C_out decide
    if is_mali:
        return "im2col", ("groups 1, dilation 1, Kh*Kw > 1 on an ARM Mali -> im2col + GEMM" + et_vk_note)
    if wide_output:
        return "im2col", (f"groups 1, dilation 1, Kh*Kw > 1 and C_out {p.c_out} >= {IM2COL_MIN_COUT} "
                          f"-> im2col + GEMM" + et_vk_note)
    return "direct", (f"C_out {p.c_out} < {IM2COL_MIN_COUT} on a non-Mali GPU ({device.family}) -> direct"
                      + et_vk_note)

"""How a conv splits to fit the device's largest storage binding: images per dispatch, output rows per band."""

from __future__ import annotations

from convroute.params import ConvParams


def image_bytes(p: ConvParams, itemsize: int = 4) -> int:
    """The larger of one image's input and output."""
    return itemsize * max(p.c_in * p.h * p.w, p.c_out * p.ho * p.wo)


def band_rows(p: ConvParams, max_binding: int, itemsize: int = 4) -> int:
    """Output rows per band so that the band's output and the input rows it reads each fit one binding."""
    (sh, _), (dh, _) = p.stride, p.dilation
    out_row, in_row = itemsize * p.c_out * p.wo, itemsize * p.c_in * p.w
    rows = max_binding // out_row
    while rows >= 1 and in_row * ((rows - 1) * sh + (p.kh - 1) * dh + 1) > max_binding:
        rows = min(rows - 1, max(1, (max_binding // in_row - (p.kh - 1) * dh - 1) // sh + 1))
    if rows < 1:
        raise ValueError(f"one output row of {p.describe()} needs more than the device's largest storage binding "
                         f"({max_binding} bytes) for its input rows or its output")
    return min(rows, p.ho)


def batch_chunk(p: ConvParams, max_binding: int, itemsize: int = 4) -> int:
    """Images per dispatch so that input and output each fit one storage binding."""
    per_image = image_bytes(p, itemsize)
    if per_image > max_binding:
        raise ValueError(f"one image of {p.describe()} needs {per_image} bytes, more than the device's largest "
                         f"storage binding ({max_binding} bytes)")
    return max(1, min(p.n, max_binding // per_image))

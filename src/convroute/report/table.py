"""The one table formatter (columns aligned under a ruled head) and the short text of a conv's shape."""

from __future__ import annotations

from convroute.params import ConvParams


def format_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns aligned under a ruled head; the first `left` columns left-justified, the rest right-justified."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shape_text(p: ConvParams) -> str:
    kind = "T" if p.transposed else ""
    extra = ""
    if p.groups > 1:
        extra += " dw" if p.is_depthwise else f" g{p.groups}"
    if p.dilation != (1, 1):
        extra += f" d{p.dilation[0]}"
    k = f"{p.kh}" if p.kh == p.kw else f"{p.kh}x{p.kw}"
    s = f"{p.stride[0]}" if p.stride[0] == p.stride[1] else f"{p.stride[0]}x{p.stride[1]}"
    return f"{p.c_in}x{p.h}x{p.w}>{p.c_out} {kind}k{k}s{s}{extra}"

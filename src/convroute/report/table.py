"""The one table formatter (columns aligned under a ruled head, fitted to the output width), the one wrapper of
long prose lines, and the short text of a conv's shape.

The width is unlimited for library calls; the command line sets 120 columns for the length of a command
(`output_width`), and `--wide` lifts it."""

from __future__ import annotations

import contextlib
import textwrap

from convroute.params import ConvParams

COLUMNS = 120  # the command line's default output width
MIN_TEXT = 16  # a text column is cut to no fewer characters (or its header's length, when longer)
CUT = "~"  # ends a cell cut to fit
_width: int | None = None  # None: no limit


def output_width() -> int | None:
    return _width


@contextlib.contextmanager
def width_limit(columns: int | None):
    """Tables and prose fit `columns` (None: no limit) inside the block."""
    global _width
    before, _width = _width, columns
    try:
        yield
    finally:
        _width = before


def format_table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Columns aligned under a ruled head; the first `left` columns left-justified (text), the rest right-justified.

    Wider than the output width, the widest text columns are cut first (cells end with '~'); if that is not
    enough, the right-justified columns go on in further blocks, each repeating the first column."""
    cells = [[str(c) for c in row] for row in [head] + rows]
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=True)]
    limit = _width
    if limit is None or _line_width(widths) <= limit:
        return _render(cells, widths, left)
    floors = [max(len(head[i]), MIN_TEXT) if i < left else w for i, w in enumerate(widths)]
    if _line_width([min(w, f) for w, f in zip(widths, floors, strict=True)]) <= limit:
        keys = None  # cutting text is enough
        _narrow(widths, floors, range(len(widths)), limit)
    else:  # blocks: the text columns that start every block take at most half the width
        keys = list(range(left))
        _narrow(widths, floors, keys, limit // 2)
        if _line_width([widths[i] for i in keys]) > limit // 2:
            keys, widths[0] = [0], min(widths[0], limit // 2)
        room = limit - _line_width([widths[i] for i in keys]) - 2
        widths = [w if i in keys else min(w, room) for i, w in enumerate(widths)]
    cut = [[_cut(c, widths[i]) for i, c in enumerate(row)] for row in cells]
    note = [f"({CUT}: cut to fit {limit} columns; --wide prints every cell whole)"] if cut != cells else []
    if keys is None:
        return "\n".join([_render(cut, widths, left)] + note)
    blocks = [_render([[row[i] for i in block] for row in cut], [widths[i] for i in block], len(keys))
              for block in _blocks(widths, keys, limit)]
    return "\n\n".join(blocks + note)


def _narrow(widths: list[int], floors: list[int], columns, limit: int) -> None:
    """Narrow the widest of `columns` by one character at a time, none below its floor, until they fit."""
    columns = list(columns)
    while _line_width([widths[i] for i in columns]) > limit:
        cuttable = [i for i in columns if widths[i] > floors[i]]
        if not cuttable:
            return
        widths[max(cuttable, key=lambda i: widths[i])] -= 1


def fit_text(text: str) -> str:
    """Each line longer than the output width wrapped, its continuation lines indented 4 more than it."""
    limit = _width
    if limit is None:
        return text
    lines = []
    for line in text.splitlines():
        if len(line) <= limit:
            lines.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        lines += textwrap.wrap(line, limit, subsequent_indent=indent, break_on_hyphens=False)
    return "\n".join(lines)


def _line_width(widths: list[int]) -> int:
    return sum(widths) + 2 * (len(widths) - 1)


def _cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[:width - len(CUT)] + CUT


def _blocks(widths: list[int], keys: list[int], limit: int) -> list[list[int]]:
    """Column indices of each block: the key columns, then as many of the others as fit (at least one)."""
    blocks, block = [], list(keys)
    for i in range(len(keys), len(widths)):
        if len(block) > len(keys) and _line_width([widths[j] for j in block + [i]]) > limit:
            blocks.append(block)
            block = list(keys)
        block.append(i)
    return blocks + [block]


def _render(cells: list[list[str]], widths: list[int], left: int) -> str:
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             .rstrip() for row in cells]
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

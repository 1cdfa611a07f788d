"""The one progress bar: tqdm's (the [report] extra) when it is installed and wanted, else none."""

from __future__ import annotations

from collections.abc import Iterable


def progress_bar(items: Iterable, desc: str, unit: str, enabled: bool = True, *, leave: bool = True):
    """`items`, iterated through a bar on stderr when `enabled` and tqdm is installed; either way the result
    also takes `set_postfix_str(text)` (shown beside the bar) and `close()` (for a loop left early)."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return _NoBar(items)
    return tqdm(items, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)


class _NoBar:
    def __init__(self, items: Iterable):
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

"""The one progress bar: tqdm's (the [report] extra) when it is installed and wanted, else none.

The bar shows the time left only once it means something: after ETA_AFTER_ITEMS items and ETA_AFTER_SHARE of
them (the first items pay for compiling pipelines, so an estimate from them alone is hours off)."""

from __future__ import annotations

from collections.abc import Iterable

ETA_AFTER_ITEMS = 3
ETA_AFTER_SHARE = 0.1
WITHOUT_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
WITH_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(items: Iterable, desc: str, unit: str, enabled: bool = True, *, leave: bool = True):
    """`items`, iterated through a bar on stderr when `enabled` and tqdm is installed; either way the result
    also takes `set_postfix_str(text)` (shown beside the bar) and `close()` (for a loop left early)."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return _NoBar(items)
    total = len(items) if hasattr(items, "__len__") else None
    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave, bar_format=WITHOUT_ETA)
    return _Bar(items, bar, eta_after(total))


def eta_after(total: int | None) -> int | None:
    """How many items must be done before the bar shows the time left (None: never, the total being unknown)."""
    return None if total is None else max(ETA_AFTER_ITEMS, round(ETA_AFTER_SHARE * total))


class _Bar:
    def __init__(self, items: Iterable, bar, eta_after_items: int | None):
        self.items, self.bar, self.eta_after = items, bar, eta_after_items

    def __iter__(self):
        try:
            for item in self.items:
                yield item
                if self.eta_after is not None and self.bar.n + 1 >= self.eta_after:
                    self.bar.bar_format, self.eta_after = WITH_ETA, None
                self.bar.update(1)
        finally:
            self.bar.close()

    def set_postfix_str(self, *args, **kwargs) -> None:
        self.bar.set_postfix_str(*args, **kwargs)

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def __init__(self, items: Iterable):
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

"""``RowSplit``: how many rows of a per-pixel stage ``Pipeline``'s helper thread takes, so that it and the
calling thread finish together. Torch-free.

The two threads do not start together and do not do only this: the helper first wakes up (~0.35 ms on the
2-vCPU dev VM) and, for the remap, rasterises the BEV; the calling thread decodes the boxes before its share
of the semantic argmax. Those costs depend on the point count, the machine and its load, so the split is
learned rather than modelled: after each frame it moves by half the measured difference of the two threads'
finishing times, converted to rows with a running average (EMA) of this thread's milliseconds per row. The
values computed never depend on the split (rows are independent), only the time does.
"""
from __future__ import annotations

import time
from collections.abc import Callable


def finished_at(fn: Callable[..., object], *args) -> float:
    """Run ``fn(*args)``; return the ``perf_counter`` time it finished (the helper's end, for ``RowSplit``)."""
    fn(*args)
    return time.perf_counter()


class RowSplit:
    """Rows for the helper out of ``h``: starts at ``fraction * h``, stays within [1, h - 1] (at least one row
    each, so both finishing times keep being observed)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.split: float | None = None
        self.ms_per_row: float | None = None

    def rows(self, h: int) -> int:
        if self.split is None:
            self.split = self.fraction * h
        return int(round(min(max(self.split, 1), h - 1)))

    def observe(self, h: int, rows: int, ms: float, main_later_ms: float) -> None:
        """This thread did ``rows`` rows in ``ms`` and finished ``main_later_ms`` after the helper."""
        if rows:
            per_row = ms / rows
            self.ms_per_row = per_row if self.ms_per_row is None else 0.8 * self.ms_per_row + 0.2 * per_row
        if self.ms_per_row and self.split is not None:
            self.split = min(max(self.split + 0.5 * main_later_ms / (2 * self.ms_per_row), 1), h - 1)


__all__ = ["RowSplit", "finished_at"]

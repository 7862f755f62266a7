"""Progress reporting: a tqdm bar on standard error, or the caller's callable."""

from __future__ import annotations

import sys
from typing import Any

from parcelout._options import ProgressSpec


class Progress:
    """Counts finished items; ``spec`` True draws a bar, a callable gets
    ``(done, total)`` after each batch (``total`` None when the input has no
    length)."""

    def __init__(self, spec: ProgressSpec, total: int | None) -> None:
        self._done = 0
        self._total = total
        self._callback = spec if callable(spec) else None
        self._bar: Any = None
        if spec is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, unit="item", dynamic_ncols=True, smoothing=0.1)

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._callback is not None:
            self._callback(self._done, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

"""Progress reporting: a tqdm bar on standard error, or the caller's callable."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from parcelout._options import ProgressSpec

BAR_DEFAULTS: dict[str, Any] = {"unit": "item", "dynamic_ncols": True, "smoothing": 0.1}


class Progress:
    """Counts finished items; ``spec`` True draws a bar, a dict of tqdm's
    options draws one made with them (``tqdm_class`` chooses the class, as in
    ``tqdm.contrib.concurrent``; ``total`` gives one for input of unknown
    length), a callable gets ``(done, total)`` after each batch (``total``
    None when the input has no length)."""

    def __init__(self, spec: ProgressSpec, total: int | None) -> None:
        self._done = 0
        self._total = total
        self._callback = spec if callable(spec) and not isinstance(spec, Mapping) else None
        self._bar: Any = None
        if spec is True or isinstance(spec, Mapping):
            options = {
                **BAR_DEFAULTS,
                "file": sys.stderr,
                "total": total,
                **(spec if isinstance(spec, Mapping) else {}),
            }
            make = options.pop("tqdm_class", None)
            if make is None:
                from tqdm.auto import tqdm

                make = tqdm
            self._bar = make(**options)
            self._total = self._bar.total

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        if self._callback is not None:
            self._callback(self._done, self._total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

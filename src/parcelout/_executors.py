"""``ThreadPoolExecutor`` and ``ProcessPoolExecutor`` with the standard
library's signatures: changing the import is the whole migration.

Each is a ``Pool`` with its backend fixed; it adds no policy of its own. The
positional order of the arguments is the standard one (``Pool``'s first
two are ``workers`` and ``backend``), so ``ProcessPoolExecutor(4, ctx)``
means what it means in ``concurrent.futures``.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from parcelout._pool import Pool


class _Standard(Pool):
    """What code written for the standard executors reads besides their API."""

    @property
    def _max_workers(self) -> int:
        return self.workers

    @property
    def _broken(self) -> bool:
        return self._engine is not None and self._engine.broken is not None


class ThreadPoolExecutor(_Standard, concurrent.futures.ThreadPoolExecutor):  # type: ignore[override]
    """``concurrent.futures.ThreadPoolExecutor``, on parcelout thread workers.

    It is an instance of the standard class too (whose methods ``Pool``'s
    all replace), because ``asyncio``'s ``loop.set_default_executor`` takes
    only that."""

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(
            max_workers=max_workers,
            backend="thread",
            thread_name_prefix=thread_name_prefix,
            initializer=initializer,
            initargs=initargs,
        )


class ProcessPoolExecutor(_Standard):
    """``concurrent.futures.ProcessPoolExecutor``, on parcelout process workers:
    a worker that dies fails only its own task, and the pool goes on."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        super().__init__(
            max_workers=max_workers,
            backend="process",
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )

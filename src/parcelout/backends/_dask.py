"""Dask distributed as a cluster for ``ClusterBackend`` (see ``_cluster``).

The client is the one given, one connected to ``address``, or one on a
``LocalCluster`` of process workers started for the pool and closed with
it. On that ``LocalCluster`` Dask does not retry a task whose worker died
(``allowed-failures`` 0), so the pool's scheduler sees and counts every
loss; on a cluster you give it, Dask's own retries come first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from parcelout._options import usable_cpus
from parcelout.backends._cluster import SLOTS_PER_CPU, Outcome
from parcelout.backends._remote import run_task


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "backend='dask' needs Dask distributed, which is not installed: pip install 'parcelout[dask]'"
        ) from exc
    return distributed


class DaskCluster:
    name = "Dask"

    def __init__(self, client: Any = None, address: str | None = None, workers: int | None = None) -> None:
        distributed = _distributed()
        self._killed_worker = distributed.KilledWorker
        self._owned: list[Any] = []
        if client is not None:
            self.client = client
        elif address is not None:
            self.client = distributed.Client(address, set_as_default=False)
            self._owned.append(self.client)
        else:
            import dask

            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                cluster = distributed.LocalCluster(
                    n_workers=workers or usable_cpus(),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            self.client = distributed.Client(cluster, set_as_default=False)
            self._owned += [self.client, cluster]

    def slots(self) -> int:
        threads: int = sum(self.client.nthreads().values())
        return max(1, SLOTS_PER_CPU * threads)

    def submit(self, args: tuple[Any, ...], name: str) -> Any:
        return self.client.submit(run_task, *args, key=name, pure=False)

    def when_done(self, task: Any, callback: Callable[[], None]) -> None:
        task.add_done_callback(lambda _: callback())

    def outcome(self, task: Any) -> Outcome:
        if task.status == "finished":
            return ("done", task.result())
        error = task.exception() if task.status == "error" else None
        if error is None:
            return ("lost", "its Dask task was cancelled")
        if isinstance(error, self._killed_worker):
            return ("lost", f"the Dask worker running it was lost: {error}")
        return ("error", error)

    def cancel(self, tasks: list[Any]) -> None:
        self.client.cancel(tasks)

    def close(self) -> None:
        for owned in self._owned:
            with contextlib.suppress(Exception):  # already closing, or its loop is gone
                owned.close()
        self._owned.clear()

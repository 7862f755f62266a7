"""Dask distributed as a cluster for ``ClusterBackend`` (see ``_cluster``).

The client is the one given, one connected to ``address``, or one on a
``LocalCluster`` of process workers started for the pool and closed with
it. On that ``LocalCluster`` Dask does not retry a task whose worker died
(``allowed-failures`` 0), so the pool's scheduler sees and counts every
loss; on a cluster you give it, Dask's own retries come first.

A task with a task timeout reports each item's start as a Dask event
(``Worker.log_event``) on a topic of the pool's own, which the client
subscribes to (``Client.subscribe_topic``); the parent learns from those
reports which worker runs the task. To stop the task, the parent runs a
small function on that worker (``Client.run``), which wakes the task there.
The scheduler keeps the last events of each topic (its low-level log).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import defaultdict
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


_STOPS: dict[str, Callable[[], None]] = {}  # in a worker process: how to stop each task running there
_STOPS_LOCK = threading.Lock()


class DaskLine:
    """A task's line to the parent (see ``_remote.Line``): events out, and a
    stop by ``Client.run`` in."""

    def __init__(self, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        self._worker: Any = None

    def __getstate__(self) -> tuple[str, str]:
        return (self.topic, self.name)

    def __setstate__(self, state: tuple[str, str]) -> None:
        self.topic, self.name = state
        self._worker = None

    def open(self, stop: Callable[[], None]) -> None:
        self._worker = _distributed().get_worker()  # in the task's own thread, where Dask says which
        with _STOPS_LOCK:
            _STOPS[self.name] = stop

    def started(self, position: int) -> None:
        worker = self._worker
        worker.log_event(self.topic, [self.name, position, worker.address])

    def close(self) -> None:
        with _STOPS_LOCK:
            _STOPS.pop(self.name, None)


def _stop_here(*names: str) -> None:
    """Run by ``Client.run`` on a worker: stop the tasks ``names`` running there."""
    for name in names:
        with _STOPS_LOCK:
            stop = _STOPS.pop(name, None)
        if stop is not None:
            stop()


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
        self._topic = f"parcelout-started-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._listening: dict[str, Callable[[int], None]] = {}
        self._where: dict[str, str] = {}  # task name -> the address of the worker running it
        self._subscribed = False

    def slots(self) -> int:
        threads: int = sum(self.client.nthreads().values())
        return max(1, SLOTS_PER_CPU * threads)

    def submit(self, args: tuple[Any, ...], name: str) -> Any:
        return self.client.submit(run_task, *args, key=name, pure=False)

    def listen(self, name: str, on_started: Callable[[int], None]) -> DaskLine:
        with self._lock:
            self._listening[name] = on_started
            subscribe, self._subscribed = not self._subscribed, True
        if subscribe:  # sent before the task is submitted, on the same stream: no report is missed
            self.client.subscribe_topic(self._topic, self._heard)
        return DaskLine(self._topic, name)

    def _heard(self, event: tuple[float, Any]) -> None:
        """An item started (on the client's event loop)."""
        name, position, address = event[1]
        with self._lock:
            on_started = self._listening.get(name)
            if on_started is None:
                return
            self._where[name] = address
        on_started(position)

    def forget(self, name: str) -> None:
        with self._lock:
            self._listening.pop(name, None)
            self._where.pop(name, None)

    def stop(self, names: list[str]) -> None:
        """Wake each task on its worker (one that reported no start yet is only cancelled)."""
        on: defaultdict[str, list[str]] = defaultdict(list)
        with self._lock:
            for name in names:
                self._listening.pop(name, None)
                address = self._where.pop(name, None)
                if address is not None:
                    on[address].append(name)
        for address, here in on.items():
            with contextlib.suppress(Exception):  # that worker is gone: so is the task
                self.client.run(_stop_here, *here, workers=[address], on_error="ignore")

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
        with self._lock:
            self._listening.clear()
            self._where.clear()
            subscribed, self._subscribed = self._subscribed, False
        if subscribed and not self._owned:  # (a client of our own goes, with its subscriptions)
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self._topic)
        for owned in self._owned:
            with contextlib.suppress(Exception):  # already closing, or its loop is gone
                owned.close()
        self._owned.clear()

"""Ray as a cluster for ``ClusterBackend`` (see ``_cluster``).

``ray.init(address=...)`` when an address is given, or a local Ray instance
otherwise; either is shut down with the pool when the pool started it, and
a Ray that was running already is used as it is. Tasks submitted to a Ray
the pool started are not retried by Ray when their worker dies
(``max_retries=0``), so the pool's scheduler sees and counts every loss; on
a Ray you started, Ray's own retries come first.

For tasks with a task timeout the pool keeps one small actor, a mailbox
(started on the first such batch, with no CPU of its own): a task sends it
each item's start, which a thread of the parent takes and hands on; the
parent sends it a stop, which a thread of the task waits for (or for the
task's end) and which wakes the task. The actor goes with the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from parcelout._options import usable_cpus
from parcelout.backends._cluster import SLOTS_PER_CPU, Outcome
from parcelout.backends._remote import run_task


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install 'parcelout[ray]'") from exc
    return ray


_LISTENER_JOIN = 10.0  # seconds to wait for the listening thread once its mailbox is gone


class Mailbox:
    """The actor between the parent and its tasks. Async, so its waits take
    no thread; and so its calls may run out of the order they were sent in:
    each start carries its number, and a stop or release that comes before
    the task asks for it is kept until it does."""

    def __init__(self) -> None:
        self._notes: list[tuple[str, int, int]] = []
        self._heard = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._answered: dict[str, bool] = {}

    async def started(self, name: str, number: int, position: int) -> None:
        self._notes.append((name, number, position))
        self._heard.set()

    async def take(self) -> list[tuple[str, int, int]]:
        """The starts reported since the last take (waits for one)."""
        await self._heard.wait()
        self._heard.clear()
        notes, self._notes = self._notes, []
        return notes

    async def stopped(self, name: str) -> bool:
        """True once the task ``name`` is stopped, False once it is released."""
        if name in self._answered:
            return self._answered.pop(name)
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[name] = waiting
        return await waiting

    async def stop(self, name: str) -> None:
        self._answer(name, True)

    async def release(self, name: str) -> None:
        self._answer(name, False)

    def _answer(self, name: str, stopped: bool) -> None:
        waiting = self._waiting.pop(name, None)
        if waiting is None:
            self._answered.setdefault(name, stopped)
        elif not waiting.done():
            waiting.set_result(stopped)


class RayLine:
    """A task's line to the parent (see ``_remote.Line``), through the mailbox."""

    def __init__(self, mailbox: Any, name: str) -> None:
        self.mailbox = mailbox
        self.name = name
        self._sent = 0

    def open(self, stop: Callable[[], None]) -> None:
        # Asked before the batch starts; answered whichever comes first, a stop or the release.
        answer = self.mailbox.stopped.remote(self.name)
        threading.Thread(target=_wait_for_stop, args=(answer, stop), name="parcelout-stop-wait", daemon=True).start()

    def started(self, position: int) -> None:
        self._sent += 1
        self.mailbox.started.remote(self.name, self._sent, position)

    def close(self) -> None:
        self.mailbox.release.remote(self.name)


def _wait_for_stop(answer: Any, stop: Callable[[], None]) -> None:
    ray = _ray()
    try:
        stopped = ray.get(answer)
    except ray.exceptions.TaskCancelledError:  # cancelling the task cancels what it asked: the same
        stopped = True
    except Exception:  # the mailbox is gone with its pool
        return
    if stopped:
        stop()


class RayCluster:
    name = "Ray"

    def __init__(self, client: Any = None, address: str | None = None, workers: int | None = None) -> None:
        ray = self._ray = _ray()
        if client is not None:
            raise ValueError("backend='ray' takes an address (or a running Ray), not a client")
        self._owned = not ray.is_initialized()
        if self._owned:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if address is None:  # "local": a new instance, even beside a `ray start` one
                options["num_cpus"] = workers or usable_cpus()
            ray.init(address=address or "local", **options)
        self._remote = ray.remote(run_task)
        # No retries by Ray on a Ray of our own: the pool's scheduler sees every loss.
        self._task_options: dict[str, Any] = {"max_retries": 0} if self._owned and address is None else {}
        self._lock = threading.Lock()
        self._listening: dict[str, list[Any]] = {}  # task name -> [on_started, last start's number]
        self._mailbox: Any = None
        self._listener: threading.Thread | None = None

    def slots(self) -> int:
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, SLOTS_PER_CPU * cpus)

    def submit(self, args: tuple[Any, ...], name: str) -> Any:
        ref = self._remote.options(name=name, **self._task_options).remote(*args)
        return ref, ref.future()  # the future is set by Ray's own thread: never call ray.get there

    def listen(self, name: str, on_started: Callable[[int], None]) -> RayLine:
        with self._lock:
            if self._mailbox is None:
                self._mailbox = self._ray.remote(num_cpus=0, max_restarts=0)(Mailbox).remote()
                self._listener = threading.Thread(
                    target=self._hear, args=(self._mailbox,), name="parcelout-ray-listener", daemon=True
                )
                self._listener.start()
            self._listening[name] = [on_started, 0]
            return RayLine(self._mailbox, name)

    def _hear(self, mailbox: Any) -> None:
        """Hand on the starts the tasks report, until the mailbox is gone."""
        while True:
            try:
                notes = self._ray.get(mailbox.take.remote())
            except Exception:  # killed at close, or the cluster is gone
                return
            for name, number, position in sorted(notes, key=lambda note: note[1]):
                with self._lock:
                    listening = self._listening.get(name)
                    if listening is None or number <= listening[1]:
                        continue  # done, or a start older than one handed on
                    listening[1] = number
                listening[0](position)

    def forget(self, name: str) -> None:
        with self._lock:
            self._listening.pop(name, None)

    def stop(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self._listening.pop(name, None)
            mailbox = self._mailbox
        for name in names:
            mailbox.stop.remote(name)

    def when_done(self, task: Any, callback: Callable[[], None]) -> None:
        task[1].add_done_callback(lambda _: callback())

    def outcome(self, task: Any) -> Outcome:
        exceptions = self._ray.exceptions
        try:
            return ("done", task[1].result())
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError) as error:
            return ("lost", f"the Ray worker running it was lost: {error}")
        except (exceptions.TaskCancelledError, CancelledError):
            return ("lost", "its Ray task was cancelled")
        except exceptions.RayError as error:
            return ("error", error)

    def cancel(self, tasks: list[Any]) -> None:
        for ref, _ in tasks:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref)

    def close(self) -> None:
        with self._lock:
            self._listening.clear()
            mailbox, self._mailbox = self._mailbox, None
            listener, self._listener = self._listener, None
        if mailbox is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(mailbox)  # its pending take fails: the listener ends
        if listener is not None:
            listener.join(_LISTENER_JOIN)
        if self._owned and self._ray.is_initialized():
            self._owned = False
            self._ray.shutdown()

"""Ray as a cluster for ``ClusterBackend`` (see ``_cluster``).

``ray.init(address=...)`` when an address is given, or a local Ray instance
otherwise; either is shut down with the pool when the pool started it, and
a Ray that was running already is used as it is. Tasks submitted to a Ray
the pool started are not retried by Ray when their worker dies
(``max_retries=0``), so the pool's scheduler sees and counts every loss; on
a Ray you started, Ray's own retries come first.
"""

from __future__ import annotations

import contextlib
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

    def slots(self) -> int:
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, SLOTS_PER_CPU * cpus)

    def submit(self, args: tuple[Any, ...], name: str) -> Any:
        ref = self._remote.options(name=name, **self._task_options).remote(*args)
        return ref, ref.future()  # the future is set by Ray's own thread: never call ray.get there

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
        if self._owned and self._ray.is_initialized():
            self._owned = False
            self._ray.shutdown()

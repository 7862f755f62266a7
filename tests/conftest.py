"""Fixtures every test shares.

* ``backend``: runs a behaviour test on every backend (the process backend
  under each start method; interpreters where this Python has them).
* An autouse check that a test leaves no child process and no parcelout
  thread behind.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator

import cloudpickle
import psutil
import pytest

# tqdm reads TQDM_* variables once, when it is imported (a package imported
# while collecting, such as ray, may import it). Import it first, so that the
# variable below turns bars off in the commands the tests start, not in the
# tests' own process, where only a test that asks for a bar gets one.
import tqdm  # noqa: F401

from parcelout.backends._interpreter import available as interpreters_available
from tests.waits import wait_until

os.environ.setdefault("TQDM_DISABLE", "1")

NO_INTERPRETERS = "no sub-interpreters here: Python 3.14+, or 3.13 with parcelout[interpreters]"
BACKENDS = [
    "serial",
    "thread",
    "process",
    pytest.param("interpreter", marks=pytest.mark.skipif(not interpreters_available(), reason=NO_INTERPRETERS)),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    if name != "interpreter":
        yield name
        return
    # A sub-interpreter imports a function's module to unpickle it, and a test
    # module cannot be imported there: it imports hypothesis or psutil, whose
    # extension modules do not load in sub-interpreters. So its functions and
    # classes travel by value, as those of a script do.
    cloudpickle.register_pickle_by_value(request.module)
    try:
        yield name
    finally:
        cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _helper_pids() -> set[int]:
    """multiprocessing's own long-lived helpers: the fork server, the resource tracker."""
    pids = set()
    from multiprocessing import forkserver, resource_tracker

    for pid in (
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    ):
        if pid is not None:
            pids.add(pid)
    return pids


def leftover_children() -> list[psutil.Process]:
    """Every live descendant but multiprocessing's helpers: workers started by
    the fork server are its children, not ours, so look the whole tree down."""
    helpers = _helper_pids()
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in helpers and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def parcelout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("parcelout") and t.is_alive()]


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("leaves_threads"):
        return
    wait_until(lambda: not leftover_children(), 10, "every worker process to exit")
    wait_until(lambda: not parcelout_threads(), 10, "every parcelout thread to end")
    multiprocessing.active_children()  # reap


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaves_threads: the test documents a stray thread; skip the leak check")

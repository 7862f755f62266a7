"""What happens to an item that fails, hangs or takes its worker down.

* Per-item timeouts (``task_timeout=``): the item fails with ``TaskTimeout``; a
  process worker is stopped (SIGTERM, SIGKILL after a grace) and replaced, a
  thread is abandoned and replaced; the rest of its batch runs elsewhere.
* Retries (``retries=``, ``retry_on=``, ``backoff=``) and the crash cap for
  poison items (``max_crashes=``), with ``Failure.attempts`` counting runs.
* Crash reports: ``WorkerCrashed`` says which item, how the worker died, its
  peak memory, its last lines of standard error, and whether it was likely
  out of memory.

Items count their runs in files (process-safe: one file per run, created
with ``O_EXCL``). An item that must be stopped waits on an event: one the
test opens at its end for threads (the abandoned thread then ends), and,
in a worker process, a fresh one nobody sets, bounded by ``BLOCK``. Waits in
items (``threading.Event().wait(seconds)``) simulate work; the test itself
never sleeps.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import parcelout
from parcelout import Failure, Pool, TaskTimeout, WorkerCrashed
from parcelout._options import DEFAULTS
from parcelout.backends._process import likely_out_of_memory
from tests.waits import wait_until

BLOCK = 60.0  # how long an item that must be stopped waits: past any bound below
PROMPTLY = 10.0  # the bound on what should take well under a second
SHORT = 0.3  # the timeout of items that stall
STDERR_LINE = "parcelout-test: this item is about to exit with code 3"

# ``parcelout.imap``'s typed overloads lack the failure-policy options (see
# test_imaps_typed_overloads_take_the_failure_policy_options): call it untyped.
imap: Callable[..., Any] = parcelout.imap

# Timeout tests run on both concurrent backends; on threads the stalled item
# runs on after its timeout, so those tests document a stray thread (the
# ``gate`` fixture ends it at the test's end and waits for it).
TIMEOUT_BACKENDS = [pytest.param("thread", marks=pytest.mark.leaves_threads), "process"]


# ---------------------------------------------------------------- worker functions
# Module-level, so that process workers import them by reference.


def record_run(directory: str, x: int) -> int:
    """Mark one run of item ``x`` with the time; return its number (1 for the first)."""
    run = 1
    while True:
        try:
            fd = os.open(os.path.join(directory, f"{x}.{run}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            run += 1
            continue
        with os.fdopen(fd, "w") as f:
            f.write(repr(time.monotonic()))
        return run


def stall(release: threading.Event | None) -> None:
    """Block until the test opens ``release`` (threads) or the worker is stopped."""
    (release or threading.Event()).wait(BLOCK)


def flaky(directory: str, plan: dict[int, tuple[str, int]], x: int, release: threading.Event | None = None) -> int:
    """Item ``x`` misbehaves as ``plan[x] = (how, n)`` says on its first ``n`` runs, then returns ``10 * x``."""
    run = record_run(directory, x)
    how, times = plan.get(x, ("", 0))
    if run <= times:
        if how == "ValueError":
            raise ValueError(f"item {x} failed on run {run}")
        if how == "KeyError":
            raise KeyError(x)
        if how == "exit":
            os._exit(3)
        if how == "stall":
            stall(release)
        else:
            raise AssertionError(f"unknown misbehaviour {how!r}")
    return 10 * x


def where(directory: str, culprit: int, x: int, release: threading.Event | None = None) -> tuple[int, int, str]:
    """``10 * x``, the pid and the thread that ran it; the culprit writes those down, then stalls."""
    pid, thread = os.getpid(), threading.current_thread().name
    if x == culprit:
        Path(directory, "culprit").write_text(f"{pid}\n{thread}")
        stall(release)
    return 10 * x, pid, thread


def deaf_to_sigterm(directory: str, x: int) -> int:
    """Item 0 ignores SIGTERM, writes down its pid, and stalls."""
    if x == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(directory, "pid").write_text(str(os.getpid()))
        stall(None)
    return 10 * x


def work_for(seconds: float, x: int) -> int:
    threading.Event().wait(seconds)  # simulated work in the worker
    return x


def fail_with_value_error(x: int) -> int:
    raise ValueError(x)


def crash_loudly(x: int) -> int:
    if x == 1:
        print(STDERR_LINE, file=sys.stderr, flush=True)
        os._exit(3)
    return x


def kill_itself(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault_here() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    ctypes.string_at(0)


def nested(depth: int) -> None:
    if depth == 0:
        segfault_here()
    else:
        nested(depth - 1)


def segfault_at_depth(depth: int, x: int) -> int:
    """Item 1 segfaults ``depth`` calls below the item function."""
    if x == 1:
        nested(depth)
    return x


def fill_the_address_space_then_die(x: int) -> int:
    """Item 1 lowers its address-space limit to a little above what it uses,
    allocates most of the room, lets the worker's memory sampler see it, and
    is then killed as the kernel's OOM killer would."""
    if x == 1:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        in_use = int(fields["VmSize"].split()[0]) * 1024
        room = 64 * 2**20
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (in_use + room, hard))
        ballast = bytearray(room * 7 // 8)
        threading.Event().wait(0.3)  # simulated work: the sampler looks every 0.1 s
        os.kill(os.getpid(), signal.SIGKILL)
        del ballast
    return x


# ---------------------------------------------------------------- helpers


def runs(directory: Path, x: int) -> int:
    """How many times item ``x`` ran."""
    return len(list(directory.glob(f"{x}.*")))


def run_times(directory: Path, x: int) -> list[float]:
    """When each run of item ``x`` started, in order."""
    return [float(directory.joinpath(f"{x}.{n}").read_text()) for n in range(1, runs(directory, x) + 1)]


def failures_in(outcomes: Sequence[object]) -> dict[int, Failure[Any]]:
    return {o.index: o for o in outcomes if isinstance(o, Failure)}


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def parcelout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("parcelout") and t.is_alive()]


@pytest.fixture(params=TIMEOUT_BACKENDS)
def timeout_backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def gate(timeout_backend: str) -> Iterator[threading.Event | None]:
    """What a stalled item waits on: for threads, an event opened at the end of
    the test, so that the abandoned thread ends; for processes, nothing (the
    worker is stopped)."""
    if timeout_backend != "thread":
        yield None
        return
    opened = threading.Event()
    try:
        yield opened
    finally:
        opened.set()
        wait_until(lambda: not parcelout_threads(), PROMPTLY, "the abandoned thread to end")


# ================================================================ A. timeouts


def test_an_item_past_its_timeout_fails_with_task_timeout(
    timeout_backend: str, gate: threading.Event | None, tmp_path: Path
) -> None:
    fn = functools.partial(where, str(tmp_path), 1, release=gate)
    start = time.monotonic()
    outcomes = parcelout.map(fn, range(4), backend=timeout_backend, workers=2, task_timeout=SHORT, on_error="return")
    elapsed = time.monotonic() - start
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert (failure.index, failure.item, failure.kind, failure.attempts) == (1, 1, "timeout", 1)
    assert isinstance(failure.error, TaskTimeout)
    assert isinstance(failure.error, TimeoutError)
    assert failure.error.timeout == SHORT
    assert "item 1" in str(failure.error)
    assert [o[0] for o in outcomes if not isinstance(o, Failure)] == [0, 20, 30]
    assert elapsed < PROMPTLY, f"a {SHORT} s timeout took {elapsed:.1f} s to fail its item"


@pytest.mark.parametrize("entry", ["map", "imap", "imap_unordered"])
def test_with_on_error_raise_the_task_timeout_is_raised(
    entry: str, timeout_backend: str, gate: threading.Event | None, tmp_path: Path
) -> None:
    fn = functools.partial(where, str(tmp_path), 2, release=gate)
    runners: dict[str, Callable[..., Any]] = {
        "map": parcelout.map,
        "imap": lambda *a, **k: list(imap(*a, **k)),
        "imap_unordered": lambda *a, **k: list(parcelout.imap_unordered(*a, **k)),
    }
    run = runners[entry]
    start = time.monotonic()
    with pytest.raises(TaskTimeout) as raised:
        run(fn, range(4), backend=timeout_backend, workers=2, task_timeout=SHORT)
    assert raised.value.timeout == SHORT
    assert "item 2" in str(raised.value)
    assert time.monotonic() - start < PROMPTLY


def test_a_timed_out_process_worker_is_replaced_and_its_batch_runs_again_elsewhere(tmp_path: Path) -> None:
    fn = functools.partial(where, str(tmp_path), 2)
    outcomes = parcelout.map(
        fn, range(6), backend="process", workers=1, chunksize=6, task_timeout=SHORT, on_error="return"
    )
    failures = failures_in(outcomes)
    assert list(failures) == [2]
    assert failures[2].kind == "timeout"
    # The items of its batch before and after it were neither lost nor failed.
    results = [o for o in outcomes if not isinstance(o, Failure)]
    assert [value for value, _, _ in results] == [0, 10, 30, 40, 50]
    stalled_pid = int((tmp_path / "culprit").read_text().split()[0])
    assert stalled_pid not in {pid for _, pid, _ in results}, "the other items ran on the stalled worker"
    wait_until(lambda: gone(stalled_pid), PROMPTLY, "the timed-out worker to be stopped")


@pytest.mark.leaves_threads
def test_a_timed_out_thread_runs_on_and_a_new_thread_takes_the_rest(tmp_path: Path) -> None:
    release = threading.Event()
    try:
        fn = functools.partial(where, str(tmp_path), 2, release=release)
        outcomes = parcelout.map(
            fn, range(6), backend="thread", workers=1, chunksize=6, task_timeout=SHORT, on_error="return"
        )
        failures = failures_in(outcomes)
        assert list(failures) == [2]
        assert failures[2].kind == "timeout"
        assert isinstance(failures[2].error, TaskTimeout)
        results = [o for o in outcomes if not isinstance(o, Failure)]
        assert [value for value, _, _ in results] == [0, 10, 30, 40, 50]
        stalled_thread = (tmp_path / "culprit").read_text().split("\n")[1]
        assert all(thread != stalled_thread for _, _, thread in results[2:])
        # A thread cannot be stopped: the abandoned item is still running.
        assert stalled_thread in {t.name for t in parcelout_threads()}
    finally:
        release.set()
    wait_until(lambda: not parcelout_threads(), PROMPTLY, "the abandoned thread to end once released")


def test_a_process_item_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    fn = functools.partial(deaf_to_sigterm, str(tmp_path))
    with Pool(1, "process", task_timeout=SHORT) as pool:
        outcomes = list(pool.imap(fn, range(3), chunksize=3, on_error="return"))
        failure = outcomes[0]
        assert isinstance(failure, Failure)
        assert failure.kind == "timeout"
        assert outcomes[1:] == [10, 20]
        pid = int((tmp_path / "pid").read_text())
        # While the pool still runs (its shutdown would kill the worker anyway).
        wait_until(lambda: gone(pid), PROMPTLY, "the worker that ignores SIGTERM to be killed")


def test_timeout_with_the_serial_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="serial"):
        parcelout.map(abs, [1], backend="serial", task_timeout=1)
    with pytest.raises(ValueError, match="serial"):
        imap(abs, [1], backend="serial", task_timeout=1)
    with pytest.raises(ValueError, match="serial"):
        parcelout.imap_unordered(abs, [1], backend="serial", task_timeout=1)
    with pytest.raises(ValueError, match="serial"):
        Pool(1, "serial", task_timeout=1)
    with Pool(1, "serial") as pool:
        with pytest.raises(ValueError, match="serial"):
            pool.imap(abs, [1], task_timeout=1)
        with pytest.raises(ValueError, match="serial"):
            pool.imap_unordered(abs, [1], task_timeout=1)


BAD_TIMEOUTS = [
    (0, ValueError),
    (-1, ValueError),
    (-0.5, ValueError),
    ("x", TypeError),
    (True, TypeError),
    (float("inf"), ValueError),
    (float("nan"), ValueError),
]


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS, ids=[repr(v) for v, _ in BAD_TIMEOUTS])
def test_bad_timeouts_are_refused_at_the_call(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parcelout.map(abs, [1], backend="thread", task_timeout=value)  # type: ignore[call-overload]
    with pytest.raises(error):
        imap(abs, [1], backend="thread", task_timeout=value)
    with pytest.raises(error):
        parcelout.imap_unordered(abs, [1], backend="thread", task_timeout=value)  # type: ignore[call-overload]
    with pytest.raises(error):
        Pool(1, "thread", task_timeout=value)  # type: ignore[arg-type]
    with Pool(1, "thread") as pool:
        with pytest.raises(error):
            pool.imap(abs, [1], task_timeout=value)  # type: ignore[arg-type]
        assert pool.submit(abs, -1).result(PROMPTLY) == 1  # the pool still works


@pytest.mark.parametrize("backend_name", ["thread", "process"])
def test_the_timeout_is_per_item_not_per_batch(backend_name: str) -> None:
    # Each batch of 10 items runs for about 1 s, twice the timeout; each item 0.1 s.
    fn = functools.partial(work_for, 0.1)
    outcomes = parcelout.map(fn, range(20), backend=backend_name, workers=2, chunksize=10, task_timeout=0.5)
    assert outcomes == list(range(20))


def test_submit_past_the_pools_timeout_raises_task_timeout_and_the_pool_goes_on(
    timeout_backend: str, gate: threading.Event | None
) -> None:
    with Pool(1, timeout_backend, task_timeout=SHORT) as pool:
        late = pool.submit(stall, gate)
        start = time.monotonic()
        with pytest.raises(TaskTimeout) as raised:
            late.result(timeout=PROMPTLY)
        assert time.monotonic() - start < PROMPTLY
        assert raised.value.timeout == SHORT
        assert pool.submit(abs, -3).result(timeout=PROMPTLY) == 3


def test_the_pools_timeout_applies_to_its_maps_and_a_call_may_override_it(
    timeout_backend: str, gate: threading.Event | None, tmp_path: Path
) -> None:
    stalls_on_1 = functools.partial(where, str(tmp_path), 1, release=gate)
    with Pool(2, timeout_backend, task_timeout=SHORT) as pool:
        outcomes = list(pool.imap(stalls_on_1, range(3), on_error="return"))
        assert [type(o).__name__ for o in outcomes] == ["tuple", "Failure", "tuple"]
        assert isinstance(outcomes[1], Failure)
        assert outcomes[1].kind == "timeout"
        with pytest.raises(TaskTimeout):
            list(pool.map(stalls_on_1, [1]))  # Executor.map: through submit
        # An item twice as long as the pool's timeout, with a longer one (or none) for this call.
        slow = functools.partial(work_for, 2 * SHORT)
        assert list(pool.imap(slow, range(2), task_timeout=PROMPTLY)) == [0, 1]
        assert list(pool.imap_unordered(slow, [5], task_timeout=None)) == [5]


def test_a_call_timeout_applies_on_a_pool_without_one(
    timeout_backend: str, gate: threading.Event | None, tmp_path: Path
) -> None:
    with Pool(2, timeout_backend) as pool:
        fn = functools.partial(where, str(tmp_path), 0, release=gate)
        outcomes = list(pool.imap_unordered(fn, range(2), task_timeout=SHORT, on_error="return"))
        assert {o.kind for o in outcomes if isinstance(o, Failure)} == {"timeout"}
        assert [o[0] for o in outcomes if not isinstance(o, Failure)] == [10]


# ================================================================ B. retries


def test_a_failing_item_runs_again_up_to_retries_more_times(backend: str, tmp_path: Path) -> None:
    plan = {1: ("ValueError", 2), 3: ("ValueError", 5)}
    fn = functools.partial(flaky, str(tmp_path), plan)
    outcomes = parcelout.map(fn, range(5), backend=backend, workers=2, chunksize=2, retries=2, on_error="return")
    assert [o for o in outcomes if not isinstance(o, Failure)] == [0, 10, 20, 40]
    failures = failures_in(outcomes)
    assert list(failures) == [3]
    assert isinstance(failures[3].error, ValueError)
    assert "run 3" in str(failures[3].error)  # the last run's error
    assert (failures[3].kind, failures[3].attempts) == ("error", 3)
    assert [runs(tmp_path, x) for x in range(5)] == [1, 3, 1, 3, 1]


def test_without_retries_a_failure_counts_one_attempt(backend: str, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {0: ("ValueError", 1)})
    outcomes = parcelout.map(fn, range(3), backend=backend, workers=2, on_error="return")
    failures = failures_in(outcomes)
    assert list(failures) == [0]
    assert failures[0].attempts == 1
    assert [runs(tmp_path, x) for x in range(3)] == [1, 1, 1]


def test_with_on_error_raise_the_last_error_is_raised_after_the_retries(backend: str, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {2: ("ValueError", 9)})
    with pytest.raises(ValueError, match="run 3"):
        parcelout.map(fn, range(4), backend=backend, workers=2, retries=2)
    assert runs(tmp_path, 2) == 3


def test_retry_on_narrows_what_is_retried(backend: str, tmp_path: Path) -> None:
    plan = {0: ("ValueError", 1), 1: ("KeyError", 1)}
    fn = functools.partial(flaky, str(tmp_path), plan)
    outcomes = parcelout.map(
        fn, range(3), backend=backend, workers=2, retries=3, retry_on=ValueError, on_error="return"
    )
    assert outcomes[0] == 0
    assert outcomes[2] == 20
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert isinstance(failure.error, KeyError)
    assert failure.attempts == 1
    assert [runs(tmp_path, x) for x in range(3)] == [2, 1, 1]


def _is_value_error(error: BaseException) -> bool:
    return isinstance(error, ValueError)


def _raises(error: BaseException) -> bool:
    raise RuntimeError("a broken predicate")


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [
        ((ValueError, OSError), {0}),
        ((KeyError,), {1}),
        ((), set()),
        (_is_value_error, {0}),
        (lambda error: True, {0, 1}),
        (_raises, set()),  # a predicate that raises says no
        (Exception, {0, 1}),
        (LookupError, {1}),
    ],
    ids=["tuple", "one-tuple", "empty-tuple", "predicate", "lambda", "raising-predicate", "Exception", "base-class"],
)
def test_retry_on_takes_types_tuples_and_predicates(retry_on: Any, retried: set[int], tmp_path: Path) -> None:
    plan = {0: ("ValueError", 1), 1: ("KeyError", 1)}
    fn = functools.partial(flaky, str(tmp_path), plan)
    outcomes = parcelout.map(fn, range(2), backend="thread", workers=2, retries=1, retry_on=retry_on, on_error="return")
    assert {x for x in range(2) if not isinstance(outcomes[x], Failure)} == retried
    assert {x for x in range(2) if runs(tmp_path, x) == 2} == retried
    assert all(f.attempts == 1 for f in failures_in(outcomes).values())


def test_backoff_waits_longer_before_each_retry(backend: str, tmp_path: Path) -> None:
    backoff = 0.1
    fn = functools.partial(flaky, str(tmp_path), {0: ("ValueError", 3)})
    start = time.monotonic()
    outcomes = parcelout.map(fn, range(2), backend=backend, workers=2, retries=3, backoff=backoff)
    elapsed = time.monotonic() - start
    assert outcomes == [0, 10]
    times = run_times(tmp_path, 0)
    assert len(times) == 4
    waits = [later - earlier for earlier, later in itertools.pairwise(times)]
    for n, waited in enumerate(waits, start=1):  # lower bounds: never flaky
        assert waited >= backoff * 2 ** (n - 1), f"retry {n} came {waited:.3f} s after the run before it"
    assert elapsed >= backoff * (1 + 2 + 4)


def test_a_crash_is_retried_and_the_retry_gives_the_result(tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {1: ("exit", 1)})
    outcomes = parcelout.map(fn, range(6), backend="process", workers=2, chunksize=3, retries=1)
    assert outcomes == [0, 10, 20, 30, 40, 50]
    assert runs(tmp_path, 1) == 2


def test_a_crash_without_retries_fails_only_its_item(tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {1: ("exit", 1)})
    outcomes = parcelout.map(fn, range(6), backend="process", workers=2, chunksize=3, on_error="return")
    failures = failures_in(outcomes)
    assert list(failures) == [1]
    assert (failures[1].kind, failures[1].attempts) == ("crash", 1)
    assert runs(tmp_path, 1) == 1


def test_a_timeout_is_retried(timeout_backend: str, gate: threading.Event | None, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {1: ("stall", 1)}, release=gate)
    outcomes = parcelout.map(fn, range(3), backend=timeout_backend, workers=2, task_timeout=SHORT, retries=1)
    assert outcomes == [0, 10, 20]
    assert runs(tmp_path, 1) == 2


def test_an_item_that_times_out_on_every_run_counts_its_attempts(
    timeout_backend: str, gate: threading.Event | None, tmp_path: Path
) -> None:
    fn = functools.partial(flaky, str(tmp_path), {0: ("stall", 99)}, release=gate)
    outcomes = parcelout.map(fn, range(2), backend=timeout_backend, task_timeout=SHORT, retries=1, on_error="return")
    failure = outcomes[0]
    assert isinstance(failure, Failure)
    assert (failure.kind, failure.attempts) == ("timeout", 2)
    assert outcomes[1] == 10
    assert runs(tmp_path, 0) == 2


def test_retry_on_can_leave_timeouts_alone(timeout_backend: str, gate: threading.Event | None, tmp_path: Path) -> None:
    fn = functools.partial(flaky, str(tmp_path), {1: ("stall", 1)}, release=gate)
    outcomes = parcelout.map(
        fn, range(2), backend=timeout_backend, task_timeout=SHORT, retries=2, retry_on=ValueError, on_error="return"
    )
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert (failure.kind, failure.attempts) == ("timeout", 1)
    assert runs(tmp_path, 1) == 1


@pytest.mark.parametrize(
    ("retries", "max_crashes", "expected"),
    [(10, None, 3), (10, 1, 1), (10, 2, 2), (1, None, 2)],
    ids=["default-cap", "cap-1", "cap-2", "retries-first"],
)
def test_a_poison_item_fails_after_max_crashes(
    retries: int, max_crashes: int | None, expected: int, tmp_path: Path
) -> None:
    fn = functools.partial(flaky, str(tmp_path), {1: ("exit", 1000)})
    cap: int = DEFAULTS["max_crashes"] if max_crashes is None else max_crashes
    outcomes = parcelout.map(
        fn, range(4), backend="process", workers=2, chunksize=4, retries=retries, on_error="return", max_crashes=cap
    )
    assert [o for o in outcomes if not isinstance(o, Failure)] == [0, 20, 30]
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert (failure.kind, failure.attempts) == ("crash", expected)
    assert isinstance(failure.error, WorkerCrashed)
    assert runs(tmp_path, 1) == expected


def test_submit_retries_a_failing_call(backend: str, tmp_path: Path) -> None:
    plan = {7: ("ValueError", 2)}
    with Pool(2, backend, retries=2) as pool:
        assert pool.submit(flaky, str(tmp_path), plan, 7).result(timeout=PROMPTLY) == 70
    assert runs(tmp_path, 7) == 3
    with Pool(2, backend, retries=1) as pool:
        future = pool.submit(flaky, str(tmp_path), {8: ("ValueError", 2)}, 8)
        with pytest.raises(ValueError, match="run 2"):
            future.result(timeout=PROMPTLY)
    assert runs(tmp_path, 8) == 2


def test_a_pools_retries_apply_to_its_maps_and_a_call_may_override_them(backend: str, tmp_path: Path) -> None:
    with Pool(2, backend, retries=1) as pool:
        (tmp_path / "a").mkdir()
        fails_once = functools.partial(flaky, str(tmp_path / "a"), {0: ("ValueError", 1)})
        assert list(pool.imap(fails_once, range(2))) == [0, 10]
        (tmp_path / "b").mkdir()
        fails_once = functools.partial(flaky, str(tmp_path / "b"), {0: ("ValueError", 1)})
        outcomes = list(pool.imap_unordered(fails_once, [0], retries=0, on_error="return"))
        assert [(o.kind, o.attempts) for o in outcomes if isinstance(o, Failure)] == [("error", 1)]
        with pytest.raises(TypeError, match="retry"):
            pool.imap(abs, [1], retry=3)  # type: ignore[call-arg]


BAD_POLICIES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"retries": -1}, ValueError),
    ({"retries": 1.5}, TypeError),
    ({"retries": True}, TypeError),
    ({"backoff": -1}, ValueError),
    ({"backoff": math.inf}, ValueError),
    ({"max_crashes": 0}, ValueError),
    ({"max_crashes": 1.0}, TypeError),
    ({"retry_on": 3}, TypeError),
    ({"retry_on": (ValueError, 3)}, TypeError),
]


@pytest.mark.parametrize(("options", "error"), BAD_POLICIES, ids=[repr(o) for o, _ in BAD_POLICIES])
def test_bad_retry_options_are_refused_at_the_call(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        parcelout.map(abs, [1], backend="serial", **options)
    with pytest.raises(error):
        parcelout.imap_unordered(abs, [1], backend="serial", **options)
    with pytest.raises(error):
        Pool(1, "serial", **options)
    with Pool(1, "serial") as pool, pytest.raises(error):
        pool.imap(abs, [1], **options)


# ================================================================ C. crash reports


def crash_of(fn: Callable[[int], int], capture: pytest.CaptureFixture[str] | None = None) -> WorkerCrashed:
    outcomes = parcelout.map(fn, range(3), backend="process", workers=1, chunksize=3, on_error="return")
    assert outcomes[0] == 0
    assert outcomes[2] == 2
    failure = outcomes[1]
    assert isinstance(failure, Failure)
    assert (failure.index, failure.kind) == (1, "crash")
    assert isinstance(failure.error, WorkerCrashed)
    return failure.error


def test_a_crash_report_names_the_item_exit_code_peak_memory_and_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    error = crash_of(crash_loudly)
    assert isinstance(error, BrokenProcessPool)
    assert error.exitcode == 3
    message = str(error)
    assert "item 1" in message
    assert "exit code 3" in message
    assert "peak memory" in message
    assert STDERR_LINE in message
    assert "likely out of memory" not in message
    assert STDERR_LINE in capfd.readouterr().err  # and it was copied to our standard error


def test_a_crash_with_on_error_raise_is_a_broken_process_pool() -> None:
    with pytest.raises(BrokenProcessPool) as raised:
        parcelout.map(crash_loudly, range(3), backend="process", workers=1)
    assert isinstance(raised.value, WorkerCrashed)
    assert raised.value.exitcode == 3


def test_a_sigkilled_worker_is_reported_as_sigkill() -> None:
    error = crash_of(kill_itself)
    assert error.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(error)
    assert "item 1" in str(error)


def test_a_segfault_report_names_the_signal_and_quotes_the_python_stack() -> None:
    error = crash_of(functools.partial(segfault_at_depth, 0))
    message = str(error)
    assert error.exitcode == -signal.SIGSEGV
    assert "SIGSEGV" in message
    assert "segfault_here" in message, message  # from faulthandler's dump of the stack


# The report keeps the last 20 lines of the worker's standard error. faulthandler
# dumps every thread, the crashing one last and innermost frame first, after
# the worker's two helper threads: the header and, for a stack a few calls
# deeper, the frames where it crashed fall out of those 20 lines; only the
# outermost frames (the worker's own loop, the forkserver) are kept.
def test_a_segfault_report_keeps_faulthandlers_header() -> None:
    message = str(crash_of(functools.partial(segfault_at_depth, 0)))
    assert "Fatal Python error" in message or "Segmentation fault" in message, message


def test_a_segfault_report_of_a_deeper_stack_names_the_function_that_crashed() -> None:
    message = str(crash_of(functools.partial(segfault_at_depth, 10)))
    assert "SIGSEGV" in message
    assert "segfault_here" in message, message


def test_a_worker_killed_near_its_address_space_limit_is_likely_out_of_memory() -> None:
    if resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
        pytest.skip("the item needs to set its own address-space limit")
    error = crash_of(fill_the_address_space_then_die)
    message = str(error)
    assert error.exitcode == -signal.SIGKILL
    assert "likely out of memory" in message, message
    assert "address-space limit" in message


RAM = 16 * 2**20  # KiB: 16 GiB


# (exit code, peak resident KiB, peak virtual KiB, RLIMIT_AS KiB or -1, memory KiB), likely out of memory?
OOM_CASES: list[tuple[tuple[int | None, int, int, int, int | None], bool]] = [
    ((-signal.SIGKILL, RAM * 9 // 10, RAM, -1, RAM), True),  # SIGKILL near the RAM
    ((-signal.SIGKILL, RAM // 2, RAM, -1, RAM), True),
    ((1, RAM * 9 // 10, RAM, -1, RAM), False),  # a plain exit
    ((0, RAM * 9 // 10, RAM, -1, RAM), False),
    ((None, RAM * 9 // 10, RAM, -1, RAM), False),  # unknown
    ((-signal.SIGABRT, 100_000, 950_000, 1_000_000, RAM), True),  # virtual at 95% of RLIMIT_AS
    ((-signal.SIGSEGV, 100_000, 900_000, 1_000_000, RAM), True),
    ((-signal.SIGABRT, 100_000, 500_000, 1_000_000, RAM), False),  # far from it
    ((-signal.SIGKILL, RAM // 100, RAM // 50, -1, RAM), False),  # 1% of the RAM, no limit
    ((-signal.SIGKILL, RAM // 100, RAM // 50, 0, RAM), False),
    ((-signal.SIGKILL, RAM, RAM, -1, None), False),  # the RAM unknown
    ((-signal.SIGABRT, RAM * 9 // 10, RAM, -1, RAM), False),  # near the RAM, but the OOM killer sends SIGKILL
]


@pytest.mark.parametrize(("case", "expected"), OOM_CASES, ids=[str(c) for c, _ in OOM_CASES])
def test_likely_out_of_memory(case: tuple[int | None, int, int, int, int | None], expected: bool) -> None:
    assert likely_out_of_memory(*case) is expected

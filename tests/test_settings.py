"""Process-wide settings parcelout changes have one owner: the switch
interval comes back as it was after overlapping holds, whoever holds it
(``backend="auto"``, ``stress``); a user's fork server preload list
survives parcelout starting a process pool."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import parcelout
from parcelout import _settings
from parcelout._auto import BUSY_SWITCH_INTERVAL
from parcelout._options import usable_cpus
from parcelout._settings import lower_switch_interval, lowered_switch_interval
from tests.scripts import run_script
from tests.waits import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def original() -> Iterator[float]:
    """The interval before the test, which every test must leave behind."""
    interval = sys.getswitchinterval()
    yield interval
    leftover = dict(_settings._holds)
    sys.setswitchinterval(interval)
    assert not leftover, f"holds left: {leftover}"


# ---------------------------------------------------------------- the owner on its own
def test_a_hold_lowers_the_interval_and_its_release_restores_it(original: float) -> None:
    hold = lower_switch_interval(original / 10)
    assert sys.getswitchinterval() == pytest.approx(original / 10)
    hold.release()
    assert sys.getswitchinterval() == original


def test_nested_holds_keep_the_lowest_until_the_last_ends(original: float) -> None:
    with lowered_switch_interval(0.002):
        assert sys.getswitchinterval() == 0.002
        with lowered_switch_interval(0.0005):
            assert sys.getswitchinterval() == 0.0005
        assert sys.getswitchinterval() == 0.002
    assert sys.getswitchinterval() == original


def test_holds_released_out_of_order_restore_the_original(original: float) -> None:
    first = lower_switch_interval(0.0005)  # an auto run
    second = lower_switch_interval(0.0005)  # another one: it must not take 0.5 ms for the original
    first.release()
    assert sys.getswitchinterval() == 0.0005
    second.release()
    assert sys.getswitchinterval() == original


def test_the_lowest_value_asked_for_applies_while_it_is_held(original: float) -> None:
    auto = lower_switch_interval(0.0005)
    stressing = lower_switch_interval(1e-6)
    assert sys.getswitchinterval() == 1e-6
    stressing.release()  # the lowest goes first: back to the next lowest, not to the original
    assert sys.getswitchinterval() == 0.0005
    later = lower_switch_interval(0.003)  # higher than what is held: no change
    assert sys.getswitchinterval() == 0.0005
    auto.release()
    assert sys.getswitchinterval() == 0.003
    later.release()
    assert sys.getswitchinterval() == original


def test_a_hold_never_raises_the_interval(original: float) -> None:
    sys.setswitchinterval(0.0001)
    low = sys.getswitchinterval()  # as the interpreter keeps it (whole microseconds)
    with lowered_switch_interval(0.002):
        assert sys.getswitchinterval() == low
    assert sys.getswitchinterval() == low


def test_releasing_twice_releases_once(original: float) -> None:
    first = lower_switch_interval(0.0005)
    second = lower_switch_interval(0.001)
    first.release()
    first.release()
    assert sys.getswitchinterval() == 0.001  # the second still holds
    second.release()
    assert sys.getswitchinterval() == original


def test_an_interval_set_by_someone_else_meanwhile_is_the_one_given_back(original: float) -> None:
    hold = lower_switch_interval(0.0005)
    sys.setswitchinterval(0.004)  # not through the owner: the user's, now
    hold.release()
    assert sys.getswitchinterval() == 0.004


def test_a_hold_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            lower_switch_interval(bad)


def test_holds_from_many_threads_at_once_restore_the_original(original: float) -> None:
    threads, times = 8, 200
    barrier = threading.Barrier(threads)
    above: list[float] = []

    def hold_and_release(k: int) -> None:
        barrier.wait()
        for i in range(times):
            hold = lower_switch_interval(0.0001 * (1 + (k + i) % 5))
            if sys.getswitchinterval() > hold.seconds:
                above.append(sys.getswitchinterval())
            hold.release()

    workers = [threading.Thread(target=hold_and_release, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert above == []  # while held, never above what the hold asked for
    assert sys.getswitchinterval() == original


# ---------------------------------------------------------------- real overlapping holders
N = 40
RELEASE = {"a": threading.Event(), "b": threading.Event()}
SEEN = {"a": 0, "b": 0}


def holds_the_gil(x: int) -> int:
    total = 0
    for i in range(40_000):  # about 2 ms of pure Python
        total += (i * x) % 7
    return total


def first_computes_then_waits(key: str, x: int) -> int:
    """Item 0 computes (holding the GIL) until every other item is back, so
    that auto probes it and it runs on after the choice; then it waits,
    giving up the GIL, until the test lets it end."""
    if x != 0:
        return holds_the_gil(x)
    spins = 0
    while SEEN[key] < N - 1:  # pure Python, holding the GIL between checks
        spins += 1
        if spins > 500_000_000:
            raise TimeoutError("the other items never came back")
    if not RELEASE[key].wait(60):  # the work itself: a long wait
        raise TimeoutError("never released")
    return -1


def consume(key: str, values: list[int]) -> None:
    for value in parcelout.imap_unordered(lambda x: first_computes_then_waits(key, x), range(N)):
        values.append(value)
        SEEN[key] += 1


@pytest.mark.skipif(usable_cpus() < 2, reason="auto probes GIL-holding work on two CPUs")
def test_overlapping_auto_runs_and_stress_leave_the_interval_as_it_was(original: float) -> None:
    # Each auto run holds the interval lowered while its first item runs on
    # after the choice; a stress call holds it lower still. They let go in
    # an order no single saver could undo: a, b, stress, then a (inside the
    # stress call), stress, b.
    for key, event in RELEASE.items():
        event.clear()
        SEEN[key] = 0
    values: dict[str, list[int]] = {"a": [], "b": []}
    runs = {key: threading.Thread(target=consume, args=(key, values[key])) for key in RELEASE}
    during_stress: list[float] = []

    def setup() -> list[int]:
        during_stress.append(sys.getswitchinterval())
        if len(during_stress) == 2:  # the second round: the first auto run ends, inside the stress call
            RELEASE["a"].set()
            runs["a"].join()
            during_stress.append(sys.getswitchinterval())
        return []

    try:
        runs["a"].start()
        wait_until(lambda: SEEN["a"] == N - 1, 60, "the first run's other items")
        assert sys.getswitchinterval() == BUSY_SWITCH_INTERVAL  # a holds it
        runs["b"].start()
        wait_until(lambda: SEEN["b"] == N - 1, 60, "the second run's other items")
        assert sys.getswitchinterval() == BUSY_SWITCH_INTERVAL  # a and b hold it
        parcelout.stress(lambda state: state.append(1), threads=2, rounds=3, setup=setup)
        assert during_stress == [1e-6, 1e-6, 1e-6, 1e-6]  # stress's, before and after a let go
        assert sys.getswitchinterval() == BUSY_SWITCH_INTERVAL  # b still holds it
        RELEASE["b"].set()
        runs["b"].join()
    finally:
        for key, event in RELEASE.items():
            event.set()
            if runs[key].ident is not None:
                runs[key].join()
    assert sys.getswitchinterval() == original
    for key in RELEASE:
        assert sorted(values[key]) == sorted([-1] + [holds_the_gil(x) for x in range(1, N)])


# ---------------------------------------------------------------- the fork server's preload list
PRELOAD_SCRIPT = """
import json
import multiprocessing
import sys
from multiprocessing import forkserver

import parcelout


def preloaded(_):
    # colorsys: a module nothing here imports; in a worker only the preload put it there
    return "colorsys" in sys.modules


if __name__ == "__main__":
    multiprocessing.set_forkserver_preload(["colorsys"])
    seen = parcelout.map(preloaded, range(4), backend="process", workers=2)
    print(json.dumps({"seen": seen, "list": forkserver._forkserver._preload_modules}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no fork server")
def test_a_users_forkserver_preload_list_survives_a_process_pool(tmp_path: Path) -> None:
    script = tmp_path / "preload.py"
    script.write_text(textwrap.dedent(PRELOAD_SCRIPT))
    done = run_script(script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["seen"] == [True] * 4  # the user's module was preloaded in the workers' fork server
    assert report["list"] == ["colorsys", "parcelout.backends._child"]  # kept, and parcelout's added

"""The journal: a run killed at any moment resumes without losing or redoing
finished work; a journal that does not fit the run is refused, clearly."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parcelout
from parcelout import Failure, Journal, JournalError
from parcelout._journal import default_key, read_outcomes, read_summary
from tests.waits import wait_until


def triple(x: int) -> int:
    return 3 * x


def triple_or_fail(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"no multiples of 5: {x}")
    return 3 * x


class Logged:
    """``triple`` that appends each item it runs to a file (any worker)."""

    def __init__(self, log: Path) -> None:
        self.log = str(log)

    def __call__(self, x: int) -> int:
        with open(self.log, "a") as f:
            f.write(f"{x}\n")
        return 3 * x


def runs(log: Path) -> Counter[int]:
    return Counter(int(line) for line in log.read_text().split()) if log.exists() else Counter()


# ---------------------------------------------------------------- resume


def test_a_finished_run_is_not_run_again(backend: str, tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    first = parcelout.map(Logged(log), range(50), journal=journal, backend=backend, workers=2)
    second = parcelout.map(Logged(log), range(50), journal=journal, backend=backend, workers=2)
    assert first == second == [3 * i for i in range(50)]
    assert runs(log) == Counter(range(50))  # each ran once, in the first run


def test_a_run_stopped_partway_resumes_with_only_the_rest(backend: str, tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    stream = parcelout.imap(Logged(log), range(200), journal=journal, backend=backend, workers=2, chunksize=4)
    seen = [next(stream) for _ in range(60)]
    stream.close()
    ran_first = runs(log)
    assert seen == [3 * i for i in range(60)]
    assert parcelout.map(Logged(log), range(200), journal=journal, backend=backend, workers=2) == [
        3 * i for i in range(200)
    ]
    ran = runs(log)
    assert set(ran) == set(range(200))
    assert all(ran[i] == 1 for i in range(60))  # what the caller saw is never redone
    redone = [i for i, n in ran.items() if n > 1]
    assert all(i in ran_first for i in redone)
    assert len(redone) <= 64  # at most what was in flight when it stopped


def test_failed_items_are_given_again_unless_retry_failed(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    first = parcelout.map(triple_or_fail, range(20), journal=journal, on_error="return", backend="thread")
    again = parcelout.map(triple_or_fail, range(20), journal=journal, on_error="return", backend="thread")
    for a, b in zip(first, again, strict=True):
        if isinstance(a, Failure):
            assert isinstance(b, Failure)
            assert (b.index, type(b.error), str(b.error)) == (a.index, ValueError, str(a.error))
            assert "recorded in the journal by an earlier run" in "".join(b.error.__notes__)
        else:
            assert a == b
    with pytest.raises(ValueError, match="no multiples of 5: 0"):
        parcelout.map(triple_or_fail, range(20), journal=journal)


def test_retry_failed_runs_the_failures_again_and_counts_attempts(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(triple_or_fail, range(20), journal=journal, on_error="return", backend="serial")
    out = parcelout.map(triple_or_fail, range(20), journal=journal, on_error="return", retry_failed=True)
    failures = [f for f in out if isinstance(f, Failure)]
    assert [f.index for f in failures] == [0, 5, 10, 15]
    stored = {o.index: o for o in read_outcomes(journal)}
    assert {i for i, o in stored.items() if o.attempts == 2} == {0, 5, 10, 15}
    assert all(o.attempts == 1 for i, o in stored.items() if i % 5)


def test_results_come_back_as_they_were(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    values: list[Any] = [{"a": [1, 2.5, None, True]}, (1, 2), {1: "int key"}, b"bytes", float("nan"), "text", [1, 2]]

    def identity(x: Any) -> Any:
        return x

    first = parcelout.map(identity, values, journal=journal, backend="serial")
    again = parcelout.map(identity, values, journal=journal, backend="serial")
    assert repr(again) == repr(first)
    assert [type(v) for v in again] == [type(v) for v in values]


def test_an_unpicklable_result_is_given_but_runs_again_on_resume(tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    lock_maker = Logged(log)

    def lock_for(x: int) -> Any:
        lock_maker(x)
        return threading.Lock() if x == 3 else x

    first = parcelout.map(lock_for, range(6), journal=journal, backend="thread")
    assert first[:3] == [0, 1, 2]
    parcelout.map(lock_for, range(6), journal=journal, backend="thread")
    assert runs(log) == Counter({0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1})


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_imap_unordered_and_pool_imap_resume_too(backend: str, tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    stream = parcelout.imap_unordered(Logged(log), range(100), journal=journal, backend=backend, chunksize=5)
    first = [next(stream) for _ in range(30)]
    stream.close()
    with parcelout.Pool(2, backend) as pool:
        rest = list(pool.imap_unordered(Logged(log), range(100), journal=journal))
    assert sorted(rest) == [3 * i for i in range(100)]
    ran = runs(log)
    assert set(ran) == set(range(100))
    assert all(ran[v // 3] == 1 for v in first)


# ---------------------------------------------------------------- keys


def test_changed_input_is_refused_without_key(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(triple, range(10), journal=journal, backend="serial")
    changed = [*range(5), 99, *range(6, 10)]
    with pytest.raises(JournalError, match=r"item 5 \(99\) is not the item the journal .* has at position 5"):
        parcelout.map(triple, changed, journal=journal, backend="serial")


def test_with_key_reordered_and_extended_input_resumes(tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    items = [{"id": f"job-{i}", "x": i} for i in range(10)]

    def by_id(item: dict[str, Any]) -> str:
        return str(item["id"])

    def work(item: dict[str, Any]) -> int:
        return Logged(log)(item["x"])

    parcelout.map(work, items, journal=journal, key=by_id, backend="thread")
    more = [{"id": f"job-{i}", "x": i} for i in range(12)]
    out = parcelout.map(work, list(reversed(more)), journal=journal, key=by_id, backend="thread")
    assert out == [3 * i for i in reversed(range(12))]
    assert runs(log) == Counter(range(12))


def test_a_key_that_is_not_a_str_or_int_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"the key of item 2 \(2\) is \[2\], a list: key= must give each item"):
        parcelout.map(triple, range(4), journal=tmp_path / "run.db", key=lambda x: [x] if x == 2 else x)  # type: ignore[arg-type, return-value]


def test_a_key_that_raises_fails_its_item(tmp_path: Path) -> None:
    def key(x: int) -> int:
        if x == 2:
            raise LookupError("no key for 2")
        return x

    out = parcelout.map(triple, range(4), journal=tmp_path / "run.db", key=key, on_error="return")
    assert out[:2] == [0, 3]
    assert isinstance(out[2], Failure)
    assert isinstance(out[2].error, LookupError)
    assert "item 2 (2) has no journal key" in "".join(out[2].error.__notes__)
    assert out[3] == 9


def test_default_keys_name_the_index_and_the_content() -> None:
    assert default_key(3, "a") == default_key(3, "a")
    assert default_key(3, "a") != default_key(4, "a")
    assert default_key(3, "a") != default_key(3, "b")
    assert default_key(0, {"x": [1, 2]}).startswith("0:")


def test_a_run_is_named_by_its_function_also_through_a_partial() -> None:
    import functools
    import operator

    from parcelout._journal import _describe_key, fingerprint, qualified_name

    assert qualified_name(triple) == "tests.test_journal:triple"
    assert qualified_name(functools.partial(triple)) == "tests.test_journal:triple"
    assert qualified_name(Logged(Path("x"))) == "tests.test_journal:Logged"
    assert fingerprint(functools.partial(double, 1)) != fingerprint(functools.partial(double, 2))
    assert _describe_key(operator.itemgetter("id")) != _describe_key(operator.itemgetter("name"))
    assert (
        _describe_key(lambda x: x)
        == "tests.test_journal:test_a_run_is_named_by_its_function_also_through_a_partial.<locals>.<lambda>"
    )


def test_key_and_retry_failed_need_a_journal() -> None:
    with pytest.raises(ValueError, match="pass journal= too"):
        parcelout.map(triple, range(3), key=str)
    with pytest.raises(ValueError, match="pass journal= too"):
        parcelout.map(triple, range(3), retry_failed=True)


# ---------------------------------------------------------------- refusals


def double(x: int) -> int:
    return 2 * x


def test_a_journal_of_another_function_is_refused_unless_forced(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(triple, range(5), journal=journal, backend="serial")
    with pytest.raises(JournalError, match=r"it records a run of tests.test_journal:triple, not .*:double"):
        parcelout.map(double, range(5), journal=journal, backend="serial")
    forced = parcelout.map(double, range(7), journal=Journal(journal, force=True), backend="serial")
    assert forced == [0, 3, 6, 9, 12, 10, 12]  # the done items count as done


def test_a_changed_function_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    scope: dict[str, Any] = {}
    exec("def work(x):\n    return x + 1\n", scope)
    parcelout.map(scope["work"], range(3), journal=journal, backend="serial")
    exec("def work(x):\n    return x + 2\n", scope)
    with pytest.raises(JournalError, match=r"the code of .*work changed since it was written"):
        parcelout.map(scope["work"], range(3), journal=journal, backend="serial")


def test_a_journal_in_use_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    running = parcelout.imap(triple, range(100), journal=journal, backend="thread")
    assert next(running) == 0
    try:
        with pytest.raises(JournalError, match=rf"in use by another run \(process {os.getpid()}\)"):
            parcelout.map(triple, range(100), journal=journal, backend="serial")
        assert read_summary(journal).live
    finally:
        running.close()
    assert not read_summary(journal).live
    assert parcelout.map(triple, range(100), journal=journal) == [3 * i for i in range(100)]


@pytest.mark.parametrize(
    "damage",
    ["empty", "garbage", "truncated", "overwritten", "another database"],
)
def test_a_damaged_journal_is_refused_and_nothing_runs(damage: str, tmp_path: Path) -> None:
    journal, log = tmp_path / "run.db", tmp_path / "calls"
    parcelout.map(triple, range(3000), journal=journal, backend="serial")
    data = journal.read_bytes()
    assert len(data) > 3 * 4096
    if damage == "empty":
        journal.write_bytes(b"")
    elif damage == "garbage":
        journal.write_bytes(b"not a database at all" * 100)
    elif damage == "truncated":
        journal.write_bytes(data[: len(data) // 2])
    elif damage == "overwritten":
        journal.write_bytes(data[:4096] + b"\xff" * (len(data) - 8192) + data[-4096:])
    else:
        journal.unlink()
        with contextlib.closing(sqlite3.connect(journal)) as other:
            other.execute("CREATE TABLE t (x)")
            other.commit()
    with pytest.raises(JournalError, match=r"damaged|not a parcelout journal"):
        parcelout.map(Logged(log), range(3000), journal=journal, backend="serial")
    assert not log.exists()


def test_the_journal_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(triple, range(3), journal=journal)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_status_reads_the_journal_while_the_run_writes_it(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    stream = parcelout.imap(triple_or_fail, range(1000), journal=journal, on_error="return", backend="thread")
    for _ in range(300):
        next(stream)
    try:
        summary = read_summary(journal)
        assert summary.live
        assert summary.total == 1000
        assert summary.done + summary.failed >= 300
        assert summary.done + summary.failed + summary.running + summary.pending == 1000
        assert summary.top_errors[0][0] == "ValueError"
    finally:
        stream.close()
    for _ in stream:
        pass
    text = str(read_summary(journal))
    assert "not running" in text
    assert "ValueError: no multiples of 5" in text


def test_full_durability_is_an_option(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "run.db", durability="full")
    assert parcelout.map(triple, range(10), journal=journal) == [3 * i for i in range(10)]
    with pytest.raises(ValueError, match="durability"):
        Journal(tmp_path / "x.db", durability="paranoid")  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stops=st.lists(st.integers(0, 120), min_size=1, max_size=4), chunksize=st.integers(1, 9))
def test_any_sequence_of_stops_ends_with_each_item_once(tmp_path: Path, stops: list[int], chunksize: int) -> None:
    journal = tmp_path / f"run-{os.urandom(4).hex()}.db"
    for stop in stops:
        stream = parcelout.imap(triple_or_fail, range(120), journal=journal, on_error="return", chunksize=chunksize)
        for _ in range(stop):
            next(stream)
        stream.close()
    out = parcelout.map(triple_or_fail, range(120), journal=journal, on_error="return", backend="thread")
    assert [o.index if isinstance(o, Failure) else o // 3 for o in out] == list(range(120))
    assert [o.index for o in read_outcomes(journal)] == list(range(120))


# ---------------------------------------------------------------- kill -9

JOB = textwrap.dedent(
    """
    import sys
    import threading
    import parcelout

    class Work:
        def __init__(self, log, hold):
            self.log = log
            self.hold = hold

        def __call__(self, x):
            with open(self.log, "a") as f:
                f.write(f"{x}\\n")
            if x >= self.hold:  # keep the run going until it is killed
                threading.Event().wait(60)
            total = 0
            for i in range(20_000):  # about a millisecond of work
                total += i % 7
            return 3 * x

    if __name__ == "__main__":
        journal, log, out, backend, hold = sys.argv[1:6]
        with open(out, "a") as seen:
            stream = parcelout.imap(
                Work(log, int(hold)), range(300), journal=journal, backend=backend, workers=2, chunksize=3, window=24
            )
            for value in stream:
                seen.write(f"{value}\\n")
                seen.flush()
    """
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", [1, 40, 150, 260])
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_run_killed_with_sigkill_resumes_exactly_once(backend: str, moment: int, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    journal, log1, log2 = tmp_path / "run.db", tmp_path / "calls1", tmp_path / "calls2"
    seen1, seen2 = tmp_path / "seen1", tmp_path / "seen2"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    hold = min(moment + 30, 290)  # items from here on wait: the run is still going at the kill
    with (tmp_path / "stderr").open("w") as stderr:
        job = subprocess.Popen(
            [sys.executable, str(script), str(journal), str(log1), str(seen1), backend, str(hold)],
            env=env,
            start_new_session=True,
            stderr=stderr,
        )
    try:
        wait_until(lambda: len(lines(seen1)) >= moment or job.poll() is not None, 60, f"{moment} results")
        os.killpg(job.pid, signal.SIGKILL)  # the whole run: the caller and its workers
    finally:
        job.wait(30)
    assert job.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    saw_first = [int(v) // 3 for v in lines(seen1)]
    assert saw_first == list(range(len(saw_first)))

    resume = subprocess.run(
        [sys.executable, str(script), str(journal), str(log2), str(seen2), backend, str(10**9)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert resume.returncode == 0, resume.stderr.decode()
    assert [int(v) for v in lines(seen2)] == [3 * i for i in range(300)]  # complete, in order
    outcomes = list(read_outcomes(journal))
    assert [o.index for o in outcomes] == list(range(300))  # each exactly once
    assert all(o.ok and o.value == 3 * o.index for o in outcomes)
    first, second = runs(log1), runs(log2)
    assert not set(saw_first) & set(second)  # what the caller saw was not redone
    redone = set(first) & set(second)
    assert len(redone) <= 24 + 2 * 3  # only what was in flight (the window, and a batch per worker)
    assert set(first) | set(second) == set(range(300))


def test_the_demo_resume_step_redoes_nothing_the_caller_saw() -> None:
    import io

    from parcelout import _demo

    out = io.StringIO()
    first, second = _demo.resume(out, scale=0.1, progress=False)
    n, stop = 30, 12
    assert set(first) | set(second) == set(range(n))
    assert max(first.values()) == max(second.values()) == 1
    assert not set(range(stop)) & set(second)
    assert "30 results, all correct" in out.getvalue()


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_each_item_records_when_and_where_it_ran(backend: str, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(triple, range(20), journal=journal, backend=backend, workers=2)
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = db.execute("SELECT status, attempts, started, finished, seconds, worker FROM items").fetchall()
    for status, attempts, started, finished, seconds, worker in rows:
        assert (status, attempts) == ("done", 1)
        assert started <= finished
        assert seconds >= 0
        assert worker == "caller" if backend == "serial" else worker.startswith("worker ")

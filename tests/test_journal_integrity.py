"""The journal never gives an item another item's result, and never changes or trusts what it should not.

* a key given to two items of a run is refused (it would give the second the first's result), whatever the
  entry point (``map``, ``imap``, ``Pool.imap``) and however the input comes (a list, a generator);
* a run's fingerprint is the same in every process, so a function holding an object (whose repr holds an
  address) resumes; a changed one is still refused;
* a foreign SQLite file is refused without being changed (not even switched to WAL);
* a stored value that cannot be loaded is a ``JournalError`` naming the item;
* a reader never finds a half-made journal;
* a journal another user owns is refused unless trusted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parcelout
from parcelout import Failure, Journal, JournalError
from parcelout._journal import read_outcomes, read_summary
from tests.waits import wait_until

SCRIPT_SECONDS = 50


def double(x: int) -> int:
    return 2 * x


def ones_digit(x: int) -> int:
    return x % 10


def env_with_path() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


# ---------------------------------------------------------------- one key, one item


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_map_refuses_a_key_given_to_two_items_naming_both(backend: str, tmp_path: Path) -> None:
    journal = tmp_path / "dup.db"
    with pytest.raises(JournalError, match=r"items 0 and 10 have the same key 0: .* item 10 the result of item 0"):
        parcelout.map(double, range(20), journal=journal, key=ones_digit, backend=backend, workers=2)
    # What was recorded is each item's own result, under its own key.
    assert all(o.value == 2 * o.index for o in read_outcomes(journal) if o.ok)


def test_a_repeated_key_in_one_batch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"items 1 and 2 have the same key \"b\""):
        parcelout.map(str.upper, ["a", "b", "b", "c"], journal=tmp_path / "dup.db", key=str, chunksize=4)


def test_imap_over_a_generator_gives_every_item_its_own_result_until_a_key_repeats(tmp_path: Path) -> None:
    taken: list[int] = []

    def lazily() -> Iterator[int]:
        for x in range(20):
            taken.append(x)
            yield x

    given: list[int] = []
    stream = parcelout.imap(
        double, lazily(), journal=tmp_path / "dup.db", key=ones_digit, backend="serial", chunksize=1
    )
    with pytest.raises(JournalError, match=r"items 0 and 10 have the same key 0"):
        given.extend(stream)
    assert given == [2 * x for x in range(10)]  # item 10 got no result, let alone item 0's
    assert 10 in taken


def test_pool_imap_and_imap_unordered_refuse_a_repeated_key(tmp_path: Path) -> None:
    with parcelout.Pool(2, "thread") as pool:
        with pytest.raises(JournalError, match=r"items 0 and 10 have the same key 3"):
            list(pool.imap(double, range(3, 20), journal=tmp_path / "a.db", key=ones_digit))
        with pytest.raises(JournalError, match=r"items 0 and 10 have the same key 5"):
            list(pool.imap_unordered(double, range(5, 20), journal=tmp_path / "b.db", key=ones_digit))


def test_a_repeated_key_is_refused_on_resume_too_and_unique_keys_still_resume(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    assert parcelout.map(double, range(10), journal=journal, key=ones_digit) == [2 * x for x in range(10)]
    assert parcelout.map(double, range(10), journal=journal, key=ones_digit) == [2 * x for x in range(10)]
    with pytest.raises(JournalError, match=r"items 0 and 10 have the same key 0"):
        parcelout.map(double, range(11), journal=journal, key=ones_digit)


def test_string_and_integer_keys_are_distinct(tmp_path: Path) -> None:
    items: list[Any] = [1, "1", 2, "2"]
    assert parcelout.map(repr, items, journal=tmp_path / "run.db", key=lambda x: x) == ["1", "'1'", "2", "'2'"]


@pytest.mark.parametrize("bad", [1.5, None, True, (1,), b"k"], ids=repr)
def test_a_key_neither_str_nor_int_is_refused_naming_the_item_and_the_type(bad: object, tmp_path: Path) -> None:
    def key(x: int) -> object:
        return bad if x == 3 else x

    with pytest.raises(JournalError, match=rf"the key of item 3 \(3\) is .*, a {type(bad).__name__}:"):
        parcelout.map(double, range(6), journal=tmp_path / "run.db", key=key)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fingerprint, from process to process

HOLDER = textwrap.dedent(
    """
    import functools
    import sys
    import parcelout

    class Client:  # its repr holds its address: <__main__.Client object at 0x7f...>
        pass

    def make(client, names):
        def work(x):
            assert isinstance(client, Client) and names
            with open(sys.argv[2], "a") as log:
                log.write(f"{x}\\n")
            return x + OFFSET
        return work

    def scaled(client, factor, x):
        with open(sys.argv[2], "a") as log:
            log.write(f"{x}\\n")
        return x * factor

    OFFSET = 1

    if __name__ == "__main__":
        journal, log, which = sys.argv[1:4]
        client = Client()
        if which == "closure":
            fn = make(client, {"alpha", "beta", "gamma", "delta"})  # a set of strings: its order changes per process
        else:
            fn = functools.partial(scaled, client, 3)
        print(parcelout.map(fn, range(8), journal=journal, backend="thread"))
    """
)


@pytest.mark.parametrize("which", ["closure", "partial"])
def test_a_function_holding_an_object_resumes_in_another_process(which: str, tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    journal, log = tmp_path / "run.db", tmp_path / "calls"

    def run(source: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(source), str(journal), str(log), which],
            env=env_with_path(),
            capture_output=True,
            text=True,
            timeout=SCRIPT_SECONDS,
            check=False,
        )

    first = run(script)
    assert first.returncode == 0, first.stderr
    again = run(script)
    assert again.returncode == 0, again.stderr  # the same function: the journal is this run's
    assert again.stdout == first.stdout
    assert sorted(int(x) for x in log.read_text().split()) == list(range(8))  # nothing ran twice

    changed = tmp_path / "changed.py"
    changed.write_text(HOLDER.replace("return x + OFFSET", "return x - OFFSET").replace("x * factor", "x * -factor"))
    refused = run(changed)
    assert refused.returncode == 1
    assert "JournalError" in refused.stderr
    assert "changed since it was written" in refused.stderr


def test_a_partial_over_another_argument_is_another_run(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(functools.partial(pow, 2), range(3), journal=journal)
    with pytest.raises(JournalError, match="changed since it was written"):
        parcelout.map(functools.partial(pow, 3), range(3), journal=journal)


# ---------------------------------------------------------------- a file that is not ours


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    foreign = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE accounts (name TEXT, balance INTEGER)")
        db.execute("INSERT INTO accounts VALUES ('ada', 100)")
        db.commit()
    before = foreign.read_bytes()
    with pytest.raises(JournalError, match="is a SQLite database but not a parcelout journal"):
        parcelout.map(double, range(3), journal=foreign)
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, no -shm
    with contextlib.closing(sqlite3.connect(foreign)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@pytest.mark.parametrize("column", ["result", "result_json"])
def test_a_stored_value_that_cannot_be_loaded_is_a_journal_error_naming_the_item(column: str, tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    items: list[Any] = [{"n": i} if column == "result_json" else {i} for i in range(6)]  # JSON / pickled results
    parcelout.map(_same, items, journal=journal)
    with contextlib.closing(sqlite3.connect(journal)) as db:
        db.execute(f"UPDATE items SET {column} = ? WHERE idx = 4", (b"\x80\x04garbage" if column == "result" else "{",))
        db.commit()
    with pytest.raises(JournalError, match=r"the recorded result of item 4 \(key 4:[0-9a-f]+\) cannot be loaded"):
        parcelout.map(_same, items, journal=journal)
    with pytest.raises(JournalError, match=r"the recorded result of item 4 \(key 4:[0-9a-f]+\) cannot be loaded"):
        list(read_outcomes(journal))


def _same(x: Any) -> Any:
    return x


def test_a_journal_path_that_cannot_be_a_journal_is_a_journal_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "dangling.db").symlink_to(tmp_path / "gone.db")
    cases = {
        tmp_path / "dir.db": "is a directory",
        tmp_path / "dangling.db": "is a symbolic link to .*gone.db, which does not exist",
        tmp_path / "no" / "such" / "run.db": "there is no directory",
    }
    for path, message in cases.items():
        with pytest.raises(JournalError, match=message):
            parcelout.map(double, range(3), journal=path)
    assert not (tmp_path / "gone.db").exists()


# ---------------------------------------------------------------- a reader while the journal is made

READER = textwrap.dedent(
    """
    import os
    import sys
    from parcelout import JournalError, read_summary

    folder, count = sys.argv[1], int(sys.argv[2])
    open(os.path.join(folder, "reader-ready"), "w").close()
    stop = os.path.join(folder, "stop")
    bad = []
    i = 0
    while i < count and not os.path.exists(stop):
        try:
            read_summary(os.path.join(folder, f"j{i}.db"))
        except JournalError as error:
            if "no journal at" in str(error):
                continue  # not made yet: look again at once
            bad.append(str(error))
        i += 1
    print("\\n".join(bad))
    """
)


def test_a_reader_finds_no_journal_or_a_whole_one_never_a_half_made_one(tmp_path: Path) -> None:
    count = 40
    reader_script = tmp_path / "reader.py"
    reader_script.write_text(READER)
    with subprocess.Popen(
        [sys.executable, str(reader_script), str(tmp_path), str(count)],
        env=env_with_path(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as reader:
        try:
            wait_until(lambda: (tmp_path / "reader-ready").exists() or reader.poll() is not None, 20, "the reader")
            for i in range(count):
                parcelout.map(double, range(2), journal=tmp_path / f"j{i}.db", backend="serial")
        finally:
            (tmp_path / "stop").touch()
            out, err = reader.communicate(timeout=SCRIPT_SECONDS)
    assert reader.returncode == 0, err
    assert out.strip() == "", f"a reader was told: {out}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".j")]  # no file left from making them


# ---------------------------------------------------------------- another user's journal

needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
STRANGER = 54321  # a uid that is not ours, nor root's


@needs_root
def test_a_journal_another_user_owns_is_refused_unless_trusted(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(double, range(5), journal=journal)
    os.chown(journal, STRANGER, -1)
    with pytest.raises(JournalError, match=rf"belongs to another user \(uid {STRANGER}\).*trust_owner=True"):
        parcelout.map(double, range(5), journal=journal)
    with pytest.raises(JournalError, match="belongs to another user"):
        read_outcomes(journal)
    assert read_summary(journal).done == 5  # counting loads no pickle
    trusted = Journal(journal, trust_owner=True)
    assert parcelout.map(double, range(5), journal=trusted) == [0, 2, 4, 6, 8]
    assert [o.value for o in read_outcomes(journal, trust_owner=True)] == [0, 2, 4, 6, 8]


@needs_root
def test_a_write_ahead_log_another_user_owns_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(double, range(5), journal=journal)
    planted = tmp_path / "run.db-wal"
    planted.write_bytes(b"")
    os.chown(planted, STRANGER, -1)
    with pytest.raises(JournalError, match=r"the journal .*run.db-wal belongs to another user"):
        parcelout.map(double, range(5), journal=journal)


# ---------------------------------------------------------------- attempts


class Bomb:
    """An item whose unpickling kills the worker receiving it: a death outside any item's run."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (os._exit, (3,))


def test_an_item_that_killed_three_workers_says_three_attempts(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    out = parcelout.map(
        _same, [1, Bomb(), 2], journal=journal, backend="process", workers=2, chunksize=1, on_error="return"
    )
    failure = out[1]
    assert isinstance(failure, Failure)
    assert failure.kind == "crash"
    assert failure.attempts == 3
    assert {o.index: o.attempts for o in read_outcomes(journal)}[1] == 3


POLLER = textwrap.dedent(
    """
    import os
    import sys
    from parcelout import read_summary

    journal, ready, stop = sys.argv[1:4]
    read_summary(journal)
    open(ready, "w").close()
    while not os.path.exists(stop):
        read_summary(journal)  # `parcelout status`, as often as it can
    """
)


def test_a_reader_polling_a_journal_does_not_stop_a_run_from_starting(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    parcelout.map(double, range(2), journal=journal, backend="serial")
    poller_script = tmp_path / "poller.py"
    poller_script.write_text(POLLER)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    with subprocess.Popen(
        [sys.executable, str(poller_script), str(journal), str(ready), str(stop)],
        env=env_with_path(),
        stderr=subprocess.PIPE,
        text=True,
    ) as poller:
        try:
            wait_until(lambda: ready.exists() or poller.poll() is not None, 20, "the poller")
            for _ in range(400):  # each start takes the journal's lock while the poller probes it
                assert parcelout.map(double, range(2), journal=journal, backend="serial") == [0, 2]
        finally:
            stop.touch()
            _, err = poller.communicate(timeout=SCRIPT_SECONDS)
    assert poller.returncode == 0, err

"""The command line never destroys data, and says what is wrong in one line.

Each test runs ``parcelout`` as a user runs it (a separate process, in a directory holding ``jobs.py``), with the
mistake a user makes: the input file as the output, the journal as the output, a directory as a journal, a
missing extra; or stops it as ``timeout``, systemd and Kubernetes do, with SIGTERM. A usage error is one line on
standard error and exit status 2, and leaves every file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from parcelout._journal import read_outcomes
from tests.test_cli_run import COMMAND_SECONDS, JOBS, Done, parcelout, values
from tests.waits import wait_until

SLOW_JOBS = '''

def slow(x):
    """About 30 ms an item; every call is logged in calls.txt."""
    with open("calls.txt", "a") as calls:
        calls.write(f"{x}\\n")
    threading.Event().wait(0.03)
    return x
'''

ITEMS = "1\n2\n3\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS + SLOW_JOBS)
    return tmp_path


def assert_usage_error(done: Done, *messages: str) -> None:
    assert done.status == 2, done.err
    assert done.err.startswith("parcelout: "), done.err
    assert done.err.count("\n") == 1, done.err  # one line, no traceback
    for message in messages:
        assert message in done.err


# ---------------------------------------------------------------- the output is the input


def output_spellings(workdir: Path) -> dict[str, str]:
    """Ways to name items.jsonl again: by the same name, another spelling, a link."""
    (workdir / "link.jsonl").symlink_to("items.jsonl")
    os.link(workdir / "items.jsonl", workdir / "hard.jsonl")
    return {
        "same name": "items.jsonl",
        "dot slash": "./items.jsonl",
        "absolute": str(workdir / "items.jsonl"),
        "symbolic link": "link.jsonl",
        "hard link": "hard.jsonl",
    }


@pytest.mark.parametrize("spelling", ["same name", "dot slash", "absolute", "symbolic link", "hard link"])
def test_an_output_that_is_the_input_file_is_refused_before_anything_is_written(workdir: Path, spelling: str) -> None:
    (workdir / "items.jsonl").write_text(ITEMS)
    output = output_spellings(workdir)[spelling]
    done = parcelout(workdir, "run", "jobs:square", "--input", "items.jsonl", "--output", output, "--journal", "run.db")
    assert_usage_error(done, f"--output {output} is the input file items.jsonl")
    assert done.out == ""
    assert (workdir / "items.jsonl").read_text() == ITEMS
    assert not (workdir / "run.db").exists()  # nothing was opened for writing, not even the journal


def test_an_output_that_is_the_file_standard_input_reads_is_refused(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text(ITEMS)
    with (workdir / "items.jsonl").open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "parcelout", "run", "jobs:square", "--input", "-", "--output", "items.jsonl"],
            cwd=workdir,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
    assert_usage_error(Done(done.returncode, done.stdout, done.stderr), "is the file standard input reads")
    assert (workdir / "items.jsonl").read_text() == ITEMS


def test_an_output_beside_the_input_is_fine(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text(ITEMS)
    done = parcelout(workdir, "run", "jobs:square", "--input", "items.jsonl", "--output", "squares.jsonl")
    assert done.status == 0, done.err
    assert [json.loads(line)["value"] for line in (workdir / "squares.jsonl").read_text().splitlines()] == [1, 4, 9]


# ---------------------------------------------------------------- the output is the journal

JOURNAL_SPELLINGS = ["run.db", "./run.db", "absolute", "link.db", "run.db-wal", "run.db-shm", "run.db-journal"]


def journal_spelling(workdir: Path, spelling: str) -> str:
    if spelling == "absolute":
        return str(workdir / "run.db")
    if spelling == "link.db":
        (workdir / "link.db").symlink_to("run.db")
    return spelling


@pytest.mark.parametrize("command", ["run", "results"])
@pytest.mark.parametrize("spelling", JOURNAL_SPELLINGS)
def test_an_output_that_is_the_journal_or_its_files_is_refused(workdir: Path, command: str, spelling: str) -> None:
    first = parcelout(workdir, "run", "jobs:square", "--range", "5", "--journal", "run.db")
    assert first.status == 0, first.err
    journal = (workdir / "run.db").read_bytes()
    output = journal_spelling(workdir, spelling)
    if command == "run":
        done = parcelout(workdir, "run", "jobs:square", "--range", "5", "--journal", "run.db", "--output", output)
    else:
        done = parcelout(workdir, "results", "run.db", "--output", output)
    assert_usage_error(done, f"--output {output} is the journal")
    assert (workdir / "run.db").read_bytes() == journal
    assert parcelout(workdir, "results", "run.db").out == first.out  # the journal still reads back whole


def test_a_new_journal_as_the_output_is_refused_before_either_is_made(workdir: Path) -> None:
    done = parcelout(workdir, "run", "jobs:square", "--range", "5", "--journal", "new.db", "--output", "new.db")
    assert_usage_error(done, "--output new.db is the journal new.db")
    assert not (workdir / "new.db").exists()


def test_results_of_a_missing_journal_leave_the_output_as_it_was(workdir: Path) -> None:
    (workdir / "results.jsonl").write_text("kept\n")
    done = parcelout(workdir, "results", "nothere.db", "--output", "results.jsonl")
    assert_usage_error(done, "no journal at nothere.db")
    assert (workdir / "results.jsonl").read_text() == "kept\n"


# ---------------------------------------------------------------- a journal path that cannot be used


def test_a_journal_path_that_cannot_be_used_is_one_line(workdir: Path) -> None:
    (workdir / "somedir").mkdir()
    (workdir / "dangling.db").symlink_to("gone.db")
    cases = {
        ("status", "somedir"): "the journal somedir is a directory",
        ("results", "somedir"): "the journal somedir is a directory",
        ("run", "jobs:square", "--range", "3", "--journal", "somedir"): "the journal somedir is a directory",
        ("run", "jobs:square", "--range", "3", "--journal", "nodir/run.db"): "there is no directory nodir",
        ("run", "jobs:square", "--range", "3", "--journal", "dangling.db"): "symbolic link to gone.db",
        ("status", "dangling.db"): "symbolic link to gone.db, which does not exist",
        ("results", "dangling.db"): "symbolic link to gone.db, which does not exist",
    }
    for args, message in cases.items():
        done = parcelout(workdir, *args)
        assert_usage_error(done, message)
        assert done.out == ""
    assert not (workdir / "gone.db").exists()


# ---------------------------------------------------------------- a missing extra


@pytest.mark.parametrize(
    ("backend", "module", "message"),
    [
        ("dask", "distributed", "backend='dask' needs Dask distributed, which is not installed"),
        ("ray", "ray", "backend='ray' needs Ray, which is not installed"),
    ],
)
def test_a_backend_whose_extra_is_not_installed_is_one_line(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, backend: str, module: str, message: str
) -> None:
    hidden = tmp_path_factory.mktemp("not-installed")
    (hidden / f"{module}.py").write_text(f"raise ImportError({f'No module named {module!r}'!r})\n")
    env = {**os.environ, "PYTHONPATH": str(hidden)}  # importing the extra fails, as where it is not installed
    done = parcelout(workdir, "run", "jobs:square", "--range", "3", "--backend", backend, env=env)
    assert_usage_error(done, message, f"pip install 'parcelout[{backend}]'")
    assert done.out == ""


# ---------------------------------------------------------------- one key, one item


def test_a_repeated_key_field_is_refused_and_no_item_gets_another_items_result(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text(
        '{"id": "a", "values": [1]}\n{"id": "b", "values": [2]}\n{"id": "a", "values": [3, 4]}\n'
    )
    command = ("run", "jobs:total", "--input", "items.jsonl", "--key", "id", "--journal", "run.db", "--chunksize", "1")
    done = parcelout(workdir, *command, "--backend", "serial")
    assert_usage_error(done, 'items 0 and 2 have the same key "a"')
    assert [(e["index"], e["value"]) for e in done.entries] == [(0, 1), (1, 2)]  # item 2 given nothing, not 1
    again = parcelout(workdir, *command)
    assert_usage_error(again, 'items 0 and 2 have the same key "a"')
    assert 2 not in [e["index"] for e in again.entries]


# ---------------------------------------------------------------- what the journal holds


@pytest.mark.parametrize("column", ["result", "result_json"])
def test_a_stored_result_that_cannot_be_loaded_is_one_line(workdir: Path, column: str) -> None:
    function = "jobs:echo" if column == "result_json" else "jobs:square"
    first = parcelout(workdir, "run", function, "--range", "5", "--journal", "run.db")
    assert first.status == 0, first.err
    with contextlib.closing(sqlite3.connect(workdir / "run.db")) as db:
        db.execute(f"UPDATE items SET result = NULL, result_json = NULL, {column} = ? WHERE idx = 3", ("{",))
        db.commit()
    for args in [("results", "run.db"), ("run", function, "--range", "5", "--journal", "run.db")]:
        done = parcelout(workdir, *args)
        assert_usage_error(done, "the recorded result of item 3 (key 3:", "cannot be loaded")


needs_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")


@needs_root
def test_a_journal_another_user_owns_is_refused_unless_trusted(workdir: Path) -> None:
    run = ("run", "jobs:square", "--range", "4", "--journal", "run.db")
    first = parcelout(workdir, *run)
    assert first.status == 0, first.err
    os.chown(workdir / "run.db", 54321, -1)
    for args in [run, ("results", "run.db")]:
        assert_usage_error(parcelout(workdir, *args), "belongs to another user (uid 54321)", "--trust-owner")
    assert parcelout(workdir, "status", "run.db").status == 0  # counting loads no pickle
    assert parcelout(workdir, "results", "run.db", "--trust-owner").out == first.out
    trusted = parcelout(workdir, *run, "--trust-owner")
    assert (trusted.status, trusted.out) == (0, first.out)
    assert_usage_error(parcelout(workdir, "run", "jobs:square", "--range", "4", "--trust-owner"), "give --journal")


# ---------------------------------------------------------------- SIGTERM


def logged_calls(workdir: Path) -> list[int]:
    path = workdir / "calls.txt"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def line_count(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_rerun_resumes(workdir: Path, backend: str) -> None:
    n = 100
    out = workdir / "out.jsonl"
    args = ["run", "jobs:slow", "--range", str(n), "--backend", backend, "--workers", "2", "--chunksize", "1"]
    args += ["--journal", "run.db", "--output", "out.jsonl"]
    with subprocess.Popen(
        [sys.executable, "-m", "parcelout", *args],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            wait_until(lambda: line_count(out) >= 3 or proc.poll() is not None, 30, "the first results")
            assert proc.poll() is None, "the run ended before it could be stopped"
            family = psutil.Process(proc.pid).children(recursive=True)  # its workers, the fork server
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)  # it ends within seconds, not when the items are done
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.startswith("parcelout: terminated (SIGTERM) after "), err
    assert err.count("\n") == 1, err
    assert "the journal run.db has what finished: run the same command again to resume" in err
    wait_until(lambda: not [p for p in family if _alive(p)], 10, "every process of the run to exit")

    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["index"] for e in written] == list(range(len(written)))  # whole lines, in order
    assert len(written) < n
    ran_first = len(logged_calls(workdir))

    rerun = parcelout(workdir, *args)
    assert rerun.status == 0, rerun.err
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["index"] for e in entries] == list(range(n))  # each item exactly once
    assert [e["value"] for e in entries] == list(range(n))
    outcomes = list(read_outcomes(workdir / "run.db"))
    assert [o.index for o in outcomes] == list(range(n))
    assert all(o.ok and o.value == o.index for o in outcomes)
    ran_again = logged_calls(workdir)[ran_first:]
    assert not {e["index"] for e in written} & set(ran_again)  # what was written first was not run again
    assert sorted(set(logged_calls(workdir))) == list(range(n))
    assert values(rerun) == []  # to --output, not standard output


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False

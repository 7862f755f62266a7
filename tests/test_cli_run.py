"""``parcelout run``, ``status`` and ``results``, run as a user runs them: a separate process started in a
directory that holds the user's module (``jobs.py``), the functions imported as ``jobs:square``."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parcelout._journal import default_key
from tests.waits import wait_until

COMMAND_SECONDS = 50  # the bound on one command; pytest-timeout's is 60 per test

JOBS = '''
import math
import os
import threading


class Oops(Exception):
    pass


LIMIT = 3


def square(x):
    return x * x


def echo(x):
    return x


def shout(text):
    return text.upper()


def total(item):
    return sum(item["values"])


def picky(x):
    if x % 3 == 0:
        raise ValueError(f"no multiples of 3: {x}")
    if x == 5:
        raise Oops("five")
    return x


def as_set(x):
    return {x}


def not_a_number(x):
    return math.nan


def dies_on_2(x):
    if x == 2:
        os._exit(3)
    return x


def hangs_on_1(x):
    if x == 1:
        threading.Event().wait(30)
    return x


def flaky(x):
    """Fails for odd items until a file named "fixed" exists; every call is logged in calls.txt."""
    with open("calls.txt", "a") as calls:
        calls.write(f"{x}\\n")
    if x % 2 and not os.path.exists("fixed"):
        raise ValueError(f"{x} is odd")
    return x


def stalls_on_5(x):
    if x == 5 and not os.path.exists("go"):
        threading.Event().wait(30)
    return x
'''


@dataclass(frozen=True)
class Done:
    """A finished command: its exit status, standard output and standard error."""

    status: int
    out: str
    err: str

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    return tmp_path


def parcelout(cwd: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> Done:
    """``python -m parcelout ARGS`` in ``cwd``."""
    done = subprocess.run(
        [sys.executable, "-m", "parcelout", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=COMMAND_SECONDS,
        check=False,
        env=env,
    )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


def values(done: Done) -> list[Any]:
    return [entry.get("value") for entry in done.entries]


def errors(done: Done) -> dict[int, dict[str, str]]:
    return {entry["index"]: entry["error"] for entry in done.entries if "error" in entry}


def without_tqdm_disable() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # conftest turns bars off


# ---------------------------------------------------------------- input and output


def test_range_gives_every_index_once_in_order(workdir: Path, backend: str) -> None:
    done = parcelout(workdir, "run", "jobs:square", "--range", "40", "--backend", backend)
    assert done.status == 0, done.err
    assert done.err == ""
    assert [e["index"] for e in done.entries] == list(range(40))
    assert values(done) == [i * i for i in range(40)]
    assert [e["key"] for e in done.entries] == [default_key(i, i) for i in range(40)]


def test_the_parcelout_script_finds_the_users_module_in_process_workers(workdir: Path) -> None:
    # Unlike `python -m`, the script does not put the current directory on sys.path: the command must.
    script = Path(sys.executable).with_name("parcelout")
    done = subprocess.run(
        [str(script), "run", "jobs:square", "--range", "20", "--backend", "process", "--workers", "2"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert values(Done(done.returncode, done.stdout, done.stderr)) == [i * i for i in range(20)]


def test_json_lines_from_a_file_skip_blank_lines(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text('{"id": "a", "values": [1, 2]}\n\n  \n{"id": "b", "values": [3, 4, 5]}\n')
    done = parcelout(workdir, "run", "jobs:total", "--input", "items.jsonl")
    assert done.status == 0, done.err
    assert values(done) == [3, 12]
    assert [e["index"] for e in done.entries] == [0, 1]
    item_a = {"id": "a", "values": [1, 2]}
    assert done.entries[0]["key"] == default_key(0, item_a)
    keyed = parcelout(workdir, "run", "jobs:total", "--input", "items.jsonl", "--key", "id")
    assert [e["key"] for e in keyed.entries] == ["a", "b"]
    assert values(keyed) == [3, 12]


def test_json_lines_from_standard_input(workdir: Path) -> None:
    done = parcelout(workdir, "run", "jobs:square", "--input", "-", stdin=b"1\n2\n\n3")
    assert done.status == 0, done.err
    assert values(done) == [1, 4, 9]


def test_text_lines_are_string_items_without_their_line_endings(workdir: Path) -> None:
    (workdir / "words.txt").write_bytes(b"\xef\xbb\xbfalpha\r\n\nbeta\n{not json}\ngamma")  # a byte-order mark first
    done = parcelout(workdir, "run", "jobs:shout", "--input", "words.txt", "--lines")
    assert done.status == 0, done.err
    assert values(done) == ["ALPHA", "", "BETA", "{NOT JSON}", "GAMMA"]
    piped = parcelout(workdir, "run", "jobs:shout", "--input", "-", "--lines", stdin=b"x\ny\n")
    assert values(piped) == ["X", "Y"]


BAD_LINES = {
    "invalid JSON": (["--input", "-"], b'1\n\n{"a": \n3\n', "input line 3: invalid JSON: Expecting value"),
    "not UTF-8 JSON": (["--input", "-"], b'1\n"\xff"\n3\n', "input line 2: not UTF-8"),
    "not UTF-8 text": (["--input", "-", "--lines"], b"1\n\xff\n3\n", "input line 2: not UTF-8"),
    "no key field": (["--input", "-", "--key", "id"], b'{"id": 1}\n{"name": 2}\n{"id": 3}\n', "line 2: no field 'id'"),
    "key not a string": (["--input", "-", "--key", "id"], b'{"id": 1}\n{"id": [2]}\n{"id": 3}\n', "not a string or"),
}


@pytest.mark.parametrize("case", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_input_line_fails_only_its_item(workdir: Path, case: tuple[list[str], bytes, str]) -> None:
    options, stdin, message = case
    done = parcelout(workdir, "run", "jobs:echo", *options, stdin=stdin)
    assert done.status == 1
    assert [e["index"] for e in done.entries] == [0, 1, 2]
    first, bad, third = done.entries
    assert "error" not in first and "error" not in third
    assert bad["error"]["type"] == "ValueError"
    assert bad["error"]["kind"] == "error"
    assert message in bad["error"]["message"]
    assert done.err == "parcelout: 1 of 3 items failed: ValueError (1)\n"


def test_output_file(workdir: Path) -> None:
    done = parcelout(workdir, "run", "jobs:picky", "--range", "5", "--output", "out.jsonl")
    assert done.status == 1
    assert done.out == ""
    to_stdout = parcelout(workdir, "run", "jobs:picky", "--range", "5")
    assert (workdir / "out.jsonl").read_text() == to_stdout.out
    assert len(to_stdout.entries) == 5


@pytest.mark.parametrize("function", ["as_set", "not_a_number"])
def test_a_result_json_cannot_write_fails_its_item(workdir: Path, function: str) -> None:
    done = parcelout(workdir, "run", f"jobs:{function}", "--range", "2", "--journal", "run.db")
    assert done.status == 1
    assert [e["index"] for e in done.entries] == [0, 1]
    for error in errors(done).values():
        assert error["type"] == "TypeError"
        assert "not JSON serializable" in error["message"]
    assert done.err == "parcelout: 2 of 2 items failed: TypeError (2)\n"
    assert "0 done, 2 failed" in parcelout(workdir, "status", "run.db").out  # failed where it ran, not only here


def test_a_killed_run_leaves_whole_lines_and_its_journal_resumes(workdir: Path) -> None:
    out = workdir / "out.jsonl"
    command = [sys.executable, "-m", "parcelout", "run", "jobs:stalls_on_5", "--range", "10"]
    options = ["--backend", "serial", "--chunksize", "1", "--journal", "run.db", "--output", str(out)]
    with subprocess.Popen([*command, *options], cwd=workdir, stderr=subprocess.DEVNULL) as proc:
        try:
            wait_until(lambda: out.exists() and out.read_text().count("\n") == 5, 20, "the lines before item 5")
        finally:
            proc.kill()
    assert [json.loads(line)["value"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    (workdir / "go").touch()
    done = parcelout(workdir, *command[3:], *options[:-2])
    assert done.status == 0, done.err
    assert values(done) == list(range(10))


# ---------------------------------------------------------------- failures and exit status


def test_failures_are_entries_and_summarised(workdir: Path) -> None:
    done = parcelout(workdir, "run", "jobs:picky", "--range", "10", "--backend", "thread")
    assert done.status == 1
    assert sorted(errors(done)) == [0, 3, 5, 6, 9]
    assert errors(done)[3] == {"type": "ValueError", "message": "no multiples of 3: 3", "kind": "error"}
    assert errors(done)[5] == {"type": "jobs.Oops", "message": "five", "kind": "error"}
    assert [e["value"] for e in done.entries if "error" not in e] == [1, 2, 4, 7, 8]
    assert done.err == "parcelout: 5 of 10 items failed: ValueError (4), jobs.Oops (1)\n"
    fine = parcelout(workdir, "run", "jobs:picky", "--input", "-", stdin=b"1\n2\n")
    assert (fine.status, fine.err) == (0, "")


def test_a_crash_and_a_timeout_are_their_kinds(workdir: Path) -> None:
    crashed = parcelout(workdir, "run", "jobs:dies_on_2", "--range", "4", "--backend", "process")
    assert crashed.status == 1
    assert list(errors(crashed)) == [2]
    assert errors(crashed)[2]["kind"] == "crash"
    assert errors(crashed)[2]["type"] == "parcelout.errors.WorkerCrashed"
    timed_out = parcelout(
        workdir, "run", "jobs:hangs_on_1", "--range", "3", "--backend", "process", "--task-timeout", "1"
    )
    assert timed_out.status == 1
    assert list(errors(timed_out)) == [1]
    assert errors(timed_out)[1]["kind"] == "timeout"
    assert values(timed_out) == [0, None, 2]


USAGE_ERRORS = {
    "unknown module": (["nosuch:square", "--range", "3"], "no module named 'nosuch'"),
    "unknown function": (["jobs:cube", "--range", "3"], "module 'jobs' has no function 'cube'"),
    "not callable": (["jobs:LIMIT", "--range", "3"], "jobs:LIMIT is not callable"),
    "module fails to import": (["broken:f", "--range", "3"], "importing module 'broken' failed: RuntimeError: half"),
    "no colon": (["jobs", "--range", "3"], "expected MODULE:FUNC"),
    "missing input file": (["jobs:square", "--input", "nothere.jsonl"], "cannot read nothere.jsonl"),
    "lines without input": (["jobs:square", "--range", "3", "--lines"], "--lines reads --input"),
    "key with range": (["jobs:square", "--range", "3", "--key", "id"], "--key FIELD names a field"),
    "retry-failed without journal": (["jobs:square", "--range", "3", "--retry-failed"], "give --journal"),
    "timeout on serial": (
        ["jobs:square", "--range", "3", "--backend", "serial", "--task-timeout", "1"],
        "--task-timeout needs",
    ),
    "no workers": (["jobs:square", "--range", "3", "--workers", "0"], "--workers must be greater than 0"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_are_one_line_and_exit_status_2(workdir: Path, case: tuple[list[str], str]) -> None:
    (workdir / "broken.py").write_text("raise RuntimeError('half-written')\n")
    args, message = case
    done = parcelout(workdir, "run", *args)
    assert done.status == 2
    assert done.out == ""
    assert done.err.startswith("parcelout: ")
    assert done.err.count("\n") == 1, done.err
    assert message in done.err


def test_argument_syntax_errors_exit_with_status_2(workdir: Path) -> None:
    no_input = parcelout(workdir, "run", "jobs:square")
    assert no_input.status == 2
    assert "one of the arguments --input --range is required" in no_input.err
    bad_backend = parcelout(workdir, "run", "jobs:square", "--range", "3", "--backend", "cluster")
    assert bad_backend.status == 2
    assert "invalid choice" in bad_backend.err
    negative = parcelout(workdir, "run", "jobs:square", "--range", "-1")
    assert negative.status == 2
    assert "--range" in negative.err


def test_a_closed_pipe_ends_the_run_quietly(workdir: Path) -> None:
    command = [sys.executable, "-m", "parcelout", "run", "jobs:square", "--range", "1000000", "--backend", "serial"]
    with subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["index"] == 0
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read().decode()
        status = proc.wait(COMMAND_SECONDS)
    assert status == 1
    assert err == ""


# ---------------------------------------------------------------- what goes to standard error


def test_verbose_prints_the_plan(workdir: Path) -> None:
    done = parcelout(workdir, "run", "jobs:square", "--range", "500", "--verbose")
    assert done.status == 0
    assert done.err.startswith("backend=")
    assert "because" in done.err
    assert values(done) == [i * i for i in range(500)]
    quiet = parcelout(workdir, "run", "jobs:square", "--range", "500")
    assert quiet.err == ""


def test_a_progress_bar_only_on_a_terminal(workdir: Path) -> None:
    env = without_tqdm_disable()
    piped = parcelout(workdir, "run", "jobs:square", "--range", "300", "--backend", "serial", env=env)
    assert piped.status == 0
    assert piped.err == ""  # standard error is a pipe here: no bar
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    try:
        done = subprocess.run(
            [sys.executable, "-m", "parcelout", "run", "jobs:square", "--range", "300", "--backend", "serial"],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=env,
            timeout=COMMAND_SECONDS,
            check=False,
        )
    finally:
        os.close(follower)
    terminal = read_all(leader)
    assert done.returncode == 0
    assert "300/300" in terminal
    assert "item/s" in terminal  # the rate


def read_all(fd: int) -> str:
    """What was written to the terminal whose other end is ``fd`` (every writer has closed it), then close it."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:  # EIO: nothing more, the other end is closed
        pass
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------- the journal


def test_a_journal_resumes_and_reruns_only_the_failed_items_when_asked(workdir: Path) -> None:
    run = ("run", "jobs:flaky", "--range", "6", "--backend", "serial", "--journal", "run.db")
    first = parcelout(workdir, *run)
    assert first.status == 1
    assert sorted(errors(first)) == [1, 3, 5]
    assert calls(workdir) == [0, 1, 2, 3, 4, 5]

    status = parcelout(workdir, "status", "run.db")
    assert status.status == 0, status.err
    assert "jobs:flaky" in status.out
    assert "3 done, 3 failed, 0 running, 0 pending, of 6" in status.out
    assert "ValueError" in status.out
    exported = parcelout(workdir, "results", "run.db")
    assert (exported.status, exported.out) == (0, first.out)

    (workdir / "fixed").touch()
    again = parcelout(workdir, *run)  # done and failed items are given again, not run
    assert (again.status, again.out) == (1, first.out)
    assert calls(workdir) == [0, 1, 2, 3, 4, 5]
    retried = parcelout(workdir, *run, "--retry-failed")
    assert retried.status == 0, retried.err
    assert values(retried) == list(range(6))
    assert calls(workdir) == [0, 1, 2, 3, 4, 5, 1, 3, 5]
    exported = parcelout(workdir, "results", "run.db", "--output", "results.jsonl")
    assert exported.status == 0
    assert (workdir / "results.jsonl").read_text() == retried.out


def calls(workdir: Path) -> list[int]:
    return [int(line) for line in (workdir / "calls.txt").read_text().split()]


def test_a_journal_names_items_by_their_key_field(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text('{"id": "a", "values": [1]}\n{"id": 7, "values": [2, 3]}\n')
    done = parcelout(workdir, "run", "jobs:total", "--input", "items.jsonl", "--key", "id", "--journal", "run.db")
    assert done.status == 0, done.err
    assert [e["key"] for e in done.entries] == ["a", 7]
    exported = parcelout(workdir, "results", "run.db")
    assert exported.out == done.out


def test_a_journal_refuses_another_function(workdir: Path) -> None:
    assert parcelout(workdir, "run", "jobs:square", "--range", "3", "--journal", "run.db").status == 0
    other = parcelout(workdir, "run", "jobs:echo", "--range", "3", "--journal", "run.db")
    assert other.status == 2
    assert "it records a run of jobs:square, not jobs:echo" in other.err
    assert other.err.count("\n") == 1


def test_force_resumes_from_a_journal_of_another_function_and_keeps_the_output_until_then(workdir: Path) -> None:
    assert parcelout(workdir, "run", "jobs:square", "--range", "3", "--journal", "run.db").status == 0
    (workdir / "out.jsonl").write_text("kept\n")
    refused = parcelout(workdir, "run", "jobs:echo", "--range", "4", "--journal", "run.db", "--output", "out.jsonl")
    assert refused.status == 2
    assert "(parcelout run: --force)" in refused.err
    assert (workdir / "out.jsonl").read_text() == "kept\n"  # a journal that cannot be used changes nothing
    forced = parcelout(workdir, "run", "jobs:echo", "--range", "4", "--journal", "run.db", "--force")
    assert forced.status == 0, forced.err
    assert values(forced) == [0, 1, 4, 3]  # the squares were done; item 3 ran under echo


def test_a_journal_refuses_another_key_field(workdir: Path) -> None:
    (workdir / "items.jsonl").write_text('{"id": "a", "name": "x", "values": [1]}\n')
    first = parcelout(workdir, "run", "jobs:total", "--input", "items.jsonl", "--key", "id", "--journal", "run.db")
    assert first.status == 0, first.err
    other = parcelout(workdir, "run", "jobs:total", "--input", "items.jsonl", "--key", "name", "--journal", "run.db")
    assert other.status == 2
    assert "it was written with other options" in other.err


@pytest.mark.parametrize("command", ["status", "results"])
def test_a_missing_or_damaged_journal_is_a_usage_error(workdir: Path, command: str) -> None:
    missing = parcelout(workdir, command, "nothere.db")
    assert missing.status == 2
    assert missing.err == "parcelout: no journal at nothere.db\n"
    (workdir / "damaged.db").write_text("not a database")
    damaged = parcelout(workdir, command, "damaged.db")
    assert damaged.status == 2
    assert damaged.err.startswith("parcelout: the journal damaged.db is damaged")
    assert damaged.out == ""

"""Ctrl-C: one SIGINT ends a program whose workers are busy, promptly, with
``KeyboardInterrupt``, and leaves no worker process behind.

Each case is a script run as a user runs it, in its own interpreter. Its
items say ``busy <pid>`` on standard output, then block (for a minute, far
past any bound here) until the pool stops them. The test waits until the
workers are busy, collects every process the script started (workers, the
fork server), sends one SIGINT, and checks how the script ends. No second
Ctrl-C is ever sent.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.waits import wait_until

WORKERS = 2
EXIT_BOUND = 5.0  # seconds from the SIGINT to the script's exit
STARTUP_BOUND = 30.0  # seconds for the script to start its workers and get them busy

PRELUDE = """
import os, sys, threading
import parcelout

def busy(x):
    sys.stdout.write(f"busy {os.getpid()} {x}\\n")  # one write: threads print at once
    sys.stdout.flush()
    threading.Event().wait(60)
    return x

if __name__ == "__main__":
    backend = sys.argv[1]
"""

CASES = {
    "one-shot imap": """
    for result in parcelout.imap(busy, range(100), backend=backend, workers=2, chunksize=1):
        print("result", result, flush=True)
""",
    "Pool block, imap": """
    with parcelout.Pool(2, backend) as pool:
        for result in pool.imap(busy, range(100), chunksize=1):
            print("result", result, flush=True)
""",
    "Pool block, future.result()": """
    with parcelout.Pool(2, backend) as pool:
        futures = [pool.submit(busy, x) for x in range(6)]
        print("result", futures[0].result(), flush=True)
""",
    "Pool without a block, map": """
    pool = parcelout.Pool(2, backend)
    for result in pool.map(busy, range(6)):
        print("result", result, flush=True)
""",
    # Interpreter exit waits for the work submitted, as the standard executors'
    # exit does; a Ctrl-C during that wait stops it.
    "Pool left to interpreter exit": """
    pool = parcelout.Pool(2, backend)
    futures = [pool.submit(busy, x) for x in range(6)]
    futures[0].add_done_callback(lambda f: print("result", f.result(), flush=True))
""",
}


class Script:
    """A running script; a thread collects its standard output lines."""

    def __init__(self, path: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.stderr_path = path.with_suffix(".stderr")
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(path), *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=str(path.parent),
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="test-stdout-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def busy_pids(self) -> list[int]:
        """The pid of each item that said it is busy (read from the whole
        output: two threads writing at once may share a line)."""
        return [int(pid) for pid in re.findall(r"busy (\d+) \d+", "\n".join(list(self.lines)))]

    def descendants(self) -> list[psutil.Process]:
        try:
            children: list[psutil.Process] = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return children

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def interrupt(self) -> float:
        """Send one Ctrl-C; the seconds until the script exited."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=3 * EXIT_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"one Ctrl-C did not end the script within {3 * EXIT_BOUND:g} s:\n{self.stderr()}")
        return time.monotonic() - start

    def kill(self) -> None:
        """After a failed test: leave nothing behind."""
        for child in [*self.descendants(), psutil.Process(self.proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.proc.wait()

    def finish(self) -> None:
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def all_gone(processes: list[psutil.Process]) -> bool:
    """Zombies count as gone: they run nothing, and their parent reaps them."""
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def assert_stopped(script: Script, took: float, processes: list[psutil.Process]) -> None:
    """One Ctrl-C stopped the script promptly, before any result, and every
    process it started exited."""
    stderr = script.stderr()
    assert took < EXIT_BOUND, f"exited {took:.1f} s after Ctrl-C:\n{stderr}"
    assert "KeyboardInterrupt" in stderr, stderr
    assert "result" not in "\n".join(script.lines), "an item finished instead of stopping"
    wait_until(lambda: all_gone(processes), 10, "every process the script started to exit")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["process", "thread"])
def test_one_ctrl_c_ends_the_program_promptly_and_leaves_no_worker(backend: str, case: str, tmp_path: Path) -> None:
    path = tmp_path / "interrupted.py"
    path.write_text(PRELUDE + CASES[case])
    script = Script(path, backend)
    try:
        wait_until(
            lambda: len(script.busy_pids()) >= WORKERS or script.proc.poll() is not None,
            STARTUP_BOUND,
            "the workers to be busy",
        )
        assert script.proc.poll() is None, f"the script ended early:\n{script.stderr()}"
        pids = set(script.busy_pids())
        if backend == "process":
            assert len(pids) == WORKERS and script.proc.pid not in pids, script.lines
        else:
            assert pids == {script.proc.pid}, script.lines
        processes = script.descendants()
        if backend == "process":
            assert {p.pid for p in processes} >= pids

        took = script.interrupt()
        print(f"\n[{backend}, {case}] exited {took:.2f} s after Ctrl-C (return code {script.proc.returncode})")
    finally:
        if script.proc.poll() is None:
            script.kill()
        script.finish()

    assert_stopped(script, took, processes)
    assert script.proc.returncode != 0, "a program stopped by Ctrl-C must not report success"
    # The resource tracker (gone now) warns there of semaphores or shared memory left behind.
    assert "leaked" not in script.stderr(), script.stderr()


def test_a_ctrl_c_while_pool_map_waits_is_not_blamed_on_an_item(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.py"
    path.write_text(PRELUDE + CASES["Pool without a block, map"])
    script = Script(path, "thread")
    try:
        wait_until(lambda: script.busy_pids() or script.proc.poll() is not None, STARTUP_BOUND, "an item to start")
        script.proc.send_signal(signal.SIGINT)
        script.proc.wait(timeout=3 * EXIT_BOUND)
    finally:
        if script.proc.poll() is None:
            script.kill()
        script.finish()
    stderr = script.stderr()
    assert "KeyboardInterrupt" in stderr, stderr
    assert "raised by Pool.map's item" not in stderr, stderr


SPIN_FIRST = """
import sys
import parcelout

def spin(x):
    if x == 0:
        print("spinning", flush=True)
        while True:  # holds the GIL between instructions, forever
            pass
    return x

if __name__ == "__main__":
    for result in parcelout.imap(spin, range(10_000)):
        print("result", result, flush=True)
"""


def test_one_ctrl_c_ends_a_run_whose_measured_item_computes_forever(tmp_path: Path) -> None:
    # backend="auto" measures the first items on a thread of the calling process:
    # one that never ends must not keep the program alive, nor the workers.
    path = tmp_path / "interrupted.py"
    path.write_text(SPIN_FIRST)
    script = Script(path)
    try:
        wait_until(
            lambda: "spinning" in script.lines or script.proc.poll() is not None,
            STARTUP_BOUND,
            "the first item to spin",
        )
        # auto usually chooses processes here; on a loaded machine it may read
        # the spinning item as waiting and choose threads (then no worker
        # process comes): Ctrl-C must end the program either way.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: len(script.descendants()) >= WORKERS or script.proc.poll() is not None,
                10,
                "the process workers to start",
            )
        assert script.proc.poll() is None, f"the script ended early:\n{script.stderr()}"
        processes = script.descendants()
        took = script.interrupt()
    finally:
        if script.proc.poll() is None:
            script.kill()
        script.finish()
    assert_stopped(script, took, processes)  # in order: nothing passes the first item

"""``tail -f log | parcelout run ... --lines``: each result comes out while
the input waits for its next line, not at the end of the input."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

BOUND = 20.0


@pytest.mark.parametrize("backend", ["serial", "thread", "process"])
def test_each_result_comes_out_while_the_input_waits_for_its_next_line(backend: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def shout(line):\n    return line.upper()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "parcelout", "run", "jobs:shout", "--input", "-", "--lines"]
    with subprocess.Popen(
        [*command, "--backend", backend, "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as run:
        assert run.stdin is not None and run.stdout is not None
        lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        stdout = run.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        late = []
        try:
            for n in range(6):
                run.stdin.write(f"line {n}\n")
                run.stdin.flush()  # then wait for its result with the input still open
                try:
                    got = json.loads(lines.get(timeout=BOUND if n > 2 else 2.0))
                except queue.Empty:
                    late.append(n)  # (the first lines show the input is slow)
                    continue
                assert got["value"].startswith("LINE")
        finally:
            run.stdin.close()
            run.wait(timeout=BOUND)
        reader.join(timeout=BOUND)
    assert run.returncode == 0, run.stderr.read() if run.stderr else ""
    assert all(n <= 2 for n in late), late

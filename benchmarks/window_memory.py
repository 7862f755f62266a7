"""The window's bounds, measured as a user meets them (issue: memory bounded
in bytes, results stream while the input is slow).

    python benchmarks/window_memory.py

Prints, each measured in a fresh interpreter:
* the parent's peak RSS while 8,000 items of 256 KiB (2 GiB) stream through
  ``imap`` on thread and on process workers, against the RSS before;
* how many items of a sized input of 1,000,000 are taken ahead of a slow
  consumer;
* the worst lag between an item coming from a slow input (one item every
  0.5 s) and its result being yielded, per backend.
"""

from __future__ import annotations

import subprocess
import sys

LARGE = """
import resource, sys, parcelout
KIB_256 = 256 * 1024
def items():
    for i in range(8000):
        yield bytes([i % 256]) * KIB_256
if __name__ == "__main__":
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = sum(parcelout.imap(len, items(), backend=sys.argv[1], workers=2))
    assert total == 8000 * KIB_256
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{sys.argv[1]}: 2 GiB of 256 KiB items, parent peak RSS {peak / 1024:.0f} MiB",
          f"(before: {before / 1024:.0f} MiB)")
"""

AHEAD = """
import sys, parcelout
class Dataset:
    def __init__(self): self.taken = 0
    def __len__(self): return 1_000_000
    def __iter__(self):
        for i in range(1_000_000):
            self.taken += 1
            yield i
def add_one(x): return x + 1
if __name__ == "__main__":
    data, most = Dataset(), 0
    for yielded, _ in enumerate(parcelout.imap(add_one, data, backend=sys.argv[1], workers=2), 1):
        most = max(most, data.taken - yielded)
        if yielded == 200_000:
            break
    print(f"{sys.argv[1]}: sized input of 1,000,000, at most {most} items taken ahead of the consumer")
"""

LAG = """
import sys, time, parcelout
came = {}
def slow():
    for i in range(6):
        if i:
            time.sleep(0.5)
        came[i] = time.monotonic()
        yield i
def double(x): return 2 * x
if __name__ == "__main__":
    lags = [time.monotonic() - came[r // 2] for r in parcelout.imap(double, slow(), backend=sys.argv[1], workers=2)]
    print(f"{sys.argv[1]}: one item every 0.5 s, worst result lag {max(lags):.3f} s, "
          f"after the first result {max(lags[1:]):.3f} s")
"""


def run(script: str, backend: str) -> None:
    out = subprocess.run([sys.executable, "-c", script, backend], capture_output=True, text=True, check=True)
    print(out.stdout.strip())


if __name__ == "__main__":
    for backend in ("thread", "process"):
        run(LARGE, backend)
    for backend in ("thread", "process"):
        run(AHEAD, backend)
    for backend in ("serial", "thread", "process", "auto"):
        run(LAG, backend)

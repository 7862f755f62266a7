"""The two workloads parcelout's benchmark adds to ../shared/bench/workloads.py.

Like the shared ones, the functions are module-level and the module imports
nothing heavy: every library ships them to its workers by reference (as
``benchmarks.workloads.skewed``), and workers that start a fresh interpreter
(loky, forkserver) import this module.

Items are loop counts, made once in the cell before the clock starts, so every
library ships the same ints and does the same work. One unit of work is
``LOOP`` iterations of the same pure-Python loop as the shared ``cpu_py``:
about 1 ms on the machine the shared workloads were calibrated on (about 2 ms
on a slower one). ``LOOP + i`` rather than ``LOOP`` makes every result
distinct, so the digest check sees a result out of place.
"""

import random
import statistics

LOOP = 27_000  # iterations of spin() in one cpu_py item: about 1 ms, holds the GIL

# skewed: Pareto(alpha) durations, capped at SKEW_CAP x the median and scaled to
# a mean of one unit. With this seed and N = 1000: median about 0.57 units, the
# five largest items about 19, 28, 45, 65 and 79x the median, the ten largest
# about 17% of all the work.
SKEW_SEED = 5
SKEW_ALPHA = 1.5
SKEW_CAP = 100.0

# one_slow_item: every item one unit, except the one at SLOW_AT: SLOW_UNITS units.
SLOW_AT = 10
SLOW_UNITS = 300


def spin(n: int) -> int:
    """n iterations of the shared cpu_py loop: the same cost per iteration at any n.

    The factor stays small so that i * x fits one 30-bit digit even for the
    longest item (i * n would not, and would cost more per iteration).
    """
    x = n % 7 + 1
    s = 0
    for i in range(n):
        s += (i * x) % 7
    return s


def skewed(loops: int) -> int:
    return spin(loops)


def skewed_items(n: int) -> list[int]:
    rng = random.Random(SKEW_SEED)
    draws = [rng.paretovariate(SKEW_ALPHA) for _ in range(n)]
    cap = SKEW_CAP * statistics.median(draws)
    draws = [min(d, cap) for d in draws]
    scale = LOOP * n / sum(draws)
    return [max(1, round(d * scale)) + i for i, d in enumerate(draws)]


def one_slow_item(loops: int) -> int:
    return spin(loops)


def one_slow_items(n: int) -> list[int]:
    slow = min(SLOW_AT, n - 1)
    return [(SLOW_UNITS * LOOP if i == slow else LOOP) + i for i in range(n)]

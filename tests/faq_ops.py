"""The Python FAQ's examples of atomic and non-atomic operations on shared
values ("What kinds of global value mutation are thread-safe?"), each as a
``stress`` scenario: the operation, done ``N`` times by each thread, and the
invariant it keeps if it is atomic.

Used by ``tests/test_stress.py`` and by ``benchmarks/faq_table.py`` (the
README's table).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

THREADS = 4
N = 500  # operations per thread per round

i = 0  # the FAQ's global, for `i = i+1`


@dataclass(frozen=True)
class Scenario:
    operation: str  # as the FAQ writes it
    atomic: bool  # what the FAQ says
    fn: Callable[[Any], None]
    setup: Callable[[], Any]
    check: Callable[[Any], bool]
    how: str  # what the threads do, and what is checked


def _append(state: list[int]) -> None:
    for k in range(N):
        state.append(k)


def _extend(state: list[int]) -> None:
    for _ in range(N):
        state.extend([1, 2, 3])


def _index(state: SimpleNamespace) -> None:
    for k in range(N):
        state.L[k % 4] = (k, k)
        x = state.L[k % 4]
        if x[0] != x[1]:
            state.torn += 1


def _pop(state: SimpleNamespace) -> None:
    for _ in range(N):
        state.popped.append(state.L.pop())


def _slice(state: list[int]) -> None:
    for k in range(N):
        state[0:8] = [k] * 8


def _sort(state: list[int]) -> None:
    for _ in range(N // 10):
        state.sort()


def _assign(state: SimpleNamespace) -> None:
    for k in range(N):
        state.y = (k, k)
        x = state.y
        if x[0] != x[1]:
            state.torn += 1


def _field(state: SimpleNamespace) -> None:
    for k in range(N):
        state.obj.field = (k, -k)


def _setitem(state: dict[Any, int]) -> None:
    base = random.random()
    for k in range(N):
        state[base, k] = k


def _update(state: dict[Any, int]) -> None:
    base = random.random()
    for k in range(N):
        state.update({(base, k, 0): 0, (base, k, 1): 1})


def _keys(state: dict[Any, int]) -> None:
    base = random.random()
    for k in range(N):
        state[base, k] = k
        list(state.keys())  # raises if another thread could change it midway


def _global_increment(state: None) -> None:
    global i
    for _ in range(N):
        i = i + 1


def _reset_global() -> None:
    global i
    i = 0


def _append_last(state: list[int]) -> None:
    for _ in range(N):
        state.append(state[-1] + 1)


def _copy_item(state: list[int]) -> None:
    for _ in range(N):
        state[1] = state[0] + 1
        state[0] = state[1]


def _dict_increment(state: dict[str, int]) -> None:
    for _ in range(N):
        state["x"] = state["x"] + 1


def _shuffled() -> list[int]:
    values = list(range(200))
    random.shuffle(values)
    return values


SCENARIOS = [
    Scenario("L.append(x)", True, _append, list, lambda s: len(s) == THREADS * N, "append N items: none lost"),
    Scenario(
        "L1.extend(L2)",
        True,
        _extend,
        list,
        lambda s: s == [1, 2, 3] * (THREADS * N),
        "extend by [1, 2, 3] N times: every triple whole",
    ),
    Scenario(
        "x = L[i]",
        True,
        _index,
        lambda: SimpleNamespace(L=[(0, 0)] * 4, torn=0),
        lambda s: s.torn == 0,
        "write and read pairs (k, k): never a torn pair",
    ),
    Scenario(
        "x = L.pop()",
        True,
        _pop,
        lambda: SimpleNamespace(L=list(range(THREADS * N)), popped=[]),
        lambda s: sorted(s.popped) == list(range(THREADS * N)) and not s.L,
        "pop N each: every item popped once",
    ),
    Scenario(
        "L1[i:j] = L2",
        True,
        _slice,
        lambda: [0] * 8,
        lambda s: len(set(s)) == 1 and len(s) == 8,
        "assign [k] * 8 to L[0:8]: never a mix",
    ),
    Scenario(
        "L.sort()",
        True,
        _sort,
        _shuffled,
        lambda s: s == list(range(200)),
        "sort one shuffled list at once: sorted, nothing lost",
    ),
    Scenario(
        "x = y",
        True,
        _assign,
        lambda: SimpleNamespace(y=(0, 0), torn=0),
        lambda s: s.torn == 0,
        "bind and read pairs (k, k): never torn",
    ),
    Scenario(
        "x.field = y",
        True,
        _field,
        lambda: SimpleNamespace(obj=SimpleNamespace(field=(0, 0))),
        lambda s: s.obj.field == (N - 1, 1 - N),
        "set obj.field: one whole last value",
    ),
    Scenario("D[x] = y", True, _setitem, dict, lambda s: len(s) == THREADS * N, "set N keys each: none lost"),
    Scenario(
        "D1.update(D2)",
        True,
        _update,
        dict,
        lambda s: len(s) == 2 * THREADS * N,
        "update with 2 keys N times: none lost",
    ),
    Scenario(
        "D.keys()",
        True,
        _keys,
        dict,
        lambda s: len(s) == THREADS * N,
        "list(D.keys()) while others insert: never fails",
    ),
    Scenario(
        "i = i+1",
        False,
        _global_increment,
        _reset_global,
        lambda s: i == THREADS * N,
        "a global incremented N times each: updates lost",
    ),
    Scenario(
        "L.append(L[-1])",
        False,
        _append_last,
        lambda: [0],
        lambda s: s == list(range(THREADS * N + 1)),
        "L.append(L[-1] + 1): repeats appear",
    ),
    Scenario(
        "L[i] = L[j]",
        False,
        _copy_item,
        lambda: [0, 0],
        lambda s: s[0] == THREADS * N,
        "L[1] = L[0] + 1; L[0] = L[1]: increments lost",
    ),
    Scenario(
        "D[x] = D[x] + 1",
        False,
        _dict_increment,
        lambda: {"x": 0},
        lambda s: s["x"] == THREADS * N,
        "a dict value incremented N times each: updates lost",
    ),
]

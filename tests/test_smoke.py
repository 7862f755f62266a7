from __future__ import annotations

import parcelout


def square(x: int) -> int:
    return x * x


def test_map_on_every_backend(backend: str) -> None:
    assert parcelout.map(square, range(100), backend=backend, workers=2) == [x * x for x in range(100)]

"""The persistent class the ZODB baselines store (ZODB's own Persistent)."""

from __future__ import annotations

import persistent


class Item(persistent.Persistent):
    """A small stored object, like ``bench_models.Item``.

    Instance attributes: ``key`` (an int) and ``name`` (a short string).
    """

    def __init__(self, key: int) -> None:
        self.key = key
        self.name = f"item {key}"

"""The persistent class the core benchmarks store, for ours and Durus 4.3.

Both import ``durus.persistent``; whichever ``durus`` is on the path wins.
"""

from __future__ import annotations

from durus.persistent import Persistent


class Item(Persistent):
    """A small stored object.

    Instance attributes: ``key`` (an int) and ``name`` (a short string).
    """

    def __init__(self, key: int) -> None:
        self.key = key
        self.name = f"item {key}"

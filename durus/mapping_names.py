"""The Python 2 era mapping methods that Durus 4.3's BTree and PersistentDict
have, so programs written against them keep running here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Durus43MappingNames:
    """``has_key``, ``iteritems``, ``iterkeys`` and ``itervalues``, for a
    mapping class (no state of its own).
    """

    __slots__ = ()

    def has_key(self, key: Any) -> bool:
        """``key in self``."""
        return key in self

    def iteritems(self) -> Iterator[tuple[Any, Any]]:
        """``iter(self.items())``."""
        return iter(self.items())

    def iterkeys(self) -> Iterator[Any]:
        """``iter(self.keys())``."""
        return iter(self.keys())

    def itervalues(self) -> Iterator[Any]:
        """``iter(self.values())``."""
        return iter(self.values())

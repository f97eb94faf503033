"""PersistentList: a list whose changes are noticed by its connection.

The stored state is ``{'data': list}``, as Durus 4.3 writes it.  Methods that
change ``data`` call ``_p_note_change()`` before changing it; ``pop`` and
``remove`` mark the object only once they know they will succeed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, MutableSequence
from operator import index as as_index
from typing import Any, Self

from durus.persistent import PersistentObject, container_repr, iterate_preloading


def _plain(other: Any) -> Any:
    """The list behind ``other`` if it is a PersistentList, else ``other``."""
    return other.data if isinstance(other, PersistentList) else other


class PersistentList(PersistentObject, MutableSequence):
    """A persistent sequence with the whole ``list`` API.

    Instance attributes:

    - ``data``: the plain ``list`` holding the items.

    Slicing returns a plain list (a copy of part of the data, as Durus 4.3
    does under Python 3); ``+``, ``*`` and ``copy()`` return new, unsaved
    PersistentLists.
    """

    __slots__ = ("data",)

    def __init__(self, iterable: Iterable[Any] = ()) -> None:
        self.data = list(_plain(iterable))

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: Any) -> Any:
        return self.data[i]

    def __contains__(self, item: object) -> bool:
        return item in self.data

    def __iter__(self):
        return iterate_preloading(self, self.data)

    def __reversed__(self):
        return reversed(self.data)

    def count(self, item: Any) -> int:
        return self.data.count(item)

    def index(self, item: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self.data.index(item, start, stop)

    def __eq__(self, other: object) -> bool:
        other = _plain(other)
        return self.data == other if isinstance(other, list) else NotImplemented

    def __lt__(self, other: object) -> bool:
        other = _plain(other)
        return self.data < other if isinstance(other, list) else NotImplemented

    def __le__(self, other: object) -> bool:
        other = _plain(other)
        return self.data <= other if isinstance(other, list) else NotImplemented

    def __gt__(self, other: object) -> bool:
        other = _plain(other)
        return self.data > other if isinstance(other, list) else NotImplemented

    def __ge__(self, other: object) -> bool:
        other = _plain(other)
        return self.data >= other if isinstance(other, list) else NotImplemented

    def __repr__(self) -> str:
        return container_repr(self, self.data)

    # -- new lists ----------------------------------------------------------

    def copy(self) -> PersistentList:
        """A new, unsaved list of the same class with the same items."""
        return self.__class__(self.data)

    __copy__ = copy

    def __add__(self, other: Any) -> Any:
        other = _plain(other)
        if isinstance(other, list):
            return self.__class__(self.data + other)
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, list):
            return self.__class__(other + self.data)
        return NotImplemented

    def __mul__(self, n: int) -> PersistentList:
        return self.__class__(self.data * n)

    __rmul__ = __mul__

    # -- changing -----------------------------------------------------------

    def __setitem__(self, i: Any, value: Any) -> None:
        if isinstance(i, slice):
            value = _plain(value)
        self._p_note_change()
        self.data[i] = value

    def __delitem__(self, i: Any) -> None:
        self._p_note_change()
        del self.data[i]

    def __iadd__(self, other: Iterable[Any]) -> Self:
        self.extend(other)
        return self

    def __imul__(self, n: int) -> Self:
        self._p_note_change()
        self.data *= n
        return self

    def append(self, item: Any) -> None:
        self._p_note_change()
        self.data.append(item)

    def insert(self, i: int, item: Any) -> None:
        self._p_note_change()
        self.data.insert(i, item)

    def extend(self, other: Iterable[Any]) -> None:
        self._p_note_change()
        self.data.extend(_plain(other))

    def pop(self, i: int = -1) -> Any:
        data = self.data
        i = as_index(i)
        if not -len(data) <= i < len(data):
            raise IndexError(
                "pop from empty list" if not data else "pop index out of range"
            )
        self._p_note_change()
        return data.pop(i)

    def remove(self, item: Any) -> None:
        data = self.data
        try:
            position = data.index(item)
        except ValueError:
            raise ValueError(
                f"{self.__class__.__name__}.remove(x): x not in list"
            ) from None
        self._p_note_change()
        del data[position]

    def clear(self) -> None:
        if self.data:
            self._p_note_change()
            self.data.clear()

    def reverse(self) -> None:
        self._p_note_change()
        self.data.reverse()

    def sort(
        self, *, key: Callable[[Any], Any] | None = None, reverse: bool = False
    ) -> None:
        self._p_note_change()
        self.data.sort(key=key, reverse=reverse)

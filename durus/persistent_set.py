"""PersistentSet: a set whose changes are noticed by its connection.

The stored state is ``{'s': set}``, as Durus 4.3 writes it.  Methods that
change the set call ``_p_note_change()`` before changing it; ``add``,
``discard``, ``remove`` and ``pop`` mark the object only when they do change
it.  Operators take any ``collections.abc.Set`` (``set``, ``frozenset``,
another PersistentSet, dict key views) on either side, and the methods any
iterables, as ``set`` does; results are new, unsaved PersistentSets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableSet
from collections.abc import Set as AbstractSet
from typing import Any

from durus.keyed_container import KeyedContainer
from durus.merge import merge_set
from durus.persistent import UNSAVED, container_repr
from durus.reads import EMPTINESS, EMPTY_SEEN, LENGTH, NONEMPTY_SEEN, reads_of, start_reads

_setattribute = object.__setattr__


def _plain(other: Any) -> Any:
    """The set behind ``other`` if it is a PersistentSet, else ``other``."""
    return other._whole() if isinstance(other, PersistentSet) else other


def _plain_all(others: tuple[Any, ...]) -> list[Any]:
    return [_plain(other) for other in others]


def _comparable(other: Any) -> Any:
    """``other`` as a set or frozenset, or None if it is not a Set at all."""
    other = _plain(other)
    if isinstance(other, (set, frozenset)):
        return other
    if isinstance(other, AbstractSet):
        return frozenset(other)
    return None


class PersistentSet(KeyedContainer, MutableSet):
    """A persistent set with the whole ``set`` API.

    Instance attributes:

    - ``s``: the plain ``set`` holding the members.
    - ``_p_reads``: what this transaction read (see :mod:`durus.reads`);
      not part of the state.

    Reads through the methods are recorded; ``s`` used directly is not.

    ``clear``, ``copy`` and conflict resolution are
    :class:`~durus.keyed_container.KeyedContainer`'s: concurrent adds and
    removes of different members merge; a member added or removed on both
    sides is a conflict, and so is a member this transaction looked up
    that the committed state added or removed, or any committed change
    when it read the whole set (iteration, ``len``, comparisons, ...).
    """

    __slots__ = ("s", "_p_reads")
    _contents_name = "s"
    _merge_contents = staticmethod(merge_set)

    def __init__(self, iterable: Iterable[Any] = ()) -> None:
        self._p_reads = None
        self.s = set(_plain(iterable))

    def _whole(self) -> set:
        """``s``, recording that all of it is read."""
        s = self.s
        reads_of(self).read_whole()
        return s

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        s = self.s
        reads_of(self).add(LENGTH)
        return len(s)

    def __bool__(self) -> bool:
        s = self.s
        truth = bool(s)
        if self._p_status == UNSAVED:  # after this transaction's own changes
            reads_of(self).add(NONEMPTY_SEEN if truth else EMPTY_SEEN)
        else:
            reads_of(self).add(EMPTINESS)
        return truth

    def __contains__(self, item: object) -> bool:
        s = self.s
        reads = self._p_reads
        (start_reads(self) if reads is None else reads).add(item)
        return item in s

    def __iter__(self):
        return iter(self._whole())

    def isdisjoint(self, other: Iterable[Any]) -> bool:
        return self._whole().isdisjoint(_plain(other))

    def issubset(self, other: Iterable[Any]) -> bool:
        return self._whole().issubset(_plain(other))

    def issuperset(self, other: Iterable[Any]) -> bool:
        return self._whole().issuperset(_plain(other))

    def __eq__(self, other: object) -> bool:
        other = _comparable(other)
        return NotImplemented if other is None else self._whole() == other

    def __le__(self, other: Any) -> bool:
        other = _comparable(other)
        return NotImplemented if other is None else self._whole() <= other

    def __lt__(self, other: Any) -> bool:
        other = _comparable(other)
        return NotImplemented if other is None else self._whole() < other

    def __ge__(self, other: Any) -> bool:
        other = _comparable(other)
        return NotImplemented if other is None else self._whole() >= other

    def __gt__(self, other: Any) -> bool:
        other = _comparable(other)
        return NotImplemented if other is None else self._whole() > other

    def __repr__(self) -> str:
        return container_repr(self, self.s)

    # -- new sets -----------------------------------------------------------

    def union(self, *others: Iterable[Any]) -> PersistentSet:
        return self.__class__(self._whole().union(*_plain_all(others)))

    def intersection(self, *others: Iterable[Any]) -> PersistentSet:
        return self.__class__(self._whole().intersection(*_plain_all(others)))

    def difference(self, *others: Iterable[Any]) -> PersistentSet:
        return self.__class__(self._whole().difference(*_plain_all(others)))

    def symmetric_difference(self, other: Iterable[Any]) -> PersistentSet:
        return self.__class__(self._whole().symmetric_difference(_plain(other)))

    def __or__(self, other: Any) -> Any:
        other = _comparable(other)
        return NotImplemented if other is None else self.__class__(self._whole() | other)

    def __and__(self, other: Any) -> Any:
        other = _comparable(other)
        return NotImplemented if other is None else self.__class__(self._whole() & other)

    def __sub__(self, other: Any) -> Any:
        other = _comparable(other)
        return NotImplemented if other is None else self.__class__(self._whole() - other)

    def __xor__(self, other: Any) -> Any:
        other = _comparable(other)
        return NotImplemented if other is None else self.__class__(self._whole() ^ other)

    __ror__ = __or__
    __rand__ = __and__
    __rxor__ = __xor__

    def __rsub__(self, other: Any) -> Any:
        other = _comparable(other)
        return NotImplemented if other is None else self.__class__(other - self._whole())

    # -- changing -----------------------------------------------------------

    def add(self, item: Any) -> None:
        s = self.s
        reads_of(self).add(item)
        if item not in s:
            self._p_note_change()
            s.add(item)

    def discard(self, item: Any) -> None:
        s = self.s
        reads_of(self).add(item)
        if item in s:
            self._p_note_change()
            s.discard(item)

    def remove(self, item: Any) -> None:
        s = self.s
        reads_of(self).add(item)
        if item not in s:
            raise KeyError(item)
        self._p_note_change()
        s.remove(item)

    def pop(self) -> Any:
        if not self._whole():
            raise KeyError("pop from an empty set")
        self._p_note_change()
        return self.s.pop()

    def update(self, *others: Iterable[Any]) -> None:
        added = set().union(*_plain_all(others))
        self._p_note_change()
        reads_of(self).update(added)
        self.s.update(added)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        self._whole()
        self._p_note_change()
        self.s.intersection_update(*_plain_all(others))

    def difference_update(self, *others: Iterable[Any]) -> None:
        removed = set().union(*_plain_all(others))
        self._p_note_change()
        reads_of(self).update(removed)
        self.s.difference_update(removed)

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        self._whole()
        self._p_note_change()
        self.s.symmetric_difference_update(_plain(other))

    def _in_place(self, other: Any, update: Callable[[Any], None]) -> Any:
        """An in-place operator: ``update`` with ``other`` if it is a Set
        (as ``set`` accepts), else NotImplemented.
        """
        other = _comparable(other)
        if other is None:
            return NotImplemented
        update(other)
        return self

    def __ior__(self, other: Any) -> Any:
        return self._in_place(other, self.update)

    def __iand__(self, other: Any) -> Any:
        return self._in_place(other, self.intersection_update)

    def __isub__(self, other: Any) -> Any:
        return self._in_place(other, self.difference_update)

    def __ixor__(self, other: Any) -> Any:
        return self._in_place(other, self.symmetric_difference_update)

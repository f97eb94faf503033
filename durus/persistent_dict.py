"""PersistentDict: a dict whose changes are noticed by its connection.

The stored state is ``{'data': dict}``, as Durus 4.3 writes it, so files move
between the two.  Every method that changes ``data`` first calls
``_p_note_change()``: a plain dict cannot tell its owner that it changed.
Methods that might not change anything (``pop`` of a missing key,
``setdefault`` of a present one, ...) mark the object only when they do, so a
read-only use never causes a write or a write conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Self

from durus.keyed_container import KeyedContainer
from durus.mapping_names import Durus43MappingNames
from durus.merge import merge_mapping
from durus.persistent import UNSAVED, container_repr
from durus.reads import EMPTINESS, EMPTY_SEEN, LENGTH, NONEMPTY_SEEN, reads_of, start_reads

_setattribute = object.__setattr__

_MISSING = object()


class PersistentDict(KeyedContainer, Durus43MappingNames, MutableMapping):
    """A persistent mapping with the whole ``dict`` API.

    Instance attributes:

    - ``data``: the plain ``dict`` holding the items.
    - ``_p_reads``: what this transaction read (see :mod:`durus.reads`);
      not part of the state.

    Reads through the methods are recorded; ``data`` used directly is not,
    so code that reads ``data`` itself must not rely on conflict resolution.

    Subclasses may define ``__missing__(key)``, which ``d[key]`` calls for a
    missing key, as ``dict`` does.

    ``clear``, ``copy`` and conflict resolution are
    :class:`~durus.keyed_container.KeyedContainer`'s: concurrent changes
    to different keys merge; the same key changed on both sides is a
    conflict.
    """

    __slots__ = ("data", "_p_reads")
    _contents_name = "data"
    _merge_contents = staticmethod(merge_mapping)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._p_reads = None
        self.data = dict(*args, **kwargs)

    def _whole(self) -> dict:
        """``data``, recording that all of it is read."""
        data = self.data
        reads_of(self).read_whole()
        return data

    # -- reading ------------------------------------------------------------
    # Each read takes ``self.data`` first: that loads a ghost, which sets
    # ``_p_reads``.

    def __len__(self) -> int:
        data = self.data
        reads_of(self).add(LENGTH)
        return len(data)

    def __bool__(self) -> bool:
        data = self.data
        truth = bool(data)
        if self._p_status == UNSAVED:  # after this transaction's own changes
            reads_of(self).add(NONEMPTY_SEEN if truth else EMPTY_SEEN)
        else:
            reads_of(self).add(EMPTINESS)
        return truth

    def __getitem__(self, key: Any) -> Any:
        data = self.data
        reads = self._p_reads
        (start_reads(self) if reads is None else reads).add(key)
        try:
            return data[key]
        except KeyError:
            missing = getattr(self.__class__, "__missing__", None)
            if missing is None:
                raise
        return missing(self, key)

    def __contains__(self, key: object) -> bool:
        data = self.data
        reads = self._p_reads
        (start_reads(self) if reads is None else reads).add(key)
        return key in data

    def __iter__(self):
        return iter(self._whole())

    def __reversed__(self):
        return reversed(self._whole())

    def get(self, key: Any, default: Any = None) -> Any:
        data = self.data
        reads = self._p_reads
        (start_reads(self) if reads is None else reads).add(key)
        return data.get(key, default)

    def keys(self):
        return self._whole().keys()

    def values(self):
        return self._whole().values()

    def items(self):
        return self._whole().items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentDict):
            return self._whole() == other._whole()
        if isinstance(other, dict):
            return self._whole() == other
        if isinstance(other, Mapping):
            return self._whole() == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return container_repr(self, self.data)

    # -- new dicts ----------------------------------------------------------

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> PersistentDict:
        return cls(dict.fromkeys(iterable, value))

    def __or__(self, other: Any) -> Any:
        if isinstance(other, PersistentDict):
            return self.__class__(self._whole() | other._whole())
        if isinstance(other, dict):
            return self.__class__(self._whole() | other)
        return NotImplemented

    def __ror__(self, other: Any) -> Any:
        if isinstance(other, dict):
            return self.__class__(other | self._whole())
        return NotImplemented

    # -- changing -----------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self._p_note_change()
        reads_of(self).add(key)
        self.data[key] = value

    def __delitem__(self, key: Any) -> None:
        data = self.data
        reads_of(self).add(key)
        if key not in data:
            raise KeyError(key)
        self._p_note_change()
        del data[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        if args and isinstance(args[0], PersistentDict):
            args = (args[0]._whole(),)
        new = dict(*args, **kwargs)
        self._p_note_change()
        reads_of(self).update(new)
        self.data.update(new)

    def __ior__(self, other: Any) -> Self:
        self.update(other)
        return self

    def setdefault(self, key: Any, default: Any = None) -> Any:
        data = self.data
        reads_of(self).add(key)
        try:
            return data[key]
        except KeyError:
            self._p_note_change()
            data[key] = default
            return default

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        data = self.data
        reads_of(self).add(key)
        if key in data:
            self._p_note_change()
            return data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the last inserted (key, value) pair."""
        if not self._whole():
            raise KeyError("popitem(): dictionary is empty")
        self._p_note_change()
        return self.data.popitem()

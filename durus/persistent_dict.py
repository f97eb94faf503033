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

from durus.mapping_names import Durus43MappingNames
from durus.merge import merge_mapping
from durus.persistent import PersistentObject, container_repr

_MISSING = object()


class PersistentDict(PersistentObject, Durus43MappingNames, MutableMapping):
    """A persistent mapping with the whole ``dict`` API.

    Instance attributes:

    - ``data``: the plain ``dict`` holding the items.

    Subclasses may define ``__missing__(key)``, which ``d[key]`` calls for a
    missing key, as ``dict`` does.
    """

    __slots__ = ("data",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.data = dict(*args, **kwargs)

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.data[key]
        except KeyError:
            missing = getattr(self.__class__, "__missing__", None)
            if missing is None:
                raise
        return missing(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self):
        return iter(self.data)

    def __reversed__(self):
        return reversed(self.data)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def keys(self):
        return self.data.keys()

    def values(self):
        return self.data.values()

    def items(self):
        return self.data.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentDict):
            return self.data == other.data
        if isinstance(other, dict):
            return self.data == other
        if isinstance(other, Mapping):
            return self.data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return container_repr(self, self.data)

    # -- new dicts ----------------------------------------------------------

    def copy(self) -> PersistentDict:
        """A new, unsaved dict of the same class with the same items."""
        return self.__class__(self.data)

    __copy__ = copy

    @classmethod
    def fromkeys(cls, iterable: Iterable[Any], value: Any = None) -> PersistentDict:
        return cls(dict.fromkeys(iterable, value))

    def __or__(self, other: Any) -> Any:
        if isinstance(other, PersistentDict):
            return self.__class__(self.data | other.data)
        if isinstance(other, dict):
            return self.__class__(self.data | other)
        return NotImplemented

    def __ror__(self, other: Any) -> Any:
        if isinstance(other, dict):
            return self.__class__(other | self.data)
        return NotImplemented

    # -- changing -----------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self._p_note_change()
        self.data[key] = value

    def __delitem__(self, key: Any) -> None:
        data = self.data
        if key not in data:
            raise KeyError(key)
        self._p_note_change()
        del data[key]

    def clear(self) -> None:
        if self.data:
            self._p_note_change()
            self.data.clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        if args and isinstance(args[0], PersistentDict):
            args = (args[0].data,)
        self._p_note_change()
        self.data.update(*args, **kwargs)

    def __ior__(self, other: Any) -> Self:
        self.update(other)
        return self

    def setdefault(self, key: Any, default: Any = None) -> Any:
        data = self.data
        try:
            return data[key]
        except KeyError:
            self._p_note_change()
            data[key] = default
            return default

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        data = self.data
        if key in data:
            self._p_note_change()
            return data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the last inserted (key, value) pair."""
        if not self.data:
            raise KeyError("popitem(): dictionary is empty")
        self._p_note_change()
        return self.data.popitem()

    # -- conflict resolution ------------------------------------------------

    def _p_resolve_conflict(
        self,
        old_state: dict[str, Any],
        committed_state: dict[str, Any],
        my_state: dict[str, Any],
    ) -> dict[str, Any]:
        """Merge concurrent changes to different keys; the same key is a conflict.

        Other attributes of a subclass merge the same way, by name.
        """
        states = [old_state, committed_state, my_state]
        merged = merge_mapping(*({**state, "data": None} for state in states))
        merged["data"] = merge_mapping(*(state["data"] for state in states))
        return merged

"""Merging concurrent changes to the built-in containers (conflict resolution).

Each function takes three states of one object: ``old`` (what this
transaction started from), ``committed`` (what another transaction committed
since) and ``mine`` (this transaction's), and returns the state holding both
transactions' changes, or raises ConflictError.  The rule everywhere: changes
to different keys or members merge; a key or member changed on both sides is
a conflict, even when both made the same change, so that no update is ever
silently decided for the application.  Whether a merge is allowed at all
(nothing this transaction read changed) is checked by the containers first:
see :mod:`durus.reads`.

Values are compared by identity first: persistent objects unpickled through
one connection are the same Python object for the same oid.
"""

from __future__ import annotations

from typing import Any

from durus.error import ConflictError
from durus.persistent import PersistentObject

_MISSING = object()


def same(a: Any, b: Any) -> bool:
    """Whether two values read the same: the same object, or equal plain
    values of one type.
    """
    if a is b:
        return True
    if isinstance(a, PersistentObject) or isinstance(b, PersistentObject):
        return False
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - an odd __eq__ just means "changed"
        return False


def merge_mapping(old: dict, committed: dict, mine: dict) -> dict:
    """``committed`` plus the keys this transaction added, changed or removed."""
    merged = dict(committed)
    for key in old.keys() | mine.keys():
        my_value = mine.get(key, _MISSING)
        old_value = old.get(key, _MISSING)
        if same(old_value, my_value):
            continue
        if not same(old_value, committed.get(key, _MISSING)):
            raise ConflictError()
        if my_value is _MISSING:
            del merged[key]
        else:
            merged[key] = my_value
    return merged


def merge_set(old: set, committed: set, mine: set) -> set:
    """``committed`` plus the members this transaction added or removed."""
    mine_added, mine_removed = mine - old, old - mine
    if (mine_added | mine_removed) & (committed ^ old):
        raise ConflictError()
    return (committed | mine_added) - mine_removed

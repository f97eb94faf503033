"""Merging concurrent changes to the built-in containers (conflict resolution).

Each function takes three states of one object: ``old`` (what this
transaction started from), ``committed`` (what another transaction committed
since) and ``mine`` (this transaction's), and returns the state holding both
transactions' changes, or raises ConflictError.  The rule everywhere: changes
to different keys or members merge; a key or member changed on both sides is
a conflict, even when both made the same change, so that no update is ever
silently decided for the application.

Values are compared by identity first: persistent objects unpickled through
one connection are the same Python object for the same oid.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from durus.error import ConflictError
from durus.persistent import PersistentObject

_MISSING = object()


def _same(a: Any, b: Any) -> bool:
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
        if _same(old_value, my_value):
            continue
        if not _same(old_value, committed.get(key, _MISSING)):
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


def merge_bnode(minimum_degree: int, old: dict, committed: dict, mine: dict) -> dict:
    """Merge two changes to one B-tree node that kept its shape.

    A leaf merges like a mapping, as long as the result still fits a node
    (``t - 1`` to ``2t - 1`` items; a small root leaf may hold fewer).  An
    inner node merges only when both sides kept its keys and its children:
    then only values of its own items and the subtree count can differ, and
    the counts add up by difference.  A split, merge or borrow on either side
    changes the shape and stays a conflict.
    """
    try:
        return _merge_bnode(minimum_degree, old, committed, mine)
    except TypeError:  # unhashable keys cannot be compared as a mapping
        raise ConflictError() from None


def _merge_bnode(minimum_degree: int, old: dict, committed: dict, mine: dict) -> dict:
    nodes = old["nodes"]
    if nodes is None:
        if committed["nodes"] is not None or mine["nodes"] is not None:
            raise ConflictError()
        merged_items = merge_mapping(dict(old["items"]), dict(committed["items"]), dict(mine["items"]))
        items = sorted(merged_items.items(), key=itemgetter(0))
        smallest = minimum_degree - 1 if len(old["items"]) >= minimum_degree - 1 else 0
        if not smallest <= len(items) <= 2 * minimum_degree - 1:
            raise ConflictError()
        return {"items": items, "nodes": None, "_count": len(items)}
    keys = [key for key, _ in old["items"]]
    for state in (committed, mine):
        if [key for key, _ in state["items"]] != keys or len(state["nodes"] or ()) != len(nodes):
            raise ConflictError()
        if any(a is not b for a, b in zip(state["nodes"], nodes)):
            raise ConflictError()
    values = merge_mapping(dict(old["items"]), dict(committed["items"]), dict(mine["items"]))
    merged = {"items": [(key, values[key]) for key in keys], "nodes": list(nodes)}
    counts = [state.get("_count") for state in (old, committed, mine)]
    if None not in counts:
        old_count, committed_count, my_count = counts
        merged["_count"] = committed_count + my_count - old_count
    return merged

"""The shared containers of the serializability tests, and where keys sit.

Every case works on one container stored in the root under a name of its
own.  Its *kind* says what it is and where the two keys each transaction
reads or writes lie:

- ``btree_leaf``: a BTree with default nodes (BNode16), one leaf.
- ``btree4_same_leaf``: a BTree(BNode4) several levels deep; both keys in
  one leaf.
- ``btree4_other_leaves``: the same tree; the keys in two different leaves
  far apart (different children of the root).
- ``btree16_same_leaf``: default nodes, enough keys for three levels; both
  keys in one leaf.
- ``dict``: a PersistentDict.  ``set``: a PersistentSet.

Keys are strings ``k00010``, ``k00020``, ...: every tenth number is present,
so ``near(key, n)`` (n from 1 to 9) is absent and sorts between ``key`` and
the next present key, in ``key``'s leaf.  Values are ``"on"``; a set holds
the keys as members.

A :class:`Layout` names the keys: ``x`` and ``y`` are present, ``a`` and
``b`` absent; ``x`` and ``a`` share a leaf, and so do ``y`` and ``b``.

The functions ``get``, ``put``, ``remove`` and ``scan`` read and change any
kind alike, so one transaction body serves every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from durus.btree import BNode4, BNode16, BTree
from durus.persistent_dict import PersistentDict
from durus.persistent_set import PersistentSet

BTREE_KINDS = ("btree_leaf", "btree4_same_leaf", "btree4_other_leaves", "btree16_same_leaf")
KINDS = (*BTREE_KINDS, "dict", "set")

_SIZES = {
    "btree_leaf": 12,
    "btree4_same_leaf": 150,
    "btree4_other_leaves": 150,
    "btree16_same_leaf": 800,
    "dict": 12,
    "set": 12,
}


def key(number: int) -> str:
    return f"k{number:05d}"


def near(existing: str, offset: int) -> str:
    """An absent key just above ``existing`` (``offset`` 1 to 9)."""
    assert 0 < offset < 10
    return key(int(existing[1:]) + offset)


@dataclass(frozen=True)
class Layout:
    kind: str
    name: str  # the root key holding the container
    keys: tuple[str, ...]  # the keys present at the start, ascending
    x: str
    y: str
    a: str
    b: str
    depth: int = 1  # levels of a B-tree (1 for a dict or set)


def new_container(kind: str, keys: list[str]) -> Any:
    if kind == "dict":
        return PersistentDict({k: "on" for k in keys})
    if kind == "set":
        return PersistentSet(keys)
    tree = BTree(BNode4 if kind.startswith("btree4") else BNode16)
    for k in keys:  # ascending: leaves end up between half full and full
        tree[k] = "on"
    return tree


def leaves(tree: BTree) -> list[Any]:
    """The leaves of ``tree``, left to right."""
    found = []

    def walk(node: Any) -> None:
        if node.nodes is None:
            found.append(node)
        else:
            for child in node.nodes:
                walk(child)

    walk(tree.root)
    return found


def build(connection: Any, kind: str, name: str) -> Layout:
    """Store a new container of ``kind`` under ``root[name]``; its layout."""
    keys = [key(10 * (i + 1)) for i in range(_SIZES[kind])]
    container = new_container(kind, keys)
    connection.abort()
    connection.get_root()[name] = container
    connection.commit()
    depth = 1
    if kind not in BTREE_KINDS:
        x, y = keys[1], keys[2]
    else:
        depth = container.get_depth()
        found = leaves(container)
        if kind == "btree_leaf":
            assert depth == 1
        else:
            assert depth >= 3, f"{kind}: only {depth} levels"
        # Not the first or last leaf (away from the edges, where splits
        # happen); each leaf has room for a few more items.
        first = found[0] if kind == "btree_leaf" else found[1]
        if kind == "btree4_other_leaves":
            second = found[len(found) // 2 + 1]
            assert first is not second
            x, y = first.items[0][0], second.items[0][0]
        else:
            assert len(first.items) >= 3
            x, y = first.items[0][0], first.items[1][0]
    return Layout(kind, name, tuple(keys), x, y, near(x, 1), near(y, 1), depth)


# -- reading and changing any kind alike ---------------------------------------


def is_set(container: Any) -> bool:
    return isinstance(container, PersistentSet)


def get(container: Any, k: str) -> Any:
    """The value at ``k`` (a set member's value is ``"on"``), or None."""
    if is_set(container):
        return "on" if k in container else None
    return container.get(k)


def put(container: Any, k: str, value: Any = "on") -> None:
    if is_set(container):
        container.add(k)
    else:
        container[k] = value


def remove(container: Any, k: str) -> None:
    if is_set(container):
        container.discard(k)
    else:
        del container[k]


def scan(container: Any, low: str, high: str) -> list[str]:
    """The keys from ``low`` (included) to ``high`` (excluded), ascending."""
    if isinstance(container, BTree):
        return [k for k, _ in container.items_range(low, high)]
    return sorted(k for k in container if low <= k < high)


def contents(container: Any) -> dict[str, Any]:
    """A plain dict of the container's items (members map to ``"on"``)."""
    if is_set(container):
        return dict.fromkeys(container, "on")
    return dict(container.items())

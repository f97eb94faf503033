"""Check that a BTree is a valid B-tree, node by node.

    keys = check_btree(tree)      # raises AssertionError naming the fault

Checked: keys strictly ascending within each node and across the whole tree
(in-order), every key of ``nodes[i]`` between ``items[i - 1]`` and
``items[i]``, inner nodes with one more child than items, every leaf at the
same depth, node sizes (``t - 1`` to ``2t - 1`` items; the root at most
``2t - 1``, and at least one item unless the tree is empty), every node of the
tree's node class, and each node's ``_count`` present and equal to the real
number of items in its subtree; ``len(tree)`` equal to that number too.
"""

from __future__ import annotations

from typing import Any

_NO_BOUND = object()


def _describe(node: Any, path: tuple[int, ...]) -> str:
    keys = [key for key, _ in node.items]
    return f"node at path {list(path)} (oid {node._p_format_oid()}, keys {keys!r})"


def check_btree(tree: Any) -> list[Any]:
    """Every key of ``tree`` in order, once each, after checking the tree."""
    root = tree.root
    node_class = root.__class__
    t = node_class.minimum_degree
    keys: list[Any] = []
    leaf_depths: set[int] = set()

    def walk(node: Any, path: tuple[int, ...], low: Any, high: Any) -> int:
        where = _describe(node, path)
        assert node.__class__ is node_class, f"{where} is a {node.__class__.__name__}, not a {node_class.__name__}"
        items = node.items
        own = [key for key, _ in items]
        assert all(a < b for a, b in zip(own, own[1:])), f"{where}: keys not strictly ascending"
        if low is not _NO_BOUND and own:
            assert low < own[0], f"{where}: key {own[0]!r} not above the separator {low!r}"
        if high is not _NO_BOUND and own:
            assert own[-1] < high, f"{where}: key {own[-1]!r} not below the separator {high!r}"
        assert len(items) <= 2 * t - 1, f"{where}: {len(items)} items, more than 2t-1 = {2 * t - 1}"
        if path:
            assert len(items) >= t - 1, f"{where}: {len(items)} items, fewer than t-1 = {t - 1}"
        count = len(items)
        if node.nodes is None:
            leaf_depths.add(len(path))
            keys.extend(own)
        else:
            assert len(node.nodes) == len(items) + 1, (
                f"{where}: {len(node.nodes)} children for {len(items)} items"
            )
            assert items, f"{where}: an inner node without items"
            bounds = [low, *own, high]
            for i, child in enumerate(node.nodes):
                count += walk(child, (*path, i), bounds[i], bounds[i + 1])
                if i < len(items):
                    keys.append(own[i])
        try:
            stored = node._count
        except AttributeError:
            raise AssertionError(f"{where}: no _count") from None
        assert stored == count, f"{where}: _count {stored} but the subtree holds {count} items"
        return count

    total = walk(root, (), _NO_BOUND, _NO_BOUND)
    assert len(leaf_depths) <= 1, f"leaves at different depths: {sorted(leaf_depths)}"
    if root.nodes is not None:
        assert root.items, "an inner root without items"
    assert all(a < b for a, b in zip(keys, keys[1:])), "keys not strictly ascending across the tree (in order)"
    assert len(tree) == total == len(keys), f"len(tree) is {len(tree)} but the tree holds {total} items"
    return keys

"""BTree: a persistent mapping of ordered keys, stored as a B-tree of nodes.

Each node is its own persistent object, so a change rewrites only the nodes
on one root-to-leaf path, and a lookup loads only the nodes on one path.

Stored state (the same names as Durus 4.3, plus ``_count``):

- a ``BTree`` is ``{'root': node}``;
- a node is ``{'items': [(key, value), ...], 'nodes': [child, ...] or None,
  '_count': int}``.  ``nodes`` is None in a leaf; otherwise it holds
  ``len(items) + 1`` children, and every key in ``nodes[i]`` lies between
  ``items[i - 1]`` and ``items[i]``.  ``_count`` is the number of items in the
  node's subtree; it makes ``len(tree)`` O(1).

Nodes written by Durus 4.3 have no ``_count``.  An absent ``_count`` means
"unknown": ``len()`` computes it (loading that subtree once) and keeps it in
memory without marking the node changed, since the stored state is still
valid.  Changes keep a known count exact and leave an unknown one unknown, so
a first insert into a large Durus 4.3 tree loads one path, not the tree.  A
leaf's count is always known (it is ``len(items)``), so leaves and the nodes
above them gain a stored ``_count`` as they change.  Every insert or delete
marks every node on its path changed, count known or not, so a count that
another connection keeps in memory is invalidated whenever its subtree
changes.  (A Durus 4.3 client writing the same tree at the same time would
not do that; it cannot read nodes that have a ``_count`` anyway.)

Durus 4.3 cannot load a node that has a ``_count`` (its nodes have slots
for ``items`` and ``nodes`` only).  To write trees it can read, set
``WRITE_NODE_COUNTS = False`` before committing and rewrite the nodes (see
the README); ``len`` of such a tree then costs a walk of the tree again.

The node class fixes the minimum degree ``t``: every node but the root holds
between ``t - 1`` and ``2t - 1`` items.  ``BNode`` itself (t = 2) is kept
because Durus 4.3 files name it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping, ValuesView
from functools import wraps
from operator import itemgetter
from typing import Any

from durus.error import ConflictError, ReadConflictError
from durus.mapping_names import Durus43MappingNames
from durus.persistent import UNSAVED, PersistentObject
from durus.btree_log import (
    OperationLog,
    Scan,
    replay_add,
    replay_bool,
    replay_clear,
    replay_delete,
    replay_extreme,
    replay_len,
    replay_lookup,
    replay_popitem,
    replay_rebuild,
    replay_scan,
    replay_shape,
)
from durus.reads import NO_READS, settle_reads, start_reads

_setattribute = object.__setattr__
_delattribute = object.__delattr__
_item_key = itemgetter(0)
_item_value = itemgetter(1)
_MISSING = object()

# Whether stored nodes carry their subtree count (see the module docstring).
WRITE_NODE_COUNTS = True


class BNode(PersistentObject):
    """One node of a BTree.

    Instance attributes:

    - ``items``: the ``(key, value)`` tuples of this node, in key order.
    - ``nodes``: the children (one more than the items), or None in a leaf.
    - ``_count``: how many items the subtree holds (may be absent in nodes
      written by Durus 4.3; see the module docstring).

    Class attribute ``minimum_degree``: ``t``, as explained above.
    """

    __slots__ = ("_count", "items", "nodes")

    minimum_degree = 2

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []
        self.nodes: list[BNode] | None = None
        self._count = 0

    def is_leaf(self) -> bool:
        return self.nodes is None

    def is_full(self) -> bool:
        return len(self.items) == 2 * self.minimum_degree - 1

    def get_count(self) -> int:
        """How many items this subtree holds (computed once if unknown)."""
        try:
            return self._count
        except AttributeError:
            pass
        count = len(self.items)
        if self.nodes is not None:
            count += sum(node.get_count() for node in self.nodes)
        # A cache of what the stored state implies, not a change to store.
        _setattribute(self, "_count", count)
        return count

    def get_node_count(self) -> int:
        """How many nodes this subtree has, this one included."""
        if self.nodes is None:
            return 1
        return 1 + sum(node.get_node_count() for node in self.nodes)

    def get_level(self) -> int:
        """How many levels of nodes lie below this one."""
        level = 0
        node = self
        while node.nodes is not None:
            node = node.nodes[0]
            level += 1
        return level

    def search(self, key: Any) -> tuple[Any, Any] | None:
        """The ``(key, value)`` item with this key in the subtree, or None."""
        node = self
        while True:
            items = node.items
            i = bisect_left(items, key, key=_item_key)
            if i < len(items) and items[i][0] == key:
                return items[i]
            node = node.nodes
            if node is None:
                return None
            node = node[i]

    def get_min_item(self) -> tuple[Any, Any]:
        node = self
        while node.nodes is not None:
            node = node.nodes[0]
        return node.items[0]

    def get_max_item(self) -> tuple[Any, Any]:
        node = self
        while node.nodes is not None:
            node = node.nodes[-1]
        return node.items[-1]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return _ascending(self, _MISSING, True)

    # A node is changed and read only through its BTree, whose operation
    # log reproduces this transaction's use of it on the committed tree.
    _p_changes_replayed = True

    def __getstate__(self) -> dict[str, Any]:
        state = PersistentObject.__getstate__(self)
        if not WRITE_NODE_COUNTS:
            state.pop("_count", None)
        return state

    def __reversed__(self) -> Iterator[tuple[Any, Any]]:
        return _descending(self, _MISSING, True)


class BNode2(BNode):
    __slots__ = ()
    minimum_degree = 2


class BNode4(BNode):
    __slots__ = ()
    minimum_degree = 4


class BNode8(BNode):
    __slots__ = ()
    minimum_degree = 8


class BNode16(BNode):
    __slots__ = ()
    minimum_degree = 16


class BNode32(BNode):
    __slots__ = ()
    minimum_degree = 32


class BNode64(BNode):
    __slots__ = ()
    minimum_degree = 64


class BNode128(BNode):
    __slots__ = ()
    minimum_degree = 128


class BNode256(BNode):
    __slots__ = ()
    minimum_degree = 256


class BNode512(BNode):
    __slots__ = ()
    minimum_degree = 512


_NODE_CLASSES = {cls.minimum_degree: cls for cls in BNode.__subclasses__()}


# -- counts -----------------------------------------------------------------


def _known_count(node: BNode) -> int | None:
    """The subtree's item count if it is known without loading more nodes."""
    try:
        return node._count
    except AttributeError:
        return len(node.items) if node.nodes is None else None


def _summed_count(node: BNode) -> int | None:
    """The count from the node's own items and its children's known counts."""
    count = len(node.items)
    if node.nodes is not None:
        for child in node.nodes:
            child_count = _known_count(child)
            if child_count is None:
                return None
            count += child_count
    return count


def _set_count(node: BNode, count: int | None) -> None:
    """Record a count (or forget it: None); the caller marked ``node`` changed."""
    if count is None:
        try:
            _delattribute(node, "_count")
        except AttributeError:
            pass
    else:
        _setattribute(node, "_count", count)


def _add_counts(nodes: Iterable[BNode], delta: int) -> None:
    """Add ``delta`` to the counts of ``nodes``, whose subtrees gained items.

    A node whose count is unknown is marked changed all the same: another
    connection may hold a count it computed for it, and only the invalidation
    this change causes there tells it to compute again.
    """
    for node in nodes:
        if node._p_status != UNSAVED:
            node._p_note_change()
        try:
            _setattribute(node, "_count", node._count + delta)
        except AttributeError:
            pass


def _plus(*counts: int | None) -> int | None:
    if None in counts:
        return None
    return sum(counts)


# -- restructuring ----------------------------------------------------------


def _split_child(parent: BNode, i: int, child: BNode) -> None:
    """Split the full ``child`` (``parent.nodes[i]``) around its middle item.

    ``parent`` must not be full.  Its count does not change.
    """
    middle = child.minimum_degree - 1
    old_count = _known_count(child)
    items = child.items
    bigger = child.__class__()
    bigger.items = items[middle + 1 :]
    if child.nodes is not None:
        bigger.nodes = child.nodes[middle + 1 :]
    bigger_count = _summed_count(bigger)
    _set_count(bigger, bigger_count)
    parent._p_note_change()
    child._p_note_change()
    parent.items.insert(i, items[middle])
    parent.nodes.insert(i + 1, bigger)
    del items[middle:]
    if child.nodes is not None:
        del child.nodes[middle + 1 :]
        if old_count is not None and bigger_count is not None:
            _set_count(child, old_count - bigger_count - 1)
        else:
            _set_count(child, _summed_count(child))
    else:
        _set_count(child, middle)


def _merge_children(parent: BNode, i: int, is_root: bool) -> BNode:
    """Merge ``nodes[i]``, ``items[i]`` and ``nodes[i + 1]`` of ``parent``.

    Returns the merged node.  A root left with no items takes the merged
    contents itself and is returned, so the tree keeps its root object (and
    the BTree object is not changed).
    """
    nodes = parent.nodes
    left = nodes[i]
    right = nodes[i + 1]
    count = _plus(_known_count(left), 1, _known_count(right))
    parent._p_note_change()
    if is_root and len(parent.items) == 1:
        parent.items = left.items + parent.items + right.items
        parent.nodes = None if left.nodes is None else left.nodes + right.nodes
        _set_count(parent, count)
        return parent
    left._p_note_change()
    left.items.append(parent.items.pop(i))
    left.items.extend(right.items)
    if left.nodes is not None:
        left.nodes.extend(right.nodes)
    del nodes[i + 1]
    _set_count(left, count)
    return left


def _borrow(parent: BNode, i: int, donor_index: int) -> None:
    """Move one item from the sibling ``nodes[donor_index]`` into ``nodes[i]``.

    The item goes through the parent (the separator moves down, the donor's
    nearest item moves up), and with it the donor's nearest subtree.
    """
    nodes = parent.nodes
    child = nodes[i]
    donor = nodes[donor_index]
    child_count = _known_count(child)
    donor_count = _known_count(donor)
    parent._p_note_change()
    donor._p_note_change()
    child._p_note_change()
    if donor_index < i:
        child.items.insert(0, parent.items[i - 1])
        parent.items[i - 1] = donor.items.pop()
        if donor.nodes is not None:
            subtree = donor.nodes.pop()
            child.nodes.insert(0, subtree)
    else:
        child.items.append(parent.items[i])
        parent.items[i] = donor.items.pop(0)
        if donor.nodes is not None:
            subtree = donor.nodes.pop(0)
            child.nodes.append(subtree)
    moved = 1 if donor.nodes is None else _plus(1, _known_count(subtree))
    if moved is None:
        _set_count(child, None)
        _set_count(donor, None)
    else:
        _set_count(child, _plus(child_count, moved))
        _set_count(donor, _plus(donor_count, -moved))


def _roomy_child(parent: BNode, i: int, is_root: bool) -> BNode:
    """``parent.nodes[i]`` made to hold at least t items, ready for a delete.

    Borrows an item from a sibling that can spare one (the left one first),
    or else merges with a sibling.  Returns the node to descend into.
    """
    nodes = parent.nodes
    child = nodes[i]
    t = parent.minimum_degree
    if len(child.items) >= t:
        return child
    if i > 0 and len(nodes[i - 1].items) >= t:
        _borrow(parent, i, i - 1)
        return child
    if i + 1 < len(nodes) and len(nodes[i + 1].items) >= t:
        _borrow(parent, i, i + 1)
        return child
    return _merge_children(parent, i - 1 if i > 0 else i, is_root)


def _delete(root: BNode, key: Any) -> tuple[Any, Any]:
    """Remove the item with ``key``, which must be present; return it.

    One pass down from the root, as in Cormen et al. ("B-trees", deletion)
    and in Durus 4.3, so that a tree changes shape exactly as it would under
    Durus 4.3: before descending into a child, make sure it can lose an item.
    An inner node's item is replaced by its predecessor or successor, which is
    then deleted below.  Every node passed loses one item from its subtree.
    """
    removed = None
    node = root
    while True:
        items = node.items
        i = bisect_left(items, key, key=_item_key)
        nodes = node.nodes
        if nodes is None:
            node._p_note_change()
            item = items.pop(i)
            _set_count(node, len(items))
            return item if removed is None else removed
        t = node.minimum_degree
        if not (i < len(items) and items[i][0] == key):
            child = _roomy_child(node, i, node is root)
        elif len(nodes[i].items) >= t or len(nodes[i + 1].items) >= t:
            if removed is None:
                removed = items[i]
            node._p_note_change()
            if len(nodes[i].items) >= t:
                child = nodes[i]
                items[i] = child.get_max_item()
            else:
                child = nodes[i + 1]
                items[i] = child.get_min_item()
            key = items[i][0]
        else:
            child = _merge_children(node, i, node is root)
        if child is not node:
            _add_counts((node,), -1)
        node = child


# -- ordered iteration ------------------------------------------------------


def _ascending(
    node: BNode, key: Any, closed: bool, preload: bool = False, scan: Scan | None = None
) -> Iterator[tuple[Any, Any]]:
    """Items of the subtree in ascending key order, from ``key`` on if given.

    With ``closed`` the item with ``key`` itself is included; with
    ``preload`` (the caller will use the values) each leaf's values are
    loaded in one batch; ``scan`` records what is handed out.
    """
    find = bisect_left if closed else bisect_right
    pending = []  # (items, nodes, index of the next item to yield)
    while True:
        items = node.items
        i = 0 if key is _MISSING else find(items, key, key=_item_key)
        nodes = node.nodes
        if nodes is None:
            yield from _shown(node, items[i:], preload, scan)
            break
        pending.append((items, nodes, i))
        node = nodes[i]
    while pending:
        items, nodes, i = pending.pop()
        if i < len(items):
            if scan is not None:
                scan.seen.append(items[i])
            yield items[i]
            pending.append((items, nodes, i + 1))
            node = nodes[i + 1]
            while node.nodes is not None:
                pending.append((node.items, node.nodes, 0))
                node = node.nodes[0]
            yield from _shown(node, node.items, preload, scan)
    if scan is not None:
        scan.done = True


def _descending(
    node: BNode, key: Any, closed: bool, preload: bool = False, scan: Scan | None = None
) -> Iterator[tuple[Any, Any]]:
    """Items of the subtree in descending key order, from ``key`` down if given.

    With ``closed`` the item with ``key`` itself is included; ``preload``
    and ``scan`` as for :func:`_ascending`.
    """
    find = bisect_right if closed else bisect_left
    pending = []  # (items, nodes, number of items still to yield)
    while True:
        items = node.items
        i = len(items) if key is _MISSING else find(items, key, key=_item_key)
        nodes = node.nodes
        if nodes is None:
            yield from _shown(node, items[i - 1 :: -1] if i else [], preload, scan)
            break
        pending.append((items, nodes, i))
        node = nodes[i]
    while pending:
        items, nodes, i = pending.pop()
        if i > 0:
            if scan is not None:
                scan.seen.append(items[i - 1])
            yield items[i - 1]
            pending.append((items, nodes, i - 1))
            node = nodes[i - 1]
            while node.nodes is not None:
                pending.append((node.items, node.nodes, len(node.items)))
                node = node.nodes[-1]
            yield from _shown(node, node.items[::-1], preload, scan)
    if scan is not None:
        scan.done = True


def _shown(node: BNode, items: list[tuple[Any, Any]], preload: bool, scan: Scan | None) -> list[tuple[Any, Any]]:
    """``items`` of a leaf, in the order they are about to be handed out:
    recorded in ``scan``, and with ``preload`` their values loaded first
    with one bulk load (see ``Connection.preload``).
    """
    if scan is not None:
        scan.seen.extend(items)
    if preload and len(items) > 1:
        connection = node._p_connection
        if connection is not None and connection.preloads:
            connection.preload([value for _, value in items])
    return items


# -- the mapping ------------------------------------------------------------


def _restart(tree: BTree, conflict: ReadConflictError, method: Any, *args: Any) -> Any:
    """``method`` met other clients' commits of nodes this transaction
    used (``conflict``): call it again once the connection has brought the
    trees up to date (``Connection.refresh_trees``: the operation held the
    old nodes, so it must not go on with them), or raise the conflict.
    """
    for _ in range(_MAX_RESTARTS):
        connection = tree._p_connection
        # (A tree whose own load failed has no _p_reads yet.)
        replaying = getattr(tree, "_p_reads", None) is NO_READS
        if connection is None or replaying or not connection.refresh_trees():
            raise conflict
        try:
            return method(tree, *args)
        except ReadConflictError as again:
            conflict = again
    raise conflict


def _restartable(method: Any) -> Any:
    """Make a BTree operation start again where ``_restart`` says so."""

    @wraps(method)
    def operation(self: BTree, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ReadConflictError as conflict:
            return _restart(self, conflict, lambda tree, *a: method(tree, *a, **kwargs), *args)

    return operation


_MAX_RESTARTS = 10


class _ItemsView(ItemsView):
    """``tree.items()``: walks the nodes rather than looking up each key."""

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._walk(True, _MISSING, True, True)

    def __reversed__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._walk(False, _MISSING, True, True)


class _ValuesView(ValuesView):
    """``tree.values()``: walks the nodes rather than looking up each key."""

    def __iter__(self) -> Iterator[Any]:
        return map(_item_value, self._mapping._walk(True, _MISSING, True, True))

    def __reversed__(self) -> Iterator[Any]:
        return map(_item_value, self._mapping._walk(False, _MISSING, True, True))


class BTree(PersistentObject, Durus43MappingNames, MutableMapping):
    """A persistent mapping that keeps its keys in order.

    Keys must be mutually comparable with ``<`` and ``==``.  Iteration,
    ``keys()``, ``values()`` and ``items()`` go in ascending key order;
    ``len()`` is O(1), lookups and changes O(log n).  ``popitem()`` removes
    the item with the smallest key.

    Instance attributes:

    - ``root``: the root BNode; its class sets the minimum degree of all
      nodes of the tree.
    - ``_p_reads``: while a transaction uses the tree, the log of what it
      did through it (lookups with what they found, scans with what they
      showed, changes); not part of the state.  When another client's
      commit collides with this transaction's nodes, the connection puts
      the committed nodes back and replays the log on them
      (:meth:`_p_replay`): inserts and deletes of different keys merge
      whatever splits or joins either side made, and anything this
      transaction saw that reads differently now is a conflict.
    """

    __slots__ = ("root", "_p_reads")

    _p_changes_replayed = True

    def __init__(self, node_constructor: type[BNode] = BNode16) -> None:
        if not (
            isinstance(node_constructor, type) and issubclass(node_constructor, BNode)
        ):
            raise TypeError(
                f"node_constructor must be a BNode subclass, not {node_constructor!r}"
            )
        self._p_reads = None
        self.root = node_constructor()

    def __setstate__(self, state: Any) -> None:
        PersistentObject.__setstate__(self, state)
        settle_reads(self)

    # -- the log ------------------------------------------------------------
    # Each method takes ``self.root`` before the log: that loads a ghost,
    # which sets ``_p_reads``.

    def _log(self) -> OperationLog:
        log = self._p_reads
        return start_reads(self, OperationLog) if log is None else log

    def _lookup(self, key: Any) -> tuple[Any, Any] | None:
        """The item with ``key``, or None; logged.  (The hot path: no
        decorator, the log taken inline.)
        """
        try:
            item = self.root.search(key)
        except ReadConflictError as conflict:
            return _restart(self, conflict, BTree._lookup, key)
        log = self._p_reads
        (start_reads(self, OperationLog) if log is None else log).record((replay_lookup, key, item))
        return item

    def _walk(self, ascending: bool, key: Any, closed: bool, preload: bool) -> Iterator[tuple[Any, Any]]:
        root = self.root
        log = self._log()
        scan = None
        walk = _ascending if ascending else _descending
        if log is not NO_READS:
            scan = Scan(walk, key, closed)
            log.record((replay_scan, scan))
        return walk(root, key, closed, preload, scan)

    def _p_replay(self) -> None:
        """Do this transaction's operations on this tree again, on the
        committed nodes the connection has put back; raise ConflictError
        if any of them would show something other than it showed, or if
        the log is incomplete.
        """
        log = self._p_reads
        if log is None:
            return
        if not log.complete:
            raise ConflictError()
        _setattribute(self, "_p_reads", NO_READS)
        try:
            for replay, *arguments in log:
                replay(self, *arguments)
        finally:
            _setattribute(self, "_p_reads", log)

    # -- reading ------------------------------------------------------------

    @_restartable
    def __len__(self) -> int:
        count = self.root.get_count()
        self._log().record((replay_len, count))
        return count

    @_restartable
    def __bool__(self) -> bool:
        truth = bool(self.root.items)
        self._log().record((replay_bool, truth))
        return truth

    def __iter__(self) -> Iterator[Any]:
        return map(_item_key, self._walk(True, _MISSING, True, False))

    def __reversed__(self) -> Iterator[Any]:
        return map(_item_key, self._walk(False, _MISSING, True, False))

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    def __getitem__(self, key: Any) -> Any:
        item = self._lookup(key)
        if item is None:
            raise KeyError(key)
        return item[1]

    def items(self) -> ItemsView:
        return _ItemsView(self)

    def values(self) -> ValuesView:
        return _ValuesView(self)

    def get(self, key: Any, default: Any = None) -> Any:
        item = self._lookup(key)
        return default if item is None else item[1]

    @_restartable
    def _extreme(self, smallest: bool) -> tuple[Any, Any]:
        root = self.root
        item = None
        if root.items:
            item = root.get_min_item() if smallest else root.get_max_item()
        self._log().record((replay_extreme, smallest, item))
        if item is None:
            which = "get_min_item" if smallest else "get_max_item"
            raise KeyError(f"{which}(): the BTree is empty")
        return item

    def get_min_item(self) -> tuple[Any, Any]:
        """The ``(key, value)`` item with the smallest key."""
        return self._extreme(True)

    def get_max_item(self) -> tuple[Any, Any]:
        """The ``(key, value)`` item with the largest key."""
        return self._extreme(False)

    def items_backward(self) -> Iterator[tuple[Any, Any]]:
        """All items, largest key first."""
        return self._walk(False, _MISSING, True, True)

    def items_from(self, key: Any, closed: bool = True) -> Iterator[tuple[Any, Any]]:
        """Items with keys >= ``key`` (> ``key`` if not ``closed``), ascending."""
        return self._walk(True, key, closed, True)

    def items_backward_from(
        self, key: Any, closed: bool = False
    ) -> Iterator[tuple[Any, Any]]:
        """Items with keys < ``key`` (<= ``key`` if ``closed``), descending."""
        return self._walk(False, key, closed, True)

    def items_range(
        self, start: Any, end: Any, closed_start: bool = True, closed_end: bool = False
    ) -> Iterator[tuple[Any, Any]]:
        """Items with keys from ``start`` to ``end``, in that direction.

        Descending when ``start > end``.  ``closed_start`` and ``closed_end``
        say whether items with exactly those keys are included.
        """
        if start <= end:
            for item in self._walk(True, start, closed_start, True):
                if item[0] < end or (closed_end and item[0] == end):
                    yield item
                else:
                    return
        else:
            for item in self._walk(False, start, closed_start, True):
                if item[0] > end or (closed_end and item[0] == end):
                    yield item
                else:
                    return

    @_restartable
    def get_depth(self) -> int:
        """How many levels of nodes the tree has (1 for a lone root)."""
        depth = self.root.get_level() + 1
        self._log().record((replay_shape, depth, None))
        return depth

    @_restartable
    def get_node_count(self) -> int:
        """How many nodes the tree has (this loads them all)."""
        count = self.root.get_node_count()
        self._log().record((replay_shape, None, count))
        return count

    # -- changing -----------------------------------------------------------

    def add(self, key: Any, value: Any = True) -> None:
        """Make ``self[key]`` be ``value``."""
        try:
            self._insert(key, value)
        except ReadConflictError as conflict:
            _restart(self, conflict, BTree._insert, key, value)

    def _insert(self, key: Any, value: Any) -> None:
        root = self.root
        log = self._log()
        full = 2 * root.minimum_degree - 1
        if len(root.items) == full:
            # Grow at the top: the old root becomes the first child of a new one.
            new_root = root.__class__()
            new_root.nodes = [root]
            _set_count(new_root, _known_count(root))
            _split_child(new_root, 0, root)
            self.root = root = new_root
        item = (key, value)
        path = []
        node = root
        while True:
            items = node.items
            i = bisect_left(items, key, key=_item_key)
            if i < len(items) and items[i][0] == key:
                log.record((replay_add, key, value, items[i]))
                node._p_note_change()
                items[i] = item
                return
            nodes = node.nodes
            if nodes is None:
                break
            child = nodes[i]
            if len(child.items) == full:
                _split_child(node, i, child)
                middle_key = items[i][0]
                if middle_key == key:
                    log.record((replay_add, key, value, items[i]))
                    items[i] = item
                    return
                if middle_key < key:
                    child = nodes[i + 1]
            path.append(node)
            node = child
        log.record((replay_add, key, value, None))
        if node._p_status != UNSAVED:
            node._p_note_change()
        items.insert(i, item)
        _setattribute(node, "_count", len(items))
        _add_counts(path, 1)

    __setitem__ = add

    def _remove(self, key: Any) -> tuple[Any, Any]:
        """Remove the item with ``key``, which a logged lookup found."""
        item = _delete(self.root, key)
        self._log().record((replay_delete, key))
        return item

    @_restartable
    def __delitem__(self, key: Any) -> None:
        # Look first: a delete reshapes nodes on its way down, which must not
        # happen (and be stored) for a key that is not there.
        if self._lookup(key) is None:
            raise KeyError(key)
        self._remove(key)

    @_restartable
    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        item = self._lookup(key)
        if item is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._remove(key)
        return item[1]

    @_restartable
    def popitem(self) -> tuple[Any, Any]:
        """Remove and return the item with the smallest key."""
        root = self.root
        log = self._log()
        if not root.items:
            log.record((replay_bool, False))
            raise KeyError("popitem(): the BTree is empty")
        item = _delete(root, root.get_min_item()[0])
        log.record((replay_popitem, item))
        return item

    @_restartable
    def setdefault(self, key: Any, default: Any = None) -> Any:
        item = self._lookup(key)
        if item is None:
            self.add(key, default)
            return default
        return item[1]

    @_restartable
    def clear(self) -> None:
        root = self.root
        self._log().record((replay_clear,))
        self.root = root.__class__()

    def update(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        add = self.add
        if args:
            other = args[0]
            if hasattr(other, "items"):
                other = other.items()
            elif hasattr(other, "keys"):
                other = ((key, other[key]) for key in other.keys())  # noqa: SIM118 - keys() is all it has
            for key, value in other:
                add(key, value)
        for key, value in kwargs.items():
            add(key, value)

    def note_change_of_bnode_containing_key(self, key: Any) -> None:
        """Mark changed the node holding ``key``.

        Call this after changing a non-persistent value in place (a list
        stored as a value, say) so that the next commit stores it.
        """
        node = self.root
        # The changed value is this transaction's own object: a replay on
        # the committed tree could not repeat the change.
        self._log().give_up()
        while True:
            items = node.items
            i = bisect_left(items, key, key=_item_key)
            if i < len(items) and items[i][0] == key:
                node._p_note_change()
                return
            if node.nodes is None:
                raise KeyError(key)
            node = node.nodes[i]

    @staticmethod
    def node_class_for_degree(degree: int) -> type[BNode]:
        """The BNode class of this minimum degree (2, 4, ... 512)."""
        try:
            return _NODE_CLASSES[degree]
        except KeyError:
            choices = ", ".join(str(d) for d in sorted(_NODE_CLASSES))
            raise ValueError(
                f"no BNode class has minimum degree {degree!r}; use one of {choices}"
            ) from None

    @_restartable
    def set_bnode_minimum_degree(self, degree: int) -> bool:
        """Rebuild the tree with nodes of this minimum degree.

        Returns True if the tree was rebuilt, False if it already had it.
        """
        node_class = self.node_class_for_degree(degree)
        root = self.root
        log = self._log()
        if root.minimum_degree == degree:
            log.record((replay_rebuild, degree, False))
            return False
        log.record((replay_rebuild, degree, True))
        rebuilt = BTree(node_class)
        for key, value in _ascending(root, _MISSING, True):
            rebuilt.add(key, value)
        self.root = rebuilt.root
        return True

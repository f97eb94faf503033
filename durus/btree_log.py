"""What a transaction did through a BTree, and how to do it again.

While a transaction uses a BTree attached to a connection, the tree keeps an
:class:`OperationLog` of what the transaction did through it, in order:
lookups with what they found, scans with what they showed (:class:`Scan`),
``len`` and the like with their answers, and changes with the item each
replaced.  When another client's commit collides with this transaction's
nodes (at commit, or when a load in the middle of the transaction meets it),
the connection puts the committed nodes back and each tree replays its log on
them (``BTree._p_replay``): every change is made again, and every read is
made again and must show what it showed, or the replay raises
ConflictError.  So inserts and deletes of different keys merge whatever
splits or joins either side made, and what the transaction saw stays true.

Each log entry is ``(replay_function, *arguments)``; the functions here use
only the tree's public methods (logging is off while they run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from durus.error import ConflictError
from durus.merge import same

if TYPE_CHECKING:
    from durus.btree import BTree

# How many operations one transaction's log of one tree holds at most; a
# longer transaction cannot be replayed, and conflicts as Durus 4.3 would.
MAX_LOGGED_OPERATIONS = 200_000


class Scan:
    """What one ordered iteration over a tree showed this transaction.

    ``walk(root, key, closed)`` is the iteration (ascending or descending
    from ``key``); ``seen`` holds the items handed out so far (a leaf's
    items go in when the leaf is reached, so it may hold a few more than
    were looked at); ``done`` says the iteration reached the end.
    """

    __slots__ = ("walk", "key", "closed", "seen", "done")

    def __init__(self, walk: Callable[..., Any], key: Any, closed: bool) -> None:
        self.walk = walk
        self.key = key
        self.closed = closed
        self.seen: list[tuple[Any, Any]] = []
        self.done = False


class OperationLog(list):
    """What one transaction did through one BTree, in order."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        super().__init__()
        self.complete = True

    def record(self, entry: tuple) -> None:
        if len(self) < MAX_LOGGED_OPERATIONS:
            self.append(entry)
        else:
            self.give_up()

    def give_up(self) -> None:
        """Something was done that replay cannot repeat."""
        self.complete = False
        self.clear()


def same_item(a: tuple[Any, Any] | None, b: tuple[Any, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and same(a[1], b[1])


def _check(shown_before: Any, shown_now: Any) -> None:
    if not same(shown_before, shown_now):
        raise ConflictError()


def replay_lookup(tree: BTree, key: Any, item: tuple[Any, Any] | None) -> None:
    if not same_item(tree.root.search(key), item):
        raise ConflictError()


def replay_add(tree: BTree, key: Any, value: Any, old_item: tuple[Any, Any] | None) -> None:
    # A key both sides wrote is a conflict, as in every built-in merge.
    replay_lookup(tree, key, old_item)
    tree.add(key, value)


def replay_delete(tree: BTree, key: Any) -> None:
    tree.pop(key)  # the lookup logged before it found the key


def replay_popitem(tree: BTree, item: tuple[Any, Any]) -> None:
    if not same_item(tree.popitem(), item):
        raise ConflictError()


def replay_clear(tree: BTree) -> None:
    tree.clear()


def replay_rebuild(tree: BTree, degree: int, rebuilt: bool) -> None:
    _check(rebuilt, tree.set_bnode_minimum_degree(degree))


def replay_len(tree: BTree, count: int) -> None:
    _check(count, len(tree))


def replay_bool(tree: BTree, truth: bool) -> None:
    _check(truth, bool(tree))


def replay_extreme(tree: BTree, smallest: bool, item: tuple[Any, Any] | None) -> None:
    try:
        now = tree.get_min_item() if smallest else tree.get_max_item()
    except KeyError:
        now = None
    if not same_item(now, item):
        raise ConflictError()


def replay_shape(tree: BTree, depth: int | None, node_count: int | None) -> None:
    if depth is not None:
        _check(depth, tree.get_depth())
    if node_count is not None:
        _check(node_count, tree.get_node_count())


def replay_scan(tree: BTree, scan: Scan) -> None:
    again = scan.walk(tree.root, scan.key, scan.closed)
    for item in scan.seen:
        if not same_item(next(again, None), item):
            raise ConflictError()
    if scan.done and next(again, None) is not None:
        raise ConflictError()

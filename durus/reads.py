"""What a transaction read from a container, so that a merge stays serializable.

A conflict-resolving container may merge another client's committed changes
into its own only if nothing this transaction read from it changed (SPEC §2,
"Resolution never weakens serializability").  So while a transaction runs,
each such container that is attached to a connection keeps a record of its
reads in the ``_p_reads`` slot:

- ``PersistentDict`` and ``PersistentSet``: a :class:`KeyReads`, the keys or
  members looked up (found or not), or ``whole`` when the read cannot be
  told by keys (iteration, ``len``, equality, ...);
- ``BTree``: an operation log (see :mod:`durus.btree`), replayed on the
  committed tree when node states collide.

The record is started by the container's first read in a transaction
(:func:`start_reads` registers it with the connection) and dropped by the
connection when the transaction ends.  Objects with no connection (new ones)
keep none: nobody else can have changed them.
"""

from __future__ import annotations

from typing import Any

from durus.error import ConflictError
from durus.merge import same

_setattribute = object.__setattr__
_getattribute = object.__getattribute__
MISSING = object()


# Stand-ins for reads that are not of one key, kept among the keys.
LENGTH = object()  # ``len()``: the number of keys
# Truth, asked before the transaction changed the container: whether there
# is any key.
EMPTINESS = object()
# Truth, asked after the transaction changed the container, and what it
# answered: it depends on keys other than the ones changed here.
EMPTY_SEEN = object()
NONEMPTY_SEEN = object()


class KeyReads(set):
    """The keys (or members) a transaction looked up or wrote in one
    container (a key both sides wrote is a conflict even when this side
    wrote the value it found), and LENGTH or EMPTINESS if it asked for
    those.

    ``whole`` is set when the transaction read something no key describes:
    then any committed change to the container counts as read.
    """

    __slots__ = ("whole",)

    def __init__(self) -> None:
        super().__init__()
        self.whole = False

    def read_whole(self) -> None:
        self.whole = True


class _NoReads:
    """Stands in for a read record where none is kept (no connection)."""

    __slots__ = ()
    whole = False

    def add(self, key: Any) -> None:
        pass

    def update(self, keys: Any) -> None:
        pass

    def read_whole(self) -> None:
        pass

    def record(self, entry: Any) -> None:
        pass

    def give_up(self) -> None:
        pass


NO_READS = _NoReads()


def start_reads(obj: Any, kind: type = KeyReads) -> Any:
    """The read record of ``obj`` for this transaction, made and registered
    with its connection if this is the first read; NO_READS if ``obj`` has
    no connection.  Containers call this when their ``_p_reads`` is None.
    """
    connection = _getattribute(obj, "_p_connection")
    if connection is None:
        return NO_READS
    reads = kind()
    _setattribute(obj, "_p_reads", reads)
    connection.note_reads(obj)
    return reads


def settle_reads(obj: Any) -> None:
    """Give a container just loaded an empty ``_p_reads`` slot, keeping a
    record already there: a container put back and loaded again while its
    transaction resolves a conflict keeps what that transaction read.
    """
    try:
        _getattribute(obj, "_p_reads")
    except AttributeError:
        _setattribute(obj, "_p_reads", None)


def reads_of(obj: Any) -> Any:
    """The read record of ``obj``, started if need be (the slow path)."""
    reads = _getattribute(obj, "_p_reads")
    return start_reads(obj) if reads is None else reads


def check_key_reads(reads: Any, old: Any, committed: Any) -> None:
    """Raise ConflictError unless every read recorded in ``reads`` finds the
    same in ``committed`` as in ``old`` (two dicts, or two sets).

    None (nothing read this transaction) passes.
    """
    if reads is None or reads is NO_READS:
        return
    if reads.whole:
        if not _same_contents(old, committed):
            raise ConflictError()
        return
    if LENGTH in reads and len(old) != len(committed):
        raise ConflictError()
    if EMPTINESS in reads and bool(old) != bool(committed):
        raise ConflictError()
    # Keys this transaction wrote are among ``reads`` and unchanged in
    # ``committed`` (or the merge refuses): so it would see an empty
    # container after the same changes if the committed state only removed
    # keys, and a non-empty one if that holds any key it never touched.
    if EMPTY_SEEN in reads and not _keys(committed) <= _keys(old):
        raise ConflictError()
    if NONEMPTY_SEEN in reads and all(key in reads for key in committed):
        raise ConflictError()
    if isinstance(old, dict):
        for key in reads:
            if not same(old.get(key, MISSING), committed.get(key, MISSING)):
                raise ConflictError()
    else:
        for member in reads:
            if (member in old) != (member in committed):
                raise ConflictError()


def _keys(contents: Any) -> Any:
    return contents.keys() if isinstance(contents, dict) else contents


def _same_contents(old: Any, committed: Any) -> bool:
    if isinstance(old, dict):
        return old.keys() == committed.keys() and all(same(old[key], committed[key]) for key in old)
    return old == committed


def check_other_attributes(old: dict, committed: dict, mine: dict, name: str) -> dict:
    """The attributes of a container subclass other than its contents
    (``name``), merged: the committed ones with this transaction's changes,
    allowed only when the committed state changed none of them (reads of
    plain attributes are not recorded, so any of them may have been read).
    """
    others = [{key: value for key, value in state.items() if key != name} for state in (old, committed, mine)]
    old_others, committed_others, my_others = others
    if not _same_contents(old_others, committed_others):
        raise ConflictError()
    return my_others

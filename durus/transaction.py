"""What a connection's current transaction has used, changed and found stale.

These sets are what serializable conflict detection works from: the used
objects are the transaction's read set (with the changed ones, its write
set), and the stale oids are those of its objects that other clients
committed since.  A :class:`Transaction` holds them for one Connection and
is emptied, not replaced, at every transaction boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from durus.persistent import PersistentObject, is_tracking_class, tracking_class

_setattribute = object.__setattr__


@dataclass(eq=False)
class Transaction:
    """The read and write sets of one connection's current transaction."""

    #: The objects changed, by oid: stored at the next commit.
    changed: dict[bytes, PersistentObject] = field(default_factory=dict)
    #: The objects used (read or written) for the first time since the
    #: transaction started, in that order.
    used: list[PersistentObject] = field(default_factory=list)
    #: Oids of used objects that other clients committed since; loading them
    #: fails until abort() unless a commit resolves them.
    invalid_oids: set[bytes] = field(default_factory=set)
    #: Objects keeping a record of this transaction's reads in ``_p_reads``
    #: (see :mod:`durus.reads`).
    read_records: list[PersistentObject] = field(default_factory=list)

    def watched_oids(self, written: Iterable[bytes]) -> set[bytes]:
        """The oids whose commit by another client conflicts with this
        transaction unless resolved: those it used (read or wrote) and
        ``written``, those it writes.
        """
        watched = {obj._p_oid for obj in self.used}
        watched.update(written)
        return watched

    def finish(self, serial: int, loaded: OrderedDict[bytes, PersistentObject]) -> None:
        """End the transaction numbered ``serial``: the used objects go back
        to their tracking class (so the next use is noticed again), are
        stamped with ``serial`` and become the most recently used in
        ``loaded``; the records of reads are dropped.
        """
        for obj in self.used:
            cls = type(obj)
            if not is_tracking_class(cls):
                _setattribute(obj, "__class__", tracking_class(cls))
            _setattribute(obj, "_p_serial", serial)
            oid = obj._p_oid
            if oid in loaded:
                loaded.move_to_end(oid)
        self.used.clear()
        for obj in self.read_records:
            _setattribute(obj, "_p_reads", None)
        self.read_records.clear()

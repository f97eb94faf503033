"""Other clients' commits, as one connection meets them.

The storage tells a connection which oids other clients committed (at a
sync, at a commit, or when a load finds a newer record).  What the current
transaction has not used simply becomes a ghost and loads afresh; what it
has used is stale, and is a conflict unless a commit resolves it.  This is
the half of serializable conflict detection that reads the invalidations;
:mod:`durus.transaction` holds the sets it checks them against.
"""

from __future__ import annotations

from durus.error import ReadConflictError, WriteConflictError
from durus.ghost_loading import GhostLoader
from durus.object_cache import ObjectCache
from durus.persistent import GHOST, is_tracking_class
from durus.storage import Storage
from durus.transaction import Transaction

# How many times a load catches up with other clients' commits of its object.
MAX_LOAD_ATTEMPTS = 10
# At most this many of the loaded objects others changed are fetched ahead.
FETCH_AHEAD = 256


class Invalidations:
    """Brings one connection's objects up to date with other clients' commits."""

    def __init__(self, storage: Storage, cache: ObjectCache, transaction: Transaction, loader: GhostLoader) -> None:
        self.storage = storage
        self.cache = cache
        self.transaction = transaction
        self.loader = loader
        #: Oids of loaded objects just made ghosts because others changed
        #: them: the storage is asked for them ahead (:meth:`fetch_ahead`).
        self.dropped: list[bytes] = []

    def load_record(self, oid: bytes) -> bytes:
        """The committed record of ``oid``, catching up with other clients'
        commits on the way; ReadConflictError if the transaction used
        anything they changed (or ``oid`` is already stale).
        """
        if oid in self.transaction.invalid_oids:
            raise ReadConflictError([oid])
        for _ in range(MAX_LOAD_ATTEMPTS):
            try:
                return self.storage.load(oid)
            except ReadConflictError:
                # Another client committed oid since we last synced: catch
                # up, which is fine unless this transaction used something
                # stale.  Under load it may have committed oid again by the
                # time we ask once more.
                self.handle(self.storage.sync(), read_oid=oid)
                self.fetch_ahead()
        raise ReadConflictError([oid])

    def note(self, oids: list[bytes], read_oid: bytes | None = None) -> list[bytes]:
        """Ghost what others changed that this transaction has not used; the
        ones it used (except ``read_oid``, being loaded) are returned and kept
        as stale.
        """
        transaction = self.transaction
        changed, invalid = transaction.changed, transaction.invalid_oids
        conflicts = []
        for oid in oids:
            obj = self.cache.get(oid)
            if obj is None or oid == read_oid:
                continue
            if oid in changed or not is_tracking_class(type(obj)):
                conflicts.append(oid)
                invalid.add(oid)
            elif obj._p_status != GHOST:
                self.loader.ghost(obj)
                self.dropped.append(oid)
        return conflicts

    def handle(self, oids: list[bytes], read_oid: bytes | None = None) -> None:
        """Ghost what others changed; raise if this transaction used any of it.

        At a commit that is a WriteConflictError, which the commit may
        resolve.  In the middle of a transaction (a load of ``read_oid`` met
        newer commits) it is a ReadConflictError: the objects this
        transaction used must keep the states it saw until it ends, and what
        it goes on to read would be newer than they are.
        """
        conflicts = self.note(oids, read_oid)
        if conflicts:
            if read_oid is None:
                raise WriteConflictError(conflicts)
            raise ReadConflictError([read_oid])

    def sync(self) -> None:
        """Ghost every object other clients changed, used or not."""
        invalid = self.transaction.invalid_oids
        invalid.update(self.storage.sync())
        for oid in invalid:
            obj = self.cache.get(oid)
            if obj is not None and obj._p_status != GHOST:
                self.loader.ghost(obj)
                self.dropped.append(oid)
        invalid.clear()

    def fetch_ahead(self) -> None:
        """Tell the storage which loaded objects others just changed.

        They were in use lately, so they will likely be used again soon;
        a storage that pays a round trip per load fetches them in one, as
        of this connection's view.  That also keeps loads in the middle of
        the next transaction from meeting commits made meanwhile
        (ReadConflictError) for the objects an application uses most.
        """
        dropped = self.dropped
        if dropped:
            self.storage.fetch_ahead(dropped[:FETCH_AHEAD])
            dropped.clear()

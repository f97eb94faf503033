"""A connection's commit: its changes pickled, sent, and resolved if need be.

A :class:`CommitExchange` turns the changed objects of a transaction, and
the new objects they reach, into records; sends them to the storage with the
oids whose commit by another client would conflict; and, when the storage
reports such commits, lets the :class:`~durus.resolution.ConflictResolver`
bring the changes onto them and sends again.  Records are kept as a dict
oid -> (object, record data, record).
"""

from __future__ import annotations

from collections.abc import Callable

from durus.error import WriteConflictError
from durus.ghost_loading import GhostLoader, keeps_base_state
from durus.invalidations import Invalidations
from durus.object_cache import ObjectCache
from durus.persistent import SAVED, PersistentObject, settle_instance_dict
from durus.record import pack_record, record_refs, split_oids
from durus.resolution import ConflictResolver
from durus.serialize import ObjectWriter
from durus.storage import Storage
from durus.transaction import Transaction

_setattribute = object.__setattr__

Records = dict[bytes, tuple[PersistentObject, bytes, bytes]]


class CommitExchange:
    """Stores one connection's changes, resolving conflicts where that stays serializable."""

    def __init__(
        self,
        storage: Storage,
        cache: ObjectCache,
        transaction: Transaction,
        loader: GhostLoader,
        invalidations: Invalidations,
        writer: ObjectWriter,
        resolver: ConflictResolver,
    ) -> None:
        self.storage = storage
        self.cache = cache
        self.transaction = transaction
        self.loader = loader
        self.invalidations = invalidations
        self.writer = writer
        self.resolver = resolver

    def store_changes(self) -> None:
        """Commit the changes of the transaction.

        A commit that meets other clients' commits of objects this
        transaction used brings its changes onto theirs and tries again, up
        to the connection's ``resolution_rounds`` times; each round resolves
        whatever the transaction's ``invalid_oids`` holds then.
        """
        records: Records = {}
        storage = self.storage
        # A storage that streams takes each record as it is pickled (it
        # writes while the rest is pickled); the first try then only ends.
        begun = storage.streams_records
        try:
            if begun:
                storage.begin()
            self.pickle(list(self.transaction.changed.values()), records, storage.store if begun else None)
            rounds = 0
            while True:
                try:
                    if begun:
                        begun = False
                        self.end(records)
                    else:
                        self.send(records)
                    break
                except WriteConflictError as conflict:
                    rounds = self.resolver.resolve_round(rounds, conflict, records)
        except BaseException:
            if begun:
                storage.cancel()
            self.forget_new_objects(records)
            raise
        # The records are committed: their objects are saved and used.
        transaction, loader = self.transaction, self.loader
        loaded, base_data, used = loader.loaded, loader.base_data, transaction.used
        keeps: dict[type, bool] = {}  # by class: a build commits thousands of one class
        for oid, (obj, data, _) in records.items():
            _setattribute(obj, "_p_status", SAVED)
            loaded[oid] = obj
            cls = obj.__class__
            keep = keeps.get(cls)
            if keep is None:
                keep = keeps[cls] = keeps_base_state(cls)
            if keep:
                base_data[oid] = data
            used.append(obj)
        transaction.changed.clear()
        # Objects only read, whose reads were found unchanged: their state
        # here is older than the committed one.
        for oid in transaction.invalid_oids:
            loader.ghost(self.cache.get(oid))
        transaction.invalid_oids.clear()

    def pickle(self, objects: list[PersistentObject], records: Records,
               store: Callable[[bytes, bytes], None] | None = None) -> None:
        """Put the records of ``objects``, and of every new object they
        reach, into ``records``; and give each to ``store``, if given, as
        soon as it is made.
        """
        writer = self.writer
        get_state, new_objects, add_to_cache = writer.get_state, writer.new_objects, self.cache.add
        named: list[PersistentObject] = []  # the new objects given an oid here
        todo = list(objects)
        new_objects.clear()
        try:
            while todo:
                obj = todo.pop()
                oid = obj._p_oid
                data, refs = get_state(obj)
                record = pack_record(oid, data, refs)
                records[oid] = (obj, data, record)
                if store is not None:
                    store(oid, record)
                if new_objects:
                    for new in new_objects:
                        settle_instance_dict(new)
                        add_to_cache(new)
                    todo.extend(new_objects)
                    named.extend(new_objects)
                    new_objects.clear()
        except BaseException:
            # A state that would not pickle: the new objects named but not
            # pickled lose their oids again (those in ``records`` are the
            # caller's to forget), or the next commit would take them for
            # stored ones and store references to records that don't exist.
            named.extend(new_objects)
            new_objects.clear()
            self._unname([new for new in named if new._p_oid not in records])
            raise

    def _unname(self, objects: list[PersistentObject]) -> None:
        """Make new objects new again: no oid, no connection, not cached."""
        for obj in objects:
            self.cache.discard(obj._p_oid)
            _setattribute(obj, "_p_oid", None)
            _setattribute(obj, "_p_connection", None)

    def pickle_changes(self, records: Records) -> None:
        """Put into ``records`` those of the changed objects it lacks, and of
        the new objects they reach.
        """
        self.pickle([obj for oid, obj in self.transaction.changed.items() if oid not in records], records)

    def forget_new_objects(self, records: Records) -> list[PersistentObject]:
        """Take the records of new objects out of ``records`` and their oids
        from them; the changed objects whose records refer to one.
        """
        changed = self.transaction.changed
        new = {oid for oid in records if oid not in changed}
        self._unname([records.pop(oid)[0] for oid in new])
        if not new:
            return []
        return [obj for obj, _, record in records.values() if not new.isdisjoint(split_oids(record_refs(record)))]

    def send(self, records: Records) -> None:
        """Send ``records`` as one commit; WriteConflictError if the storage
        reports another client's commit of something this transaction used.
        """
        storage = self.storage
        storage.begin()
        for oid, (_, _, record) in records.items():
            storage.store(oid, record)
        self.end(records)

    def end(self, records: Records) -> None:
        """End the commit whose ``records`` the storage was given."""
        storage = self.storage
        if storage.watches_reads:
            storage.end(self.invalidations.handle, watched=self.transaction.watched_oids(records))
        else:
            storage.end(self.invalidations.handle)

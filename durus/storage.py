"""The storage interface every storage, the server and the client meet at.

A storage keeps object records (see :mod:`durus.record`) by oid and knows
nothing of pickles: it stores bytes, hands out oids, and applies a commit's
records all together or not at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from durus.error import ConflictError, DurusKeyError
from durus.record import ROOT_OID, int_to_oid, record_refs, split_oids

InvalidationHandler = Callable[[list[bytes]], None]

log = logging.getLogger("durus.storage")


def deliver_after_commit(invalid: list[bytes], handle_invalidations: InvalidationHandler | None) -> None:
    """Pass on what others committed, once this commit is stored.

    The storage has already checked that none of it touches what the
    transaction used, so the handler finds no conflict; should it find one
    anyway (a storage that checked less), the commit still stands: it is
    durable, and a ConflictError would make the application do its work a
    second time (the Flask extension replays the request).  So that is
    logged, never raised.
    """
    if not invalid or handle_invalidations is None:
        return
    try:
        handle_invalidations(invalid)
    except ConflictError as error:
        log.error("a commit was stored although objects it used had changed (%s); the commit stands", error)


class Storage:
    """The narrow interface a Connection uses; subclasses implement it.

    ``batched_bulk_load`` (a class attribute) is True where ``bulk_load``
    fetches all its records in one round trip, so that loading objects in
    batches ahead of their use pays (a client of a server).
    """

    batched_bulk_load = False

    #: True where ``end()`` takes ``watched``, the oids the transaction read
    #: or wrote, and checks them against other clients' commits itself, in
    #: the same step as the write (a commit in one round trip); see ``end``.
    watches_reads = False

    #: True where ``store()`` may send records on as they come (a large
    #: commit's new objects written while the rest is still pickled): the
    #: Connection then stores each record as soon as it has pickled it, and
    #: calls ``cancel()`` if the commit stops before ``end()``.
    streams_records = False

    #: True where a commit referring to an oid the storage does not hold
    #: (a record of a later commit, or one a pack removed) is refused: a
    #: copy into it must then be one commit.
    checks_references = False

    def load(self, oid: bytes) -> bytes:
        """The record stored for ``oid``; DurusKeyError if there is none.

        A storage shared with other clients may raise ReadConflictError.
        """
        raise NotImplementedError

    def begin(self) -> None:
        """Start collecting the records of a commit."""
        raise NotImplementedError

    def store(self, oid: bytes, record: bytes) -> None:
        """Add a record to the commit underway."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Give up the commit begun, without ending it (by default the
        next ``begin()`` forgets its records anyway).
        """

    def end(self, handle_invalidations: InvalidationHandler | None = None) -> None:
        """Make the commit durable, all of it or none.

        A shared storage first passes the oids other clients committed since
        this one last synced to ``handle_invalidations``, which raises
        ConflictError to abandon the commit.

        A storage whose ``watches_reads`` is True is called with a keyword
        ``watched`` as well (the oids this transaction read or wrote) and may
        send records and ``watched`` together: when none of the oids others
        committed since the last sync is watched, it writes and then passes
        them to the handler (which ghosts them and does not raise); when one
        is, it writes nothing and passes them to the handler, which raises
        ConflictError or returns (every used object's reads were found
        unchanged), and then it tries again, checking only newer commits.
        """
        raise NotImplementedError

    def sync(self) -> list[bytes]:
        """The oids committed by others since the last sync or commit.

        A shared storage that can no longer say what changed (its client
        fell further behind others' commits than the server remembers)
        returns every oid it loaded records for, so the Connection drops
        every cached state it holds; the same happens after a reconnect.
        """
        raise NotImplementedError

    def new_oid(self) -> bytes:
        """An oid never handed out before (the root's, oid 0, comes first)."""
        raise NotImplementedError

    def pack(self) -> None:
        """Drop the records not reachable from the root."""
        raise NotImplementedError

    def get_packer(self) -> Iterator[None] | None:
        """An incremental pack: each step does a little; None if unsupported."""
        return None

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        """The records of ``oids``, in order."""
        for oid in oids:
            yield self.load(oid)

    def fetch_ahead(self, oids: list[bytes]) -> None:
        """A hint: the records of ``oids`` will likely be loaded soon.

        A storage whose loads cost a round trip may ask for them now,
        without waiting, as of the client's current view; a later load
        must still never return a state older than the transaction's view.
        By default nothing is done.
        """

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(oid, record)`` pairs: with ``start_oid``, those reachable from it
        breadth first; without, every stored record (reachable or not) where
        the storage can list them, else those reachable from the root.
        """
        return gen_reachable_records(self, ROOT_OID if start_oid is None else start_oid, batch_size)

    def close(self) -> None:
        """Release files and sockets; the storage is unusable afterwards."""


def gen_reachable_records(
    storage: Storage, start_oid: bytes = ROOT_OID, batch_size: int = 100
) -> Iterator[tuple[bytes, bytes]]:
    """Walk the object graph from ``start_oid`` breadth first by record refs."""
    seen = {start_oid}
    todo = [start_oid]
    while todo:
        batch, todo = todo[:batch_size], todo[batch_size:]
        try:
            records = list(storage.bulk_load(batch))
        except DurusKeyError:
            # A dangling reference: load one by one to skip only the missing.
            records = []
            for oid in batch:
                try:
                    records.append(storage.load(oid))
                except DurusKeyError:
                    continue
        for record in records:
            oid = record[:8]
            yield oid, record
            refs = record_refs(record)
            for start in range(0, len(refs), 8):
                ref = refs[start:start + 8]
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)


def gen_referring_oid_record(storage: Storage, referred_oid: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(oid, record)`` of every stored record that refers to ``referred_oid``."""
    for oid, record in storage.gen_oid_record():
        if referred_oid in split_oids(record_refs(record)):
            yield oid, record


def gen_oid_class(storage: Storage, *classes: str | bytes) -> Iterator[tuple[bytes, str]]:
    """``(oid, class name)`` of every stored record, or of those whose class
    name (``"Item"``, without the module) is one of ``classes``.  The classes
    need not be importable here.
    """
    from durus.serialize import extract_class_name  # storages otherwise never look into records

    wanted = {name.decode() if isinstance(name, bytes) else name for name in classes}
    for oid, record in storage.gen_oid_record():
        name = extract_class_name(record)
        if not wanted or name in wanted:
            yield oid, name


def get_census(storage: Storage) -> dict[str, int]:
    """How many stored records there are of each class name."""
    return dict(Counter(name for _, name in gen_oid_class(storage)))


def get_reference_index(storage: Storage) -> dict[bytes, list[bytes]]:
    """For every oid that stored records refer to, the oids referring to it."""
    index: dict[bytes, list[bytes]] = {}
    for oid, record in storage.gen_oid_record():
        for referred in split_oids(record_refs(record)):
            index.setdefault(referred, []).append(oid)
    return index


class MemoryStorage(Storage):
    """Records in a dict, for tests and for a process-local database."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes] | None = None
        self._next_oid = 0

    def load(self, oid: bytes) -> bytes:
        try:
            return self.records[oid]
        except KeyError:
            raise DurusKeyError(oid) from None

    def begin(self) -> None:
        self.pending = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self.pending is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        self.pending[oid] = record

    def end(self, handle_invalidations: InvalidationHandler | None = None) -> None:
        if self.pending is None:
            raise RuntimeError("end() outside a commit: call begin() first")
        self.records.update(self.pending)
        self.pending = None

    def sync(self) -> list[bytes]:
        return []

    def new_oid(self) -> bytes:
        while True:
            oid = int_to_oid(self._next_oid)
            self._next_oid += 1
            if oid not in self.records:
                return oid

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        if start_oid is None:
            return iter(list(self.records.items()))
        return gen_reachable_records(self, start_oid, batch_size)

    def pack(self) -> None:
        reachable = dict(gen_reachable_records(self))
        self.records = reachable

    def get_packer(self) -> Iterator[None]:
        self.pack()
        return iter(())

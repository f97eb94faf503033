"""PrefetchBuffer: records a client fetched ahead, waiting to be used.

When a record arrives, the records it refers to will likely be wanted
next (a B-tree node's children and values, a list's items).  The client
asks for them in one bulk load sent ahead and reads the answers only when
it needs them; they wait here, bounded (the oldest go first), until the
Connection asks or a sync says they changed.  See
:mod:`durus.client_storage` for why reads stay serializable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from durus import protocol
from durus.error import ConflictError, DurusKeyError
from durus.record import record_refs, split_oids

#: At most this many records fetched ahead wait in a client's buffer.
PREFETCH_RECORDS = 16384
#: At most this many bytes of records fetched ahead wait in a client's buffer.
PREFETCH_BYTES = 4 << 20
#: Records asked for in one bulk load sent ahead.
PREFETCH_BATCH = 250


class PrefetchBuffer:
    """The records fetched ahead, the bulk load in flight, what is wanted next.

    ``records`` maps oid to record, oldest first, ``size`` their bytes
    (at most ``max_records`` and ``max_bytes``); ``inflight`` the oids of
    the bulk load sent and not yet read; ``fetched_ahead`` and
    ``used_ahead`` count records fetched ahead, and of them used, lately.
    """

    def __init__(self, max_records: int = PREFETCH_RECORDS, max_bytes: int = PREFETCH_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.records: dict[bytes, bytes] = {}
        self.size = 0
        self.inflight: list[bytes] = []
        self._inflight_set: set[bytes] = set()
        self._wanted: deque[bytes] = deque()
        self.fetched_ahead = 0
        self.used_ahead = 0

    def is_inflight(self, oid: bytes) -> bool:
        return oid in self._inflight_set

    def want(self, refs: bytes, known: set[bytes], urgent: bool) -> None:
        """Queue the records ``refs`` names that are not here or ``known``
        yet: those of a record just used go first, in order (the next step
        of a lookup is among them); those of a record fetched ahead go last.
        """
        if not refs:
            return
        records, inflight = self.records, self._inflight_set
        new = [ref for ref in split_oids(refs) if ref not in known and ref not in records and ref not in inflight]
        wanted = self._wanted
        if urgent:
            wanted.extendleft(reversed(new))
        else:
            wanted.extend(new)
        while len(wanted) > 4 * self.max_records:
            wanted.pop()

    def reading_ahead_pays(self) -> bool:
        """Whether most records fetched ahead lately were used: a scan, or
        many lookups, is under way, and it is worth fetching the records that
        records fetched ahead refer to as well.  A few lookups in a large
        tree use one record in dozens, and go one level ahead only.
        """
        return self.fetched_ahead >= PREFETCH_BATCH and 2 * self.used_ahead >= self.fetched_ahead

    def next_batch(self, known: set[bytes]) -> list[bytes]:
        """The wanted oids to ask for in one bulk load, now in flight; none
        while another is.
        """
        if self.inflight or not self._wanted:
            return []
        batch: list[bytes] = []
        chosen: set[bytes] = set()
        wanted, records = self._wanted, self.records
        while wanted and len(batch) < PREFETCH_BATCH:
            oid = wanted.popleft()
            if oid not in known and oid not in records and oid not in chosen:
                chosen.add(oid)
                batch.append(oid)
        self.inflight, self._inflight_set = batch, chosen
        return batch

    def receive(self, read: Callable[[int], bytes], known: set[bytes]) -> None:
        """Read the replies to the bulk load in flight, if any."""
        if not self.inflight:
            return
        inflight = self.inflight
        self.inflight, self._inflight_set = [], set()
        deeper = self.reading_ahead_pays()
        for oid in inflight:
            try:
                record = protocol.read_load_reply(read, oid)
            except (ConflictError, DurusKeyError):
                continue  # a load of it will get the same answer, then
            self._keep(oid, record)
            if deeper:
                self.want(record_refs(record), known, urgent=False)
        self.fetched_ahead += len(inflight)
        if self.fetched_ahead > 8 * self.max_records:
            # The recent past counts most.
            self.fetched_ahead //= 2
            self.used_ahead //= 2

    def _keep(self, oid: bytes, record: bytes) -> None:
        """Buffer a record fetched ahead, dropping the oldest ones beyond
        the bounds: records nobody asked for must not pile up in a
        long-lived connection.
        """
        records = self.records
        self.take(oid)
        records[oid] = record
        self.size += len(record)
        while len(records) > self.max_records or self.size > self.max_bytes:
            self.take(next(iter(records)))

    def take(self, oid: bytes) -> bytes | None:
        """The buffered record of ``oid`` (taken out of the buffer), or None."""
        record = self.records.pop(oid, None)
        if record is not None:
            self.size -= len(record)
        return record

    def use(self, oid: bytes) -> bytes | None:
        """The buffered record of ``oid``, for the Connection, or None."""
        record = self.take(oid)
        if record is not None:
            self.used_ahead += 1
        return record

    def forget(self, oids: Iterable[bytes]) -> None:
        """Drop the records of oids that changed."""
        if self.records:
            for oid in oids:
                self.take(oid)

    def clear(self) -> None:
        self.records.clear()
        self.size = 0
        self.inflight = []
        self._inflight_set = set()
        self._wanted.clear()

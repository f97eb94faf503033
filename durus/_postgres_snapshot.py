"""What a PostgresStorage client sees: the PostgreSQL snapshot of its last
transaction boundary, and the records it fetched ahead as of that snapshot.

A row whose writer (``txid``) the snapshot does not see was committed by
someone else since: loading it is a read conflict, and ``durus_news`` lists
it at the next boundary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from durus.record import record_refs, split_oids

#: At most this many records fetched ahead are kept (then they are dropped).
MAX_PREFETCHED = 20_000


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot (``pg_snapshot``): which transactions it sees."""

    xmin: int
    xmax: int
    xip: frozenset[int]
    text: str

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x), text)

    def sees(self, txid: int) -> bool:
        """Whether a transaction committed is visible in this snapshot."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.xip)


class ClientView:
    """The snapshot, this client's own commits it misses, and records known
    as of it.

    - ``snapshot``: of the last transaction boundary;
    - ``own``: txids of this client's commits since, which the snapshot
      (taken inside the commit) does not see, yet are not news;
    - ``known``: oid -> record as of the snapshot, fetched ahead or sent
      with a conflict (the committed states to merge onto); served once;
    - ``prefetch``: how many siblings a cold load fetches (0: none);
    - ``_seen``: oids handed out (the caller may hold them: not fetched
      ahead again); ``_groups``: oid -> the refs of the record it came in.
    """

    def __init__(self, snapshot: Snapshot, prefetch: int) -> None:
        self.snapshot = snapshot
        self.own: list[int] = []
        self.known: dict[bytes, bytes] = {}
        self.prefetch = prefetch
        self._seen: set[bytes] = set()
        self._groups: dict[bytes, list[bytes]] = {}

    def is_fresh(self, txid: int) -> bool:
        """Whether a row written by ``txid`` is of this view (not news)."""
        return self.snapshot.sees(txid) or txid in self.own

    def own_text(self, *more: int) -> str:
        """``own`` and ``more`` as a PostgreSQL array literal."""
        return "{" + ",".join(map(str, [*self.own, *more])) + "}"

    def move_to(self, text: str, changed: Iterable[bytes]) -> None:
        """Move to a new transaction boundary; records fetched ahead of what
        changed since the last one are no longer the snapshot's.
        """
        self.snapshot = Snapshot.parse(text)
        self.own = []
        known, seen = self.known, self._seen
        for oid in changed:
            known.pop(oid, None)
            seen.discard(oid)

    def keep(self, found: dict[bytes, tuple[bytes, int]]) -> None:
        """Keep records fetched ahead that the snapshot sees (they are its
        versions: a newer one would have been fetched instead).
        """
        if len(self.known) > MAX_PREFETCHED:
            self.known.clear()
        for oid, (record, txid) in found.items():
            if self.is_fresh(txid):
                self.known[oid] = record

    def siblings(self, oid: bytes) -> list[bytes]:
        """The oids to fetch along with ``oid``: with ``prefetch``, the
        others that the record which referred to it refers to, not yet
        handed out or fetched.  A first look at one child of a B-tree node
        thereby brings its siblings, in the same round trip.
        """
        group = self._groups.pop(oid, None)
        if not group:
            return []
        seen, known, limit = self._seen, self.known, self.prefetch
        siblings = []
        for other in group:
            if other != oid and other not in seen and other not in known:
                siblings.append(other)
                if len(siblings) >= limit:
                    break
        return siblings

    def handed_out(self, oid: bytes, record: bytes) -> None:
        """Note a record going to the caller: its refs are the group each
        of them is prefetched with.
        """
        if not self.prefetch:
            return
        if len(self._seen) > MAX_PREFETCHED * 10:
            self._seen.clear()
            self._groups.clear()
        self._seen.add(oid)
        refs = record_refs(record)
        if refs:
            group = split_oids(refs)
            for ref in group:
                self._groups[ref] = group

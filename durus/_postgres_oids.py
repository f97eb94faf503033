"""New oids for a PostgresStorage client: from a sequence, in batches that
grow, never reused; the root's oid 0 to one client at a time.
"""

from __future__ import annotations

from durus._postgres_session import LOCK_CLASS, PostgresSession
from durus.record import ROOT_OID, int_to_oid

#: The oid batches fetched from the sequence grow to this size.
MAX_OID_BATCH = 4096

_ROOT_LOCK = "root"


class OidAllocator:
    """Hands out oids no other client was or will be given.

    - ``given``: oids handed out and not yet stored (a commit's records
      for them are new objects; see :meth:`stored`);
    - ``_pool``: numbers fetched from ``durus_oid_seq`` and not handed out,
      the next at the end;
    - ``_batch``: how many the next fetch takes (doubling up to
      :data:`MAX_OID_BATCH`);
    - ``_root_stored``: once True, oid 0 is never claimed again.
    """

    def __init__(self, session: PostgresSession, first_batch: int) -> None:
        self._session = session
        self.given: set[bytes] = set()
        self._pool: list[int] = []
        self._batch = max(1, first_batch)
        self._root_stored = False

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` new oids."""
        oids = []
        if not self._root_stored and ROOT_OID not in self.given and self._claim_root():
            oids.append(ROOT_OID)
        pool = self._pool
        if len(pool) < count - len(oids):
            self._fill(count - len(oids) - len(pool))
        while len(oids) < count:
            oids.append(int_to_oid(pool.pop()))
        self.given.update(oids)
        return oids

    def new_oid(self) -> bytes:
        """One new oid (the common call: a quick path once the root is stored)."""
        if self._root_stored and self._pool:
            oid = int_to_oid(self._pool.pop())
            self.given.add(oid)
            return oid
        return self.new_oids(1)[0]

    def stored(self, oids: object) -> None:
        """These oids were written: no longer new."""
        self.given.difference_update(oids)

    def session_lost(self) -> None:
        """The root claim went with the old session."""
        self.given.discard(ROOT_OID)

    def _claim_root(self) -> bool:
        """Whether this client gets oid 0 to create the root: only while no
        root is stored, and only one client at a time (an advisory lock held
        for the rest of the session, released by PostgreSQL if it dies).
        """
        stored, claimed = self._session.query(
            "SELECT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0), "
            "NOT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0) "
            "AND pg_try_advisory_lock(%s, hashtext(%s || current_schema()))",
            (LOCK_CLASS, _ROOT_LOCK)).fetchone()
        self._root_stored = stored
        return claimed

    def _fill(self, wanted: int) -> None:
        """At least ``wanted`` more numbers in the pool, in one query."""
        size = max(wanted, self._batch)
        self._batch = min(self._batch * 2, MAX_OID_BATCH)
        rows = self._session.query(
            "SELECT nextval('durus_oid_seq') FROM generate_series(1, %s)", (size,)).fetchall()
        self._pool[:0] = [number for (number,) in reversed(rows)]

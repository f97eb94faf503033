"""Packing a PostgresStorage: removing the records not reachable from the
root, in steps that let commits through.

1. mark: in one REPEATABLE READ snapshot (which blocks no one), note every
   record unreachable from the root in ``durus_pack_candidate``;
2. doom: ``durus_pack_doom`` takes the table in EXCLUSIVE mode for the
   length of one call (commits under way finish first; new ones wait), keeps
   the candidates no commit since the mark made reachable again, and moves
   them to ``durus_doomed``, which commits may no longer write or refer to;
3. sweep: delete the doomed in batches, noting each batch in
   ``durus_removed`` for the invalidations of clients that may hold them.

An interrupted pack's doomed records are swept by the next pack.  One pack
at a time (an advisory lock).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from durus._postgres_session import LOCK_CLASS, PostgresSession

log = logging.getLogger("durus.postgres_storage")

#: How many records one sweep step deletes.
BATCH_SIZE = 1000

#: How long a pack's doom step waits for commits under way before it lets
#: commits through and tries again (it holds new commits back meanwhile).
DOOM_LOCK_TIMEOUT_MS = 200

_PACK_LOCK = "pack"


@dataclass
class PackProgress:
    """Where a pack stands: ``phase`` is "mark", "doom", "sweep" or "done";
    ``removed`` counts the records deleted so far of ``doomed``.
    """

    phase: str = "mark"
    doomed: int = 0
    removed: int = 0


class Packer:
    """Packs through a session; ``progress`` is the latest pack's (a new
    object for each pack that runs, so a caller can tell whether one did).
    """

    def __init__(self, session: PostgresSession) -> None:
        self._session = session
        self.progress = PackProgress(phase="done")

    def steps(self) -> Iterator[None]:
        """The pack, one step per ``next``; nothing if another client is packing."""
        conn = self._session.conn
        got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s || current_schema()))",
                           (LOCK_CLASS, _PACK_LOCK)).fetchone()[0]
        if not got:
            log.info("pack skipped: another client is packing")
            return
        progress = self.progress = PackProgress()
        try:
            left_over = conn.execute("SELECT count(*) FROM durus_doomed").fetchone()[0]
            if left_over:
                log.info("pack: finishing an interrupted pack's %d removals", left_over)
                progress.doomed = left_over
            elif not self._session.query("SELECT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0)").fetchone()[0]:
                log.info("pack skipped: no root is stored, so nothing is reachable yet")
                progress.phase = "done"
                return
            else:
                snapshot = self._mark()
                yield None
                progress.phase = "doom"
                while (doomed := self._doom(snapshot)) is None:
                    yield None  # commits under way held the table: later
                progress.doomed = doomed
                log.info("pack: %d unreachable records to remove", progress.doomed)
                yield None
            progress.phase = "sweep"
            while True:
                removed = self._sweep_batch()
                if not removed:
                    break
                progress.removed += removed
                log.info("pack: removed %d of %d", progress.removed, progress.doomed)
                yield None
            conn.execute("DELETE FROM durus_removed WHERE at < now() - interval '1 day'")
            progress.phase = "done"
            log.info("pack finished: %d records removed", progress.removed)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s || current_schema()))",
                         (LOCK_CLASS, _PACK_LOCK))

    def _mark(self) -> str:
        """Note every record unreachable from the root, in one snapshot
        (which blocks no one); the snapshot, for the doom step.
        """
        conn = self._session.conn
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
            conn.execute("DELETE FROM durus_pack_candidate")
            conn.execute("""
                WITH RECURSIVE reachable(oid) AS (
                    SELECT oid FROM durus_object WHERE oid = 0
                    UNION
                    SELECT unnest(o.refs) FROM reachable AS r JOIN durus_object AS o ON o.oid = r.oid
                )
                INSERT INTO durus_pack_candidate
                SELECT o.oid FROM durus_object AS o WHERE o.oid NOT IN (SELECT oid FROM reachable)
            """)
        return snapshot

    def _doom(self, snapshot: str) -> int | None:
        """The doom step; None if the table lock it needs was not had
        within ``DOOM_LOCK_TIMEOUT_MS`` (a client resolving a conflict holds
        rows, and commits would queue behind the waiting lock meanwhile).
        """
        conn = self._session.conn
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{DOOM_LOCK_TIMEOUT_MS}ms'")
                return conn.execute("SELECT durus_pack_doom(%s::pg_snapshot)", (snapshot,)).fetchone()[0]
        except psycopg.errors.LockNotAvailable:
            log.info("pack: commits under way; the doom step tries again")
            return None

    def _sweep_batch(self) -> int:
        """Delete one batch of doomed records; how many."""
        row = self._session.conn.execute("""
            WITH batch AS (
                DELETE FROM durus_doomed WHERE oid IN (
                    SELECT oid FROM durus_doomed ORDER BY oid LIMIT %s)
                RETURNING oid
            ), gone AS (
                DELETE FROM durus_object WHERE oid IN (SELECT oid FROM batch) RETURNING oid
            ), noted AS (
                INSERT INTO durus_removed (txid, oids)
                SELECT pg_current_xact_id(), array_agg(oid) FROM gone HAVING count(*) > 0
            )
            SELECT count(*) FROM batch
        """, (BATCH_SIZE,)).fetchone()
        return row[0]

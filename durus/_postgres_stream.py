"""New records written ahead of their commit, while it is still being made.

A large commit is mostly new objects (a build, an import), and a client
spends longer pickling them than PostgreSQL spends writing them.  Sent all
at the end, in the one call of ``durus_commit``, the two take turns; sent
as they come, the server writes while the client pickles, on another core.

So once a commit has gathered :data:`STREAM_AFTER` records of new objects,
a :class:`RecordStream` opens a PostgreSQL transaction and copies them,
and each later one, into ``durus_object`` with ``COPY``; ``durus_commit``
then runs in that transaction with the rest, and the transaction commits
only if it answers ``ok``.  Nothing of it is visible before that, and
nothing is left of it if anything else happens (a conflict, an error, a
lost session): the storage rolls it back and sends the whole commit in one
call as usual.  Only new objects' rows are written ahead: their oids were
handed out to this client alone, so no other transaction waits on them or
conflicts with them, and no row another commit uses is touched before
``durus_commit`` has locked and checked it.  What the open transaction
holds meanwhile is the table lock every commit takes (ROW EXCLUSIVE): a
pack's doom step, which wants the table to itself, waits for it, up to its
lock timeout, and tries again later.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import psycopg

from durus._postgres_session import PostgresSession
from durus.record import record_refs

#: How many new records a commit gathers before they are streamed.
STREAM_AFTER = 256

#: How many are written to the COPY at a time, once it is open.
CHUNK = 64

_COPY = "COPY durus_object (oid, txid, record, refs) FROM STDIN"
_NEVER = float("inf")


class RecordStream:
    """The new records of one commit, written ahead into an open transaction.

    ``_after``: how many new records open the stream (0: never);
    ``_due``: how many pending records are written (``_after``, then
    :data:`CHUNK` once the stream is open);
    ``_txid``: that transaction's id (None before one is open);
    ``_written``: the oids whose rows it holds; ``_pending``: new records
    not written yet; ``_conn``: the psycopg connection the transaction is
    on (a reconnect leaves it behind, and the rows with it); ``_spoiled``:
    the stream cannot be used (a record written ahead was stored again, a
    write failed): the commit is sent whole.
    """

    def __init__(self, session: PostgresSession, after: int = STREAM_AFTER) -> None:
        self._session = session
        self._after = after
        self._txid: int | None = None
        self._written: set[bytes] = set()
        self._refs: set[int] = set()
        self._pending: list[tuple[bytes, bytes]] = []
        self._due = after or _NEVER  # how many pending records are written
        self._conn: psycopg.Connection | None = None
        self._spoiled = False

    def add(self, oid: bytes, record: bytes) -> None:
        """A new object's record for the commit under way."""
        pending = self._pending
        pending.append((oid, record))
        if len(pending) >= self._due:
            self._write()

    def restored(self, oid: bytes) -> None:
        """``oid``'s record was stored again: what was written ahead or is
        pending may be stale, so the commit is sent whole (rare: the
        Connection stores each record once).
        """
        self._spoiled = True

    def _write(self) -> None:
        """Write the pending records, opening the transaction and the COPY
        as needed.
        """
        if self._spoiled:
            return
        session = self._session
        try:
            if self._txid is None:
                if session.in_transaction():
                    self._spoiled = True  # a held commit's: not ours to add to
                    return
                # Ours from before BEGIN is sent: abandon() rolls back
                # whatever an interruption in between leaves open.
                self._conn = session.conn
                session.execute("BEGIN")
                self._txid = session.execute("SELECT pg_current_xact_id()::text::int8").fetchone()[0]
                self._due = min(CHUNK, self._after)
            elif not self._still_open():
                # Ended under the stream (a sync's rollback, a reconnect):
                # a COPY now would commit on its own, in autocommit.
                self._spoiled = True
                return
            copy = session.copy_under_way() or session.copy_in(_COPY)
            copy.write(self._lines())
        except psycopg.Error:
            self._spoiled = True  # finish() rolls back what there is
            return
        self._written.update([oid for oid, _ in self._pending])
        self._pending.clear()

    def _still_open(self) -> bool:
        """Whether the transaction the rows went to is still open, on the
        same connection, and has not failed.
        """
        session = self._session
        if session.conn is not self._conn:
            return False
        if session.copy_under_way() is not None:
            return True  # a COPY is under way in it
        return _open_and_fine(session)

    def _lines(self) -> str:
        """The pending records as lines of COPY's text format: oid, txid,
        record, refs.  Text, not binary: PostgreSQL reads these lines
        faster (measured), and so keeps up.  Most new records refer to
        nothing, and take the short way.
        """
        middle, lines = f"\t{self._txid}\t\\\\x", []
        for oid, record in self._pending:
            if len(record) == 12 + int.from_bytes(record[8:12], "big"):
                lines.append(f"{int.from_bytes(oid, 'big')}{middle}{record.hex()}\t{{}}\n")
            else:
                lines.append(self._row(oid, record))
        return "".join(lines)

    def _row(self, oid: bytes, record: bytes) -> str:
        """One line for a record with refs (their numbers kept in ``_refs`` too)."""
        refs = record_refs(record)
        count = len(refs) // 8
        if len(refs) % 8:
            self._spoiled = True  # sent whole, the commit is refused
        numbers = struct.unpack(f">{count}Q", refs[:count * 8])
        self._refs.update(numbers)
        return f"{int.from_bytes(oid, 'big')}\t{self._txid}\t\\\\x{record.hex()}\t{{{','.join(map(str, numbers))}}}\n"

    def finish(self) -> Streamed | None:
        """End the COPY: what the open transaction holds, for
        ``durus_commit`` to run in; None if nothing was written ahead, or
        if what was cannot be used (it is rolled back: the commit is sent
        whole, which meets whatever went wrong here again and deals with
        it as every commit does).
        """
        session, txid, written, refs = self._session, self._txid, self._written, self._refs
        if txid is None:
            self.abandon()  # nothing written; an interrupted BEGIN's transaction ended
            return None
        try:
            session.end_copy()
        except psycopg.Error:
            self._spoiled = True
        if self._spoiled or not self._still_open():
            self.abandon()
            return None
        self.reset()
        return Streamed(txid, written, refs)

    def abandon(self) -> None:
        """Give up what was written ahead: the transaction rolled back."""
        if self._conn is not None and self._session.conn is self._conn:
            self._session.rollback_if_open()
        self.reset()

    def reset(self) -> None:
        """Empty, for the next commit (the transaction, if any, is someone else's now)."""
        self._txid = self._conn = None
        self._written = set()
        self._refs = set()
        self._pending = []
        self._due = self._after or _NEVER
        self._spoiled = False


@dataclass(frozen=True)
class Streamed:
    """What a commit wrote ahead: in transaction ``txid`` (open), the rows
    of ``oids``, which refer to the oid numbers ``refs``.
    """

    txid: int
    oids: set[bytes]
    refs: set[int]


def _open_and_fine(session: PostgresSession) -> bool:
    """Whether the session is in a transaction that has not failed."""
    return session.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

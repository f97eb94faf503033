"""A storage on PostgreSQL: many processes on many hosts share one database.

Each record is a row of ``durus_object``: the record's bytes exactly as a
file keeps them (:mod:`durus.record`), its refs again as an ``int8[]`` so
that a pack can follow them in SQL, and ``txid``, the PostgreSQL transaction
that wrote it.  A client remembers the PostgreSQL snapshot of its last
transaction boundary; a row whose ``txid`` that snapshot does not see was
committed by someone else since, which is all there is to invalidations and
conflicts:

- ``load`` of such a row raises ReadConflictError (the transaction would
  mix states from before and after the other commit);
- ``sync`` asks for every such row (an index on ``txid`` finds them);
- a commit is ONE call of the server-side function ``durus_commit``
  (``durus/_postgres_commit.py``): it locks the rows of every oid the
  transaction wrote ``FOR UPDATE`` and of every oid it only read ``FOR
  SHARE``, in oid order, and writes only if none of them has a ``txid`` the
  client's snapshot misses.  The row locks keep the checked rows unchanged
  until the write commits, so the transaction is as if it ran at that
  instant (serializable); commits of disjoint objects never wait for each
  other, and commits that only read a row do not wait for each other either.

A commit is durable when ``end`` returns (``synchronous_commit`` is on for
the storage's session).  The parts, each in a module of its own: the
session (``durus/_postgres_session.py``), the schema and its migrations
(``durus/_postgres_schema.py``), the commit (``durus/_postgres_commit.py``),
the snapshot and records fetched ahead (``durus/_postgres_snapshot.py``),
oids (``durus/_postgres_oids.py``) and pack (``durus/_postgres_pack.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import NoReturn

import psycopg

from durus.error import DamagedRecordError, DurusError, DurusKeyError, ReadConflictError, WriteConflictError
from durus._postgres_commit import RULES_BROKEN, CommitOutcome, call_commit, commit_arguments
from durus._postgres_oids import OidAllocator
from durus._postgres_pack import PackProgress, Packer
from durus._postgres_schema import CURRENT_VERSION, check_not_newer, init_schema, schema_version
from durus._postgres_session import PostgresSession, PostgresStorageError, describe_dsn, int_array
from durus._postgres_snapshot import ClientView, Snapshot
from durus._postgres_stream import STREAM_AFTER, RecordStream, Streamed
from durus.record import int_to_oid, oid_to_int
from durus.shared_storage import RequestRefusedError
from durus.storage import InvalidationHandler, Storage, deliver_after_commit

__all__ = [
    "DEFAULT_PREFETCH", "SCHEMA_VERSION", "CommitInDoubtError", "PackProgress", "PostgresStorage",
    "PostgresStorageError", "ReadOnlyStorageError", "describe_dsn", "init_schema",
]

log = logging.getLogger("durus.postgres_storage")

#: The version of the database schema this durus makes and reads.
SCHEMA_VERSION = CURRENT_VERSION

#: How many records one query of ``bulk_load`` or a listing handles.
BATCH_SIZE = 1000

#: How many siblings a cold load fetches along with the record asked for.
DEFAULT_PREFETCH = 100

#: After this many conflicts, a commit's tries keep their rows locked until
#: the next (the first retry, the common case, stays one round trip).
HOLD_AFTER_CONFLICTS = 2


class CommitInDoubtError(PostgresStorageError):
    """The session broke while a commit was under way: it may have been
    written or not.  The storage reconnected; abort and look.
    """


class ReadOnlyStorageError(DurusError):
    """A change was asked of a PostgresStorage opened with ``readonly=True``."""


class PostgresStorage(Storage):
    """A Storage in a PostgreSQL database; see the module docstring.

    ``dsn`` is a libpq connection string or URI.  ``readonly``: commits and
    new oids are refused (and the session is read-only in PostgreSQL too).
    ``create``: create or upgrade the schema when it is missing or old; with
    False a database without it is an error.  ``oid_batch``: how many oids
    the first fetch from the sequence takes (later fetches grow).
    ``prefetch``: a load of an object not yet loaded also fetches up to this
    many of the objects referred to by the same record (its siblings), in
    the same round trip (default 100, as ClientStorage fetches ahead by
    default; 0 loads one record per round trip).  A record fetched
    ahead is the version of the client's snapshot: if another client
    commits that object before it is used, the load gives the snapshot's
    version rather than raising ReadConflictError (the transaction still
    sees one consistent state, and a commit that used it conflicts), as
    ClientStorage's ``prefetch`` does.  ``stream_after``: once a commit
    has this many records of new objects, they are written while the rest
    is still being pickled, in the transaction that commits them (see
    ``durus/_postgres_stream.py``); 0 never.

    Attributes: ``dsn``, ``readonly``; ``_session`` (the PostgreSQL
    session), ``_view`` (snapshot and records known as of it), ``_oids``,
    ``_packer``; ``_records``, the commit being gathered (None outside
    one); ``_conflicts``, how many times the commit under way conflicted
    (from the second, the rows it locked stay locked until it commits again
    or is given up).
    """

    batched_bulk_load = True
    watches_reads = True
    streams_records = True
    checks_references = True

    def __init__(
        self,
        dsn: str,
        *,
        readonly: bool = False,
        create: bool = True,
        oid_batch: int = 32,
        prefetch: int = DEFAULT_PREFETCH,
        stream_after: int = STREAM_AFTER,
    ) -> None:
        self.dsn = dsn
        self.readonly = readonly
        self._closed = False
        self._session = PostgresSession(dsn, readonly=readonly, on_reconnect=self._session_lost)
        self._oids = OidAllocator(self._session, oid_batch)
        self._packer = Packer(self._session)
        try:
            self._check_schema(create)
        except BaseException:
            self._session.close()
            raise
        self._view = ClientView(self._current_snapshot(), prefetch)
        self._records: dict[bytes, bytes] | None = None
        self._stream = RecordStream(self._session, stream_after)
        self._conflicts = 0

    def __repr__(self) -> str:
        return f"<PostgresStorage {describe_dsn(self.dsn)}>"

    @property
    def conn(self) -> psycopg.Connection:
        """The psycopg connection of the current session."""
        return self._session.conn

    @property
    def prefetch(self) -> int:
        return self._view.prefetch

    @prefetch.setter
    def prefetch(self, count: int) -> None:
        self._view.prefetch = count

    @property
    def pack_progress(self) -> PackProgress:
        """The latest pack's progress (a new object for each pack run)."""
        return self._packer.progress

    # -- the session -------------------------------------------------------------

    def _check_schema(self, create: bool) -> None:
        version = schema_version(self._session.conn)
        if version == SCHEMA_VERSION:
            return
        check_not_newer(version)
        if not create or self.readonly:
            what = "no durus schema" if version == 0 else f"durus schema version {version}"
            raise PostgresStorageError(
                f"{describe_dsn(self.dsn)} has {what}; open it once with create=True "
                f"(or call durus.postgres_storage.init_schema) to make version {SCHEMA_VERSION}")
        init_schema(self._session.conn)

    def _current_snapshot(self) -> Snapshot:
        return Snapshot.parse(self._session.query("SELECT pg_current_snapshot()::text").fetchone()[0])

    def _query(self, sql: str, params: tuple | None = None, prepare: bool | None = None) -> psycopg.Cursor:
        """A statement that changes nothing, on a session made anew if lost."""
        self._check_open()
        return self._session.query(sql, params, prepare)

    def _session_lost(self) -> None:
        """A new session replaced a lost one; the snapshot stays, since it
        names transactions, not sessions.  Held rows and the root claim
        went with the old one.
        """
        self._conflicts = 0
        self._oids.session_lost()

    def _check_open(self) -> None:
        if self._closed:
            raise PostgresStorageError("this PostgresStorage is closed")
        # After a restart the snapshot's transaction ids may have been
        # handed out again (those that never reached the disk before a
        # crash): it can no longer tell which rows are news, so the states
        # this client holds cannot be trusted.  The Flask pool replaces
        # such a connection unseen.
        self._session.check_not_restarted()

    def _check_writable(self, action: str) -> None:
        if self.readonly:
            raise ReadOnlyStorageError(f"cannot {action}: the PostgresStorage was opened with readonly=True")

    # -- reading ---------------------------------------------------------------

    def _fresh(self, oid: bytes, txid: int) -> None:
        """Raise ReadConflictError if the row of ``oid`` was committed by
        another client since this one's last transaction boundary.
        """
        if not self._view.is_fresh(txid):
            raise ReadConflictError([oid])

    def _checked_record(self, oid: bytes, record: bytes) -> bytes:
        if len(record) < 12 or record[:8] != oid or 12 + int.from_bytes(record[8:12], "big") > len(record):
            raise DamagedRecordError(
                "its row does not hold a whole record of this oid", oid, self.describe_record(oid))
        return record

    def load(self, oid: bytes) -> bytes:
        record = self._view.known.pop(oid, None)
        if record is None:
            wanted = [oid, *self._view.siblings(oid)]
            found = self._fetch(wanted)
            if oid not in found:
                raise DurusKeyError(oid)
            record, txid = found.pop(oid)
            self._fresh(oid, txid)
            self._view.keep(found)
        return self._handed_out(oid, record)

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        """The records of ``oids``, in order, fetched ``BATCH_SIZE`` at a time."""
        oids = list(oids)
        known = self._view.known
        for start in range(0, len(oids), BATCH_SIZE):
            batch = oids[start:start + BATCH_SIZE]
            missing = [oid for oid in batch if oid not in known]
            found = self._fetch(missing) if missing else {}
            for oid in batch:
                record = known.pop(oid, None)
                if record is None:
                    try:
                        record, txid = found[oid]
                    except KeyError:
                        raise DurusKeyError(oid) from None
                    self._fresh(oid, txid)
                yield self._handed_out(oid, record)

    def _fetch(self, oids: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
        """``oid -> (record, writer txid)`` of those of ``oids`` stored."""
        if len(oids) == 1:  # the common case, and a quicker plan than ANY
            rows = self._query(
                "SELECT oid, record, txid::text::int8 FROM durus_object WHERE oid = %s",
                (oid_to_int(oids[0]),), prepare=True).fetchall()
        else:
            rows = self._query(
                "SELECT oid, record, txid::text::int8 FROM durus_object WHERE oid = ANY (%s::int8[])",
                (int_array(map(oid_to_int, oids)),), prepare=True).fetchall()
        return {int_to_oid(number): (bytes(record), txid) for number, record, txid in rows}

    def _handed_out(self, oid: bytes, record: bytes) -> bytes:
        """Check a record going to the caller, and note it for prefetching."""
        self._checked_record(oid, record)
        self._view.handed_out(oid, record)
        return record

    def __contains__(self, oid: bytes) -> bool:
        return self._query(
            "SELECT EXISTS (SELECT 1 FROM durus_object WHERE oid = %s)", (oid_to_int(oid),)).fetchone()[0]

    def describe_record(self, oid: bytes) -> str:
        """Where the record of ``oid`` lives, for error messages."""
        return f"row oid={oid_to_int(oid)} of durus_object in {describe_dsn(self.dsn)}"

    def sync(self) -> list[bytes]:
        self._release()
        snapshot, oids = self._query(
            "SELECT now_snap::text, oids FROM durus_news(%s::pg_snapshot, %s::xid8[])",
            (self._view.snapshot.text, self._view.own_text()), prepare=True).fetchone()
        news = [int_to_oid(number) for number in oids]
        self._view.move_to(snapshot, news)
        return news

    # -- oids ------------------------------------------------------------------

    def new_oid(self) -> bytes:
        if self.readonly:  # not a call of _check_writable: a build asks for 100,000 oids
            self._check_writable("hand out new oids")
        return self._oids.new_oid()

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` oids no one else was or will be given."""
        self._check_writable("hand out new oids")
        return self._oids.new_oids(count)

    # -- committing ------------------------------------------------------------

    def begin(self) -> None:
        self._check_open()
        self._check_writable("commit")
        self._stream.abandon()  # what a commit begun and never ended left
        self._records = {}

    def store(self, oid: bytes, record: bytes) -> None:
        """Add a record to the commit; a new object's may be written ahead
        (see ``durus/_postgres_stream.py``).
        """
        records = self._records
        if records is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        if record[:8] != oid or len(oid) != 8:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        if oid in records:
            self._stream.restored(oid)
        elif oid in self._oids.given and not self._conflicts:
            self._stream.add(oid, record)
        records[oid] = record

    def cancel(self) -> None:
        """Give up the commit begun: what was written ahead is rolled back."""
        self._records = None
        self._stream.abandon()

    def end(
        self, handle_invalidations: InvalidationHandler | None = None, *, watched: Iterable[bytes] = ()
    ) -> None:
        """Check and write the commit in one call of ``durus_commit``; see
        :meth:`Storage.end`.  A conflict over ``watched`` hands the news to
        ``handle_invalidations`` and tries again if it returns.
        """
        records, self._records = self._records, None
        if records is None:
            raise RuntimeError("end() outside a commit: call begin() first")
        streamed = self._stream.finish()
        if not records:
            self._deliver(self.sync(), handle_invalidations)
            return
        try:
            self._commit(records, set(watched), streamed, handle_invalidations)
        except BaseException:
            if streamed is not None and not self._conflicts:
                self._session.rollback_if_open()  # what was written ahead, if still open
            raise

    def _commit(self, records: dict[bytes, bytes], watched: set[bytes], streamed: Streamed | None,
                handle_invalidations: InvalidationHandler | None) -> None:
        """``end``'s tries, until written, refused or given up."""
        if streamed is None:
            # Not one statement of the commit was sent: a session already
            # known lost (a stream's COPY met it) is replaced, not sent into.
            self._session.reconnect_if_lost()
        arguments = (commit_arguments(records, watched, self._oids.given, streamed.oids, streamed.refs) if streamed
                     else commit_arguments(records, watched, self._oids.given))
        while True:
            try:
                outcome = self._call_commit(arguments, streamed)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.UniqueViolation):
                # Two resolving clients each hold a row the other needs; or
                # a new oid was stored meanwhile (a lost root claim).
                self._release()
                raise WriteConflictError(sorted(watched | records.keys())) from None
            except psycopg.DatabaseError as error:
                if error.sqlstate != RULES_BROKEN:
                    raise
                self._release()
                raise RequestRefusedError(f"commit refused: {error.diag.message_primary}") from None
            invalid = [int_to_oid(number) for number in outcome.invalid]
            self._view.move_to(outcome.snapshot, invalid)
            if outcome.status != "conflict":
                self._finish(outcome, records, invalid, handle_invalidations)
                return
            if streamed:
                # Rolled back: every try from here sends the commit whole.
                streamed = None
                arguments = commit_arguments(records, watched, self._oids.given)
            # A conflict: the handler raises ConflictError (the Connection
            # may resolve and commit again), or finds every read unchanged
            # and returns; then only newer commits matter.
            bad = [int_to_oid(number) for number in outcome.bad]
            self._conflicts += 1
            if handle_invalidations is None:
                self._release()
                raise WriteConflictError(bad)
            self._view.known.update(zip(bad, outcome.bad_records))
            handle_invalidations(invalid)

    def _call_commit(self, arguments: tuple, streamed: Streamed | None = None) -> CommitOutcome:
        """One call of ``durus_commit``, in one round trip as a rule.  After
        a commit conflicted twice, in a transaction that keeps the rows it
        locked from the check until the next try (so that it cannot
        starve), ended here unless it conflicted again.  With records
        ``streamed`` (written ahead), in their transaction, ended here in
        every case (a conflict rolls them back).
        """
        held = self._conflicts >= HOLD_AFTER_CONFLICTS
        in_transaction = held or streamed is not None
        self._check_open()
        session = self._session
        own = self._view.own_text(streamed.txid) if streamed else self._view.own_text()
        try:
            if not in_transaction and session.in_transaction():
                # Left open by an interruption (a KeyboardInterrupt between
                # two statements): this commit must not run inside it, where
                # it would never be committed.
                session.rollback_if_open()
            if held and not session.in_transaction():
                session.execute("BEGIN")
            outcome = call_commit(session.conn, self._view.snapshot.text, own, arguments)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.UniqueViolation):
            raise  # the session is fine: the caller gives up the commit
        except psycopg.OperationalError as error:
            self._lost_during_commit(error, written=False if in_transaction else None)
        if in_transaction and (outcome.status != "conflict" or not held):
            try:
                session.execute("COMMIT" if outcome.status == "ok" else "ROLLBACK")
            except psycopg.OperationalError as error:
                self._lost_during_commit(error, written=None if outcome.status == "ok" else False)
        return outcome

    def _finish(self, outcome: CommitOutcome, records: dict[bytes, bytes], invalid: list[bytes],
                handle_invalidations: InvalidationHandler | None) -> None:
        """The end of a commit that did not conflict: written, or refused."""
        self._conflicts = 0
        if outcome.status == "ok":
            known = self._view.known
            if known:
                for oid in records:
                    known.pop(oid, None)
            self._view.own = [outcome.txid]
            self._oids.stored(records)
            deliver_after_commit(invalid, handle_invalidations)
            return
        self._deliver(invalid, handle_invalidations)
        if outcome.status == "refused":
            raise RequestRefusedError(f"commit refused: {outcome.problem}")
        raise WriteConflictError([int_to_oid(number) for number in outcome.bad])  # "removed"

    def _lost_during_commit(self, error: psycopg.OperationalError, written: bool | None) -> NoReturn:
        """The session broke during a commit: reconnect, and say whether
        the commit may have been written (``written`` None: unknown).
        """
        self._session.reconnect()
        if written is False:
            raise WriteConflictError([]) from None
        raise CommitInDoubtError(
            f"the PostgreSQL session broke during a commit ({str(error).strip()}); it may or may "
            "not have been written: abort, then look before doing it again") from None

    def _release(self) -> None:
        """Give up the row locks a conflict left held (a resolution that
        did not commit again), if any.
        """
        self._conflicts = 0
        self._session.rollback_if_open()

    @staticmethod
    def _deliver(oids: list[bytes], handle_invalidations: InvalidationHandler | None) -> None:
        if oids and handle_invalidations is not None:
            handle_invalidations(oids)

    # -- listing -----------------------------------------------------------------

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        """With ``start_oid``, the records reachable from it; without, every
        stored record in oid order (read in batches, not one snapshot).
        """
        if start_oid is not None:
            yield from super().gen_oid_record(start_oid, batch_size)
            return
        last = -1
        while True:
            rows = self._query(
                "SELECT oid, record FROM durus_object WHERE oid > %s ORDER BY oid LIMIT %s",
                (last, max(batch_size, BATCH_SIZE))).fetchall()
            if not rows:
                return
            for number, record in rows:
                oid = int_to_oid(number)
                yield oid, self._checked_record(oid, bytes(record))
            last = rows[-1][0]

    # -- packing -------------------------------------------------------------------

    def pack(self) -> None:
        """Remove the records not reachable from the root, in steps that
        let commits through; returns when done.
        """
        for _ in self.get_packer():
            pass

    def get_packer(self) -> Iterator[None]:
        """A pack, one step per ``next``; progress in ``pack_progress``.
        Nothing if another client is packing.
        """
        self._check_writable("pack")
        self._release()
        return self._packer.steps()

    def close(self) -> None:
        self._closed = True
        self._conflicts = 0
        self._stream.reset()
        self._session.close()

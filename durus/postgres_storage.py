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
- a commit is ONE call of the server-side function ``durus_commit``: it
  locks the rows of every oid the transaction read or wrote ``FOR UPDATE``,
  in oid order, and writes only if none of them has a ``txid`` the client's
  snapshot misses.  The row locks keep the checked rows unchanged until the
  write commits, so the transaction is as if it ran at that instant
  (serializable), and commits of disjoint objects never wait for each other.

A commit is durable when ``end`` returns (``synchronous_commit`` is on for
the storage's session).  Oids come from a sequence in batches and are never
reused; the root's oid 0 goes to the one client holding an advisory lock
while no root is stored.  The schema is created and upgraded by
:func:`init_schema` (``durus_schema_version`` holds its version).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import psycopg
from psycopg.conninfo import conninfo_to_dict

from durus.error import DamagedRecordError, DurusError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.record import ROOT_OID, int_to_oid, oid_to_int, record_refs, split_oids
from durus.shared_storage import RequestRefusedError
from durus.storage import InvalidationHandler, Storage

log = logging.getLogger("durus.postgres_storage")

SCHEMA_VERSION = 1

#: How many records one query of ``bulk_load`` or a pack step handles.
BATCH_SIZE = 1000

#: How long a pack's doom step waits for commits under way before it lets
#: commits through and tries again (it holds new commits back meanwhile).
DOOM_LOCK_TIMEOUT_MS = 200

#: At most this many records fetched ahead are kept (then they are dropped).
MAX_PREFETCHED = 20_000

#: The oid batches fetched from the sequence grow to this size.
MAX_OID_BATCH = 4096

# Advisory lock keys (first half: "durus" in ASCII; second: the purpose, mixed
# with the schema so that two databases in one PostgreSQL database differ).
_LOCK_CLASS = 0x64757275
_ROOT_LOCK = "root"
_PACK_LOCK = "pack"
_SCHEMA_LOCK = 0x73636865


class PostgresStorageError(DurusError):
    """PostgreSQL cannot be reached, or its database is not one this storage
    can use (no schema and ``create=False``, a schema of a newer version).
    """


class CommitInDoubtError(PostgresStorageError):
    """The session broke while a commit was under way: it may have been
    written or not.  The storage reconnected; abort and look.
    """


class ReadOnlyStorageError(DurusError):
    """A change was asked of a PostgresStorage opened with ``readonly=True``."""


# -- the schema and its migrations -----------------------------------------

_SCHEMA_1 = r"""
CREATE TABLE durus_object (
    oid int8 PRIMARY KEY,
    txid xid8 NOT NULL,
    record bytea NOT NULL,
    refs int8[] NOT NULL
);
CREATE INDEX durus_object_txid ON durus_object (txid);
CREATE SEQUENCE durus_oid_seq AS int8 MINVALUE 1 START 1;
-- Oids a pack removed, for the invalidations of clients that may hold them.
CREATE TABLE durus_removed (
    txid xid8 NOT NULL,
    oids int8[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX durus_removed_txid ON durus_removed (txid);
-- A pack's first step: what was unreachable in its snapshot.
CREATE TABLE durus_pack_candidate (oid int8 PRIMARY KEY);
-- A pack's second step: what it will delete; commits may no longer refer to
-- these or write them.
CREATE TABLE durus_doomed (oid int8 PRIMARY KEY);

-- The oids others committed (or a pack removed) that ``snap`` does not see,
-- and the snapshot that sees them: one statement, so the two agree.
CREATE FUNCTION durus_news(snap pg_snapshot, own xid8[], OUT now_snap pg_snapshot, OUT oids int8[])
LANGUAGE sql STABLE AS $$
    SELECT pg_current_snapshot(), coalesce(
        (SELECT array_agg(oid) FROM (
            SELECT oid FROM durus_object
             WHERE txid >= pg_snapshot_xmin(snap) AND NOT pg_visible_in_snapshot(txid, snap)
               AND txid <> ALL (own)
            UNION
            SELECT unnest(oids) FROM durus_removed
             WHERE txid >= pg_snapshot_xmin(snap) AND NOT pg_visible_in_snapshot(txid, snap)
        ) AS news), '{}')
$$;

-- A whole commit in one call.  The records come concatenated in blob, with
-- their lengths (cheaper to send than an array of bytea).  Status 'ok' (written; txid is the writer),
-- 'conflict' (nothing written; bad: the watched oids others committed),
-- 'removed' (nothing written; bad: oids a pack removed that the commit
-- writes or refers to) or 'refused' (nothing written; problem says why).
-- Invalidations and the new snapshot come back in every case.
CREATE FUNCTION durus_commit(
    snap pg_snapshot, own xid8[], watched int8[], new_oids int8[],
    oids int8[], blob bytea, lengths int4[], refs int8[], ref_owners int8[],
    OUT status text, OUT txid xid8, OUT now_snap pg_snapshot, OUT invalid int8[],
    OUT bad int8[], OUT bad_records bytea[], OUT problem text)
LANGUAGE plpgsql AS $$
DECLARE
    found_oids int8[];
    handed_out int8;
    missing int8[];
BEGIN
    -- Lock what the transaction used, in oid order (no deadlocks between
    -- commits), and find what others committed of it.  This statement also
    -- takes the table lock a pack's doom step waits for.
    SELECT coalesce(array_agg(w.oid), '{}'),
           coalesce(array_agg(w.oid) FILTER (
               WHERE NOT pg_visible_in_snapshot(w.txid, snap) AND w.txid <> ALL (own)), '{}')
      INTO found_oids, bad
      FROM (SELECT o.oid, o.txid FROM durus_object o WHERE o.oid = ANY (watched)
             ORDER BY o.oid FOR UPDATE) AS w;
    SELECT n.now_snap, n.oids INTO now_snap, invalid FROM durus_news(snap, own) AS n;
    IF cardinality(bad) > 0 THEN
        -- Their records too, as of now_snap: the client merges onto them
        -- and tries again without another round trip to load them.
        SELECT array_agg(o.oid ORDER BY o.oid), array_agg(o.record ORDER BY o.oid) INTO bad, bad_records
          FROM durus_object AS o WHERE o.oid = ANY (bad);
        status := 'conflict';
        RETURN;
    END IF;
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO handed_out FROM durus_oid_seq AS s;
    -- Records for oids with no row: new objects of this client, else never
    -- handed out (refused) or removed by a pack (the client is stale).
    SELECT coalesce(array_agg(r.oid), '{}') INTO missing
      FROM unnest(oids) AS r(oid)
     WHERE r.oid NOT IN (SELECT unnest(found_oids)) AND r.oid NOT IN (SELECT unnest(new_oids));
    IF cardinality(missing) > 0 THEN
        IF (SELECT max(m) FROM unnest(missing) AS m) > handed_out THEN
            status := 'refused';
            problem := format('a record for oid %s, which was never handed out', (SELECT max(m) FROM unnest(missing) AS m));
            RETURN;
        END IF;
        status := 'removed';
        bad := missing;
        RETURN;
    END IF;
    -- Used oids with no row (not written now): removed by a pack.
    SELECT coalesce(array_agg(w.oid), '{}') INTO missing
      FROM unnest(watched) AS w(oid)
     WHERE w.oid NOT IN (SELECT unnest(found_oids)) AND w.oid NOT IN (SELECT unnest(oids));
    IF cardinality(missing) > 0 THEN
        status := 'removed';
        bad := missing;
        RETURN;
    END IF;
    -- References: to a stored object, or to one written now.
    SELECT coalesce(array_agg(r.oid), '{}') INTO missing
      FROM (SELECT DISTINCT unnest(refs) AS oid) AS r
      LEFT JOIN unnest(oids) AS n(oid) ON n.oid = r.oid
      LEFT JOIN durus_object AS o ON o.oid = r.oid
     WHERE n.oid IS NULL AND o.oid IS NULL;
    IF cardinality(missing) > 0 THEN
        IF (SELECT max(m) FROM unnest(missing) AS m) > handed_out THEN
            status := 'refused';
            problem := format('a reference to oid %s, which was never handed out', (SELECT max(m) FROM unnest(missing) AS m));
            RETURN;
        END IF;
        status := 'removed';
        bad := missing;
        RETURN;
    END IF;
    -- Nothing may write or refer to what a pack is deleting.
    SELECT coalesce(array_agg(d.oid), '{}') INTO missing
      FROM durus_doomed AS d
     WHERE d.oid IN (SELECT unnest(oids) UNION SELECT unnest(refs));
    IF cardinality(missing) > 0 THEN
        status := 'removed';
        bad := missing;
        RETURN;
    END IF;
    txid := pg_current_xact_id();
    -- Set-based (no subscripting of big arrays, which copies them).
    INSERT INTO durus_object AS o (oid, txid, record, refs)
    SELECT r.oid, txid, substr(blob, r.start::int4, r.length), coalesce(f.refs, '{}')
      FROM (SELECT u.oid, u.length, u.n, sum(u.length) OVER (ORDER BY u.n) - u.length + 1 AS start
              FROM unnest(oids, lengths) WITH ORDINALITY AS u(oid, length, n)) AS r
      LEFT JOIN (SELECT u.owner, array_agg(u.ref ORDER BY u.k) AS refs
                   FROM unnest(ref_owners, refs) WITH ORDINALITY AS u(owner, ref, k)
                  GROUP BY u.owner) AS f ON f.owner = r.n
        ON CONFLICT (oid) DO UPDATE
       SET txid = excluded.txid, record = excluded.record, refs = excluded.refs;
    status := 'ok';
END
$$;

-- A pack's doom step: of the candidates, all but those a commit since the
-- pack's snapshot made reachable again.  The table lock waits for commits
-- under way and holds new ones back for the length of this call only.
CREATE FUNCTION durus_pack_doom(snap pg_snapshot) RETURNS int8
LANGUAGE plpgsql AS $$
DECLARE
    doomed int8;
BEGIN
    LOCK TABLE durus_object IN EXCLUSIVE MODE;
    WITH RECURSIVE rescued(oid) AS (
        SELECT c.oid FROM durus_pack_candidate AS c
         WHERE c.oid IN (
            SELECT unnest(o.refs) FROM durus_object AS o
             WHERE o.txid >= pg_snapshot_xmin(snap) AND NOT pg_visible_in_snapshot(o.txid, snap)
               AND o.oid NOT IN (SELECT oid FROM durus_pack_candidate))
        UNION
        SELECT c.oid FROM rescued AS r
          JOIN durus_object AS o ON o.oid = r.oid
          JOIN durus_pack_candidate AS c ON c.oid = ANY (o.refs)
    )
    DELETE FROM durus_pack_candidate AS c USING rescued AS r WHERE c.oid = r.oid;
    INSERT INTO durus_doomed SELECT oid FROM durus_pack_candidate ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS doomed = ROW_COUNT;
    DELETE FROM durus_pack_candidate;
    RETURN doomed;
END
$$;
"""

#: Version -> the SQL that brings the schema from the version before to it.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_1}


def init_schema(conn: psycopg.Connection | str) -> int:
    """Create the schema, or upgrade it to :data:`SCHEMA_VERSION`, in one
    transaction; the version it had before (0: none).  ``conn``: a psycopg
    connection (in autocommit mode) or a DSN.  Safe to run from many clients
    at once (an advisory lock takes them in turn).
    """
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as connection:
            return init_schema(connection)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_SCHEMA_LOCK,))
        found = _schema_version(conn)
        if found > SCHEMA_VERSION:
            raise PostgresStorageError(
                f"the database's durus schema is version {found}; this durus knows up to "
                f"{SCHEMA_VERSION}: upgrade durus")
        if found == 0:
            conn.execute("CREATE TABLE durus_schema_version (version int NOT NULL)")
            conn.execute("INSERT INTO durus_schema_version VALUES (0)")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version])
            conn.execute("UPDATE durus_schema_version SET version = %s", (version,))
            log.info("durus schema upgraded to version %d", version)
    return found


def _schema_version(conn: psycopg.Connection) -> int:
    """The schema version stored in the database; 0 if there is none."""
    # pg_class, not to_regclass: after waiting for the schema lock, the
    # latter can still answer from the catalog as it was before the wait.
    exists = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'durus_schema_version'"
        " AND relnamespace = current_schema()::regnamespace)").fetchone()[0]
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM durus_schema_version").fetchone()
    return row[0] if row else 0


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<an unparsable DSN>"
    params.pop("password", None)
    return " ".join(f"{key}={value}" for key, value in params.items())


def _int_array(numbers: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(map(str, numbers)) + "}"


# -- snapshots -------------------------------------------------------------


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


@dataclass
class PackProgress:
    """Where a pack stands: ``phase`` is "mark", "doom", "sweep" or "done";
    ``removed`` counts the records deleted so far of ``doomed``.
    """

    phase: str = "mark"
    doomed: int = 0
    removed: int = 0


#: How many siblings a cold load fetches along with the record asked for.
DEFAULT_PREFETCH = 100


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
    ClientStorage's ``prefetch`` does.
    """

    batched_bulk_load = True
    watches_reads = True

    def __init__(
        self,
        dsn: str,
        *,
        readonly: bool = False,
        create: bool = True,
        oid_batch: int = 32,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.dsn = dsn
        self.readonly = readonly
        self._closed = False
        self.conn = self._connect(dsn)
        self._cursor = self.conn.cursor()  # reused: a cursor per query costs
        try:
            self._check_schema(create)
        except BaseException:
            self.conn.close()
            raise
        self._snapshot = self._current_snapshot()
        self._own: list[int] = []  # txids of this client's commits its snapshot misses
        self._records: dict[bytes, bytes] | None = None
        self._oid_pool: list[int] = []
        self._given: set[bytes] = set()  # handed out by new_oid, not yet stored
        self._oid_batch = max(1, oid_batch)
        # Records as of the current snapshot, fetched ahead or sent with a
        # conflict (the committed states to merge onto); served by load
        # without a query, once.
        self._known: dict[bytes, bytes] = {}
        self.prefetch = prefetch
        self._seen: set[bytes] = set()  # handed out (the caller may hold them)
        self._groups: dict[bytes, list[bytes]] = {}  # oid -> the refs it came in
        # True from a conflict until the commit succeeds or is given up.
        self._resolving = False
        self._root_stored = False  # once True, oid 0 is never claimed again
        self.pack_progress = PackProgress(phase="done")

    def __repr__(self) -> str:
        return f"<PostgresStorage {describe_dsn(self.dsn)}>"

    # -- connecting ------------------------------------------------------------

    def _connect(self, dsn: str) -> psycopg.Connection:
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as error:
            raise PostgresStorageError(
                f"cannot connect to PostgreSQL ({describe_dsn(dsn)}): {str(error).strip()}") from None
        # Durable when a commit returns, whatever the server's default.
        conn.execute("SET synchronous_commit = on")
        # Rows a conflict's resolution holds come free even if the client
        # never returns (the session ends; the next call reconnects).
        conn.execute("SET idle_in_transaction_session_timeout = '10s'")
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def _check_schema(self, create: bool) -> None:
        version = _schema_version(self.conn)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise PostgresStorageError(
                f"the database's durus schema is version {version}; this durus knows up to "
                f"{SCHEMA_VERSION}: upgrade durus")
        if not create or self.readonly:
            what = "no durus schema" if version == 0 else f"durus schema version {version}"
            raise PostgresStorageError(
                f"{describe_dsn(self.dsn)} has {what}; open it once with create=True "
                f"(or call durus.postgres_storage.init_schema) to make version {SCHEMA_VERSION}")
        init_schema(self.conn)

    def _current_snapshot(self) -> Snapshot:
        return Snapshot.parse(self.conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])

    def _query(self, sql: str, params: tuple | None = None, prepare: bool | None = None) -> psycopg.Cursor:
        """Run one statement that changes nothing, reconnecting once if
        the session was lost (a server restart, an idle timeout).
        """
        self._check_open()
        try:
            return self._cursor.execute(sql, params, prepare=prepare)
        except psycopg.OperationalError as error:
            if not self.conn.broken and not self.conn.closed:
                raise
            log.warning("PostgreSQL session lost (%s); reconnecting", str(error).strip())
        self._reconnect()
        return self._cursor.execute(sql, params, prepare=prepare)

    def _reconnect(self) -> None:
        """A new session; the snapshot stays, since it names transactions,
        not sessions.  Held rows and the root claim went with the old one.
        """
        self._resolving = False
        self._given.discard(ROOT_OID)
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = self._connect(self.dsn)
        self._cursor = self.conn.cursor()

    def _check_open(self) -> None:
        if self._closed:
            raise PostgresStorageError("this PostgresStorage is closed")

    def _check_writable(self, action: str) -> None:
        if self.readonly:
            raise ReadOnlyStorageError(f"cannot {action}: the PostgresStorage was opened with readonly=True")

    # -- reading ---------------------------------------------------------------

    def _fresh(self, oid: bytes, txid: int) -> None:
        """Raise ReadConflictError if the row of ``oid`` was committed by
        another client since this one's last transaction boundary.
        """
        if not self._snapshot.sees(txid) and txid not in self._own:
            raise ReadConflictError([oid])

    def _checked_record(self, oid: bytes, record: bytes) -> bytes:
        if len(record) < 12 or record[:8] != oid or 12 + int.from_bytes(record[8:12], "big") > len(record):
            raise DamagedRecordError(
                "its row does not hold a whole record of this oid", oid, self.describe_record(oid))
        return record

    def load(self, oid: bytes) -> bytes:
        record = self._known.pop(oid, None)
        if record is None:
            wanted = [oid, *self._siblings(oid)]
            found = self._fetch(wanted)
            if oid not in found:
                raise DurusKeyError(oid)
            record, txid = found.pop(oid)
            self._fresh(oid, txid)
            self._keep_fresh(found)
        return self._handed_out(oid, record)

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        """The records of ``oids``, in order, fetched ``BATCH_SIZE`` at a time."""
        oids = list(oids)
        for start in range(0, len(oids), BATCH_SIZE):
            batch = oids[start:start + BATCH_SIZE]
            missing = [oid for oid in batch if oid not in self._known]
            found = self._fetch(missing) if missing else {}
            for oid in batch:
                record = self._known.pop(oid, None)
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
                (_int_array(map(oid_to_int, oids)),), prepare=True).fetchall()
        return {int_to_oid(number): (bytes(record), txid) for number, record, txid in rows}

    def _keep_fresh(self, found: dict[bytes, tuple[bytes, int]]) -> None:
        """Keep records fetched ahead that the snapshot sees (they are its
        versions: a newer one would have been fetched instead).
        """
        if len(self._known) > MAX_PREFETCHED:
            self._known.clear()
        for oid, (record, txid) in found.items():
            if self._snapshot.sees(txid) or txid in self._own:
                self._known[oid] = record

    def _siblings(self, oid: bytes) -> list[bytes]:
        """The oids to fetch along with ``oid``: with ``prefetch``, the
        others that the record which referred to it refers to, not yet
        handed out or fetched.  A first look at one child of a B-tree node
        thereby brings its siblings, in the same round trip.
        """
        group = self._groups.pop(oid, None)
        if not group:
            return []
        seen, known, limit = self._seen, self._known, self.prefetch
        siblings = []
        for other in group:
            if other != oid and other not in seen and other not in known:
                siblings.append(other)
                if len(siblings) >= limit:
                    break
        return siblings

    def _handed_out(self, oid: bytes, record: bytes) -> bytes:
        """Check a record going to the caller, and note its refs as the
        group each of them is prefetched with.
        """
        self._checked_record(oid, record)
        if self.prefetch:
            if len(self._seen) > MAX_PREFETCHED * 10:
                self._seen.clear()
                self._groups.clear()
            self._seen.add(oid)
            refs = record_refs(record)
            if refs:
                group = split_oids(refs)
                for ref in group:
                    self._groups[ref] = group
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
            (self._snapshot.text, self._own_text()), prepare=True).fetchone()
        news = [int_to_oid(number) for number in oids]
        self._new_snapshot(snapshot, news)
        return news

    def _new_snapshot(self, text: str, changed: Iterable[bytes]) -> None:
        """Move to a new transaction boundary; records fetched ahead of what
        changed since the last one are no longer the snapshot's.
        """
        self._snapshot = Snapshot.parse(text)
        self._own = []
        known, seen = self._known, self._seen
        for oid in changed:
            known.pop(oid, None)
            seen.discard(oid)

    def _own_text(self) -> str:
        return "{" + ",".join(map(str, self._own)) + "}"

    # -- oids ------------------------------------------------------------------

    def new_oid(self) -> bytes:
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` oids no one else was or will be given."""
        self._check_writable("hand out new oids")
        oids = []
        if not self._root_stored and ROOT_OID not in self._given and self._claim_root():
            oids.append(ROOT_OID)
        while len(oids) < count:
            if not self._oid_pool:
                self._fill_oid_pool(count - len(oids))
            oids.append(int_to_oid(self._oid_pool.pop()))
        self._given.update(oids)
        return oids

    def _claim_root(self) -> bool:
        """Whether this client gets oid 0 to create the root: only while no
        root is stored, and only one client at a time (an advisory lock held
        for the rest of the session, released by PostgreSQL if it dies).
        """
        stored, claimed = self._query(
            "SELECT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0), "
            "NOT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0) "
            "AND pg_try_advisory_lock(%s, hashtext(%s || current_schema()))",
            (_LOCK_CLASS, _ROOT_LOCK)).fetchone()
        self._root_stored = stored
        return claimed

    def _fill_oid_pool(self, wanted: int) -> None:
        size = max(wanted, self._oid_batch)
        self._oid_batch = min(self._oid_batch * 2, MAX_OID_BATCH)
        rows = self._query(
            "SELECT nextval('durus_oid_seq') FROM generate_series(1, %s)", (size,)).fetchall()
        self._oid_pool = [number for (number,) in reversed(rows)]

    # -- committing ------------------------------------------------------------

    def begin(self) -> None:
        self._check_open()
        self._check_writable("commit")
        self._records = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self._records is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        if len(oid) != 8 or record[:8] != oid:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        self._records[oid] = record

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
        if not records:
            self._deliver(self.sync(), handle_invalidations)
            return
        watched = set(watched)
        arguments = self._commit_arguments(records, watched)
        while True:
            held = self._resolving
            self._check_open()
            try:
                if held and not self._in_transaction():
                    # Resolving a conflict: keep the conflicting rows locked
                    # from this check until the retry, so it cannot starve.
                    self.conn.execute("BEGIN")
                status, txid, snapshot, invalid, bad, bad_records, problem = self.conn.execute(
                    "SELECT status, txid::text::int8, now_snap::text, invalid, bad, bad_records, problem "
                    "FROM durus_commit(%s::pg_snapshot, %s::xid8[], %s::int8[], %s::int8[], %s::int8[], "
                    "%b, %s::int4[], %s::int8[], %s::int8[])",
                    (self._snapshot.text, self._own_text(), *arguments), prepare=True).fetchone()
            except psycopg.errors.DeadlockDetected:
                # Two resolving clients each hold a row the other needs.
                self._release()
                raise WriteConflictError(sorted(set(watched) | records.keys())) from None
            except psycopg.OperationalError as error:
                self._lost_during_commit(error, written=False if held else None)
            if status != "conflict" and held:
                try:
                    self.conn.execute("COMMIT" if status == "ok" else "ROLLBACK")
                except psycopg.OperationalError as error:
                    self._lost_during_commit(error, written=None if status == "ok" else False)
            invalid_oids = [int_to_oid(number) for number in invalid]
            self._new_snapshot(snapshot, invalid_oids)
            if status == "ok":
                for oid in records:
                    self._known.pop(oid, None)
                self._resolving = False
                self._own = [txid]
                self._given.difference_update(records)
                self._deliver(invalid_oids, handle_invalidations)
                return
            if status == "refused":
                self._resolving = False
                self._deliver(invalid_oids, handle_invalidations)
                raise RequestRefusedError(f"commit refused: {problem}")
            if status == "removed":
                self._resolving = False
                self._deliver(invalid_oids, handle_invalidations)
                raise WriteConflictError([int_to_oid(number) for number in bad])
            # A conflict: the handler raises ConflictError (the Connection
            # may resolve and commit again), or finds every read unchanged
            # and returns; then only newer commits matter.
            bad_oids = [int_to_oid(number) for number in bad]
            self._resolving = True
            if handle_invalidations is None:
                self._release()
                raise WriteConflictError(bad_oids)
            self._known.update(zip(bad_oids, map(bytes, bad_records)))
            handle_invalidations(invalid_oids)

    def _lost_during_commit(self, error: psycopg.OperationalError, written: bool | None) -> NoReturn:
        """The session broke during a commit: reconnect, and say whether
        the commit may have been written (``written`` None: unknown).
        """
        self._reconnect()
        if written is False:
            raise WriteConflictError([]) from None
        raise CommitInDoubtError(
            f"the PostgreSQL session broke during a commit ({str(error).strip()}); it may or may "
            "not have been written: abort, then look before doing it again") from None

    def _in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def _release(self) -> None:
        """Give up the row locks a conflict left held (a resolution that
        did not commit again), if any.
        """
        self._resolving = False
        if not self.conn.closed and self._in_transaction():
            with contextlib.suppress(psycopg.OperationalError):  # a lost session: _query reconnects
                self.conn.execute("ROLLBACK")

    @staticmethod
    def _deliver(oids: list[bytes], handle_invalidations: InvalidationHandler | None) -> None:
        if oids and handle_invalidations is not None:
            handle_invalidations(oids)

    def _commit_arguments(self, records: dict[bytes, bytes], watched: Iterable[bytes]) -> tuple:
        """The parameters of ``durus_commit`` after the snapshot ones."""
        numbers, lengths, refs, owners = [], [], [], []
        for position, (oid, record) in enumerate(records.items(), 1):
            numbers.append(oid_to_int(oid))
            lengths.append(len(record))
            try:
                record_oids = split_oids(record_refs(record))
            except ValueError:
                raise RequestRefusedError(
                    f"commit refused: the refs of the record of oid {oid_to_int(oid)} are not whole oids") from None
            refs.extend(map(oid_to_int, record_oids))
            owners.extend([position] * len(record_oids))
        watched_numbers = sorted({oid_to_int(oid) for oid in watched} | set(numbers))
        new = [oid_to_int(oid) for oid in records if oid in self._given]
        # Arrays as literals: psycopg's list adaptation inspects every item.
        return (_int_array(watched_numbers), _int_array(new), _int_array(numbers),
                b"".join(records.values()), _int_array(lengths), _int_array(refs), _int_array(owners))

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
        return self._pack_steps()

    def _pack_steps(self) -> Iterator[None]:
        conn = self.conn
        got = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s || current_schema()))",
                           (_LOCK_CLASS, _PACK_LOCK)).fetchone()[0]
        if not got:
            log.info("pack skipped: another client is packing")
            return
        progress = self.pack_progress = PackProgress()
        try:
            left_over = conn.execute("SELECT count(*) FROM durus_doomed").fetchone()[0]
            if left_over:
                log.info("pack: finishing an interrupted pack's %d removals", left_over)
                progress.doomed = left_over
            elif not self._query("SELECT EXISTS (SELECT 1 FROM durus_object WHERE oid = 0)").fetchone()[0]:
                log.info("pack skipped: no root is stored, so nothing is reachable yet")
                progress.phase = "done"
                return
            else:
                snapshot = self._pack_mark()
                yield None
                progress.phase = "doom"
                while (doomed := self._pack_doom(snapshot)) is None:
                    yield None  # commits under way held the table: later
                progress.doomed = doomed
                log.info("pack: %d unreachable records to remove", progress.doomed)
                yield None
            progress.phase = "sweep"
            while True:
                removed = self._pack_sweep_batch()
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
                         (_LOCK_CLASS, _PACK_LOCK))

    def _pack_mark(self) -> str:
        """Note every record unreachable from the root, in one snapshot
        (which blocks no one); the snapshot, for the doom step.
        """
        conn = self.conn
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

    def _pack_doom(self, snapshot: str) -> int | None:
        """The doom step; None if the table lock it needs was not had
        within ``DOOM_LOCK_TIMEOUT`` (a client resolving a conflict holds
        rows, and commits would queue behind the waiting lock meanwhile).
        """
        conn = self.conn
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{DOOM_LOCK_TIMEOUT_MS}ms'")
                return conn.execute("SELECT durus_pack_doom(%s::pg_snapshot)", (snapshot,)).fetchone()[0]
        except psycopg.errors.LockNotAvailable:
            log.info("pack: commits under way; the doom step tries again")
            return None

    def _pack_sweep_batch(self) -> int:
        """Delete one batch of doomed records; how many."""
        row = self.conn.execute("""
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

    def close(self) -> None:
        self._closed = True
        self._resolving = False
        if not self.conn.closed:
            self.conn.close()

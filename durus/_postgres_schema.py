"""The database schema of :class:`~durus.postgres_storage.PostgresStorage`
and its versioned migrations.

``durus_schema_version`` holds the version; :func:`init_schema` creates the
schema or brings an older one up to ``CURRENT_VERSION`` (``durus.postgres_storage.SCHEMA_VERSION``), one migration
after the other, in one transaction.  A migration, once released, never
changes: a database made by an older durus upgrades through the same steps
as a new one is created by.

Version 1: the tables (records, the oid sequence, what packs removed and are
removing), ``durus_news`` and the first ``durus_commit``.  Version 2: the
commit of ``durus/_postgres_commit.py`` (rows only read locked FOR SHARE,
fewer statements) and a ``durus_news`` that skips the client's own rows.
Version 3: the same functions, reading what others committed through the
index on ``txid`` (version 2's statement scanned the whole table).
"""

from __future__ import annotations

import logging

import psycopg

from durus._postgres_commit import COMMIT_FUNCTIONS, COMMIT_FUNCTIONS_3
from durus._postgres_session import PostgresStorageError

log = logging.getLogger("durus.postgres_storage")

CURRENT_VERSION = 3

# The advisory lock that takes schema changes in turn (second half: "sche",
# mixed with the schema so that two durus schemas in one database differ).
_SCHEMA_LOCK = 0x73636865

# Version 1, as released (never edit: databases were made with it).
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


# Version 2 replaces version 1's functions (the first commit function is
# dropped: its arguments differ).
_SCHEMA_2 = "DROP FUNCTION durus_commit(pg_snapshot, xid8[], int8[], int8[], int8[], bytea, int4[], int8[], int8[]);\n" \
    + COMMIT_FUNCTIONS

#: Version -> the SQL that brings the schema from the version before to it.
MIGRATIONS: dict[int, str] = {1: _SCHEMA_1, 2: _SCHEMA_2, 3: COMMIT_FUNCTIONS_3}


def init_schema(conn: psycopg.Connection | str) -> int:
    """Create the schema, or upgrade it to ``CURRENT_VERSION`` (``durus.postgres_storage.SCHEMA_VERSION``), in one
    transaction; the version it had before (0: none).  ``conn``: a psycopg
    connection (in autocommit mode) or a DSN.  Safe to run from many clients
    at once (an advisory lock takes them in turn).
    """
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as connection:
            return init_schema(connection)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_SCHEMA_LOCK,))
        found = schema_version(conn)
        check_not_newer(found)
        if found == 0:
            conn.execute("CREATE TABLE durus_schema_version (version int NOT NULL)")
            conn.execute("INSERT INTO durus_schema_version VALUES (0)")
        for version in range(found + 1, CURRENT_VERSION + 1):
            conn.execute(MIGRATIONS[version])
            conn.execute("UPDATE durus_schema_version SET version = %s", (version,))
            log.info("durus schema upgraded to version %d", version)
    return found


def check_not_newer(version: int) -> None:
    """Refuse a schema made by a newer durus than this one."""
    if version > CURRENT_VERSION:
        raise PostgresStorageError(
            f"the database's durus schema is version {version}; this durus knows up to "
            f"{CURRENT_VERSION}: upgrade durus")


def schema_version(conn: psycopg.Connection) -> int:
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

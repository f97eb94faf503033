"""A commit to PostgreSQL in one call: the server-side function
``durus_commit`` (schema version 2) and what the client sends it.

The rule it keeps (SPEC section 2): a transaction commits only if no other
transaction committed, since its snapshot, a change to any object it read or
wrote.  ``durus_commit`` locks the rows of those objects, in oid order,
checks that the client's snapshot sees the transaction that last wrote each,
and writes, all before the locks are released at the end of the
PostgreSQL transaction; the commit is thus as if it ran at that instant.
Rows to be written are locked ``FOR UPDATE``; rows only read ``FOR SHARE``,
which conflicts with a writer but not with other readers, so the many
commits that read a hot object (a B-tree's root) without writing it do not
queue behind each other's WAL flush.  One oid order over both modes keeps
commits free of deadlocks (no commit holds a row while waiting for a lower
one).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from durus._postgres_session import int_array
from durus.record import oid_to_int, record_refs
from durus.shared_storage import RequestRefusedError

# The snapshot the statement reads and what others committed (or a pack
# removed) that ``snap`` does not see: one statement, so the two agree.  The
# client's own commits (``own``) are skipped by range, not read and dropped
# (a build's last commit is a thousand rows).  Used by both functions below.
_NEWS = r"""
    WITH skip AS (
        SELECT DISTINCT s::text::int8 AS t FROM unnest(own) AS s WHERE s >= pg_snapshot_xmin(snap)
    ), ranges AS (
        SELECT coalesce(lag(t + 1) OVER (ORDER BY t), pg_snapshot_xmin(snap)::text::int8) AS lo, t AS hi FROM skip
        UNION ALL
        SELECT coalesce(max(t) + 1, pg_snapshot_xmin(snap)::text::int8), 9223372036854775807 FROM skip
    )
    SELECT pg_current_snapshot(), coalesce(array_agg(news.oid), '{}') INTO now_snap, {into} FROM (
        SELECT o.oid FROM ranges AS r, LATERAL (
            SELECT d.oid, d.txid FROM durus_object AS d
             WHERE d.txid >= r.lo::text::xid8 AND d.txid < r.hi::text::xid8) AS o
         WHERE NOT pg_visible_in_snapshot(o.txid, snap)
        UNION
        SELECT unnest(d.oids) FROM durus_removed AS d
         WHERE d.txid >= pg_snapshot_xmin(snap) AND NOT pg_visible_in_snapshot(d.txid, snap)
    ) AS news(oid);"""

# Lock one run of rows in one mode, and find which of them others committed.
# After a wait, the row read is the one the other commit left.
_LOCK_RUN = r"""
            SELECT coalesce(array_agg(w.oid), '{}'), coalesce(array_agg(w.oid) FILTER (
                       WHERE NOT pg_visible_in_snapshot(w.txid, snap) AND w.txid <> ALL (own)), '{}')
              INTO run_found, run_bad
              FROM (SELECT o.oid, o.txid FROM durus_object AS o
                     WHERE o.oid = ANY (lock_oids[first:lock_runs[i]]) ORDER BY o.oid FOR {mode}) AS w;"""

# Functions of schema version 2 (the migration in durus._postgres_schema runs
# this text; a later change is a new migration, not an edit here).  PL/pgSQL,
# not SQL: its plans are kept (an SQL function's are made at every call,
# which cost more than running them).
COMMIT_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION durus_news(snap pg_snapshot, own xid8[], OUT now_snap pg_snapshot, OUT oids int8[])
LANGUAGE plpgsql STABLE AS $$
BEGIN
""" + _NEWS.replace("{into}", "oids") + r"""
END
$$;

-- A whole commit in one call.
--   lock_oids: the stored oids the transaction read or wrote, ascending,
--   in runs: lock_runs, the position of each run's last oid, lock_modes, a
--   letter for each run: 'U' (written: FOR UPDATE) or 'S' (only read: FOR
--   SHARE); one oid order over both modes, so no deadlocks between commits;
--   new_oids: oids handed out to this client, first written now;
--   oids, blob, lengths: the records, concatenated, with their lengths;
--   refs, ref_owners: each record's refs, with its position in oids.
-- Status 'ok' (written; txid is the writer), 'conflict' (nothing written;
-- bad: the oids others committed, bad_records their records now),
-- 'removed' (nothing written; bad: oids a pack removed or is removing that
-- the commit uses or refers to) or 'refused' (nothing written; problem says
-- why).  Invalidations and the new snapshot come back in every case.  A
-- record neither stored nor new raises durus_commit's own error (a client
-- that breaks the rules; SQLSTATE DU001), and a new oid stored meanwhile a
-- unique violation: nothing is written then either.
CREATE FUNCTION durus_commit(
    snap pg_snapshot, own xid8[], lock_oids int8[], lock_runs int4[], lock_modes text, new_oids int8[],
    oids int8[], blob bytea, lengths int4[], refs int8[], ref_owners int8[],
    OUT status text, OUT txid xid8, OUT now_snap pg_snapshot, OUT invalid int8[],
    OUT bad int8[], OUT bad_records bytea[], OUT problem text)
LANGUAGE plpgsql AS $$
DECLARE
    first int4 := 1;
    found_oids int8[] := '{}';
    run_found int8[];
    run_bad int8[];
    missing int8[] := '{}';
    unknown int8;
    written int8;
BEGIN
    bad := '{}';
    IF cardinality(lock_oids) = 0 THEN
        -- Else the row locks take it: holds a pack's doom step (EXCLUSIVE) back.
        LOCK TABLE durus_object IN ROW SHARE MODE;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(lock_runs), 0) LOOP
        IF substr(lock_modes, i, 1) = 'U' THEN""" + _LOCK_RUN.replace("{mode}", "UPDATE") + r"""
        ELSE""" + _LOCK_RUN.replace("{mode}", "SHARE") + r"""
        END IF;
        found_oids := found_oids || run_found;
        bad := bad || run_bad;
        first := lock_runs[i] + 1;
    END LOOP;
""" + _NEWS.replace("{into}", "invalid") + r"""
    IF cardinality(bad) > 0 THEN
        -- Their records too, as of now_snap: the client merges onto them
        -- and tries again without another round trip to load them.
        SELECT array_agg(o.oid ORDER BY o.oid), array_agg(o.record ORDER BY o.oid) INTO bad, bad_records
          FROM durus_object AS o WHERE o.oid = ANY (bad);
        status := 'conflict';
        RETURN;
    END IF;
    -- Oids used that have no row; refs to neither a row nor a record of
    -- this commit; what a pack is deleting, which nothing may write or
    -- refer to.  Each looked for only where it may be.
    IF cardinality(found_oids) < cardinality(lock_oids) THEN
        missing := ARRAY(SELECT unnest(lock_oids) EXCEPT SELECT unnest(found_oids));
    END IF;
    IF cardinality(refs) > 0 THEN
        missing := missing || ARRAY(
            SELECT r.oid FROM (SELECT unnest(refs) EXCEPT SELECT unnest(oids) EXCEPT SELECT unnest(found_oids)) AS r(oid)
             WHERE NOT EXISTS (SELECT 1 FROM durus_object AS o WHERE o.oid = r.oid));
    END IF;
    IF EXISTS (SELECT 1 FROM durus_doomed) THEN
        missing := missing || ARRAY(
            (SELECT unnest(oids) UNION SELECT unnest(refs)) INTERSECT SELECT d.oid FROM durus_doomed AS d);
    END IF;
    -- Of those, or of the new oids, one never handed out means a confused
    -- client: refused.  Else a pack removed them: the client is stale.
    IF cardinality(missing) > 0 OR cardinality(new_oids) > 0 THEN
        SELECT max(u) INTO unknown FROM unnest(missing || new_oids) AS u
         WHERE u > (SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END FROM durus_oid_seq AS s);
        IF unknown IS NOT NULL THEN
            status := 'refused';
            problem := format('a record or reference for oid %s, which was never handed out', unknown);
            RETURN;
        ELSIF cardinality(missing) > 0 THEN
            status := 'removed';
            bad := ARRAY(SELECT DISTINCT unnest(missing) ORDER BY 1);
            RETURN;
        END IF;
    END IF;
    txid := pg_current_xact_id();
    -- Set-based (no subscripting of big arrays, which copies them): the
    -- rows locked above updated, the new oids inserted.
    WITH r AS (
        SELECT p.oid, substr(blob, p.start::int4, p.length) AS record, coalesce(f.refs, '{}') AS refs
          FROM (SELECT u.oid, u.length, u.n, sum(u.length) OVER (ORDER BY u.n) - u.length + 1 AS start
                  FROM unnest(oids, lengths) WITH ORDINALITY AS u(oid, length, n)) AS p
          LEFT JOIN (SELECT u.owner, array_agg(u.ref ORDER BY u.k) AS refs
                       FROM unnest(ref_owners, refs) WITH ORDINALITY AS u(owner, ref, k)
                      GROUP BY u.owner) AS f ON f.owner = p.n
    ), changed AS (
        UPDATE durus_object AS o SET txid = durus_commit.txid, record = r.record, refs = r.refs
          FROM r JOIN unnest(found_oids) AS f(oid) ON f.oid = r.oid
         WHERE o.oid = r.oid
        RETURNING o.oid
    ), added AS (
        INSERT INTO durus_object (oid, txid, record, refs)
        SELECT r.oid, durus_commit.txid, r.record, r.refs
          FROM r JOIN unnest(new_oids) AS n(oid) ON n.oid = r.oid
        RETURNING oid
    )
    SELECT (SELECT count(*) FROM changed) + (SELECT count(*) FROM added) INTO written;
    IF written <> cardinality(oids) THEN
        RAISE EXCEPTION 'a record for an oid neither stored nor new' USING ERRCODE = 'DU001';
    END IF;
    status := 'ok';
END
$$;
"""

# Schema version 3: the same two functions with the news read by index.
# Version 2's statement above joins the txid ranges laterally, and PostgreSQL
# plans that as a scan of the whole table with the ranges as a join filter:
# every sync and commit read every row (about 4 ms of an edit's 8 ms of
# PostgreSQL time in the example wiki, and growing with the table).  Here
# each range is a statement of its own on the txid index.  The snapshot is
# taken first, then the rows read: everything it sees is reported, and a
# commit made in between is reported too (and again next time: harmless).
_NEWS_3 = r"""
    now_snap := pg_current_snapshot();
    news_lo := pg_snapshot_xmin(snap)::text::int8;
    {into} := '{}';
    FOR news_own IN SELECT DISTINCT s::text::int8 FROM unnest(own) AS s
                     WHERE s >= pg_snapshot_xmin(snap) ORDER BY 1 LOOP
        {into} := {into} || ARRAY(
            SELECT d.oid FROM durus_object AS d
             WHERE d.txid >= news_lo::text::xid8 AND d.txid < news_own::text::xid8
               AND NOT pg_visible_in_snapshot(d.txid, snap));
        news_lo := news_own + 1;
    END LOOP;
    {into} := ARRAY(
        SELECT DISTINCT n.oid FROM (
            SELECT unnest({into})
            UNION ALL
            SELECT d.oid FROM durus_object AS d
             WHERE d.txid >= news_lo::text::xid8 AND NOT pg_visible_in_snapshot(d.txid, snap)
            UNION ALL
            SELECT unnest(d.oids) FROM durus_removed AS d
             WHERE d.txid >= pg_snapshot_xmin(snap) AND NOT pg_visible_in_snapshot(d.txid, snap)
        ) AS n(oid));"""
_NEWS_VARIABLES = "    news_lo int8;\n    news_own int8;\n"


def _functions_3(functions_2: str) -> str:
    """Version 3's functions: version 2's text with the news read by index."""
    old_news = {into: _NEWS.replace("{into}", into) for into in ("oids", "invalid")}
    text = functions_2.replace("CREATE FUNCTION durus_commit(", "CREATE OR REPLACE FUNCTION durus_commit(")
    text = text.replace("LANGUAGE plpgsql STABLE AS $$\nBEGIN\n",
                        "LANGUAGE plpgsql STABLE AS $$\nDECLARE\n" + _NEWS_VARIABLES + "BEGIN\n")
    text = text.replace("    written int8;\nBEGIN\n", "    written int8;\n" + _NEWS_VARIABLES + "BEGIN\n")
    for into, old in old_news.items():
        if text.count(old) != 1:
            raise AssertionError(f"version 2's news into {into} not found once")
        text = text.replace(old, _NEWS_3.replace("{into}", into))
    if "news_lo int8" not in text.split("CREATE OR REPLACE FUNCTION durus_commit(")[1]:
        raise AssertionError("durus_commit's variables not found")
    return text


#: The functions of schema version 3 (the migration runs this text).
COMMIT_FUNCTIONS_3 = _functions_3(COMMIT_FUNCTIONS)

#: The SQLSTATE durus_commit raises for a commit no client of this package
#: sends (a record neither stored nor new).
RULES_BROKEN = "DU001"

#: The call, with the snapshot parameters first and the outcome's columns.
COMMIT_CALL = (
    "SELECT status, txid::text::int8, now_snap::text, invalid, bad, bad_records, problem "
    "FROM durus_commit(%s::pg_snapshot, %s::xid8[], %s::int8[], %s::int4[], %s, %s::int8[], %s::int8[], "
    "%b, %s::int4[], %s::int8[], %s::int8[])")


@dataclass(frozen=True)
class CommitOutcome:
    """What ``durus_commit`` answered: ``status`` (see its comment),
    ``txid`` of the writer, the new snapshot ``snapshot`` and the oids it
    reveals ``invalid``; with a conflict or removal, ``bad`` oids (and for a
    conflict their records now, ``bad_records``); ``problem``: why refused.
    """

    status: str
    txid: int | None
    snapshot: str
    invalid: list[int]
    bad: list[int] | None
    bad_records: list[bytes] | None
    problem: str | None


def commit_arguments(records: dict[bytes, bytes], watched: Iterable[bytes], new: set[bytes],
                     streamed: Collection[bytes] = (), streamed_refs: Iterable[int] = ()) -> tuple:
    """The parameters of ``durus_commit`` after the snapshot ones: the
    records, the oids ``watched`` (read) besides them, and ``new``, the oids
    handed out to this client (not yet stored).  The records of
    ``streamed`` oids are already written (in the transaction the call
    runs in): only the highest of their oids goes as new, for the check
    that they were handed out; and of their refs, ``streamed_refs``, those
    to objects outside the commit, for the checks that those exist and are
    not being removed (with owner 0: no record sent).  Refused if a
    record's refs are not whole oids.
    """
    sent = {oid: record for oid, record in records.items() if oid not in streamed} if streamed else records
    keys = b"".join(sent)
    numbers = struct.unpack(f">{len(sent)}Q", keys)
    lengths, owners, ref_parts = [], [], []
    for position, (oid, record) in enumerate(sent.items(), 1):
        lengths.append(len(record))
        refs = _whole_refs(oid, record)
        if refs:
            ref_parts.append(refs)
            owners.append(f"{position},".encode() * (len(refs) // 8))
    all_refs = b"".join(ref_parts)
    ref_numbers = struct.unpack(f">{len(all_refs) // 8}Q", all_refs)
    if streamed:
        outside = set(streamed_refs).difference(struct.unpack(f">{len(records)}Q", b"".join(records)))
        ref_numbers += tuple(outside)
        owners.append(b"0," * len(outside))
    written = set(numbers)
    new_keys = [oid for oid in records if oid in new]
    new_numbers = set(struct.unpack(f">{len(new_keys)}Q", b"".join(new_keys)))
    checked_new = new_numbers
    if streamed:
        # Of the streamed oids only the highest matters to the check that
        # they were handed out (the sequence hands them out in order).
        checked_new = {number for number in new_numbers if number in written}
        checked_new.add(max(struct.unpack(f">{len(streamed)}Q", b"".join(streamed))))
    watched = list(watched)
    used = sorted(written.union(struct.unpack(f">{len(watched)}Q", b"".join(watched))) - new_numbers)
    run_ends, modes = lock_runs(used, written)
    owner_text = "{" + b"".join(owners).decode()[:-1] + "}" if owners else "{}"
    return (int_array(used), int_array(run_ends), modes, int_array(sorted(checked_new)), int_array(numbers),
            b"".join(sent.values()), int_array(lengths), int_array(ref_numbers), owner_text)


def _whole_refs(oid: bytes, record: bytes) -> bytes:
    """The refs of ``record``; refused if they are not whole oids."""
    refs = record_refs(record)
    if len(refs) % 8:
        raise RequestRefusedError(
            f"commit refused: the refs of the record of oid {oid_to_int(oid)} are not whole oids")
    return refs


def lock_runs(used: list[int], written: set[int]) -> tuple[list[int], str]:
    """The runs of ``used`` (ascending) to lock in one mode: the position
    (from 1) of each run's last oid, and a letter for each run, U if its
    oids are written, S if only read.
    """
    ends, modes = [], []
    for position, number in enumerate(used, 1):
        mode = "U" if number in written else "S"
        if modes and modes[-1] == mode:
            ends[-1] = position
        else:
            ends.append(position)
            modes.append(mode)
    return ends, "".join(modes)


def call_commit(conn, snapshot: str, own: str, arguments: tuple) -> CommitOutcome:
    """Run ``durus_commit`` on the psycopg connection ``conn``; the outcome.
    psycopg errors go to the caller (it alone knows what the session held).
    """
    row = conn.execute(COMMIT_CALL, (snapshot, own, *arguments), prepare=True).fetchone()
    status, txid, now_snap, invalid, bad, bad_records, problem = row
    return CommitOutcome(status, txid, now_snap, invalid, bad,
                         [bytes(record) for record in bad_records] if bad_records else None, problem)

"""Check a database kept in SQL: an SQLite file or a PostgreSQL database.

Both keep one row per object, so there are no transactions or byte offsets
to check, only records: :func:`check_sqlite` and :func:`check_postgres`
read every row, read-only, and return a :class:`~durus.check.CheckReport`
with the problems :mod:`durus.check` reports for a file (its
:func:`~durus.check.record_problem` rules, shared), each naming the oid:

- *damaged*: a row that does not hold a whole record of its oid (a data or
  refs value of the wrong type or length); a record whose class or state
  pickle cannot be read, whose refs are not sorted or differ from the
  persistent ids in its state; in PostgreSQL, a ``refs`` column that
  differs from the record's refs (pack marks by that column, so such a row
  could lose what it refers to), and an oid sequence behind the highest
  stored oid (new objects would overwrite old ones);
- *dangling*: a record referring to an oid that has no row.

Objects the root does not reach are counted, as for a file.  The whole
check reads in one read-only transaction, so a database in use is checked
as of one commit: writers go on, and a commit made meanwhile is not seen,
rather than seen half.  Memory: about 150 bytes per object (its refs).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

from durus.check_report import (DAMAGED, DANGLING, PROGRESS_INTERVAL, CheckReport, Problem, UncheckableFileError,
                                count_reachable, dangling_references, record_problem)
from durus.record import int_to_oid, oid_to_int

__all__ = ["check_sqlite", "check_postgres"]

#: Rows fetched from the database at a time.
FETCH_ROWS = 2000

Progress = Callable[[int, int], None]


class _RowChecker:
    """The checks of one run over ``(oid, data, refs)`` rows, kept apart from
    how each database is read.  ``current`` is the set of oids with a row,
    ``refs`` oid -> refs for the rows that have any.
    """

    def __init__(self, report: CheckReport, progress: Progress | None) -> None:
        self.report = report
        self.progress = progress
        self.next_progress = time.monotonic() + PROGRESS_INTERVAL
        self.current: set[bytes] = set()
        self.refs: dict[bytes, bytes] = {}
        self.stand_ins: dict[tuple[str, str], type] = {}

    def damaged(self, oid: bytes, message: str) -> None:
        self.report.problems.append(Problem(DAMAGED, None, oid, message))

    def row(self, oid: bytes, data: object, refs: object) -> None:
        """Check one row: ``data`` and ``refs`` as the database gave them."""
        self.report.records += 1
        self.current.add(oid)
        if not isinstance(data, bytes) or not isinstance(refs, bytes):
            self.damaged(oid, f"its row holds {type(data).__name__} data and {type(refs).__name__} refs, "
                              "not bytes")
        elif len(refs) % 8:
            self.damaged(oid, f"its refs are {len(refs)} bytes long, not whole 8-byte oids")
        else:
            if refs:
                self.refs[oid] = refs
            message = record_problem(oid, data, refs, self.stand_ins)
            if message is not None:
                self.damaged(oid, message)
        if self.progress is not None and self.report.records % 512 == 0:
            now = time.monotonic()
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_INTERVAL
                self.progress(self.report.records, self.report.size)

    def finish(self) -> CheckReport:
        """The reference checks, once every row is read."""
        report = self.report
        for oid, ref in dangling_references(self.current, self.refs):
            report.problems.append(Problem(DANGLING, None, oid, f"refers to oid {oid_to_int(ref)}, which has no row"))
        report.objects = len(self.current)
        report.references = sum(len(listed) for listed in self.refs.values()) // 8
        report.unreachable = len(self.current) - count_reachable(self.current, self.refs)
        return report


# -- SQLite ---------------------------------------------------------------------------


def check_sqlite(path: str | os.PathLike, progress: Progress | None = None) -> CheckReport:
    """Check the SQLite database at ``path`` (Durus 4.3's ``objects`` table,
    as :class:`~durus.sqlite_storage.SqliteStorage` keeps it), read-only.
    ``progress(rows_checked, rows)`` about once a second.  Raises
    UncheckableFileError if it is missing, not SQLite, or has no such table.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UncheckableFileError(f"cannot open {path}: no such file")
    try:
        db = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise UncheckableFileError(f"cannot open {path}: {error}") from None
    with closing(db):
        try:
            db.execute("BEGIN")  # one read transaction: the database as of one commit
            (rows,) = db.execute("SELECT count(*) FROM objects").fetchone()
            cursor = db.execute("SELECT id, data, coalesce(refs, x'') FROM objects ORDER BY id")
            checker = _RowChecker(CheckReport(path, rows), progress)
            _check_rows(checker, _batches(cursor))
        except sqlite3.Error as error:
            raise UncheckableFileError(f"cannot check {path}: {error} (is it a Durus SQLite database?)") from None
    return checker.finish()


def _uri_path(path: str) -> str:
    """``path`` made safe inside a ``file:`` URI (one leading slash: two
    would start an authority).
    """
    absolute = "/" + os.path.abspath(path).lstrip("/")
    return absolute.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _batches(cursor: sqlite3.Cursor) -> Iterator[list[tuple]]:
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield rows


def _check_rows(checker: _RowChecker, batches: Iterable[list[tuple]]) -> None:
    for rows in batches:
        for number, data, refs in rows:
            checker.row(int_to_oid(number), data, refs)


# -- PostgreSQL -------------------------------------------------------------------------


def check_postgres(dsn: str, progress: Progress | None = None) -> CheckReport:
    """Check the PostgreSQL database ``dsn`` names, as
    :class:`~durus.postgres_storage.PostgresStorage` keeps it, in one
    read-only repeatable-read transaction; see the module docstring.
    Raises UncheckableFileError if it cannot connect or holds no Durus data.
    """
    import psycopg

    from durus.postgres_storage import describe_dsn

    where = describe_dsn(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=False)
    except psycopg.Error as error:
        raise UncheckableFileError(f"cannot connect to {where}: {error}".strip()) from None
    with conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            return _check_postgres_rows(conn, where, progress)
        except psycopg.errors.UndefinedTable:
            raise UncheckableFileError(f"{where} holds no Durus data (no durus_object table)") from None
        except psycopg.Error as error:
            raise UncheckableFileError(f"cannot check {where}: {error}".strip()) from None
        finally:
            conn.rollback()


def _check_postgres_rows(conn, where: str, progress: Progress | None) -> CheckReport:
    (rows,) = conn.execute("SELECT count(*) FROM durus_object").fetchone()
    checker = _RowChecker(CheckReport(where, rows), progress)
    with conn.cursor(name="durus_check") as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute("SELECT oid, record, refs FROM durus_object ORDER BY oid")
        for number, record, column in cursor:
            _check_postgres_row(checker, int_to_oid(number), bytes(record), column)
    report = checker.finish()
    (handed_out, highest) = conn.execute(
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM durus_oid_seq), "
        "(SELECT max(oid) FROM durus_object)").fetchone()
    if highest is not None and highest > handed_out:
        report.problems.append(Problem(
            DAMAGED, None, int_to_oid(highest),
            f"the oid sequence durus_oid_seq has handed out oids up to {handed_out} only, below this row's: "
            "new objects would be given oids that rows already hold"))
    return report


def _check_postgres_row(checker: _RowChecker, oid: bytes, record: bytes, column: list[int]) -> None:
    """A row holds the whole SHELF-1 record, oid and data length first, and
    its refs again as an int8 array for pack and checks in SQL.
    """
    if len(record) < 12 or record[:8] != oid or 12 + int.from_bytes(record[8:12], "big") > len(record):
        checker.report.records += 1
        checker.current.add(oid)
        checker.damaged(oid, "its row does not hold a whole record of this oid")
        return
    end = 12 + int.from_bytes(record[8:12], "big")
    refs = record[end:]
    checker.row(oid, record[12:end], refs)
    listed = [oid_to_int(refs[start:start + 8]) for start in range(0, len(refs) - len(refs) % 8, 8)]
    if sorted(column) != sorted(listed):
        checker.damaged(oid, f"its refs column {_short(column)} differs from its record's refs {_short(listed)}: "
                             "a pack would go by the column")


def _short(numbers: list[int]) -> str:
    shown = ", ".join(str(number) for number in numbers[:5])
    return "{" + shown + (f", ... ({len(numbers)} in all)" if len(numbers) > 5 else "") + "}"

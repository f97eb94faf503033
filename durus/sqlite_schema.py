"""The SQLite file of a SqliteStorage: its tables, opening it, transactions.

Durus 4.3's table is ``objects(id integer primary key, data blob, refs
blob)``; ``durus_log`` and ``durus_oids`` are this package's, which 4.3
ignores (see :mod:`durus.sqlite_storage`).  An oid is stored as the integer
``id``, which SQLite limits to 63 bits.
"""

from __future__ import annotations

import os
import sqlite3

from durus.error import DurusError
from durus.record import oid_to_int

# How long a write waits for another process's write to finish, in seconds.
BUSY_TIMEOUT = 60.0
# The largest oid an SQLite integer holds.
MAX_OID = (1 << 63) - 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects (id integer primary key, data blob, refs blob)",
    "CREATE TABLE IF NOT EXISTS durus_log (serial integer primary key, oids blob not null)",
    "CREATE TABLE IF NOT EXISTS durus_oids (next integer not null, root_claimer integer)",
)


def open_database(filename: str, readonly: bool) -> sqlite3.Connection:
    """The SQLite connection to ``filename``, checked to be a Durus database;
    opened for writing, in WAL mode with this package's tables added.
    """
    if readonly and not os.path.exists(filename):
        raise FileNotFoundError(2, f"no file to open readonly: {filename}", filename)
    try:
        if readonly:
            uri = "file:" + os.path.abspath(filename) + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(filename, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise DurusError(f"cannot open {filename} as a Durus SQLite database: {error}") from None
    try:
        if readonly:
            check_objects_table(db, filename)
        else:
            _prepare(db, filename)
    except sqlite3.Error as error:
        db.close()
        raise DurusError(f"cannot open {filename} as a Durus SQLite database: {error}") from None
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, filename: str) -> None:
    """WAL mode, durable commits, and the tables this package adds."""
    db.execute("PRAGMA journal_mode=WAL")
    # A commit returns once its WAL frames are on disk.
    db.execute("PRAGMA synchronous=FULL")
    with SqliteTransaction(db, "BEGIN IMMEDIATE"):
        if table_names(db):
            check_objects_table(db, filename)  # before adding anything to a database of another program
        for statement in SCHEMA:
            db.execute(statement)
        if db.execute("SELECT count(*) FROM durus_oids").fetchone()[0] == 0:
            db.execute("INSERT INTO durus_oids (next) VALUES (0)")


def table_names(db: sqlite3.Connection) -> set[str]:
    """The names of the tables in the database."""
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def check_objects_table(db: sqlite3.Connection, filename: str) -> None:
    """Refuse a database without the objects table: another program's."""
    if "objects" not in table_names(db):
        raise DurusError(
            f"{filename} is an SQLite database without an objects table, not a Durus one "
            "(nothing was changed)")


def has_record(db: sqlite3.Connection, id_: int) -> bool:
    """Whether the objects table holds a row for ``id_``."""
    return db.execute("SELECT 1 FROM objects WHERE id = ?", (id_,)).fetchone() is not None


def oid_to_id(oid: bytes) -> int:
    """The ``id`` that stores ``oid``; ValueError beyond SQLite's integers."""
    id_ = oid_to_int(oid)
    if id_ > MAX_OID:
        raise ValueError(f"oid {id_} is beyond the largest SQLite integer, so an SqliteStorage cannot hold it")
    return id_


class SqliteTransaction:
    """``with``: an SQLite transaction, committed unless the block raises."""

    def __init__(self, db: sqlite3.Connection, begin: str) -> None:
        self.db = db
        self.begin = begin

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")

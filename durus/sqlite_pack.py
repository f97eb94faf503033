"""Packing a shared SQLite file while other processes go on committing.

The objects reachable from the root are marked a batch per step, each
batch in a read transaction of its own; then, in one write transaction,
everything the commits logged meanwhile wrote is marked again with what it
reaches (only a commit can make an object reachable), and the rest is
deleted, logged as one more commit so that other processes drop it too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator

from durus.error import DurusError
from durus.record import int_to_oid, oid_to_int
from durus.sqlite_log import SqliteCommitLog, split_oid_blob
from durus.sqlite_schema import SqliteTransaction

# Records asked for in one query (SQLite limits the number of parameters).
QUERY_BATCH = 500
# Objects a pack step visits before it yields.
PACK_STEP = 500


class SqlitePack:
    """One incremental pack of a file, as :meth:`gen_steps` goes."""

    def __init__(
        self,
        db: sqlite3.Connection,
        log: SqliteCommitLog,
        filename: str,
        read_transaction: Callable[[], SqliteTransaction],
        log_keep: int,
    ) -> None:
        self.db = db
        self.log = log
        self.filename = filename
        #: Opens a read transaction of the storage (checking it is usable).
        self.read_transaction = read_transaction
        #: How many commits the log keeps: a pack outlasting them is abandoned.
        self.log_keep = log_keep

    def gen_steps(self) -> Iterator[str]:
        """Mark, then sweep; a word for each step."""
        with self.read_transaction():
            start_serial = self.log.last_serial()
        marker = Marker(self)
        yield "started"
        while marker.mark_some(PACK_STEP):
            yield "marking"
        with SqliteTransaction(self.db, "BEGIN IMMEDIATE"):
            self._mark_logged_since(start_serial, marker)
            dead = self._delete_unmarked(marker)
        yield f"finished: {len(marker.seen)} objects kept, {len(dead)} removed"

    def _mark_logged_since(self, start_serial: int, marker: Marker) -> None:
        """With the write lock: whatever was committed since the marking
        began is alive, with everything it reaches now (objects marked
        already may refer to new ones).
        """
        expected = start_serial + 1
        for serial, oids in self.db.execute(
                "SELECT serial, oids FROM durus_log WHERE serial > ? ORDER BY serial", (start_serial,)):
            if serial != expected:
                raise DurusError(
                    f"pack of {self.filename} abandoned, nothing removed: more than {self.log_keep} "
                    "commits came during it, and the log no longer holds them all; pack again")
            expected += 1
            marker.revisit(split_oid_blob(oids))
        while marker.mark_some(None):
            pass

    def _delete_unmarked(self, marker: Marker) -> list[int]:
        """With the write lock: delete and log the rows not marked; their ids."""
        db = self.db
        dead = [id_ for (id_,) in db.execute("SELECT id FROM objects") if not marker.has(id_)]
        self.log.read()
        db.executemany("DELETE FROM objects WHERE id = ?", ((id_,) for id_ in dead))
        if dead:
            self.log.append(b"".join(int_to_oid(id_) for id_ in dead), self.log_keep)
        return dead

    def refs(self, ids: list[int]) -> list[bytes]:
        """The refs columns of the rows ``ids`` (inside a transaction)."""
        marks = ",".join("?" * len(ids))
        return [refs or b"" for (refs,) in self.db.execute(f"SELECT refs FROM objects WHERE id IN ({marks})", ids)]


class Marker:
    """The mark phase of a pack: the ids reachable from the root."""

    def __init__(self, pack: SqlitePack) -> None:
        self.pack = pack
        self.seen: set[int] = {0}
        self.todo: list[int] = [0]

    def add(self, oids: Iterable[bytes]) -> None:
        for oid in oids:
            id_ = oid_to_int(oid)
            if id_ not in self.seen:
                self.seen.add(id_)
                self.todo.append(id_)

    def revisit(self, oids: Iterable[bytes]) -> None:
        """Queue ``oids`` to have their references read again, marked or not."""
        for oid in oids:
            id_ = oid_to_int(oid)
            self.seen.add(id_)
            self.todo.append(id_)

    def has(self, id_: int) -> bool:
        return id_ in self.seen

    def mark_some(self, limit: int | None) -> bool:
        """Visit up to ``limit`` (None: a query's worth, inside the caller's
        transaction) of the queued objects; whether any remain.
        """
        count = min(len(self.todo), limit or QUERY_BATCH, QUERY_BATCH)
        batch = self.todo[-count:] if count else []
        del self.todo[len(self.todo) - count:]
        if batch:
            pack = self.pack
            if limit is None:
                refs_list = pack.refs(batch)
            else:
                with pack.read_transaction():
                    refs_list = pack.refs(batch)
            for refs in refs_list:
                self.add(split_oid_blob(refs))
        return bool(self.todo)

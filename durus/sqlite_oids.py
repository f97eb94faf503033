"""The oid counter of a shared SQLite file: ``durus_oids(next, root_claimer)``.

Oids are taken in growing blocks inside a write transaction, so no two
processes get the same one, and the counter never goes back (Durus 4.3
hands out its highest stored oid again after a reopen); it also skips past
any oid Durus 4.3 may have stored meanwhile.  The one exception is the
root's oid 0, which a Connection asks for to create the root: while no root
is stored and the process it went to (``root_claimer``, a pid: the
processes share one machine) has died, it is handed out again, so a process
killed before its first commit cannot leave the database without a root
for good.
"""

from __future__ import annotations

import os
import sqlite3

from durus.error import DurusError
from durus.record import int_to_oid, oid_to_int
from durus.sqlite_schema import MAX_OID, SqliteTransaction, has_record

# Oids are taken from the shared counter in blocks that double up to this.
MAX_OID_BLOCK = 512


class SqliteOidCounter:
    """Hands out one storage's oids from the shared counter."""

    def __init__(self, db: sqlite3.Connection, filename: str, pid: int) -> None:
        self.db = db
        self.filename = filename
        #: The process this storage belongs to: the root's claimer.
        self.pid = pid
        self._free_oids: list[int] = []
        self._oid_block = 1

    def new_oid(self) -> bytes:
        """An oid no other storage of the file was or will be given."""
        while True:
            if not self._free_oids:
                self._take_oids(self._oid_block)
                self._oid_block = min(self._oid_block * 2, MAX_OID_BLOCK)
            oid = int_to_oid(self._free_oids.pop())
            # Reserved for this storage, but a record may have been stored
            # under it without new_oid (a copy, Durus 4.3): never hand it out.
            if not has_record(self.db, oid_to_int(oid)):
                return oid

    def _take_oids(self, count: int) -> None:
        """Reserve ``count`` oids from the shared counter for this storage
        (and the root's, if it is free again).
        """
        db = self.db
        with SqliteTransaction(db, "BEGIN IMMEDIATE"):
            next_oid, claimer = db.execute("SELECT next, root_claimer FROM durus_oids").fetchone()
            (top,) = db.execute("SELECT coalesce(max(id), -1) FROM objects").fetchone()
            first = max(next_oid, top + 1)
            if first + count > MAX_OID:
                raise DurusError(f"no oids left in {self.filename}")
            free = list(range(first + count - 1, first - 1, -1))
            if first == 0 or self._root_is_free(claimer):
                if first > 0:
                    free.append(0)
                db.execute("UPDATE durus_oids SET root_claimer = ?", (self.pid,))
            db.execute("UPDATE durus_oids SET next = ?", (first + count,))
        self._free_oids = free

    def _root_is_free(self, claimer: int | None) -> bool:
        """Whether oid 0 may be handed out again: no root is stored and the
        process it was handed to is gone.
        """
        if has_record(self.db, 0):
            return False
        if claimer is None:
            return True
        if claimer == self.pid:
            return False  # this process has it (another storage of it, maybe)
        try:
            os.kill(claimer, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def move_counter_past(db: sqlite3.Connection, top: int) -> None:
    """Oids stored by a process that did not take them from the counter
    (Durus 4.3, or a copy) move the counter past them: ``top`` is the
    highest just written.
    """
    db.execute("UPDATE durus_oids SET next = ? WHERE next <= ?", (top + 1, top))

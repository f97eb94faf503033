"""The invalidation log of a shared SQLite file: what other processes committed.

``durus_log(serial integer primary key, oids blob)`` has one row per commit
(and per pack), the oids it wrote or removed.  A storage remembers the last
serial it has seen; what others committed since is its pending
invalidations, as a storage server keeps them per client.  The log keeps
the last ``LOG_KEEP`` commits (:data:`durus.sqlite_storage.LOG_KEEP`); a
storage that fell further behind cannot know what changed, so it reports
every stored oid.
"""

from __future__ import annotations

import sqlite3

from durus.record import int_to_oid


class SqliteCommitLog:
    """One storage's reading of the log, and its writing of it."""

    def __init__(self, db: sqlite3.Connection, logged: bool) -> None:
        self.db = db
        #: Whether the file has the log (not so for a Durus 4.3 file opened readonly).
        self.logged = logged
        #: Oids others committed after this storage's last sync or commit
        #: (read from the log, not yet reported).
        self.invalid: set[bytes] = set()
        #: The log was trimmed past what this storage had read: until its
        #: next commit, every reference a commit makes is checked to have a record.
        self.lost_track = False
        #: The last serial this storage has read.
        self.seen_serial = self.last_serial()

    def last_serial(self) -> int:
        """The newest serial in the log (0 if none)."""
        if not self.logged:
            return 0
        return self.db.execute("SELECT coalesce(max(serial), 0) FROM durus_log").fetchone()[0]

    def read(self) -> bool:
        """Add what others committed since ``seen_serial`` to ``invalid``;
        whether anything was new.  Safe outside a transaction: serials only
        grow, and a trimmed gap shows as a missing next serial.
        """
        if not self.logged:
            return False
        rows = self.db.execute(
            "SELECT serial, oids FROM durus_log WHERE serial > ? ORDER BY serial", (self.seen_serial,)).fetchall()
        if not rows:
            return False
        if rows[0][0] != self.seen_serial + 1:
            # The log was trimmed past what this storage saw: anything may
            # have changed, so every stored oid is reported.
            self.lost_track = True
            self.invalid.update(int_to_oid(id_) for (id_,) in self.db.execute("SELECT id FROM objects"))
        for _, oids in rows:
            self.invalid.update(split_oid_blob(oids))
        self.seen_serial = rows[-1][0]
        return True

    def take_invalid(self) -> set[bytes]:
        """The invalid oids, which are then reported: ``invalid`` starts afresh."""
        invalid, self.invalid = self.invalid, set()
        return invalid

    def append(self, oids: bytes, keep: int) -> None:
        """Add a row of ``oids`` after ``seen_serial`` (the newest, as the
        write lock is held and the log was read), keeping the last ``keep``.
        """
        serial = self.seen_serial + 1
        self.db.execute("INSERT INTO durus_log (serial, oids) VALUES (?, ?)", (serial, oids))
        if serial % 100 == 0:
            self.db.execute("DELETE FROM durus_log WHERE serial <= ?", (serial - keep,))
        self.seen_serial = serial


def split_oid_blob(oids: bytes) -> list[bytes]:
    """The 8-byte oids concatenated in a log row (or a refs column); unlike
    :func:`durus.record.split_oids` it does not refuse a damaged length, so
    that a pack reads what it can, as it always has.
    """
    return [oids[i:i + 8] for i in range(0, len(oids), 8)]

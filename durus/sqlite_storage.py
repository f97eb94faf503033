"""SqliteStorage: records kept in one SQLite file, shared by many processes.

The records live in the table Durus 4.3 uses, ``objects(id integer primary
key, data blob, refs blob)``: ``id`` is the oid as an integer, ``data`` the
record's class and state pickles, ``refs`` its concatenated 8-byte oids.
Files written here open with Durus 4.3's ``SqliteStorage`` and the other way
round.  Two more tables, which 4.3 ignores, let processes on one machine
share the file without a server (the database runs in WAL mode, so readers
never wait for the one writer):

- ``durus_log(serial integer primary key, oids blob)``: one row per commit
  (and per pack), the oids it wrote or removed.  A storage remembers the
  last serial it has seen; what others committed since is its pending
  invalidations, exactly as a storage server keeps them per client: a load
  of such an oid raises ReadConflictError, and ``end()`` hands them to the
  Connection before writing, inside the same ``BEGIN IMMEDIATE``
  transaction, so nothing can land in between.  The log keeps the last
  :data:`LOG_KEEP` commits.  A storage that fell further behind cannot
  know what changed: it reports every stored oid as invalid, which drops
  every cached state (and conflicts the transaction underway, if any).
- ``durus_oids(next integer, root_claimer integer)``: the next oid to hand
  out.  Oids are taken in growing blocks inside a write transaction, so no
  two processes get the same one, and the counter never goes back (Durus
  4.3 hands out its highest stored oid again after a reopen); it also skips
  past any oid Durus 4.3 may have stored meanwhile.  The one exception is
  the root's oid 0, which a Connection asks for to create the root: while
  no root is stored and the process it went to (``root_claimer``, a pid:
  the processes share one machine) has died, it is handed out again, so a
  process killed before its first commit cannot leave the database
  without a root for good.

See ``docs/guide/storages.rst`` for when to choose it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator

from durus.error import DamagedRecordError, DurusError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.record import ROOT_OID, int_to_oid, oid_to_int, pack_record, read_int4, record_refs, unpack_record
from durus.storage import InvalidationHandler, Storage

__all__ = ["SqliteStorage", "LOG_KEEP"]

#: How many commits the invalidation log keeps.
LOG_KEEP = 10_000

# Oids are taken from the shared counter in blocks that double up to this.
_MAX_OID_BLOCK = 512
# Records asked for in one query (SQLite limits the number of parameters).
_QUERY_BATCH = 500
# Objects a pack step visits before it yields.
_PACK_STEP = 500
# How long a write waits for another process's write to finish, in seconds.
_BUSY_TIMEOUT = 60.0
# The largest oid an SQLite integer holds.
_MAX_OID = (1 << 63) - 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects (id integer primary key, data blob, refs blob)",
    "CREATE TABLE IF NOT EXISTS durus_log (serial integer primary key, oids blob not null)",
    "CREATE TABLE IF NOT EXISTS durus_oids (next integer not null, root_claimer integer)",
)


class SqliteStorage(Storage):
    """A storage in an SQLite file that processes share without a server.

    Instance attributes:

    - ``filename``: the path of the file.
    - ``readonly``: True when opened for reading only.
    - ``pending``: oid -> record of the commit underway, or None.
    - ``seen_serial``: the last serial of ``durus_log`` this storage has read.
    - ``invalid``: oids others committed after this storage's last sync or
      commit (read from the log, not yet reported).
    """

    def __init__(self, filename: str, readonly: bool = False, repair: bool = False) -> None:
        # ``repair`` is accepted for the common signature: SQLite's journal
        # recovers an interrupted commit by itself on open.
        self.filename = os.fspath(filename)
        self.readonly = readonly
        self.pending: dict[bytes, bytes] | None = None
        self.invalid: set[bytes] = set()
        self._free_oids: list[int] = []
        self._oid_block = 1
        # The log was trimmed past what this storage had read: until its next
        # commit, every reference a commit makes is checked to have a record.
        self._lost_track = False
        self._pid = os.getpid()
        self._db = self._open()
        try:
            self._logged = self._table_names() >= {"durus_log"}
            self.seen_serial = self._last_serial()
        except BaseException:
            self._db.close()
            raise

    # -- opening -------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """The SQLite connection, on a database checked to be a Durus one;
        opened for writing, in WAL mode with this storage's tables added.
        """
        if self.readonly and not os.path.exists(self.filename):
            raise FileNotFoundError(2, f"no file to open readonly: {self.filename}", self.filename)
        try:
            if self.readonly:
                uri = "file:" + os.path.abspath(self.filename) + "?mode=ro"
                db = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
            else:
                db = sqlite3.connect(self.filename, timeout=_BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
        except sqlite3.Error as error:
            raise DurusError(f"cannot open {self.filename} as a Durus SQLite database: {error}") from None
        self._db = db
        try:
            if self.readonly:
                self._check_objects_table()
            else:
                self._prepare()
        except sqlite3.Error as error:
            db.close()
            raise DurusError(f"cannot open {self.filename} as a Durus SQLite database: {error}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        # A commit returns once its WAL frames are on disk.
        db.execute("PRAGMA synchronous=FULL")
        with _Transaction(db, "BEGIN IMMEDIATE"):
            if self._table_names():
                self._check_objects_table()  # before adding anything to a database of another program
            for statement in _SCHEMA:
                db.execute(statement)
            if db.execute("SELECT count(*) FROM durus_oids").fetchone()[0] == 0:
                db.execute("INSERT INTO durus_oids (next) VALUES (0)")

    def _table_names(self) -> set[str]:
        return {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_objects_table(self) -> None:
        if "objects" not in self._table_names():
            raise DurusError(
                f"{self.filename} is an SQLite database without an objects table, not a Durus one "
                "(nothing was changed)")

    def _last_serial(self) -> int:
        if not self._logged:
            return 0
        return self._db.execute("SELECT coalesce(max(serial), 0) FROM durus_log").fetchone()[0]

    def get_filename(self) -> str:
        return self.filename

    # -- reading -------------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        self._check_usable()
        if oid in self.invalid:
            raise ReadConflictError([oid])
        row = self._db.execute("SELECT id, data, refs FROM objects WHERE id = ?", (_oid_to_id(oid),)).fetchone()
        self._check_not_newer([oid])
        if row is None:
            raise DurusKeyError(oid)
        return self._record(row)

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        oids = list(oids)
        for start in range(0, len(oids), _QUERY_BATCH):
            yield from self._load_batch(oids[start:start + _QUERY_BATCH])

    def _load_batch(self, oids: list[bytes]) -> list[bytes]:
        self._check_usable()
        for oid in oids:
            if oid in self.invalid:
                raise ReadConflictError([oid])
        ids = [_oid_to_id(oid) for oid in oids]
        marks = ",".join("?" * len(ids))
        rows = self._db.execute(f"SELECT id, data, refs FROM objects WHERE id IN ({marks})", ids)
        found = {row[0]: row for row in rows}
        self._check_not_newer(oids)
        records = []
        for oid, id_ in zip(oids, ids):
            row = found.get(id_)
            if row is None:
                raise DurusKeyError(oid)
            records.append(self._record(row))
        return records

    def _check_not_newer(self, oids: list[bytes]) -> None:
        """Raise ReadConflictError if another process committed one of
        ``oids`` since the last sync.  Called after the rows were read (each
        statement reads its own snapshot, with no transaction around both):
        a commit that the rows include is then in the log read here.
        """
        if self._read_log():
            for oid in oids:
                if oid in self.invalid:
                    raise ReadConflictError([oid])

    def _record(self, row: tuple) -> bytes:
        id_, data, refs = row
        oid = int_to_oid(id_)
        if refs is None:
            refs = b""
        if not isinstance(data, bytes) or not isinstance(refs, bytes):
            raise DamagedRecordError(
                "its data or refs column is not a blob", oid, self.describe_record(oid))
        if len(refs) % 8:
            raise DamagedRecordError(
                f"its refs column holds {len(refs)} bytes, not whole 8-byte oids", oid, self.describe_record(oid))
        return pack_record(oid, data, refs)

    def describe_record(self, oid: bytes) -> str:
        """Where the record of ``oid`` is, for messages."""
        return f"row id {oid_to_int(oid)} of table objects in {self.filename}"

    def _read_transaction(self) -> _Transaction:
        self._check_usable()
        return _Transaction(self._db, "BEGIN")

    def _read_log(self) -> bool:
        """Add what others committed since ``seen_serial`` to ``invalid``;
        whether anything was new.  Safe outside a transaction: serials only
        grow, and a trimmed gap shows as a missing next serial.
        """
        if not self._logged:  # a file of Durus 4.3, opened readonly
            return False
        rows = self._db.execute(
            "SELECT serial, oids FROM durus_log WHERE serial > ? ORDER BY serial", (self.seen_serial,)).fetchall()
        if not rows:
            return False
        if rows[0][0] != self.seen_serial + 1:
            # The log was trimmed past what this storage saw: anything may
            # have changed, so every stored oid is reported.
            self._lost_track = True
            self.invalid.update(int_to_oid(id_) for (id_,) in self._db.execute("SELECT id FROM objects"))
        for _, oids in rows:
            self.invalid.update(oids[i:i + 8] for i in range(0, len(oids), 8))
        self.seen_serial = rows[-1][0]
        return True

    def sync(self) -> list[bytes]:
        with self._read_transaction():
            self._read_log()
        oids = list(self.invalid)
        self.invalid.clear()
        return oids

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        """Without ``start_oid`` every stored record, by oid; with it, those
        reachable from it.
        """
        if start_oid is not None:
            yield from super().gen_oid_record(start_oid, batch_size)
            return
        last = -1
        while True:
            with self._read_transaction():
                rows = self._db.execute(
                    "SELECT id, data, refs FROM objects WHERE id > ? ORDER BY id LIMIT ?",
                    (last, max(batch_size, 1))).fetchall()
            if not rows:
                return
            for row in rows:
                yield int_to_oid(row[0]), self._record(row)
            last = rows[-1][0]

    def __contains__(self, oid: bytes) -> bool:
        with self._read_transaction():
            row = self._db.execute("SELECT 1 FROM objects WHERE id = ?", (_oid_to_id(oid),)).fetchone()
        return row is not None

    # -- committing ------------------------------------------------------------

    def begin(self) -> None:
        self._check_writable("commit")
        self.pending = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self.pending is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        if len(oid) != 8 or record[:8] != oid:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        _oid_to_id(oid)
        data_end = 12 + read_int4(record, 8) if len(record) >= 12 else None
        if data_end is None or data_end > len(record) or (len(record) - data_end) % 8:
            raise ValueError(f"the record for oid {oid_to_int(oid)} is not oid + int4(len(data)) + data + refs")
        self.pending[oid] = record

    def end(self, handle_invalidations: InvalidationHandler | None = None) -> None:
        """Deliver what others committed since the last sync, then write the
        records and a log row in one SQLite transaction, durable on return.

        Without ``handle_invalidations`` the oids stay pending (the next
        ``sync`` reports them).  Either way a record of such an oid, or a
        reference to an object a pack removed meanwhile, is a
        WriteConflictError and nothing is written.
        """
        if self.pending is None:
            raise RuntimeError("end() outside a commit: call begin() first")
        pending, self.pending = self.pending, None
        self._check_writable("commit")
        with _Transaction(self._db, "BEGIN IMMEDIATE"):
            self._read_log()
            if handle_invalidations is None:
                delivered = set(self.invalid)
            else:
                delivered, self.invalid = self.invalid, set()
                if delivered:
                    handle_invalidations(list(delivered))
            changed = None if self._lost_track else delivered
            conflicts = delivered.intersection(pending) | self._removed_refs(pending, changed)
            if conflicts:
                raise WriteConflictError(sorted(conflicts))
            if pending:
                self._write(pending)
        self._lost_track = False

    def _removed_refs(self, records: dict[bytes, bytes], changed: set[bytes] | None) -> set[bytes]:
        """The oids ``records`` refer to that others changed (None: any)
        and that no longer have a record (a pack removed them): such a
        reference would dangle, so it is a conflict, as on a storage server.
        """
        removed = set()
        for record in records.values():
            refs = record_refs(record)
            for start in range(0, len(refs), 8):
                ref = refs[start:start + 8]
                if (changed is None or ref in changed) and ref not in records and ref not in removed:
                    row = self._db.execute("SELECT 1 FROM objects WHERE id = ?", (_oid_to_id(ref),)).fetchone()
                    if row is None:
                        removed.add(ref)
        return removed

    def _write(self, records: dict[bytes, bytes]) -> None:
        rows = []
        for oid, record in records.items():
            _, data, refs = unpack_record(record)
            rows.append((oid_to_int(oid), data, refs))
        db = self._db
        db.executemany("INSERT OR REPLACE INTO objects (id, data, refs) VALUES (?, ?, ?)", rows)
        self._append_log(b"".join(sorted(records)))
        # Oids stored by a process that did not take them from the counter
        # (Durus 4.3, or a copy) move the counter past them.
        top = max(rows)[0]
        db.execute("UPDATE durus_oids SET next = ? WHERE next <= ?", (top + 1, top))

    def _append_log(self, oids: bytes) -> None:
        """Add a log row after ``seen_serial`` (the newest, since the write
        lock is held and the log was read) and trim the oldest.
        """
        serial = self.seen_serial + 1
        self._db.execute("INSERT INTO durus_log (serial, oids) VALUES (?, ?)", (serial, oids))
        if serial % 100 == 0:
            self._db.execute("DELETE FROM durus_log WHERE serial <= ?", (serial - LOG_KEEP,))
        self.seen_serial = serial

    def new_oid(self) -> bytes:
        self._check_writable("allocate oids")
        while True:
            if not self._free_oids:
                self._take_oids(self._oid_block)
                self._oid_block = min(self._oid_block * 2, _MAX_OID_BLOCK)
            oid = int_to_oid(self._free_oids.pop())
            # Reserved for this storage, but a record may have been stored
            # under it without new_oid (a copy, Durus 4.3): never hand it out.
            if self._db.execute("SELECT 1 FROM objects WHERE id = ?", (oid_to_int(oid),)).fetchone() is None:
                return oid

    def _take_oids(self, count: int) -> None:
        """Reserve ``count`` oids from the shared counter for this storage
        (and the root's, if it is free again; see the module docstring).
        """
        db = self._db
        with _Transaction(db, "BEGIN IMMEDIATE"):
            next_oid, claimer = db.execute("SELECT next, root_claimer FROM durus_oids").fetchone()
            (top,) = db.execute("SELECT coalesce(max(id), -1) FROM objects").fetchone()
            first = max(next_oid, top + 1)
            if first + count > _MAX_OID:
                raise DurusError(f"no oids left in {self.filename}")
            free = list(range(first + count - 1, first - 1, -1))
            if first == 0 or self._root_is_free(claimer):
                if first > 0:
                    free.append(0)
                db.execute("UPDATE durus_oids SET root_claimer = ?", (self._pid,))
            db.execute("UPDATE durus_oids SET next = ?", (first + count,))
        self._free_oids = free

    def _root_is_free(self, claimer: int | None) -> bool:
        """Whether oid 0 may be handed out again: no root is stored and the
        process it was handed to is gone.
        """
        if self._db.execute("SELECT 1 FROM objects WHERE id = 0").fetchone() is not None:
            return False
        if claimer is None:
            return True
        if claimer == self._pid:
            return False  # this process has it (another storage of it, maybe)
        try:
            os.kill(claimer, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # -- packing -------------------------------------------------------------

    def pack(self) -> None:
        for _ in self.get_packer():
            pass

    def get_packer(self) -> Iterator[str]:
        """An incremental pack: mark the objects reachable from the root a
        batch per step, then, in one write transaction, mark what commits
        made meanwhile reached and delete the rest.
        """
        self._check_writable("pack")
        if self.pending is not None:
            return iter(())
        if ROOT_OID not in self and next(self.gen_oid_record(batch_size=1), None) is not None:
            raise DurusError(
                f"{self.filename} holds records but no root object (oid 0): "
                "packing would drop them all, so it was not started")
        return self._gen_pack_steps()

    def _gen_pack_steps(self) -> Iterator[str]:
        with self._read_transaction():
            start_serial = self._last_serial()
        marker = _Marker(self)
        yield "started"
        while marker.mark_some(_PACK_STEP):
            yield "marking"
        db = self._db
        with _Transaction(db, "BEGIN IMMEDIATE"):
            # Whatever was committed since the marking began is alive, with
            # everything it reaches now: only a commit can make an object
            # reachable, and objects marked already may refer to new ones.
            expected = start_serial + 1
            for serial, oids in db.execute(
                    "SELECT serial, oids FROM durus_log WHERE serial > ? ORDER BY serial", (start_serial,)):
                if serial != expected:
                    raise DurusError(
                        f"pack of {self.filename} abandoned, nothing removed: more than {LOG_KEEP} "
                        "commits came during it, and the log no longer holds them all; pack again")
                expected += 1
                marker.revisit(oids[i:i + 8] for i in range(0, len(oids), 8))
            while marker.mark_some(None):
                pass
            dead = [id_ for (id_,) in db.execute("SELECT id FROM objects") if not marker.has(id_)]
            self._read_log()
            db.executemany("DELETE FROM objects WHERE id = ?", ((id_,) for id_ in dead))
            if dead:
                self._append_log(b"".join(int_to_oid(id_) for id_ in dead))
        yield f"finished: {len(marker.seen)} objects kept, {len(dead)} removed"

    def _refs(self, ids: list[int]) -> list[bytes]:
        marks = ",".join("?" * len(ids))
        return [refs or b"" for (refs,) in self._db.execute(f"SELECT refs FROM objects WHERE id IN ({marks})", ids)]

    # -- the rest --------------------------------------------------------------

    def close(self) -> None:
        """Close the database; oids taken and not used stay unused."""
        db = self.__dict__.pop("_db", None)
        if db is not None:
            db.close()

    def _check_usable(self) -> None:
        if "_db" not in self.__dict__:
            raise DurusError(f"the storage of {self.filename} is closed")
        if os.getpid() != self._pid:
            raise DurusError(
                f"{self.filename} was opened by process {self._pid}, before a fork; "
                "open a SqliteStorage in each process after forking")

    def _check_writable(self, action: str) -> None:
        self._check_usable()
        if self.readonly:
            from durus.file_storage import ReadOnlyError

            raise ReadOnlyError(f"cannot {action}: {self.filename} was opened with readonly=True")

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.filename!r})"


class _Marker:
    """The mark phase of a pack: the ids reachable from the root."""

    def __init__(self, storage: SqliteStorage) -> None:
        self.storage = storage
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
        """Visit up to ``limit`` (None: a query's worth) of the queued
        objects; whether any remain.
        """
        count = min(len(self.todo), limit or _QUERY_BATCH, _QUERY_BATCH)
        batch = self.todo[-count:] if count else []
        del self.todo[len(self.todo) - count:]
        if batch:
            storage = self.storage
            if limit is None:
                refs_list = storage._refs(batch)  # inside the caller's transaction
            else:
                with storage._read_transaction():
                    refs_list = storage._refs(batch)
            for refs in refs_list:
                self.add(refs[i:i + 8] for i in range(0, len(refs), 8))
        return bool(self.todo)


class _Transaction:
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


def _oid_to_id(oid: bytes) -> int:
    id_ = oid_to_int(oid)
    if id_ > _MAX_OID:
        raise ValueError(f"oid {id_} is beyond the largest SQLite integer, so an SqliteStorage cannot hold it")
    return id_

"""SqliteStorage: records kept in one SQLite file, shared by many processes.

The records live in the table Durus 4.3 uses, ``objects(id integer primary
key, data blob, refs blob)``: ``id`` is the oid as an integer, ``data`` the
record's class and state pickles, ``refs`` its concatenated 8-byte oids.
Files written here open with Durus 4.3's ``SqliteStorage`` and the other way
round (:mod:`durus.sqlite_schema`).  Two more tables, which 4.3 ignores, let
processes on one machine share the file without a server (the database runs
in WAL mode, so readers never wait for the one writer):

- ``durus_log(serial integer primary key, oids blob)``: one row per commit
  (and per pack), the oids it wrote or removed (:mod:`durus.sqlite_log`).
  What others committed since a storage last read it is its pending
  invalidations, exactly as a storage server keeps them per client: a load
  of such an oid raises ReadConflictError, and ``end()`` hands them to the
  Connection before writing, inside the same ``BEGIN IMMEDIATE``
  transaction, so nothing can land in between.  The log keeps the last
  :data:`LOG_KEEP` commits.
- ``durus_oids(next integer, root_claimer integer)``: the next oid to hand
  out (:mod:`durus.sqlite_oids`), never the same one to two processes.

Packing, while others commit, is :mod:`durus.sqlite_pack`.  See
``docs/guide/storages.rst`` for when to choose it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from durus.error import DamagedRecordError, DurusError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.record import ROOT_OID, int_to_oid, oid_to_int, pack_record, read_int4, record_refs, unpack_record
from durus.sqlite_log import SqliteCommitLog
from durus.sqlite_oids import SqliteOidCounter, move_counter_past
from durus.sqlite_pack import QUERY_BATCH, SqlitePack
from durus.sqlite_schema import SqliteTransaction, has_record, oid_to_id, open_database, table_names
from durus.storage import InvalidationHandler, Storage

__all__ = ["SqliteStorage", "LOG_KEEP"]

#: How many commits the invalidation log keeps.
LOG_KEEP = 10_000


class SqliteStorage(Storage):
    """A storage in an SQLite file that processes share without a server.

    Instance attributes:

    - ``filename``: the path of the file.
    - ``readonly``: True when opened for reading only.
    - ``pending``: oid -> record of the commit underway, or None.
    - ``seen_serial``: the last serial of ``durus_log`` this storage has read.
    - ``invalid``: oids others committed after this storage's last sync or
      commit (read from the log, not yet reported).

    The log, the oid counter and packing each have a class of their own
    (:class:`~durus.sqlite_log.SqliteCommitLog`,
    :class:`~durus.sqlite_oids.SqliteOidCounter`,
    :class:`~durus.sqlite_pack.SqlitePack`).
    """

    def __init__(self, filename: str, readonly: bool = False, repair: bool = False) -> None:
        # ``repair`` is accepted for the common signature: SQLite's journal
        # recovers an interrupted commit by itself on open.
        self.filename = os.fspath(filename)
        self.readonly = readonly
        self.pending: dict[bytes, bytes] | None = None
        self._pid = os.getpid()
        self._db = db = open_database(self.filename, readonly)
        try:
            self._log = SqliteCommitLog(db, table_names(db) >= {"durus_log"})
        except BaseException:
            db.close()
            raise
        self._oids = SqliteOidCounter(db, self.filename, self._pid)

    @property
    def seen_serial(self) -> int:
        return self._log.seen_serial

    @property
    def invalid(self) -> set[bytes]:
        return self._log.invalid

    def get_filename(self) -> str:
        return self.filename

    # -- reading -------------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        self._check_usable()
        if oid in self.invalid:
            raise ReadConflictError([oid])
        row = self._db.execute("SELECT id, data, refs FROM objects WHERE id = ?", (oid_to_id(oid),)).fetchone()
        self._check_not_newer([oid])
        if row is None:
            raise DurusKeyError(oid)
        return self._record(row)

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        oids = list(oids)
        for start in range(0, len(oids), QUERY_BATCH):
            yield from self._load_batch(oids[start:start + QUERY_BATCH])

    def _load_batch(self, oids: list[bytes]) -> list[bytes]:
        self._check_usable()
        for oid in oids:
            if oid in self.invalid:
                raise ReadConflictError([oid])
        ids = [oid_to_id(oid) for oid in oids]
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
        if self._log.read():
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

    def _read_transaction(self) -> SqliteTransaction:
        self._check_usable()
        return SqliteTransaction(self._db, "BEGIN")

    def sync(self) -> list[bytes]:
        with self._read_transaction():
            self._log.read()
        return list(self._log.take_invalid())

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
            return has_record(self._db, oid_to_id(oid))

    # -- committing ------------------------------------------------------------

    def begin(self) -> None:
        self._check_writable("commit")
        self.pending = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self.pending is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        if len(oid) != 8 or record[:8] != oid:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        oid_to_id(oid)
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
        log = self._log
        with SqliteTransaction(self._db, "BEGIN IMMEDIATE"):
            log.read()
            if handle_invalidations is None:
                delivered = set(log.invalid)
            else:
                delivered = log.take_invalid()
                if delivered:
                    handle_invalidations(list(delivered))
            changed = None if log.lost_track else delivered
            conflicts = delivered.intersection(pending) | self._removed_refs(pending, changed)
            if conflicts:
                raise WriteConflictError(sorted(conflicts))
            if pending:
                self._write(pending)
        log.lost_track = False

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
                    if not has_record(self._db, oid_to_id(ref)):
                        removed.add(ref)
        return removed

    def _write(self, records: dict[bytes, bytes]) -> None:
        rows = []
        for oid, record in records.items():
            _, data, refs = unpack_record(record)
            rows.append((oid_to_int(oid), data, refs))
        db = self._db
        db.executemany("INSERT OR REPLACE INTO objects (id, data, refs) VALUES (?, ?, ?)", rows)
        self._log.append(b"".join(sorted(records)), LOG_KEEP)
        move_counter_past(db, max(rows)[0])

    def new_oid(self) -> bytes:
        self._check_writable("allocate oids")
        return self._oids.new_oid()

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
        return SqlitePack(self._db, self._log, self.filename, self._read_transaction, LOG_KEEP).gen_steps()

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

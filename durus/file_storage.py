"""FileStorage: records kept in one SHELF-1 file (see :mod:`durus.shelf`).

One process owns a file at a time: it holds an exclusive ``flock`` while
the file is open for writing, and processes that want to share a database
reach it through a storage server.  A commit appends one sealed transaction
with one write, then a commit trailer, and returns only after fdatasync;
:mod:`durus.shelf` explains how that makes whatever a crash leaves open as
whole commits, every acknowledged one included.  A storage server may defer
the trailer and fdatasync (``end(sync=False)``) and call
:meth:`FileStorage.sync_to_disk` from its own thread, so that the commits of
many clients written during one sync share the next (group commit).  A
commit whose records refer to oids that have no record and were never
handed out is refused (:class:`UnknownReferenceError`) before anything is
written.  Packing writes ``<file>.pack`` holding the records reachable from
the root, step by step so a server can keep serving commits meanwhile, then
renames it over the file.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from struct import Struct

from durus.error import DurusError, DurusKeyError
from durus.record import ROOT_OID, int_to_oid, oid_to_int, read_int4, record_refs
from durus.shelf import PREFIX, Shelf, gen_offset_map, write_all
from durus.storage import InvalidationHandler, Storage, gen_reachable_records

__all__ = ["FileStorage", "TempFileStorage", "FileLockedError", "ReadOnlyError", "UnknownReferenceError"]

log = logging.getLogger("durus.file_storage")

# Storages open for writing in this process, closed at its exit: that syncs
# deferred commits and gives back the shelf's free space, so a program that
# never calls close() still leaves a file Durus 4.3 opens as it is.
_open_for_writing: weakref.WeakSet[FileStorage] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for storage in list(_open_for_writing):
        if storage._pid == os.getpid():  # never a storage inherited through a fork
            try:
                storage.close()
            except Exception:
                log.exception("closing %s at exit", storage.filename)

_int8 = Struct(">Q")

# A packer step copies about this many records, or writes about this many bytes.
_PACK_STEP_RECORDS = 1000
_PACK_WRITE_BYTES = 1 << 20


class FileLockedError(DurusError, OSError):
    """Another process has the file open for writing (it holds the lock)."""


class ReadOnlyError(DurusError):
    """A change was asked of a storage opened with ``readonly=True``."""


class UnknownReferenceError(DurusError):
    """A commit was refused, and nothing of it written: the record of ``oid``
    refers to ``ref``, which has no record, is not stored by the commit, and
    was not handed out by this storage's ``new_oid``.  Such a reference could
    never be loaded; it comes from a bug, or from an object of another
    database or of a connection that was closed.
    """

    def __init__(self, filename: str, oid: bytes, ref: bytes) -> None:
        super().__init__(
            f"commit refused, nothing written to {filename}: the record of oid "
            f"{oid_to_int(oid)} refers to oid {oid_to_int(ref)}, which has no record, "
            "is not in this commit and was never handed out by new_oid()")
        self.oid = oid
        self.ref = ref


class FileStorage(Storage):
    """A storage in a SHELF-1 file, owned by this process while open.

    Instance attributes:

    - ``filename``: the path of the file.
    - ``readonly``: True when opened for reading only (no lock, no commits).
    - ``shelf``: the open :class:`~durus.shelf.Shelf`, the file and its index.
    - ``pending``: oid -> record of the commit underway, or None between commits.
    - ``allocated``: oids handed out by ``new_oid`` and not committed yet.
    - ``freed``: oids a pack removed that ``sync`` has not reported yet; they
      are not handed out again until it has, so no object a connection
      still holds can share an oid with a new one.
    - ``pack_extra``: the oids committed while a pack is underway, or None.
    - ``sync_error``: the error of a failed :meth:`sync_to_disk`, or None.
      After one, commits are refused: the kernel may have dropped the
      unsynced data and a later sync could succeed without writing it.
    """

    def __init__(self, filename: str | None = None, readonly: bool = False, repair: bool = False) -> None:
        if readonly and repair:
            raise ValueError("repair=True needs the file open for writing, not readonly=True")
        self._temporary = filename is None
        if filename is None:
            if readonly:
                raise ValueError("a temporary FileStorage cannot be readonly")
            fd, filename = tempfile.mkstemp(prefix="durus-", suffix=".durus")
            os.close(fd)
        self.filename = os.fspath(filename)
        self.readonly = readonly
        self.pending: dict[bytes, bytes] | None = None
        self.allocated: set[bytes] = set()
        self.freed: set[bytes] = set()
        self.pack_extra: set[bytes] | None = None
        self._pack_file: str | None = None
        self.sync_error: OSError | None = None
        # Held by sync_to_disk (which another thread may call) for the whole
        # fdatasync, and by whatever replaces or closes the shelf's file.
        self._sync_lock = threading.Lock()
        self._pid = os.getpid()
        try:
            fd = self._open_file()
            try:
                created = os.fstat(fd).st_size == 0
                self.shelf = Shelf(fd, self.filename, repair=repair, sync=not self._temporary)
                if created and not self._temporary:
                    sync_directory(self.filename)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._remove_temporary()
            raise
        self._unused_oids = self.shelf.gen_unused_oids()
        if not readonly:
            _open_for_writing.add(self)

    def _open_file(self) -> int:
        """The file's descriptor: locked exclusively unless readonly."""
        if self.readonly:
            try:
                fd = os.open(self.filename, os.O_RDONLY)
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    error.errno, f"no file to open readonly: {self.filename}", self.filename) from None
            if os.fstat(fd).st_size == 0:
                os.close(fd)
                raise DurusError(f"{self.filename} is empty, not a SHELF-1 file: open it writable to create one")
            return fd
        while True:
            fd = os.open(self.filename, os.O_RDWR | os.O_CREAT, 0o666)
            if not _lock(fd):
                os.close(fd)
                raise FileLockedError(
                    errno.EAGAIN,
                    f"{self.filename} is open in another process, which holds its lock; "
                    "a file storage belongs to one process at a time: to share the "
                    "database, serve it with a storage server (durus -s --file "
                    f"{self.filename}, or flask durus serve) and connect to that",
                    self.filename,
                )
            try:
                same = os.stat(self.filename).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            # A pack renamed a new file over the one we locked: lock that one.
            os.close(fd)

    def get_filename(self) -> str:
        """The path of the file holding the data."""
        return self.filename

    def load(self, oid: bytes) -> bytes:
        record = self.shelf.load(oid)
        if record is None:
            raise DurusKeyError(oid)
        return record

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        load = self.shelf.load
        for oid in oids:
            record = load(oid)
            if record is None:
                raise DurusKeyError(oid)
            yield record

    def begin(self) -> None:
        self._check_writable("commit")
        self.pending = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self.pending is None:
            self._check_writable("commit")
            raise RuntimeError("store() outside a commit: call begin() first")
        if len(oid) != 8 or record[:8] != oid:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        data_end = 12 + read_int4(record, 8) if len(record) >= 12 else None
        if data_end is None or data_end > len(record) or (len(record) - data_end) % 8:
            raise ValueError(
                f"the record for oid {oid_to_int(oid)} is not oid + int4(len(data)) + data + refs")
        self.pending[oid] = record

    def end(self, handle_invalidations: InvalidationHandler | None = None, sync: bool = True) -> None:
        """Append the commit as one transaction, durable when this returns.

        With ``sync`` False it is durable only once a later
        :meth:`sync_to_disk` (or ``end()`` or :meth:`close`) has returned:
        the caller must not report it committed before then.
        """
        if self.pending is None:
            self._check_writable("commit")
            raise RuntimeError("end() outside a commit: call begin() first")
        pending, self.pending = self.pending, None
        if not pending:
            return
        self._check_writable("commit")
        self._check_references(pending)
        shelf = self.shelf
        try:
            shelf.append(pending.items(), sync=sync)
        except OSError as error:
            if shelf.sync_error is not None:
                self.sync_error = error
            raise
        self.allocated.difference_update(pending)
        if self.pack_extra is not None:
            self.pack_extra.update(pending)

    def _check_references(self, pending: dict[bytes, bytes]) -> None:
        """Refuse a commit whose records refer to oids that have no record
        in the file or the commit and were not handed out by ``new_oid``.
        """
        allocated, shelf = self.allocated, self.shelf
        known: set[bytes] = set()
        for oid, record in pending.items():
            refs = record_refs(record)
            for start in range(0, len(refs), 8):
                ref = refs[start:start + 8]
                if ref in known or ref in pending or ref in allocated:
                    continue
                if ref not in shelf:
                    raise UnknownReferenceError(self.filename, oid, ref)
                known.add(ref)

    def describe_record(self, oid: bytes) -> str:
        """Where the record of ``oid`` is, for messages: "offset E of PATH",
        E being the offset of its entry (the record starts 16 bytes later).
        """
        shelf = self.__dict__.get("shelf")
        if shelf is None:
            return f"{self.filename} (closed)"
        position = shelf.get_position(oid)
        if position is None:
            return f"no record in {self.filename}"
        return f"offset {position} of {self.filename}"

    def sync_to_disk(self) -> None:
        """Make every commit appended so far durable, those of
        ``end(sync=False)`` included.

        Safe to call from another thread while commits and pack steps go on
        in this one: appends do not wait for it, while a pack's switch to the
        new file and :meth:`close` wait until it has returned.  After
        :meth:`close` it has nothing left to do.
        """
        with self._sync_lock:
            shelf = self.__dict__.get("shelf")
            if shelf is None:
                return
            self._check_sync_error("make commits durable")
            if not shelf.unsynced:
                return
            covered = shelf.end
            try:
                shelf.sync_appended()
            except OSError as error:
                self.sync_error = error
                raise
            log.debug("disk sync: commits up to byte %d of %s are durable", covered, self.filename)

    def sync(self) -> list[bytes]:
        """The oids a pack removed since the last call ([] when there was no pack)."""
        freed = list(self.freed)
        self.freed.clear()
        return freed

    def new_oid(self) -> bytes:
        self._check_writable("allocate oids")
        allocated, freed = self.allocated, self.freed
        oid = next(oid for oid in self._unused_oids if oid not in allocated and oid not in freed)
        allocated.add(oid)
        return oid

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        """Without ``start_oid`` every record in the file, in file order; with
        it, the records reachable from it.
        """
        if start_oid is not None:
            yield from gen_reachable_records(self, start_oid, batch_size)
            return
        shelf = self.shelf
        for oid, position in list(shelf.gen_positions()):
            if self.shelf is not shelf:
                # A pack replaced the file: read the rest from the new one.
                position = self.shelf.get_position(oid)
                if position is None:
                    continue
            yield oid, self.shelf.read_record(oid, position)

    def pack(self) -> None:
        for _ in self.get_packer():
            pass

    def get_packer(self) -> Iterator[str]:
        """An incremental pack: each step copies a bounded batch, so commits
        may come between steps.  Empty if a pack or commit is underway.
        """
        self._check_writable("pack")
        if self.pending is not None or self.pack_extra is not None:
            return iter(())
        if ROOT_OID not in self.shelf and next(self.shelf.gen_positions(), None) is not None:
            raise DurusError(
                f"{self.filename} holds records but no root object (oid 0): "
                "packing would drop them all, so it was not started")
        return self._gen_pack_steps()

    def _gen_pack_steps(self) -> Iterator[str]:
        if self.pending is not None or self.pack_extra is not None:
            return  # another pack started since get_packer()
        pack_file = self.filename + ".pack"
        fd = os.open(pack_file, os.O_RDWR | os.O_CREAT, 0o666)
        if not _lock(fd):
            os.close(fd)
            raise FileLockedError(errno.EAGAIN, f"{pack_file} is locked: another process is packing it", pack_file)
        self._pack_file = pack_file
        self.pack_extra = set()
        finished = False
        try:
            os.ftruncate(fd, 0)
            yield "started"
            copier = _ReachableCopier(self, fd)
            while copier.copy_some():
                yield "copying"
            yield "base written"
            new_shelf = Shelf(fd, pack_file, sync=not self._temporary)
            fd = -1  # the new shelf owns it
            try:
                while self.pack_extra:
                    records = list(copier.gen_extra_records(self.pack_extra))
                    self.pack_extra = set()
                    new_shelf.append(records)
                    if len(records) > _PACK_STEP_RECORDS:
                        # A big batch: let commits in.  A small one is
                        # followed by the swap-in at once, so that steady
                        # commits between steps cannot keep the pack going.
                        yield "copying commits"
                self._swap_in(new_shelf, copier)
            finally:
                if self.shelf is not new_shelf:
                    new_shelf.close()
            finished = True
            yield "finished"
        finally:
            self.pack_extra = None
            self._pack_file = None
            if not finished:
                if fd >= 0:
                    os.close(fd)
                _unlink(pack_file)

    def _swap_in(self, new_shelf: Shelf, copier: _ReachableCopier) -> None:
        """Rename the packed file over the file and use it from now on.

        The old file may hold commits appended with ``sync=False``; the new
        one holds them too, fsynced.  The rename is made durable before
        :meth:`sync_to_disk` can see the new file and report them durable:
        until then a crash could bring back the old file without them.
        """
        os.fsync(new_shelf.fd)
        old_shelf = self.shelf
        freed = [oid for oid, _ in old_shelf.gen_positions() if not copier.has_copied(oid)]
        with self._sync_lock:
            os.replace(new_shelf.path, self.filename)
            new_shelf.path = self.filename
            self.shelf = new_shelf
            self._unused_oids = new_shelf.gen_unused_oids()
            self.freed.update(freed)
            old_shelf.close(sync=False)  # replaced: nothing in it needs to be durable
            sync_directory(self.filename)

    def close(self) -> None:
        """Sync any commits appended with ``sync=False``, then close the file
        (the lock goes with it); remove it if temporary.
        """
        with self._sync_lock:
            shelf = self.__dict__.pop("shelf", None)
            if shelf is None:
                return
            shelf.close(sync=self.sync_error is None)
        if self._pack_file is not None:
            _unlink(self._pack_file)
        self._remove_temporary()

    def _remove_temporary(self) -> None:
        if self._temporary:
            _unlink(self.filename)

    def _check_writable(self, action: str) -> None:
        if self.readonly:
            raise ReadOnlyError(f"cannot {action}: {self.filename} was opened with readonly=True")
        if "shelf" not in self.__dict__:
            raise DurusError(f"cannot {action}: the storage of {self.filename} is closed")
        self._check_sync_error(action)
        if os.getpid() != self._pid:
            raise DurusError(
                f"cannot {action}: {self.filename} was opened by process {self._pid}, "
                "before a fork; open storages after forking, or serve the file "
                "with a storage server and connect each process to it"
            )

    def _check_sync_error(self, action: str) -> None:
        if self.sync_error is not None:
            raise DurusError(
                f"cannot {action}: a disk sync of {self.filename} failed ({self.sync_error}), "
                "so the latest commits may not be on disk; fix the disk, then close the "
                "storage and open the file again (with repair=True if it asks for it)")

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.filename!r})"


class TempFileStorage(FileStorage):
    """A FileStorage in a new temporary file, removed on close (for tests)."""

    def __init__(self) -> None:
        super().__init__()


class _ReachableCopier:
    """Writes the initial transaction and offset map of a packed file.

    Its memory grows with the objects copied, never with the values of
    oids: a reference to oid 2**44 costs what one to oid 5 does.

    Instance attributes:

    - ``storage``: the FileStorage being packed.
    - ``fd``: the new file, written from offset 0.
    - ``todo``: the oids (ints) found reachable and not copied yet.
    - ``seen``: the oids found reachable (copied or queued), an :class:`_OidSet`.
    - ``offsets``: oid (int) -> record offset in the new file.
    - ``buffer``, ``position``: bytes waiting to be written, and where.
    """

    def __init__(self, storage: FileStorage, fd: int) -> None:
        self.storage = storage
        self.fd = fd
        self.todo = [0]
        shelf = storage.shelf
        # Nearly all oids with records are below this: the map's, then the
        # ones allocated after it.  A byte each for those, a set for the rest.
        self.seen = _OidSet(shelf.map_size() + len(shelf.recent) + 1)
        self.seen.add(0)
        self.offsets: dict[int, int] = {}
        self.buffer: list[bytes] = [PREFIX, _int8.pack(0)]
        self.position = 0
        self.buffered = len(PREFIX) + 8

    def copy_some(self) -> bool:
        """Copy a batch of reachable records; False once all are, and the
        transaction's length and the offset map are written.
        """
        shelf = self.storage.shelf
        todo = self.todo
        batch = todo[-_PACK_STEP_RECORDS:]
        del todo[-_PACK_STEP_RECORDS:]
        for index in batch:
            oid = int_to_oid(index)
            position = shelf.get_position(oid)
            if position is None:
                continue  # a dangling reference
            record = shelf.read_record(oid, position)
            self.offsets[index] = self.position + self.buffered
            self.buffer.append(_int8.pack(8 + len(record)))
            self.buffer.append(oid)
            self.buffer.append(record)
            self.buffered += 16 + len(record)
            self._queue_refs(record_refs(record))
        if self.buffered >= _PACK_WRITE_BYTES:
            self._flush()
        if todo:
            return True
        self._flush()
        map_start = self.position
        write_all(self.fd, _int8.pack(map_start - len(PREFIX) - 8), len(PREFIX))
        # Only oids with records count: a dangling reference makes no map word.
        count = max(self.offsets) + 2 if self.offsets else 0
        for piece in gen_offset_map(map_start, count, self.offsets):
            write_all(self.fd, piece, self.position)
            self.position += len(piece)
        return False

    def _queue_refs(self, refs: bytes) -> None:
        add, todo = self.seen.add, self.todo
        for (index,) in _int8.iter_unpack(refs):
            if add(index):
                todo.append(index)

    def _flush(self) -> None:
        data = b"".join(self.buffer)
        write_all(self.fd, data, self.position)
        self.position += len(data)
        self.buffer = []
        self.buffered = 0

    def has_copied(self, oid: bytes) -> bool:
        return int.from_bytes(oid, "big") in self.seen

    def gen_extra_records(self, committed: set[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """The current records of oids committed during the pack, and of any
        objects reachable from them that the copy has not met.
        """
        self.todo = [int.from_bytes(oid, "big") for oid in committed]
        for index in self.todo:
            self.seen.add(index)
        shelf = self.storage.shelf
        while self.todo:
            oid = int_to_oid(self.todo.pop())
            position = shelf.get_position(oid)
            if position is None:
                continue
            record = shelf.read_record(oid, position)
            self._queue_refs(record_refs(record))
            yield oid, record


class _OidSet:
    """A set of oids (ints): a byte each below ``dense``, a set above it."""

    def __init__(self, dense: int) -> None:
        self.flags = bytearray(dense)
        self.others: set[int] = set()

    def add(self, index: int) -> bool:
        """Add ``index``; whether it was new."""
        flags = self.flags
        if index < len(flags):
            if flags[index]:
                return False
            flags[index] = 1
            return True
        if index in self.others:
            return False
        self.others.add(index)
        return True

    def __contains__(self, index: int) -> bool:
        if index < len(self.flags):
            return self.flags[index] == 1
        return index in self.others


def _lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if no other process has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sync_directory(path: str) -> None:
    """Make a rename in ``path``'s directory durable."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A consistent, verified copy of a live database in a new SHELF-1 file.

:func:`backup` reads through a storage: a :class:`ClientStorage` of a
running server, or a file opened with ``FileStorage(readonly=True)``
beside the process that writes it (or a path, opened that way).  It copies
every record the root reaches, oids unchanged, as of one moment; writes
them into ``DEST.partial`` through a FileStorage, fsynced; checks that copy;
and only then renames it to ``DEST``.  So ``DEST`` is always the previous
backup or a good new one.

How one moment is kept while others commit (the *consistent* part): the
copy keeps the records it has read and walks the graph from the root,
reading only what it lacks.  A storage reports, on ``sync()``, the oids
others committed since the last sync, and a server refuses (with
ReadConflictError) to load an oid committed since then.  So every record
read during a walk is as of the walk's starting sync.  If a walk meets a
conflict, the backup syncs, forgets the records that changed, and walks
again from the root; a walk that ends without conflict has read every
reachable record as of its starting sync: one committed state, never a mix.
Walks after the first re-read only what changed, so a busy server does not
make the backup start over.  A read-only FileStorage sees the file as of
its opening (commits only append; a pack renames a new file in, and the
open descriptor keeps the old one), so one walk suffices.

Restore: stop the server (or the app that owns the file), move the backup
over the data file, start it again.  Memory: the reachable records are held
until written (about the size of a packed copy of the database).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from durus.check import check_file
from durus.error import DurusError, DurusKeyError, ReadConflictError
from durus.file_storage import FileStorage, sync_directory
from durus.record import ROOT_OID, record_refs
from durus.shelf import TornTransactionError
from durus.storage import Storage

__all__ = ["BackupError", "BackupReport", "backup", "run_backup_command"]

#: ``progress(phase, done, total)``: phase "copy" (records read; total 0,
#: unknown) or "verify" (records compared of total).
Progress = Callable[[str, int, int], None]

PROGRESS_INTERVAL = 1.0  # seconds between progress calls
MAX_WALKS = 1000
_BATCH = 200


class BackupError(DurusError):
    """The backup could not be made or did not verify; DEST is unchanged."""


@dataclass(frozen=True)
class BackupReport:
    """What :func:`backup` made.

    ``objects``: records copied (every one the root reaches); ``record_bytes``:
    their total size; ``file_bytes``: the size of DEST; ``walks``: walks of
    the graph (1 when nobody committed meanwhile); ``reread``: records read
    again because others changed them; ``digest``: SHA-256 over the copied
    ``(oid, record)`` in oid order, which the check of the copy recomputed.
    """

    source: str
    destination: str
    objects: int
    record_bytes: int
    file_bytes: int
    walks: int
    reread: int
    seconds: float
    digest: str

    def summary(self) -> str:
        return (f"Backed up {self.source} to {self.destination}: {self.objects:,} objects, "
                f"{self.file_bytes:,} bytes, verified, in {self.seconds:.1f}s"
                + (f" ({self.walks} walks, {self.reread:,} records re-read as others committed)"
                   if self.walks > 1 else ""))


class _Throttle:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next = time.monotonic() + PROGRESS_INTERVAL

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None and time.monotonic() >= self.next:
            self.progress(phase, done, total)
            self.next = time.monotonic() + PROGRESS_INTERVAL


def snapshot(storage: Storage, progress: Progress | None = None,
             max_walks: int = MAX_WALKS) -> tuple[dict[bytes, bytes], int, int]:
    """``(records, walks, reread)``: every record the root reaches, as of
    one committed state (see the module docstring), in walk order.
    """
    tick = _Throttle(progress)
    have: dict[bytes, bytes] = {}
    reread = 0
    storage.sync()  # pending invalidations from before are not ours to mix in
    stale: list[bytes] = []
    for walk in range(1, max_walks + 1):
        try:
            _reread(storage, have, stale)
            stale = []
            order = _walk(storage, have, tick)
        except (ReadConflictError, DurusKeyError) as error:
            changed = storage.sync()
            if isinstance(error, DurusKeyError) and not changed:
                if error.oids == [ROOT_OID]:
                    raise BackupError(f"{storage} holds no root object (oid 0): nothing to back up") from None
                raise BackupError(
                    f"{storage} has a reference to oid {error}, "
                    "which has no record: the database is damaged (run durus --check on its file)") from None
            for oid in changed:
                if have.pop(oid, None) is not None:
                    stale.append(oid)
                    reread += 1
            continue
        return {oid: have[oid] for oid in order}, walk, reread
    raise BackupError(f"{storage} changed under every one of {max_walks} walks; try again when it is quieter")


def _reread(storage: Storage, have: dict[bytes, bytes], stale: list[bytes]) -> None:
    """Read again, in one round trip, the records others changed since the
    last walk, so that the next walk finds nearly all it needs here: against
    a busy writer, a walk that went back to the storage for each changed
    record would meet a newer commit every time.  An oid without a record
    now (a pack removed it) is left to the walk, which needs it only if the
    root still reaches it.
    """
    if not stale:
        return
    try:
        have.update(zip(stale, storage.bulk_load(stale)))
    except DurusKeyError:
        pass


def _walk(storage: Storage, have: dict[bytes, bytes], tick: _Throttle) -> list[bytes]:
    """The oids the root reaches, breadth first, reading what ``have`` lacks."""
    seen = {ROOT_OID}
    order: list[bytes] = []
    todo = [ROOT_OID]
    while todo:
        batch, todo = todo[:_BATCH], todo[_BATCH:]
        missing = [oid for oid in batch if oid not in have]
        if missing:
            for oid, record in zip(missing, storage.bulk_load(missing)):
                have[oid] = record
        for oid in batch:
            order.append(oid)
            refs = record_refs(have[oid])
            for start in range(0, len(refs), 8):
                ref = refs[start:start + 8]
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
        tick("copy", len(order), 0)
    return order


def _digest(pairs) -> str:
    sha = hashlib.sha256()
    for oid, record in sorted(pairs):
        sha.update(oid)
        sha.update(len(record).to_bytes(8, "big"))
        sha.update(record)
    return sha.hexdigest()


def _write(records: dict[bytes, bytes], path: str) -> None:
    """One transaction of ``records`` in a new file at ``path``, fsynced."""
    storage = FileStorage(path)
    try:
        storage.begin()
        for oid, record in records.items():
            storage.store(oid, record)
        storage.end()
    finally:
        storage.close()


def _verify(path: str, digest: str, count: int, tick: _Throttle) -> None:
    """Raise BackupError unless the file at ``path`` holds exactly the copy."""
    report = check_file(path)
    if not report.clean:
        raise BackupError(f"the copy did not check clean:\n{report.format()}")
    if report.objects != count or report.unreachable:
        raise BackupError(f"the copy holds {report.objects} objects ({report.unreachable} unreachable), "
                          f"not the {count} copied")
    storage = FileStorage(path, readonly=True)
    try:
        pairs = []
        for oid, record in storage.gen_oid_record():
            pairs.append((oid, record))
            tick("verify", len(pairs), count)
        if storage.load(ROOT_OID) is None or _digest(pairs) != digest:
            raise BackupError("the copy read back differs from the records copied")
    finally:
        storage.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def backup(source: Storage | str | os.PathLike, dest: str | os.PathLike,
           progress: Progress | None = None, verify: bool = True) -> BackupReport:
    """Copy the database ``source`` (a storage, or the path of a SHELF-1 file
    to open read-only, in use or not) to a new file ``dest`` as of one
    committed state; check the copy unless ``verify`` is False; then rename
    it into place.  Raises BackupError (``dest`` untouched) if it cannot.

    A file whose last commit is torn (a crash, and no process holds it) is
    backed up as of its last whole commit; the file itself is left alone.
    """
    started = time.monotonic()
    dest = os.fspath(dest)
    partial = dest + ".partial"
    tick = _Throttle(progress)
    opened: list[str] = []
    if isinstance(source, Storage):
        storage = source
    else:
        storage = _open_file(os.fspath(source), partial, opened)
    try:
        records, walks, reread = snapshot(storage, progress)
        name = str(source if not isinstance(source, Storage) else storage)
    finally:
        if storage is not source:
            storage.close()
        for path in opened:
            _unlink(path)
    digest = _digest(records.items())
    _unlink(partial)  # left by an interrupted backup
    try:
        _write(records, partial)
        if verify:
            _verify(partial, digest, len(records), tick)
        size = os.path.getsize(partial)
        os.replace(partial, dest)
    except BaseException:
        _unlink(partial)
        raise
    sync_directory(dest)
    return BackupReport(name, dest, len(records), sum(map(len, records.values())), size,
                        walks, reread, time.monotonic() - started, digest)


def _open_file(path: str, partial: str, opened: list[str]) -> FileStorage:
    """``path`` read-only; if its last commit is torn and nobody writes it,
    a repaired copy of it (named in ``opened``, to delete).
    """
    try:
        return FileStorage(path, readonly=True)
    except TornTransactionError:
        pass
    copy = partial + ".source"
    with open(path, "rb") as reader, open(copy, "wb") as writer:
        while chunk := reader.read(1 << 20):
            writer.write(chunk)
    opened.append(copy)
    return FileStorage(copy, repair=True)


def print_progress(phase: str, done: int, total: int) -> None:
    """A progress line on stderr (for a terminal, rewritten in place)."""
    text = f"{phase}: {done:,} records" + (f" of {total:,}" if total else "")
    end = "\r" if sys.stderr.isatty() else "\n"
    sys.stderr.write(text + end)
    sys.stderr.flush()


def run_backup_command(argv: Sequence[str]) -> int:
    """``durus --backup DEST [--file F | --host H --port P | --address A]``."""
    from durus.client_storage import ClientStorage
    from durus.protocol import DEFAULT_HOST, DEFAULT_PORT
    from durus.storage_server import SocketAddress

    parser = argparse.ArgumentParser(
        prog="durus --backup",
        description="Copy a live database, as of one commit, to a new verified file DEST. "
                    "Restore: stop the server, move DEST over its file, start it.")
    parser.add_argument("dest", help="the backup file to write (replaced only by a good new copy)")
    parser.add_argument("--file", default=None, help="read this file directly (it may be in use by a server)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"server host (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})")
    parser.add_argument("--address", default=None, help="a unix socket path instead of host and port")
    parser.add_argument("--keyfile", default=None, help="file holding the secret shared with the server")
    parser.add_argument("--no-verify", action="store_true", help="skip checking the copy")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    options = parser.parse_args(argv)
    progress = None if options.quiet else print_progress
    try:
        if options.file is not None:
            report = backup(options.file, options.dest, progress, verify=not options.no_verify)
        else:
            address = SocketAddress.new(options.address, options.host, options.port)
            storage = ClientStorage(address=address, keyfile=options.keyfile)
            try:
                report = backup(storage, options.dest, progress, verify=not options.no_verify)
            finally:
                storage.close()
    except (DurusError, OSError) as error:
        sys.stderr.write(f"durus --backup: {error}\n")
        return 1
    print(report.summary())
    return 0

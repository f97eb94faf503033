"""Copy every record of one storage into another, oids unchanged.

``durus --copy SRC DEST`` moves a database between kinds of storage: a
SHELF-1 file, an old DFS20 file (as a source only), an SQLite file, a
storage server, a PostgreSQL database; SRC and DEST are named as
:mod:`durus.storage_spec` says.  The destination must hold nothing yet.
Records are copied in batches of one commit each, then read back and
compared with the source's, one by one (the verification pass).

Storages that refuse a record, or a reference, to an oid they did not hand
out (a storage server, a FileStorage) are first asked for new oids up to
the highest oid of each batch: both hand out oids in order on an empty
database, so the copy's oids become theirs.

The source should be quiet while it is copied: records read from a busy
server may come from different commits (``durus --backup`` copies a live
database as of one commit, into a SHELF-1 file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from durus.error import DurusError
from durus.record import oid_to_int, record_refs
from durus.storage import Storage

__all__ = ["CopyError", "CopyReport", "copy_storage", "copy_named", "verify_copy", "run_copy_command"]

#: ``progress(phase, records, total)``: phase ``"copy"`` (total 0, unknown)
#: or ``"verify"`` (records compared so far, of total).
Progress = Callable[[str, int, int], None]

#: Records in one commit of the copy, and the most bytes one may hold.
BATCH_RECORDS = 1000
BATCH_BYTES = 8 << 20

PROGRESS_INTERVAL = 1.0  # seconds between progress calls


class CopyError(DurusError):
    """The copy could not be made: the destination is not empty, or a
    storage failed; what was written stays in the destination.
    """


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: ``records`` and ``bytes`` copied, ``seconds`` taken,
    and ``differences`` (oids whose record in the destination is missing or
    not equal, empty if the copy verified, None if it was not verified).
    """

    records: int
    bytes: int
    seconds: float
    differences: list[bytes] | None

    @property
    def verified(self) -> bool:
        return self.differences == []

    def summary(self) -> str:
        text = f"copied {self.records:,} records ({self.bytes:,} bytes) in {self.seconds:.1f} s"
        if self.differences is None:
            return text + ", not verified"
        if not self.differences:
            return text + f"; verified: all {self.records:,} records equal"
        shown = ", ".join(str(oid_to_int(oid)) for oid in self.differences[:10])
        more = " ..." if len(self.differences) > 10 else ""
        return text + f"; VERIFICATION FAILED: {len(self.differences):,} records differ (oids {shown}{more})"


class _Throttle:
    """Calls ``progress`` at most once per :data:`PROGRESS_INTERVAL`."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next = 0.0
        self.shown: tuple[str, int] | None = None

    def __call__(self, phase: str, done: int, total: int, force: bool = False) -> None:
        """Report, if the interval has passed (or ``force``) and it is news."""
        if self.progress is None or self.shown == (phase, done):
            return
        if force or time.monotonic() >= self.next:
            self.progress(phase, done, total)
            self.shown = (phase, done)
            self.next = time.monotonic() + PROGRESS_INTERVAL


def copy_storage(source: Storage, dest: Storage, progress: Progress | None = None,
                 verify: bool = True) -> CopyReport:
    """Copy every record of ``source`` into the empty ``dest``, then (with
    ``verify``) compare each with what ``dest`` loads back.
    """
    if next(iter(dest.gen_oid_record()), None) is not None:
        raise CopyError(f"{dest} is not empty: copy into a new, empty storage (nothing was written)")
    tick = _Throttle(progress)
    start = time.monotonic()
    claim = _OidClaim(dest) if _hands_out_oids(dest) else None
    # A storage that checks every reference at each commit would refuse a
    # batch referring to a record of a later one: one commit for it all
    # (PostgreSQL's: its new records stream in as they are stored, so this
    # costs no more than batches would).
    whole = _checks_references(dest)
    records = size = 0
    if whole:
        dest.begin()
    for batch in _gen_batches(source.gen_oid_record()):
        if claim is not None:
            claim.reach(batch)
        if not whole:
            dest.begin()
        for oid, record in batch.items():
            dest.store(oid, record)
        if not whole:
            dest.end()
        records += len(batch)
        size += sum(len(record) for record in batch.values())
        tick("copy", records, 0)
    if whole:
        dest.end()
    tick("copy", records, 0, force=True)
    differences = verify_copy(source, dest, records, tick) if verify else None
    return CopyReport(records, size, time.monotonic() - start, differences)


def _hands_out_oids(storage: Storage) -> bool:
    """Whether ``storage`` takes records and references only for oids it
    handed out (or already holds).
    """
    from durus.client_storage import ClientStorage
    from durus.file_storage import FileStorage

    return isinstance(storage, (ClientStorage, FileStorage)) or _checks_references(storage)


def _checks_references(storage: Storage) -> bool:
    """Whether ``storage`` refuses a commit referring to an oid it does not
    hold (see ``Storage.checks_references``).
    """
    return getattr(storage, "checks_references", False)


class _OidClaim:
    """Asks a storage for new oids until it has handed out a given one."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.highest = -1

    def reach(self, batch: dict[bytes, bytes]) -> None:
        wanted = max(max(oid_to_int(oid), _highest_ref(record)) for oid, record in batch.items())
        while self.highest < wanted:
            oid = oid_to_int(self.storage.new_oid())
            if oid <= self.highest:
                raise CopyError(
                    f"{self.storage} handed out oid {oid} after {self.highest}: it does not hand out "
                    "oids in order, so the copy cannot keep the source's oids")
            self.highest = oid


def _highest_ref(record: bytes) -> int:
    refs = record_refs(record)
    return max((oid_to_int(refs[i:i + 8]) for i in range(0, len(refs), 8)), default=-1)


def _gen_batches(pairs: Iterator[tuple[bytes, bytes]]) -> Iterator[dict[bytes, bytes]]:
    batch: dict[bytes, bytes] = {}
    size = 0
    for oid, record in pairs:
        batch[oid] = record
        size += len(record)
        if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
            yield batch
            batch, size = {}, 0
    if batch:
        yield batch


def verify_copy(source: Storage, dest: Storage, total: int = 0,
                progress: Callable[..., None] | None = None) -> list[bytes]:
    """The oids whose record ``dest`` does not hold equal to ``source``'s;
    ``progress(phase, done, total, force=False)`` is told how far it is.
    """
    differences = []
    done = 0
    for batch in _gen_batches(source.gen_oid_record()):
        oids = list(batch)
        try:
            loaded = dict(zip(oids, dest.bulk_load(oids)))
        except KeyError:
            loaded = {}
            for oid in oids:
                try:
                    loaded[oid] = dest.load(oid)
                except KeyError:
                    pass
        differences.extend(oid for oid in oids if loaded.get(oid) != batch[oid])
        done += len(oids)
        if progress is not None:
            progress("verify", done, total)
    if progress is not None:
        progress("verify", done, total, force=True)
    return differences


def print_progress(phase: str, done: int, total: int) -> None:
    """``copy: 12,000 records`` on stderr, a line each time."""
    text = f"{phase}: {done:,} records" + (f" of {total:,}" if total else "")
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_copy_command(argv: Sequence[str]) -> int:
    """``durus --copy SRC DEST``: exit status 0 copied and verified, 1 the
    verification found differences, 2 the copy could not be made.
    """
    from durus.storage_spec import FORMS

    parser = argparse.ArgumentParser(
        prog="durus --copy",
        description="Copy every record of storage SRC into the new, empty storage DEST, oids unchanged, "
                    f"and verify the copy. SRC and DEST are each one of {FORMS}; a file's format is told "
                    "by its first bytes, and a new file is SHELF-1 unless named sqlite:///PATH. "
                    "Exit status: 0 copied and verified, 1 records differ, 2 the copy could not be made.")
    parser.add_argument("source", metavar="SRC", help="the storage to copy (opened read-only where it can be)")
    parser.add_argument("dest", metavar="DEST", help="the new storage to fill (must be empty)")
    parser.add_argument("--no-verify", action="store_true", help="skip reading the copy back")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    options = parser.parse_args(argv)
    try:
        report = copy_named(options.source, options.dest, None if options.quiet else print_progress,
                            not options.no_verify)
    except (DurusError, OSError, ValueError) as error:
        sys.stderr.write(f"durus --copy: {error}\n")
        return 2
    print(report.summary())
    return 0 if report.differences in (None, []) else 1


def copy_named(source_spec: str, dest_spec: str, progress: Progress | None = None,
               verify: bool = True) -> CopyReport:
    """Open the storages two strings name (see :mod:`durus.storage_spec`),
    the source read-only where it can be, and copy one into the other.
    """
    from durus.storage_spec import open_storage

    if os.path.exists(source_spec) and os.path.exists(dest_spec) and os.path.samefile(source_spec, dest_spec):
        raise CopyError(f"SRC and DEST are the same file: {source_spec}")
    if "://" not in source_spec and not os.path.exists(source_spec):
        raise CopyError(f"no such file: {source_spec}; check the path (nothing was created)")
    source = open_storage(source_spec, readonly=True)
    try:
        dest = open_storage(dest_spec)
        try:
            return copy_storage(source, dest, progress, verify)
        finally:
            dest.close()
    finally:
        source.close()

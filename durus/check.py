"""Check a whole SHELF-1 file: every transaction, record and reference.

:func:`check_file` reads the file from start to end, read-only, and returns
a :class:`~durus.check_report.CheckReport` listing each problem with its byte offset and oid:

- *framing*: a transaction, entry or record whose lengths do not fit, an
  entry whose record starts with another oid, an offset map that does not
  match the initial transaction or whose holes do not link up;
- *torn*: the last transaction cut short by a crash (``repair=True``, or
  the ``durus`` command's ``--repair``, cuts it off).  A transaction whose
  length runs past the end of the file although whole transactions follow
  its entries is framing damage instead: a repair would cut those off;
- *damaged*: a record whose class pickle, zlib stream or state pickle
  cannot be read (the very checks :class:`~durus.serialize.ObjectReader`
  makes), whose refs are not sorted, or whose refs differ from the
  persistent ids in its state;
- *dangling*: a current record referring to an oid that has no record.

Objects the root does not reach are counted, not reported: that is garbage
a pack removes, not damage.  States are unpickled without importing
anything: classes are recorded by name, persistent ids by oid.  The layout
checked is the one in ``docs/file-format.md``.  Entries are framed by
:func:`durus.shelf_format.parse_entries`, the rules FileStorage opens a file by;
the checker walks transactions, the offset map and records itself, and goes
on past the first problem where the lengths allow.

Memory: about 150 bytes per current object (its offset and refs).  A file
that a process is committing to may show the commit being written as torn.
``durus --check PATH`` runs it from the command line; :func:`check_named`
also checks SQLite and PostgreSQL databases (:mod:`durus.sql_check`), with
the same record rules (:func:`~durus.check_report.record_problem`).
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct

from durus.check_report import (  # noqa: F401  (CheckReport and the rest, importable from here as before)
    DAMAGED,
    DANGLING,
    FRAMING,
    PROGRESS_INTERVAL,
    TORN,
    CheckReport,
    Problem,
    UncheckableFileError,
    count_reachable,
    dangling_references,
    describe_oids,
    record_problem,
)
from durus.error import DamagedRecordError
from durus.file_storage import FileStorage
from durus.record import oid_to_int
from durus.serialize import inspect_data
from durus.shelf import (PREFIX, ShelfError, TornTransactionError, empty_shelf, entry_bounds, parse_entries,
                         zeros_to_end)

__all__ = ["check_file", "check_named"]

_int8 = Struct(">Q")
_ENTRIES_PER_CLOCK_LOOK = 512

# -- the file ---------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """An entry whose framing is sound: its offset, oid and record bounds."""

    offset: int
    oid: bytes
    record_start: int
    data_end: int
    record_end: int


class _FileChecker:
    """One run of :func:`check_file`; see there.

    Instance attributes: ``buffer`` (the mapped file), ``size``, ``report``,
    ``current`` (oid -> offset of its current entry), ``refs`` (oid -> refs
    of its current record, where it has any), ``stand_ins`` (the classes
    met, see :func:`durus.serialize.inspect_data`), ``progress`` and ``next_progress`` (when
    to call it next), ``entries_read``.
    """

    def __init__(self, buffer: mmap.mmap | bytes, report: CheckReport,
                 progress: Callable[[int, int], None] | None) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.report = report
        self.current: dict[bytes, int] = {}
        self.refs: dict[bytes, bytes] = {}
        self.stand_ins: dict[tuple[str, str], type] = {}
        self.progress = progress
        self.next_progress = time.monotonic() + PROGRESS_INTERVAL
        self.entries_read = 0

    def problem(self, kind: str, offset: int, oid: bytes | None, message: str) -> None:
        self.report.problems.append(Problem(kind, offset, oid, message))

    def run(self, verdict: _Verdict) -> None:
        buffer, size = self.buffer, self.size
        if size < len(PREFIX) + 8 + 24:
            if bytes(buffer[:size]) == empty_shelf()[:size]:
                self.problem(TORN, 0, None, "the file ends before its offset map: a crash while it was "
                             "being created (open it with repair=True, or durus -s --repair, to start it afresh)")
                return
            self.problem(FRAMING, size, None, "the file ends inside its offset map")
            return
        map_start = len(PREFIX) + 8 + _int8.unpack_from(buffer, len(PREFIX))[0]
        if map_start + 24 > size:
            self.problem(FRAMING, len(PREFIX), None, "the initial transaction runs past the end of the file")
            return
        self.report.transactions += 1
        initial = self.read_entries(len(PREFIX) + 8, map_start, len(PREFIX))
        map_end = self.check_map(map_start, initial)
        if map_end is None:
            return
        for entry in initial:
            self.check_record(entry)
        if verdict.torn_at is not None and verdict.torn_at >= map_end:
            self.read_transactions(map_end, verdict.torn_at)
            self.tear(verdict.torn_at)
        elif verdict.end is not None:
            # What follows the end (free space, a seal, commit trailers) the
            # storage has read and found sound.
            self.read_transactions(map_end, verdict.end)
        else:
            self.read_transactions(map_end, size)
            if verdict.error is not None and not any(
                    problem.kind in (FRAMING, TORN) for problem in self.report.problems):
                self.problem(FRAMING, verdict.error.offset, None, f"FileStorage cannot open it: {verdict.error}")
        self.check_references()

    # -- transactions and entries ----------------------------------------------

    def parse_entries(self, start: int, end: int, size: int) -> tuple[list[_Entry], str | None, int, int]:
        """:func:`durus.shelf_format.parse_entries` on the file, its sound entries
        with the bounds of their records.
        """
        buffer = self.buffer
        found, problem, offset, damaged_to = parse_entries(buffer, start, end, size)
        entries = [_Entry(entry_offset, oid, *entry_bounds(buffer, entry_offset)) for oid, entry_offset in found]
        return entries, problem, offset, damaged_to

    def read_entries(self, start: int, end: int, transaction: int) -> list[_Entry]:
        """The entries of the initial transaction, reporting a framing problem."""
        entries, problem, offset, _ = self.parse_entries(start, end, self.size)
        if problem is not None:
            self.problem(FRAMING, offset, None, f"{problem} (in the transaction at byte {transaction}); "
                         "the rest of that transaction is not checked")
        return entries

    def read_transactions(self, position: int, size: int) -> None:
        """Check the transactions from ``position`` up to ``size``, as a
        FileStorage reads a file without commit trailers: zeros at the end
        are free space, a cut-off last transaction is torn.
        """
        buffer = self.buffer
        zeros_from = None  # start of a run of empty transactions reaching to here
        while position < size:
            torn = position if zeros_from is None else zeros_from
            if position + 8 > size:
                if zeros_from is None or buffer[position:size].count(0) != size - position:
                    self.tear(torn)
                return
            end = position + 8 + _int8.unpack_from(buffer, position)[0]
            entries, problem, offset, damaged_to = self.parse_entries(position + 8, end, size)
            if problem is None and end > size or problem is not None and (
                    end == size or zeros_to_end(buffer, min(damaged_to, end), size)):
                self.tear(torn)
                return
            elif problem is not None:
                self.problem(FRAMING, offset, None, f"{problem} (in the transaction at byte {position}); "
                             "the rest of that transaction is not checked")
            if end == position + 8:
                if zeros_from is None:
                    zeros_from = position
                    if zeros_to_end(buffer, position, size):
                        return  # free space
            else:
                zeros_from = None
            self.report.transactions += 1
            for entry in entries:
                self.check_record(entry)
            position = end

    def tear(self, position: int) -> None:
        """Report the transaction at ``position``, where whole commits end,
        as torn, unless it only looks so (see :meth:`misread_length`).
        """
        size = self.size
        claimed_end = position + 8 + _int8.unpack_from(self.buffer, position)[0] if position + 8 <= size else size
        found = self.misread_length(position, claimed_end)
        if found is not None:
            entries, end = found
            self.report.transactions += 1
            for entry in entries:
                self.check_record(entry)
            self.read_transactions(end, size)
            return
        # What the records of the unfinished commit say, for their oids.
        entries = self.parse_entries(position + 8, min(claimed_end, size), size)[0]
        unread = []
        for entry in entries:
            try:
                inspect_data(self.buffer[entry.record_start + 12:entry.data_end], self.stand_ins)
            except DamagedRecordError as error:
                unread.append(f"oid {oid_to_int(entry.oid)} at byte {entry.offset}: {error.problem}")
        oids = describe_oids({entry.oid for entry in entries}) if entries else "no whole record"
        detail = f"; it holds {oids}" + (f", and its record of {unread[-1]}" if unread else "")
        self.problem(TORN, position, None, (
            f"the last transaction is incomplete{detail}: a crash during a commit, or damage "
            f"(repair=True, or durus -s --repair, cuts the file back to byte {position}, losing what follows)"))

    def misread_length(self, position: int, claimed_end: int) -> tuple[list[_Entry], int] | None:
        """For a transaction that looks cut short: if its entries end before
        the end of the file and whole transactions follow them to the end,
        its length is damaged and it is no tear (a repair would cut off
        committed transactions): report that, and return its entries and
        where they end.  None for a true tear.
        """
        entries, _, _, _ = self.parse_entries(position + 8, self.size, self.size)
        for count, entry in enumerate(entries, 1):
            if self.whole_transactions_from(entry.record_end):
                self.problem(FRAMING, position, None, (
                    f"the length of the transaction at byte {position} says it ends at byte {claimed_end}, "
                    f"but its entries end at byte {entry.record_end}, where whole transactions follow: "
                    "the length is damaged; this is no torn commit, and repair=True would cut off "
                    "the committed transactions after it"))
                return entries[:count], entry.record_end
        return None

    def whole_transactions_from(self, position: int) -> bool:
        """Whether one or more sound transactions fill the file from
        ``position`` to its end (or to free space).
        """
        buffer, size = self.buffer, self.size
        start = position
        while position + 8 <= size:
            end = position + 8 + _int8.unpack_from(buffer, position)[0]
            if end == position + 8 and zeros_to_end(buffer, position, size):
                break  # free space
            if end > size or parse_entries(buffer, position + 8, end, size)[1] is not None:
                return False
            position = end
        return position > start and (position == size or zeros_to_end(buffer, position, size))

    # -- the offset map -------------------------------------------------------------

    def check_map(self, map_start: int, initial: list[_Entry]) -> int | None:
        """Check the offset map against the initial transaction; where it
        ends, or None if its header makes the rest unreadable.
        """
        buffer = self.buffer
        map_length, width, count = (_int8.unpack_from(buffer, map_start + k)[0] for k in (0, 8, 16))
        map_end = map_start + 8 + map_length
        if not 1 <= width <= 8 or map_length != 16 + width * count or map_end > self.size:
            self.problem(FRAMING, map_start, None, "the offset map's header is inconsistent; "
                         "nothing after it can be found")
            return None
        in_initial = {entry.offset: entry for entry in initial}
        words = buffer[map_start + 24:map_end]
        unwritten = (1 << 8 * width) - 1
        listed = set()
        previous_hole = count - 1
        reported = 0
        for index in range(count):
            word = int.from_bytes(words[index * width:(index + 1) * width], "big")
            problem = None
            if word < map_start:
                entry = in_initial.get(word)
                if entry is None or oid_to_int(entry.oid) != index:
                    problem = f"says oid {index}'s record is at byte {word}, where no entry for it starts"
                elif index == count - 1:
                    problem = f"has a record for oid {index}, its last index, which must be a hole"
                else:
                    listed.add(word)
            else:
                expected = map_start + previous_hole
                if word == unwritten:
                    problem = f"leaves word {index} unwritten"
                elif word != expected:
                    problem = (f"word {index}, a hole, links to {word - map_start}, not to {previous_hole} "
                               "(the hole before it): new oids cannot be allocated from a broken cycle")
                previous_hole = index
            if problem is not None:
                reported += 1
                if reported <= 20:
                    self.problem(FRAMING, map_start + 24 + index * width, None, f"the offset map {problem}")
        if reported > 20:
            self.problem(FRAMING, map_start + 24, None, f"the offset map has {reported - 20} more wrong words")
        for entry in initial:
            if entry.offset not in listed:
                self.problem(FRAMING, entry.offset, entry.oid,
                             "this entry of the initial transaction is not in the offset map: no load finds it")
        return map_end

    # -- records ------------------------------------------------------------------

    def check_record(self, entry: _Entry) -> None:
        buffer = self.buffer
        oid = entry.oid
        self.report.records += 1
        data_end = entry.data_end
        refs = buffer[data_end:entry.record_end]
        self.current[oid] = entry.offset
        if refs:
            self.refs[oid] = refs
        else:
            self.refs.pop(oid, None)
        message = record_problem(oid, buffer[entry.record_start + 12:data_end], refs, self.stand_ins)
        if message is not None:
            self.damaged(entry, message)
        self.entries_read += 1
        if self.progress is not None and self.entries_read % _ENTRIES_PER_CLOCK_LOOK == 0:
            now = time.monotonic()
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_INTERVAL
                self.progress(entry.record_end, self.size)

    def damaged(self, entry: _Entry, message: str) -> None:
        self.problem(DAMAGED, entry.offset, entry.oid, message)

    # -- references -------------------------------------------------------------

    def check_references(self) -> None:
        report, current, refs = self.report, self.current, self.refs
        for problem in report.problems:
            if problem.kind == DAMAGED and current.get(problem.oid) != problem.offset:
                problem.superseded = True
        for oid, ref in dangling_references(current, refs):
            self.problem(DANGLING, current[oid], oid, f"refers to oid {oid_to_int(ref)}, which has no record")
        report.objects = len(current)
        report.references = sum(len(listed) for listed in refs.values()) // 8
        report.unreachable = len(current) - count_reachable(current, refs)


@dataclass
class _Verdict:
    """What a read-only FileStorage makes of the file: where its whole
    commits end (``end``), or where it finds one torn (``torn_at``), or the
    damage that keeps it from opening (``error``).
    """

    end: int | None = None
    torn_at: int | None = None
    error: ShelfError | None = None


def _storage_verdict(path: str) -> _Verdict:
    """Open the file as a read-only FileStorage, which finds where whole
    commits end (reading the seal and commit trailers a writer leaves).
    """
    try:
        storage = FileStorage(path, readonly=True)
    except TornTransactionError as error:
        return _Verdict(torn_at=error.offset)
    except ShelfError as error:
        return _Verdict(error=error)
    try:
        return _Verdict(end=storage.shelf.end)
    finally:
        storage.close()


def check_file(path: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Read the SHELF-1 file at ``path`` (read-only) and report what is
    damaged or dangling; see the module docstring.

    ``progress(bytes_checked, file_size)`` is called about once a second
    while the check runs (never for a file checked in under a second).
    Raises UncheckableFileError if the file is missing, unreadable, empty
    or not a SHELF-1 file.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise UncheckableFileError(f"cannot open {path}: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        size = status.st_size
        if not stat.S_ISREG(status.st_mode):
            raise UncheckableFileError(f"{path} is not a file")
        if size == 0:
            raise UncheckableFileError(f"{path} is empty, not a SHELF-1 file")
        try:
            buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:
            raise UncheckableFileError(f"cannot read {path}: {error}") from None
    finally:
        os.close(fd)
    try:
        prefix = buffer[:len(PREFIX)]
        if prefix != PREFIX[:len(prefix)]:
            raise UncheckableFileError(
                f"{path} is not a SHELF-1 file (it starts with {prefix!r}); only FileStorage files can be checked")
        report = CheckReport(path, size)
        _FileChecker(buffer, report, progress).run(_storage_verdict(path))
    finally:
        buffer.close()
    return report



def check_named(spec: str, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check the database ``spec`` names, as ``durus --check`` takes it: a
    file (SHELF-1, or SQLite, told by its first bytes), ``sqlite:///PATH``
    or ``postgresql://...``; the latter two through :mod:`durus.sql_check`.
    ``progress(done, total)`` as for :func:`check_file`.  Raises
    UncheckableFileError for what cannot be checked, saying why.
    """
    from urllib.parse import unquote, urlsplit

    from durus import sql_check

    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        return sql_check.check_postgres(spec, progress)
    path = spec
    if scheme in ("sqlite", "file"):
        path = unquote(parts.netloc + parts.path)
    elif len(scheme) > 1:
        raise UncheckableFileError(
            f"{spec!r} cannot be checked: give a file, sqlite:///PATH or postgresql://... "
            "(a storage server checks its own file: run durus --check there)")
    if scheme == "sqlite" or _starts_with(path, b"SQLite format 3\0"):
        return sql_check.check_sqlite(path, progress)
    if _starts_with(path, b"DFS20\0"):
        raise UncheckableFileError(
            f"{path} is an old DFS20 file: copy it into a SHELF-1 file with durus --copy "
            "(which verifies every record), then check that")
    return check_file(path, progress)


def _starts_with(path: str, signature: bytes) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(signature)) == signature
    except OSError:
        return False  # check_file says what is wrong with it

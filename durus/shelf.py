"""The SHELF-1 file format: what FileStorage keeps on disk, byte for byte.

A shelf file is the prefix ``SHELF-1\\n``, an *initial transaction*, an
*offset map* for the records of that initial transaction, and then any
number of further transactions appended one per commit.  All integers are
unsigned big-endian; docs/file-format.md gives every layout as a table of
byte offsets and tests/test_file_format.py pins them.

- transaction: ``int8(length of the rest)`` then entries;
- entry: ``int8(8 + len(record)) + oid(8) + record`` (a record starts with
  its oid again, see :mod:`durus.record`);
- offset map at position S: ``int8(16 + W*N) + int8(W) + int8(N)`` and N
  words of W bytes.  Word i is the offset of oid i's record in the initial
  transaction (always below S), or, for an oid without one (a *hole*), a
  link ``S + j`` to the hole j before it, the first hole linking to N - 1.
  Index N - 1 is always a hole, so the links starting there visit every
  hole in descending order; new oids come from that walk, then from N up.

This module reads and writes that format and nothing more: :class:`Shelf`
is an open shelf file with its index of oid -> record offset; locking,
oid bookkeeping and packing live in :mod:`durus.file_storage`.

Why a crash can never leave a file that repair cannot open: the bytes up
to the end of the last synced transaction are never written again
(commits only append, and packing builds a separate file that replaces
this one with an atomic rename only after it is fsynced).  Each commit is
written with a single write of the whole transaction, at the end of the
one before, and is reported durable only once an fdatasync that began
after its write has returned.  Usually each commit syncs itself; a server
may instead append several (``sync=False``) and let one sync cover them
all (group commit).  Either way, whatever a crash leaves behind the last
synced transaction is the remains of the transactions written since, in
order: a prefix of them, or that prefix padded with zeros (or, within the
last transaction, garbage) where the file system kept the new size but
not the data.  Opening detects the damaged tail (a length running past
the end, zero bytes up to the end, or an entry that does not parse
followed by nothing but zeros after where it says it ends) and ``repair=True`` cuts the file back to
the end of the last complete transaction; the whole transactions before
it are kept, synced or not, as they are whole commits in commit order.
Damage anywhere before that cannot come from a crash, so it is reported,
never cut.

Free space: a writable shelf reserves room at the end of the file ahead of
its commits (``posix_fallocate``, which reads as zeros), because an
fdatasync after writing into space the file already has skips the update of
the file's size, and takes about a third less time than after an append.
Zeros after the last transaction, 8 bytes or more of them, are that free
space (read as empty transactions where they come in whole 8-byte steps),
and the next commit is written over them; fewer than 8 are what a crash
leaves of a transaction's length, torn as ever.  The shelf keeps the free
space at 0 or at least 8 bytes, and gives it back when it is closed, so a
closed file is as Durus 4.3 writes it; after a crash Durus 4.3 needs
``repair=True`` to drop it (this package does not).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
from array import array
from collections.abc import Iterable, Iterator
from struct import Struct
from struct import error as struct_error

from durus.error import DurusError
from durus.record import int_to_oid

PREFIX = b"SHELF-1\n"

_int4 = Struct(">I")
_int8 = Struct(">Q")
_unpack_int8 = _int8.unpack
_EMPTY_MAP_START = len(PREFIX) + 8  # S of a file whose initial transaction is empty

# Bytes a load reads at once: most records fit, so most loads take one pread.
_LOAD_CHUNK = 1024
# Smallest entry length: an 8-byte oid, then a record of oid(8) + int4 + no data.
_MIN_ENTRY_LENGTH = 8 + 12

_fdatasync = getattr(os, "fdatasync", os.fsync)
# How much free space a shelf reserves at a time, ahead of its commits.
RESERVE = 1 << 20


class ShelfError(DurusError):
    """The file is not a readable SHELF-1 file; ``path`` and ``offset`` say where.

    Damage before the last transaction cannot come from a crash during a
    commit, so it is never repaired automatically: restore from a backup, or
    copy out what is readable with ``gen_oid_record``.
    """

    def __init__(self, path: str, offset: int, problem: str) -> None:
        super().__init__(f"{path}: {problem} at byte offset {offset}")
        self.path = path
        self.offset = offset


class TornTransactionError(ShelfError):
    """The last transaction was cut short by a crash; open with repair=True."""

    def __init__(self, path: str, offset: int) -> None:
        ShelfError.__init__(
            self,
            path,
            offset,
            "the last transaction is incomplete (a crash during a commit); "
            "open the file with FileStorage(..., repair=True) or the durus "
            "command's --repair to cut it off (only that uncommitted "
            "transaction is lost)",
        )


def word_width(map_start: int, count: int) -> int:
    """W: the fewest bytes that hold ``map_start + count + 1``."""
    return max(1, (map_start + count + 1).bit_length() + 7 >> 3)


def encode_offset_map(map_start: int, count: int, offsets: dict[int, int]) -> bytes:
    """The offset map of ``count`` words for ``offsets`` (oid -> record offset),
    with the cycle of links through the holes.
    """
    words = array("Q", bytes(8 * count))
    previous_hole = count - 1
    for index in range(count):
        offset = offsets.get(index)
        if offset is None:
            words[index] = map_start + previous_hole
            previous_hole = index
        else:
            words[index] = offset
    width = word_width(map_start, count)
    header = _int8.pack(16 + width * count) + _int8.pack(width) + _int8.pack(count)
    return header + _narrow_words(words, width)


def _narrow_words(words: array, width: int) -> bytes:
    """Big-endian words of ``width`` bytes from 8-byte unsigned ints."""
    if sys.byteorder == "little":
        words = array("Q", words)
        words.byteswap()
    wide = words.tobytes()
    if width == 8:
        return wide
    narrow = bytearray(width * len(words))
    for k in range(width):
        narrow[k::width] = wide[8 - width + k::8]
    return bytes(narrow)


def _widen_words(narrow: bytes, width: int, count: int) -> array:
    """8-byte unsigned ints from ``count`` big-endian words of ``width`` bytes."""
    if width == 8:
        wide = narrow
    else:
        wide = bytearray(8 * count)
        for k in range(width):
            wide[8 - width + k::8] = narrow[k::width]
    words = array("Q")
    words.frombytes(wide)
    if sys.byteorder == "little":
        words.byteswap()
    return words


def empty_shelf() -> bytes:
    """The bytes of a new file: prefix, empty initial transaction, empty map."""
    return PREFIX + _int8.pack(0) + encode_offset_map(_EMPTY_MAP_START, 0, {})


def encode_transaction(
    records: Iterable[tuple[bytes, bytes]], position: int
) -> tuple[bytes, dict[bytes, int]]:
    """A transaction of ``(oid, record)`` pairs that will start at ``position``,
    and the offset each entry will have there.
    """
    parts = [b""]
    offsets = {}
    offset = position + 8
    pack = _int8.pack
    for oid, record in records:
        parts.append(pack(8 + len(record)))
        parts.append(oid)
        parts.append(record)
        offsets[oid] = offset
        offset += 16 + len(record)
    parts[0] = pack(offset - position - 8)
    return b"".join(parts), offsets


def write_all(fd: int, data: bytes, position: int) -> None:
    """Write all of ``data`` at ``position``: one pwrite unless the OS writes less."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _parse_entries(
    buffer: mmap.mmap | bytes, start: int, end: int, size: int
) -> tuple[list[tuple[bytes, int]], str | None, int, int]:
    """The ``(oid, offset)`` of the entries of a transaction spanning
    ``start:end``, checked as far as the file (``size`` bytes) holds them; a
    problem found, if any, its offset, and where the entry found damaged
    says it ends (a crash leaves only zeros after that).  An entry cut off
    by the end of the file is no problem: that is what a crash leaves.
    """
    read_int8 = _int8.unpack_from
    read_int4 = _int4.unpack_from
    entries = []
    offset = start
    limit = min(end, size)
    while offset < limit:
        if offset + 8 > limit:
            problem = None if end > size else "an entry runs past the end of its transaction"
            return entries, problem, offset, offset
        entry_end = offset + 8 + read_int8(buffer, offset)[0]
        if entry_end > end or entry_end < offset + 8 + _MIN_ENTRY_LENGTH:
            return entries, "an entry's length does not fit its transaction", offset, entry_end
        if entry_end > size:
            break
        oid = buffer[offset + 8:offset + 16]
        if buffer[offset + 16:offset + 24] != oid:
            return entries, "an entry's record does not start with the entry's oid", offset, entry_end
        data_end = offset + 28 + read_int4(buffer, offset + 24)[0]
        if data_end > entry_end or (entry_end - data_end) % 8:
            return entries, "a record's data length does not fit its entry", offset, entry_end
        entries.append((oid, offset))
        offset = entry_end
    return entries, None, offset, offset


def _zeros_to_end(buffer: mmap.mmap | bytes, start: int, size: int) -> bool:
    """Whether the bytes from ``start`` to ``size`` are all zero."""
    chunk = 1 << 20
    zeros = bytes(chunk)
    for position in range(start, size, chunk):
        piece = buffer[position:min(position + chunk, size)]
        if piece != zeros[:len(piece)]:
            return False
    return True


class Shelf:
    """An open SHELF-1 file and its index of oid -> record offset.

    The index has two parts so that a packed file of millions of objects
    costs 8 bytes per object in memory: the offset map of the initial
    transaction, kept as an array of words, and a dict for the records of
    the transactions appended after it, which override the map.

    Instance attributes:

    - ``fd``: the file descriptor (opened and locked by the caller).
    - ``path``: the file's name, for messages.
    - ``map_start``: S, the position of the offset map.
    - ``map_words``: the N words of the map as ints (offsets below S, links
      at or above S).
    - ``recent``: oid -> offset of its newest record after the map.
    - ``end``: the position where the next transaction goes: the end of
      the last one, where the free space (if any) begins.
    - ``size``: the file's size, ``end`` plus the free space.
    - ``writable``: whether the file was opened for writing (only then is
      free space reserved and given back).
    - ``sync``: whether appends are fdatasynced (not for throwaway files).
    - ``unsynced``: True when transactions were appended with
      ``sync=False`` since the last fdatasync.
    """

    def __init__(self, fd: int, path: str, repair: bool = False, sync: bool = True) -> None:
        self.fd = fd
        self.path = path
        self.sync = sync
        self.unsynced = False
        self.writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        size = os.fstat(fd).st_size
        if size == 0:
            write_all(fd, empty_shelf(), 0)
            self._sync()
            size = os.fstat(fd).st_size
        buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            self._read(buffer, size, repair)
        finally:
            buffer.close()

    def _read(self, buffer: mmap.mmap, size: int, repair: bool) -> None:
        empty = empty_shelf()
        if size < len(empty) and buffer[:size] == empty[:size]:
            # A crash while a new file was being written: only repair rewrites it.
            if not repair:
                raise TornTransactionError(self.path, 0)
            os.ftruncate(self.fd, 0)
            write_all(self.fd, empty, 0)
            self._sync()
            buffer, size = empty, len(empty)
        if buffer[:len(PREFIX)] != PREFIX:
            raise ShelfError(
                self.path, 0,
                "not a SHELF-1 file (Durus FileStorage files start with "
                "'SHELF-1'); older Durus formats must be converted with Durus first",
            )
        if size < len(PREFIX) + 8 + 24:
            raise ShelfError(self.path, size, "the file ends inside its offset map")
        map_start = len(PREFIX) + 8 + _int8.unpack_from(buffer, len(PREFIX))[0]
        if map_start + 24 > size:
            raise ShelfError(self.path, len(PREFIX), "the initial transaction runs past the end of the file")
        map_length, width, count = (
            _int8.unpack_from(buffer, map_start + k)[0] for k in (0, 8, 16))
        map_end = map_start + 8 + map_length
        if not 1 <= width <= 8 or map_length != 16 + width * count or map_end > size:
            raise ShelfError(self.path, map_start, "the offset map's header is inconsistent")
        self.map_start = map_start
        self.map_words = _widen_words(buffer[map_start + 24:map_end], width, count)
        self.recent: dict[bytes, int] = {}
        self.end = self._read_transactions(buffer, map_end, size, repair)
        self.size = os.fstat(self.fd).st_size

    def _read_transactions(self, buffer: mmap.mmap | bytes, position: int, size: int, repair: bool) -> int:
        """Index the transactions after the map; return where the last one ends."""
        read_int8 = _int8.unpack_from
        zeros_from = None  # start of a run of empty transactions reaching to here
        while position < size:
            torn = position if zeros_from is None else zeros_from
            if position + 8 > size:
                if zeros_from is not None and buffer[position:size].count(0) == size - position:
                    break  # free space, 8 bytes or more, that ends short of a whole step
                return self._torn(torn, repair)
            end = position + 8 + read_int8(buffer, position)[0]
            entries, problem, offset, damaged_to = _parse_entries(buffer, position + 8, end, size)
            if problem is not None:
                if end == size or _zeros_to_end(buffer, min(damaged_to, end), size):
                    # The file system kept the new length, not all the data
                    # of this transaction, nor any of the ones after it.
                    return self._torn(torn, repair)
                raise ShelfError(self.path, offset, f"{problem} (in the transaction at {position})")
            if end > size:
                return self._torn(torn, repair)
            if end == position + 8:
                if zeros_from is None:
                    zeros_from = position
                    if _zeros_to_end(buffer, position, size):
                        break  # free space: no need to step through it
            else:
                zeros_from = None
            self.recent.update(entries)
            position = end
        if zeros_from is not None:
            # Free space (or empty transactions, which Durus 4.3's packer
            # writes): nothing in it, so the next commit goes over it, and a
            # repair drops it.
            return self._torn(zeros_from, repair) if repair else zeros_from
        return position

    def _torn(self, position: int, repair: bool) -> int:
        if not repair:
            raise TornTransactionError(self.path, position)
        os.ftruncate(self.fd, position)
        self._sync()
        return position

    def _sync(self) -> None:
        # Cleared before the fdatasync: an append that lands during it sets
        # the flag again, so no append is ever marked synced by mistake.
        self.unsynced = False
        if self.sync:
            try:
                _fdatasync(self.fd)
            except BaseException:
                self.unsynced = True
                raise

    def sync_appended(self) -> None:
        """fdatasync the transactions appended with ``sync=False``, if any.

        May run in another thread than the appends: it covers every append
        whose write returned before it was called.
        """
        if self.unsynced:
            self._sync()

    def get_position(self, oid: bytes) -> int | None:
        """The offset of the entry holding ``oid``'s newest record, if any."""
        position = self.recent.get(oid)
        return self._map_position(oid) if position is None else position

    def _map_position(self, oid: bytes) -> int | None:
        """The offset of ``oid``'s record in the initial transaction, if any."""
        try:
            word = self.map_words[_unpack_int8(oid)[0]]
        except (IndexError, struct_error):
            return None
        return word if word < self.map_start else None

    def load(self, oid: bytes) -> bytes | None:
        """``oid``'s newest record, or None if it has none."""
        position = self.get_position(oid)
        return None if position is None else self.read_record(oid, position)

    def read_record(self, oid: bytes, position: int) -> bytes:
        """The record of the entry at ``position``, which must hold ``oid``."""
        chunk = os.pread(self.fd, _LOAD_CHUNK, position)
        if chunk[8:16] != oid:
            raise ShelfError(self.path, position, f"no entry for oid {int.from_bytes(oid, 'big')} where the index says")
        end = 8 + _unpack_int8(chunk[:8])[0]
        if end <= len(chunk):
            return chunk[16:end]
        rest = os.pread(self.fd, end - len(chunk), position + len(chunk))
        if len(rest) != end - len(chunk):
            raise ShelfError(self.path, position, "a record runs past the end of the file")
        return chunk[16:] + rest

    def append(self, records: Iterable[tuple[bytes, bytes]], sync: bool = True) -> None:
        """Append one transaction with one write, fdatasync it, then index it.

        With ``sync`` False the fdatasync is left to :meth:`sync_appended`,
        so that one sync can serve several appends.  On a failed write the
        file is cut back, so it never keeps part of it.
        """
        data, offsets = encode_transaction(records, self.end)
        end = self.end + len(data)
        if end > self.size or 0 < self.size - end < 8:
            self._reserve(end)
        try:
            write_all(self.fd, data, self.end)
            if sync:
                self._sync()
        except BaseException:
            os.ftruncate(self.fd, self.end)
            self.size = self.end
            raise
        self.recent.update(offsets)
        self.end = end
        self.size = max(self.size, end)
        if not sync:
            self.unsynced = True

    def __contains__(self, oid: bytes) -> bool:
        return self.get_position(oid) is not None

    def map_size(self) -> int:
        """N: the number of words in the offset map."""
        return len(self.map_words)

    def gen_holes(self) -> Iterator[int]:
        """The holes of the offset map in the order readers allocate them:
        the links from N - 1, which descend through every hole back to N - 1.
        """
        count = len(self.map_words)
        if count == 0:
            return
        index = count - 1
        for _ in range(count):
            link = self.map_words[index] - self.map_start
            if not 0 <= link < count:
                raise ShelfError(self.path, self.map_start + 24, f"the offset map's hole {index} holds a broken link")
            yield link
            if link == count - 1:
                return
            index = link
        raise ShelfError(self.path, self.map_start + 24, "the offset map's holes do not link up in a cycle")

    def gen_unused_oids(self) -> Iterator[bytes]:
        """Oids without a record: the map's holes first, then from N upward."""
        for index in self.gen_holes():
            oid = int_to_oid(index)
            if oid not in self.recent:
                yield oid
        index = len(self.map_words)
        while True:
            oid = int_to_oid(index)
            if oid not in self.recent:
                yield oid
            index += 1

    def gen_positions(self) -> Iterator[tuple[bytes, int]]:
        """``(oid, position)`` of every current record, in file order."""
        map_start = self.map_start
        recent = self.recent
        current = [
            (position, int_to_oid(index))
            for index, position in enumerate(self.map_words)
            if position < map_start
        ]
        current = [(position, oid) for position, oid in current if oid not in recent]
        current.extend((position, oid) for oid, position in recent.items())
        current.sort()
        for position, oid in current:
            yield oid, position

    def _reserve(self, end: int) -> None:
        """Make the free space reach past ``end`` by at least ``RESERVE``.

        Where the file system cannot (no room, no support), the free space is
        given back and the commit is appended as a plain write.
        """
        try:
            os.posix_fallocate(self.fd, self.end, end + RESERVE - self.end)
            self.size = end + RESERVE
        except OSError:
            self._give_back_free_space()

    def _give_back_free_space(self) -> bool:
        """Cut the file back to ``end``; whether there was free space to cut."""
        if not (self.writable and self.size > self.end):
            return False
        os.ftruncate(self.fd, self.end)
        self.size = self.end
        return True

    def close(self, sync: bool = True) -> None:
        """Give back the free space (so the file is as Durus 4.3 writes it)
        and, with ``sync``, make that and any transactions appended with
        ``sync=False`` durable in one fdatasync; then close the file.
        """
        try:
            trimmed = self._give_back_free_space()
            if sync and (trimmed or self.unsynced):
                self._sync()
        finally:
            os.close(self.fd)

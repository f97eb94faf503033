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

Crash safety (docs/file-format.md section 8 has the layouts and the
reasoning): while a shelf is open for writing, its file has free space
after the last transaction, holding a *seal* right after that transaction
(written with it) and two page-sized *commit trailer slots* at the very
end.  Each seal and trailer vouches for the bytes since a durable point
with a CRC-32; each disk sync first writes a trailer into the slot not
holding the newest synced one.  Opening finds the newest matching trailer,
then the furthest matching seal; what follows them is what a crash left of
unacknowledged commits: :class:`TornTransactionError`, or cut off with
``repair=True``.  Closing cuts all of it off, so a closed file is what
Durus 4.3 writes; a file without trailers is judged by the shape and
content of its last transaction instead.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import pickletools
import sys
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator
from struct import Struct
from struct import error as struct_error
from typing import NamedTuple

from durus.error import DurusError
from durus.record import int_to_oid
from durus.serialize import inspect_state

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

# A commit trailer slot: a page of its own, so that writing one slot never
# rewrites the page holding the other.
SLOT = 4096
TRAILER_MAGIC = b"SHELF-TR"
# A seal, written right after the last transaction, has the same layout.
SEAL_MAGIC = b"SHELF-SL"
# magic, position of the trailer itself, sequence number, start and end of
# the bytes it vouches for, their CRC-32; then the CRC-32 of these 44 bytes.
_trailer_body = Struct(">8sQQQQI")
TRAILER_SIZE = _trailer_body.size + 4
_ZERO_SLOT = bytes(SLOT)
_CRC_CHUNK = 1 << 20


class ShelfError(DurusError):
    """The file is not a readable SHELF-1 file; ``path`` and ``offset`` say where.

    Damage before the last acknowledged commit cannot come from a crash, so
    it is never repaired automatically: restore from a backup, or copy out
    what is readable with ``gen_oid_record``.
    """

    def __init__(self, path: str, offset: int, problem: str) -> None:
        super().__init__(f"{path}: {problem} at byte offset {offset}")
        self.path = path
        self.offset = offset


class TornTransactionError(ShelfError):
    """The file ends in what a crash left of commits never acknowledged (an
    incomplete transaction); open with repair=True to cut it off.
    """

    def __init__(self, path: str, offset: int) -> None:
        ShelfError.__init__(
            self,
            path,
            offset,
            "the last transaction is incomplete (a crash during a commit); "
            "open the file with FileStorage(..., repair=True) or the durus "
            "command's --repair to cut it off (only commits that were never "
            "acknowledged are lost)",
        )


class Trailer(NamedTuple):
    """A commit trailer or seal read from a file: it sits at ``position`` and
    says that the bytes ``start:end`` have the CRC-32 ``crc``.
    """

    position: int
    sequence: int
    start: int
    end: int
    crc: int


def encode_trailer(
    position: int, sequence: int, start: int, end: int, crc: int, magic: bytes = TRAILER_MAGIC
) -> bytes:
    """The 48 bytes of a commit trailer (or, with ``SEAL_MAGIC``, a seal)."""
    body = _trailer_body.pack(magic, position, sequence, start, end, crc)
    return body + _int4.pack(zlib.crc32(body))


def parse_trailer(data: bytes, position: int, magic: bytes = TRAILER_MAGIC) -> Trailer | None:
    """The trailer (or seal) at the start of ``data``, read from ``position``,
    or None if there is none: wrong magic, wrong checksum, or written for
    another place.
    """
    if data[:8] != magic or len(data) < TRAILER_SIZE:
        return None
    body = data[:_trailer_body.size]
    if _int4.unpack_from(data, _trailer_body.size)[0] != zlib.crc32(body):
        return None
    _, at, sequence, start, end, crc = _trailer_body.unpack(body)
    if at != position or start > end:
        return None
    return Trailer(at, sequence, start, end, crc)


def _crc_of_buffer(buffer: mmap.mmap | bytes, start: int, end: int) -> int:
    crc = 0
    for position in range(start, end, _CRC_CHUNK):
        crc = zlib.crc32(buffer[position:min(position + _CRC_CHUNK, end)], crc)
    return crc


def _crc_of_file(fd: int, start: int, end: int) -> int:
    crc = 0
    for position in range(start, end, _CRC_CHUNK):
        crc = zlib.crc32(os.pread(fd, min(_CRC_CHUNK, end - position), position), crc)
    return crc


def _round_up_to_slot(size: int) -> int:
    return -(-size // SLOT) * SLOT


def _writer_holds_lock(fd: int) -> bool:
    """Whether a process has the file open for writing (holds its flock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def word_width(map_start: int, count: int) -> int:
    """W: the fewest bytes that hold ``map_start + count + 1``."""
    return max(1, (map_start + count + 1).bit_length() + 7 >> 3)


def encode_offset_map(map_start: int, count: int, offsets: dict[int, int]) -> bytes:
    """The offset map of ``count`` words for ``offsets`` (oid -> record offset),
    with the cycle of links through the holes.
    """
    return b"".join(gen_offset_map(map_start, count, offsets))


def gen_offset_map(
    map_start: int, count: int, offsets: dict[int, int], chunk: int = 1 << 16
) -> Iterator[bytes]:
    """The offset map of :func:`encode_offset_map` in pieces: its header, then
    its words ``chunk`` at a time, so that building a map takes memory for
    the live records and one piece, however large the map (N) is.
    """
    width = word_width(map_start, count)
    yield _int8.pack(16 + width * count) + _int8.pack(width) + _int8.pack(count)
    live = sorted(offsets)
    next_live = 0
    previous_hole = count - 1
    for low in range(0, count, chunk):
        high = min(low + chunk, count)
        words = array("Q")
        index = low
        while index < high:
            stop = live[next_live] if next_live < len(live) and live[next_live] < high else high
            if stop == index:
                words.append(offsets[index])
                next_live += 1
                index += 1
            else:
                # The holes index .. stop - 1, each linking to the one before.
                words.append(map_start + previous_hole)
                words.extend(range(map_start + index, map_start + stop - 1))
                previous_hole = stop - 1
                index = stop
        yield _narrow_words(words, width)


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


def parse_entries(
    buffer: mmap.mmap | bytes, start: int, end: int, size: int
) -> tuple[list[tuple[bytes, int]], str | None, int, int]:
    """Read the entries of the transaction spanning ``start:end`` of a file
    of ``size`` bytes; the one reading of the entry framing, for the shelf
    and for :mod:`durus.check`.

    Returns ``(entries, problem, offset, damaged_to)``: ``entries`` are the
    ``(oid, offset)`` of the sound entries in file order, up to the first
    one damaged or cut off.

    - A sound transaction: ``problem`` is None, ``offset`` and
      ``damaged_to`` are ``end``.
    - Cut off by the end of the file (``end > size``): no problem, as that
      is what a crash leaves; ``problem`` is None, ``offset`` and
      ``damaged_to`` are where the first entry not wholly in the file
      starts (``size`` if none of it is there).  The caller tells this from
      a sound transaction by ``end > size``.
    - Damage (an entry or record length that does not fit, a record that
      starts with another oid): ``problem`` says what, ``offset`` is where
      the damaged entry starts and ``damaged_to`` where its length says it
      ends (``offset`` if it has no whole length): if only zeros follow
      there, a crash cut the transaction short.
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


def entry_bounds(buffer: mmap.mmap | bytes, offset: int) -> tuple[int, int, int]:
    """Where the record of the entry at ``offset`` starts, where its data
    ends (its refs start) and where it ends, for an entry
    :func:`parse_entries` found sound.
    """
    # The same arithmetic as parse_entries, which inlines it: that loop runs
    # for every entry of a file being opened.
    data_end = offset + 28 + _int4.unpack_from(buffer, offset + 24)[0]
    return offset + 16, data_end, offset + 8 + _int8.unpack_from(buffer, offset)[0]


def zeros_to_end(buffer: mmap.mmap | bytes, start: int, size: int) -> bool:
    """Whether the bytes from ``start`` to ``size`` are all zero."""
    chunk = 1 << 20
    zeros = bytes(chunk)
    for position in range(start, size, chunk):
        piece = buffer[position:min(position + chunk, size)]
        if piece != zeros[:len(piece)]:
            return False
    return True


def write_parts(fd: int, parts: list[bytes], position: int) -> None:
    """Write ``parts`` one after another at ``position``, with one pwritev
    unless the OS writes less.
    """
    total = sum(len(part) for part in parts)
    written = os.pwritev(fd, parts, position) if hasattr(os, "pwritev") else 0
    if written < total:
        write_all(fd, b"".join(parts)[written:], position + written)


# -- what a record written by Durus looks like (for files without trailers) ----

def _pickle_end(data: bytes) -> int | None:
    """Where the pickle at the start of ``data`` ends (after its STOP), or
    None if its opcodes do not parse up to a STOP.
    """
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name == "STOP":
                return position + 1
    except Exception:  # any error means: not a whole pickle
        return None
    return None


# A state larger than this is not read for its references (that builds its objects).
_REFERENCE_CHECK_LIMIT = 1 << 20


def record_problem(record: bytes) -> str | None:
    """What shows that ``record`` is not whole (zeros or garbage where a crash
    cut it), or None.

    Only what every record written by Durus has is checked, so a whole record
    is never reported: the refs are ascending; data that starts as a pickle
    is a class pickle then a state pickle, zlib-compressed or not, each
    complete (zlib checks its own checksum); and the oids of the state's
    persistent ids are the refs.  Data that does not start as a pickle
    (written by other tools) is only checked not to be all zeros.
    """
    data_end = 12 + _int4.unpack_from(record, 8)[0]
    oid, data, refs = record[:8], record[12:data_end], record[data_end:]
    ref_list = [refs[k:k + 8] for k in range(0, len(refs), 8)]
    if any(a >= b for a, b in zip(ref_list, ref_list[1:])):
        return "its refs are not in ascending order"
    if not data.strip(b"\0"):
        return "its data is zeros"
    if data[0] != 0x80:
        return None
    class_end = _pickle_end(data)
    if class_end is None:
        return "its class pickle is incomplete"
    state = data[class_end:]
    if state[:1] == b"x":
        decompressor = zlib.decompressobj()
        try:
            state = decompressor.decompress(state)
        except zlib.error:
            return "its state fails to decompress"
        if not decompressor.eof or decompressor.unused_data:
            return "its state is not one whole zlib stream"
    if state[:1] != b"\x80":
        return "its state is not a pickle" if state[:1] in (b"", b"\0") else None
    if _pickle_end(state) != len(state):
        return "its state pickle is incomplete"
    if len(state) <= _REFERENCE_CHECK_LIMIT:
        try:
            referred = inspect_state(state)
        except Exception:  # a pickle the stand-ins cannot build: no verdict
            return None
        if referred - {oid} != set(ref_list):
            return "its refs are not the references of its state"
    return None


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
    - ``writable``: whether the file was opened for writing.
    - ``sync``: whether appends are fdatasynced (not for throwaway files).
    - ``trailers``: whether this shelf keeps free space with a seal and
      commit trailers in it (a writable shelf that syncs).
    - ``durable_end``: the end of the transactions a synced trailer vouches for.
    - ``sync_error``: the error of a failed fdatasync, or None.
    """

    def __init__(self, fd: int, path: str, repair: bool = False, sync: bool = True) -> None:
        self.fd = fd
        self.path = path
        self.sync = sync
        self.sync_error: OSError | None = None
        self.writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        self.trailers = self.writable and sync
        # Held while trailers are written and synced, and while the file's
        # size changes: a server's sync thread and its commit thread meet here.
        self._lock = threading.Lock()
        self._sequence = 0  # of the newest trailer written
        self._slots: int | None = None  # position of the first of the two slots
        self._durable_slot = 0  # which slot holds the newest synced trailer
        size = os.fstat(fd).st_size
        if size == 0:
            write_all(fd, empty_shelf(), 0)
            self._fdatasync()
            size = os.fstat(fd).st_size
        buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            self._read(buffer, size, repair)
        finally:
            buffer.close()
        self.durable_end = self.end
        # (start, end, crc): the CRC-32 of the bytes start..end, where start
        # is a durable end and end the end of the last transaction written.
        self._span = (self.end, self.end, 0)
        if self.trailers and self.size > self.end:
            with self._lock:
                self._drop_free_space()

    # -- reading ---------------------------------------------------------------

    def _read(self, buffer: mmap.mmap, size: int, repair: bool) -> None:
        empty = empty_shelf()
        if size < len(empty) and buffer[:size] == empty[:size]:
            # A crash while a new file was being written: only repair rewrites it.
            if not repair:
                raise TornTransactionError(self.path, 0)
            os.ftruncate(self.fd, 0)
            write_all(self.fd, empty, 0)
            self._fdatasync()
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
        trailers, free_from = self._find_slot_trailers(buffer, map_end, size)
        if trailers:
            self.end = self._read_vouched(buffer, map_end, trailers, free_from, repair)
        else:
            self.end = self._read_transactions(buffer, map_end, size, repair)
        self.size = os.fstat(self.fd).st_size

    @staticmethod
    def _find_slot_trailers(buffer: mmap.mmap, map_end: int, size: int) -> tuple[list[Trailer], int]:
        """The commit trailers in the last pages of the file, and where the
        run of pages that hold only zeros or a trailer begins.

        A writer keeps its file's size a whole number of pages; a last page
        cut short is what a crash left of moving the slots (a write of one
        whole page that sets the new size), so it counts as free when there
        are trailers below it.
        """
        found = []
        position = size // SLOT * SLOT
        free_from = position
        position -= SLOT
        while position >= map_end:
            page = buffer[position:position + SLOT]
            if page != _ZERO_SLOT:
                if page[TRAILER_SIZE:] != _ZERO_SLOT[TRAILER_SIZE:] or page[:1] != TRAILER_MAGIC[:1]:
                    break
                trailer = parse_trailer(page, position)
                if trailer is not None:
                    found.append(trailer)
                # else a slot whose trailer was being written (a transaction
                # starts with a zero byte, never with the magic's first)
            free_from = position
            position -= SLOT
        return found, free_from

    def _read_vouched(
        self, buffer: mmap.mmap, map_end: int, trailers: list[Trailer], free_from: int, repair: bool
    ) -> int:
        """Index a file a writer left open (a crash): up to the newest
        trailer that matches its data, then as far as a matching seal says;
        return that end.  Anything but zeros after it is unacknowledged.
        """
        trailers.sort(key=lambda trailer: trailer.sequence, reverse=True)
        self._sequence = trailers[0].sequence
        for trailer in trailers:
            if map_end <= trailer.start and trailer.end <= trailer.position and (
                    _crc_of_buffer(buffer, trailer.start, trailer.end) == trailer.crc):
                break
        else:
            raise ShelfError(
                self.path, trailers[0].position,
                "no commit trailer matches the data it vouches for (damage, not a crash)")
        self._index_whole(buffer, map_end, trailer.end)
        durable_end = end = trailer.end
        seal = parse_trailer(buffer[end:end + TRAILER_SIZE], end, SEAL_MAGIC)
        clean_from = end + TRAILER_SIZE if seal is not None else end
        # Commits written after the last sync: the last one's seal vouches
        # for all of them.  Their lengths only guide the search for it.
        position = end
        while position + 8 <= free_from:
            length = _int8.unpack_from(buffer, position)[0]
            following = position + 8 + length
            if length == 0 or following + TRAILER_SIZE > free_from:
                break
            seal = parse_trailer(buffer[following:following + TRAILER_SIZE], following, SEAL_MAGIC)
            if seal is not None and seal.end == following and map_end <= seal.start <= durable_end and (
                    _crc_of_buffer(buffer, seal.start, following) == seal.crc):
                end, clean_from = following, following + TRAILER_SIZE
            position = following
        self._index_whole(buffer, durable_end, end)
        if clean_from >= free_from or zeros_to_end(buffer, clean_from, free_from):
            return end
        return self._torn(end, repair)

    def _index_whole(self, buffer: mmap.mmap, position: int, end: int) -> None:
        """Index the transactions from ``position`` to ``end``, which a
        trailer or seal vouches for; any problem in them is damage.
        """
        read_int8 = _int8.unpack_from
        while position < end:
            following = position + 8 + read_int8(buffer, position)[0]
            if following > end:
                raise ShelfError(self.path, position, f"a transaction runs past the end vouched for ({end})")
            entries, problem, offset, _ = parse_entries(buffer, position + 8, following, following)
            if problem is not None:
                raise ShelfError(self.path, offset, f"{problem} (in the transaction at {position})")
            self.recent.update(entries)
            position = following

    def _read_transactions(self, buffer: mmap.mmap | bytes, position: int, size: int, repair: bool) -> int:
        """Index the transactions after the map of a file without trailers;
        return where the last one ends.  The last one that holds anything is
        checked by its shape and by the content of its last record.
        """
        read_int8 = _int8.unpack_from
        zeros_from = None  # start of a run of empty transactions reaching to here
        last = None  # (start, entries) of the last non-empty transaction, not indexed yet
        while position < size:
            torn = position if zeros_from is None else zeros_from
            if position + 8 > size:
                if zeros_from is not None and buffer[position:size].count(0) == size - position:
                    break  # free space, 8 bytes or more, that ends short of a whole step
                return self._torn_after(last, torn, repair)
            end = position + 8 + read_int8(buffer, position)[0]
            entries, problem, offset, damaged_to = parse_entries(buffer, position + 8, end, size)
            if problem is not None:
                if end == size or zeros_to_end(buffer, min(damaged_to, end), size):
                    # The file system kept the new length, not all the data
                    # of this transaction, nor any of the ones after it.
                    return self._torn_after(last, torn, repair)
                raise ShelfError(self.path, offset, f"{problem} (in the transaction at {position})")
            if end > size:
                return self._torn_after(last, torn, repair)
            if end == position + 8:
                if zeros_from is None:
                    zeros_from = position
                    if zeros_to_end(buffer, position, size):
                        break  # free space: no need to step through it
            else:
                zeros_from = None
                if last is not None:
                    self.recent.update(last[1])
                last = (position, entries)
            position = end
        if last is not None:
            start, entries = last
            oid, offset = entries[-1]
            length = read_int8(buffer, offset)[0]
            problem = record_problem(buffer[offset + 16:offset + 8 + length])
            if problem is not None:
                # Zeros after a crash where its end should be: the
                # transaction was cut short, however well its lengths read.
                return self._torn(start, repair)
            self.recent.update(entries)
        if zeros_from is not None:
            # Free space (or empty transactions, which Durus 4.3's packer
            # writes): nothing in it, so the next commit goes over it, and a
            # repair drops it.
            return self._torn(zeros_from, repair) if repair else zeros_from
        return position

    def _torn_after(self, last: tuple[int, list[tuple[bytes, int]]] | None, position: int, repair: bool) -> int:
        if last is not None:
            self.recent.update(last[1])
        return self._torn(position, repair)

    def _torn(self, position: int, repair: bool) -> int:
        """The end of the file after cutting off what follows ``position``
        (with ``repair``), or TornTransactionError; a reader beside a live
        writer just stops there, as those are commits being written.
        """
        if repair:
            os.ftruncate(self.fd, position)
            self._fdatasync()
            return position
        if not self.writable and _writer_holds_lock(self.fd):
            return position
        raise TornTransactionError(self.path, position)

    # -- syncing, trailers and free space ----------------------------------------

    def _fdatasync(self) -> None:
        if self.sync:
            try:
                _fdatasync(self.fd)
            except OSError as error:
                self.sync_error = error
                raise

    @property
    def unsynced(self) -> bool:
        """Whether transactions were appended since the last commit trailer
        was synced (with ``sync=False``).
        """
        return self._span[1] > self.durable_end

    def sync_appended(self) -> None:
        """Make the transactions appended with ``sync=False`` durable, if any:
        a commit trailer, then one fdatasync.

        May run in another thread than the appends: it covers every append
        whose write returned before it was called.
        """
        if self.trailers and self.unsynced:
            with self._lock:
                self._write_trailer_and_sync()

    def _write_trailer_and_sync(self) -> None:
        """With the lock held: vouch for every transaction written so far in
        the slot not holding the newest synced trailer, then fdatasync.
        """
        start, end, crc = self._span
        if end == self.durable_end:
            return
        if self._slots is None:  # none reserved yet, or given back after a failed write
            self._reserve(end)
            return
        slot = 1 - self._durable_slot
        position = self._slots + slot * SLOT
        sequence = self._sequence + 1
        write_all(self.fd, encode_trailer(position, sequence, start, end, crc), position)
        self._sequence = sequence
        self._fdatasync()
        self._durable_slot = slot
        self.durable_end = end

    def _drop_free_space(self) -> None:
        """Cut off the free space a crash left, with its trailers and seal,
        before any new ones are written; the first append reserves anew.
        """
        os.ftruncate(self.fd, self.end)
        self.size = self.end
        self._fdatasync()

    def _reserve(self, end: int) -> None:
        """With the lock held: extend the free space past ``end`` (and a
        seal) by at least ``RESERVE``, moving the trailer slots to its end.

        A trailer vouching for every transaction written so far goes into
        the new last slot first, and is synced, before the old slots (which
        hold the synced trailer until then) are cleared.
        """
        old_size, old_slots = self.size, self._slots
        size = _round_up_to_slot(end + TRAILER_SIZE + RESERVE + 2 * SLOT)
        start, covered, crc = self._span
        position = size - SLOT
        sequence = self._sequence + 1
        # Writing the whole last page sets the file's new size.
        trailer = encode_trailer(position, sequence, start, covered, crc)
        write_all(self.fd, trailer + _ZERO_SLOT[TRAILER_SIZE:], position)
        self._sequence = sequence
        if position > old_size:
            try:
                # Zeros the file system has room for, so that writing into
                # them needs no new blocks; a sparse file works too, if slower.
                os.posix_fallocate(self.fd, old_size, position - old_size)
            except OSError:
                pass
        self.size = size
        self._fdatasync()
        self._slots, self._durable_slot, self.durable_end = size - 2 * SLOT, 1, covered
        if old_slots is not None:
            # Only a trailer's bytes, a write within one page each: a crash
            # leaves each old slot whole or cleared, which opening expects.
            for slot in (0, 1):
                write_all(self.fd, bytes(TRAILER_SIZE), old_slots + slot * SLOT)

    def _give_back_free_space(self) -> None:
        """With the lock held: cut the file back to ``end``."""
        os.ftruncate(self.fd, self.end)
        self.size = self.end
        self._slots = None

    # -- the index ----------------------------------------------------------------

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
        """Append one transaction, sealed, with one write; then, with
        ``sync``, a commit trailer and one fdatasync.

        With ``sync`` False the trailer and fdatasync are left to
        :meth:`sync_appended`, so that one sync can serve several appends.
        On a failed write the file is cut back, so it never keeps part of it.
        """
        start = self.end
        data, offsets = encode_transaction(records, start)
        end = start + len(data)
        if self.trailers:
            if self._slots is None or end + TRAILER_SIZE > self._slots:
                with self._lock:
                    self._reserve(end)
            span_start, span_end, crc = self._span
            durable_end = self.durable_end
            if durable_end > span_start:
                # A sync made more durable since the span began: vouch from there.
                crc = _crc_of_file(self.fd, durable_end, span_end) if span_end > durable_end else 0
                span_start = durable_end
            crc = zlib.crc32(data, crc)
            parts = [data, encode_trailer(end, 0, span_start, end, crc, SEAL_MAGIC)]
        else:
            parts = [data]
        span = self._span
        try:
            write_parts(self.fd, parts, start)
            if self.trailers:
                self._span = (span_start, end, crc)
                if sync:
                    with self._lock:
                        self._write_trailer_and_sync()
        except BaseException:
            self._span = span
            with self._lock:
                self._give_back_free_space()
                self.durable_end = min(self.durable_end, start)
            raise
        self.recent.update(offsets)
        self.end = end
        self.size = max(self.size, end)

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

    def close(self, sync: bool = True) -> None:
        """Make every appended transaction durable, then give back the free
        space (so the file is as Durus 4.3 writes it) and sync that; then
        close the file.

        Without ``sync`` (after a failed fdatasync, when nothing written since
        the last good one can be trusted) the file is closed as it is: its
        trailers then tell the next open what is durable.
        """
        try:
            if self.trailers and sync:
                with self._lock:
                    self._write_trailer_and_sync()
                    self._give_back_free_space()
                    self._fdatasync()
        finally:
            os.close(self.fd)

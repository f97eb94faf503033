"""The SHELF-1 file format, piece by piece: bytes in, bytes out.

A shelf file is the prefix ``SHELF-1\\n``, an *initial transaction*, an
*offset map* for the records of that initial transaction, and then any
number of further transactions appended one per commit.  All integers are
unsigned big-endian; docs/file-format.md gives every layout as a table of
byte offsets and tests/test_file_format.py pins them.

- transaction: ``int8(length of the rest)`` then entries;
- entry: ``int8(8 + len(record)) + oid(8) + record`` (a record starts with
  its oid again, see :mod:`durus.record`);
- offset map: see :mod:`durus.shelf_index`;
- commit trailers and seals, which vouch for the bytes written since a
  durable point with a CRC-32: see :mod:`durus.shelf` and
  docs/file-format.md section 8.

This module encodes and decodes those pieces and checks what a record
written by Durus looks like; :mod:`durus.shelf_reader` puts them together
to open a file and :class:`durus.shelf.Shelf` to write one.
"""

from __future__ import annotations

import mmap
import os
import pickletools
import zlib
from collections.abc import Iterable
from struct import Struct
from typing import NamedTuple

from durus.error import DurusError
from durus.serialize import inspect_state

PREFIX = b"SHELF-1\n"

_int4 = Struct(">I")
_int8 = Struct(">Q")
# S of a file whose initial transaction is empty.
EMPTY_MAP_START = len(PREFIX) + 8

# Smallest entry length: an 8-byte oid, then a record of oid(8) + int4 + no data.
_MIN_ENTRY_LENGTH = 8 + 12

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



def crc_of_buffer(buffer: mmap.mmap | bytes, start: int, end: int) -> int:
    """The CRC-32 of ``buffer[start:end]``, a piece at a time."""
    crc = 0
    for position in range(start, end, _CRC_CHUNK):
        crc = zlib.crc32(buffer[position:min(position + _CRC_CHUNK, end)], crc)
    return crc


def crc_of_file(fd: int, start: int, end: int) -> int:
    """The CRC-32 of the bytes ``start:end`` of the file ``fd``, a piece at a time."""
    crc = 0
    for position in range(start, end, _CRC_CHUNK):
        crc = zlib.crc32(os.pread(fd, min(_CRC_CHUNK, end - position), position), crc)
    return crc


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


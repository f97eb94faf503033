"""An open SHELF-1 file: what FileStorage keeps on disk, byte for byte.

The format's pieces are in :mod:`durus.shelf_format` (records,
transactions, trailers) and :mod:`durus.shelf_index` (the offset map);
opening a file is :mod:`durus.shelf_reader`.  :class:`Shelf` is an open
shelf file with its index of oid -> record offset, appending transactions
and making them durable; locking, oid bookkeeping and packing live in
:mod:`durus.file_storage`.  The names those modules define for shelf files
stay importable from here.

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
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator
from struct import Struct

# The names of the format's modules, importable from here as before.
from durus.shelf_format import (  # noqa: F401
    PREFIX, SEAL_MAGIC, SLOT, TRAILER_MAGIC, TRAILER_SIZE, ShelfError, TornTransactionError, Trailer, crc_of_file,
    encode_trailer, encode_transaction, entry_bounds, parse_entries, parse_trailer, record_problem, write_all,
    write_parts, zeros_to_end,
)
from durus.shelf_index import ShelfIndex, empty_shelf, encode_offset_map, gen_offset_map, word_width  # noqa: F401
from durus.shelf_reader import ShelfReader

_int8 = Struct(">Q")
_unpack_int8 = _int8.unpack

# Bytes a load reads at once: most records fit, so most loads take one pread.
_LOAD_CHUNK = 1024

_fdatasync = getattr(os, "fdatasync", os.fsync)
# How much free space a shelf reserves at a time, ahead of its commits.
RESERVE = 1 << 20

_ZERO_SLOT = bytes(SLOT)


def _round_up_to_slot(size: int) -> int:
    return -(-size // SLOT) * SLOT


class Shelf:
    """An open SHELF-1 file and its index of oid -> record offset
    (:class:`~durus.shelf_index.ShelfIndex`).

    Instance attributes:

    - ``fd``: the file descriptor (opened and locked by the caller).
    - ``path``: the file's name, for messages.
    - ``index``: where each oid's newest record is.
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
        reader = ShelfReader(fd, path, self.writable, self._fdatasync)
        buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            self.index, self.end = reader.read(buffer, size, repair)
        finally:
            buffer.close()
        self._sequence = reader.sequence
        self.size = os.fstat(fd).st_size
        self.durable_end = self.end
        # (start, end, crc): the CRC-32 of the bytes start..end, where start
        # is a durable end and end the end of the last transaction written.
        self._span = (self.end, self.end, 0)
        if self.trailers and self.size > self.end:
            with self._lock:
                self._drop_free_space()

    # -- the index ----------------------------------------------------------------

    @property
    def map_start(self) -> int:
        """S, the position of the offset map."""
        return self.index.map_start

    @property
    def map_words(self) -> array:
        """The N words of the map as ints (offsets below S, links at or above S)."""
        return self.index.map_words

    @property
    def recent(self) -> dict[bytes, int]:
        """oid -> offset of its newest record after the map."""
        return self.index.recent

    def get_position(self, oid: bytes) -> int | None:
        """The offset of the entry holding ``oid``'s newest record, if any."""
        return self.index.get_position(oid)

    def __contains__(self, oid: bytes) -> bool:
        return self.index.get_position(oid) is not None

    def map_size(self) -> int:
        """N: the number of words in the offset map."""
        return len(self.index.map_words)

    def gen_holes(self) -> Iterator[int]:
        """The holes of the offset map in the order readers allocate them."""
        return self.index.gen_holes()

    def gen_unused_oids(self) -> Iterator[bytes]:
        """Oids without a record: the map's holes first, then from N upward."""
        return self.index.gen_unused_oids()

    def gen_positions(self) -> Iterator[tuple[bytes, int]]:
        """``(oid, position)`` of every current record, in file order."""
        return self.index.gen_positions()

    # -- records ------------------------------------------------------------------

    def load(self, oid: bytes) -> bytes | None:
        """``oid``'s newest record, or None if it has none."""
        position = self.index.get_position(oid)
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
                crc = crc_of_file(self.fd, durable_end, span_end) if span_end > durable_end else 0
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
        self.index.recent.update(offsets)
        self.end = end
        self.size = max(self.size, end)

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

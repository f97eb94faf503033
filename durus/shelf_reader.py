"""Opening a shelf file: indexing its transactions and finding its end.

A shelf a writer closed ends with its last transaction.  One a writer left
open (a crash) has free space after it holding a seal and two commit
trailer slots: the newest trailer that matches its data, then the furthest
matching seal, say how far the acknowledged commits reach, and what follows
them is what a crash left of unacknowledged ones.  A file without trailers
(written by Durus 4.3, or a writer that did not sync) is judged by the
shape and content of its last transaction instead.  docs/file-format.md
section 8 has the layouts and the reasoning.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from array import array
from collections.abc import Callable
from struct import Struct

from durus.shelf_format import (
    PREFIX,
    SEAL_MAGIC,
    SLOT,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    ShelfError,
    Trailer,
    TornTransactionError,
    crc_of_buffer,
    parse_entries,
    parse_trailer,
    record_problem,
    write_all,
    zeros_to_end,
)
from durus.shelf_index import ShelfIndex, empty_shelf, widen_words

_int8 = Struct(">Q")
_ZERO_SLOT = bytes(SLOT)


def writer_holds_lock(fd: int) -> bool:
    """Whether a process has the file open for writing (holds its flock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class ShelfReader:
    """Reads one shelf file as it is opened: its index, where its
    transactions end, and the sequence number of its newest trailer.

    What a crash left after the acknowledged commits is cut off with
    ``repair`` (then synced with ``fdatasync``), or is a
    TornTransactionError; a reader beside a live writer just stops there.
    """

    def __init__(self, fd: int, path: str, writable: bool, fdatasync: Callable[[], None]) -> None:
        self.fd = fd
        self.path = path
        self.writable = writable
        self._fdatasync = fdatasync
        self.recent: dict[bytes, int] = {}
        #: The sequence number of the newest trailer found (0 if none).
        self.sequence = 0

    def read(self, buffer: mmap.mmap, size: int, repair: bool) -> tuple[ShelfIndex, int]:
        """The index of the file in ``buffer`` (``size`` bytes long) and the
        end of its last acknowledged transaction.
        """
        empty = empty_shelf()
        if size < len(empty) and buffer[:size] == empty[:size]:
            buffer, size = self._rewrite_new_file(empty, repair)
        map_start, map_end, map_words = self._read_map(buffer, size)
        trailers, free_from = self._find_slot_trailers(buffer, map_end, size)
        if trailers:
            end = self._read_vouched(buffer, map_end, trailers, free_from, repair)
        else:
            end = self._read_transactions(buffer, map_end, size, repair)
        return ShelfIndex(self.path, map_start, map_words, self.recent), end

    def _rewrite_new_file(self, empty: bytes, repair: bool) -> tuple[bytes, int]:
        """A crash while a new file was being written: only repair rewrites
        it, as ``empty``; the bytes to read then and their length.
        """
        if not repair:
            raise TornTransactionError(self.path, 0)
        os.ftruncate(self.fd, 0)
        write_all(self.fd, empty, 0)
        self._fdatasync()
        return empty, len(empty)

    def _read_map(self, buffer: mmap.mmap | bytes, size: int) -> tuple[int, int, array]:
        """The prefix and the offset map's header checked: where the map
        starts and ends, and its words.
        """
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
        return map_start, map_end, widen_words(buffer[map_start + 24:map_end], width, count)

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
        self.sequence = trailers[0].sequence
        for trailer in trailers:
            if map_end <= trailer.start and trailer.end <= trailer.position and (
                    crc_of_buffer(buffer, trailer.start, trailer.end) == trailer.crc):
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
                    crc_of_buffer(buffer, seal.start, following) == seal.crc):
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
        if not self.writable and writer_holds_lock(self.fd):
            return position
        raise TornTransactionError(self.path, position)

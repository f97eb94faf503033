"""The index of a shelf file: where the newest record of each oid is.

The offset map, at position S after the initial transaction, is
``int8(16 + W*N) + int8(W) + int8(N)`` and N words of W bytes.  Word i is
the offset of oid i's record in the initial transaction (always below S),
or, for an oid without one (a *hole*), a link ``S + j`` to the hole j
before it, the first hole linking to N - 1.  Index N - 1 is always a hole,
so the links starting there visit every hole in descending order; new oids
come from that walk, then from N up.

A :class:`ShelfIndex` holds that map, decoded, with the records of the
transactions appended after it; this module also encodes maps.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator
from struct import Struct
from struct import error as struct_error

from durus.record import int_to_oid
from durus.shelf_format import EMPTY_MAP_START, PREFIX, ShelfError

_int8 = Struct(">Q")
_unpack_int8 = _int8.unpack


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


def widen_words(narrow: bytes, width: int, count: int) -> array:
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
    return PREFIX + _int8.pack(0) + encode_offset_map(EMPTY_MAP_START, 0, {})


class ShelfIndex:
    """Where the newest record of each oid of a shelf file is.

    It has two parts so that a packed file of millions of objects costs 8
    bytes per object in memory: the offset map of the initial transaction,
    kept as an array of words, and a dict for the records of the
    transactions appended after it, which override the map.
    """

    def __init__(self, path: str, map_start: int, map_words: array, recent: dict[bytes, int]) -> None:
        #: The file's name, for messages.
        self.path = path
        #: S, the position of the offset map.
        self.map_start = map_start
        #: The N words of the map as ints (offsets below S, links at or above S).
        self.map_words = map_words
        #: oid -> offset of its newest record after the map.
        self.recent = recent

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

"""Durus 4.3's ``durus.utils``, which its programs import: numbers as 8- and
4-byte big-endian strings, whole reads and writes on files and sockets, and
arrays of bytes, bits, words and ints kept in a file.

The project's own code uses :mod:`durus.record` for the number encodings;
everything else here exists for Durus 4.3 programs.
"""

from __future__ import annotations

import builtins
import io
import pickle
import platform
import struct
import sys
from collections.abc import Iterator
from typing import Any

from durus.record import int4, int8, oid_to_int

__all__ = [
    "IS_PYPY", "TRACE", "BitArray", "Byte", "ByteArray", "BytesIO", "IntArray", "IntSet",
    "Pickler", "ShortRead", "Unpickler", "WordArray", "as_bytes", "byte_string", "bytearray",
    "bytes", "dumps", "empty_byte_string", "int4_to_str", "int8_to_str", "iteritems",
    "join_bytes", "loads", "next", "read", "read_int4", "read_int4_str", "read_int8",
    "read_int8_str", "str_to_int4", "str_to_int8", "write", "write_all", "write_int4",
    "write_int4_str", "write_int8", "write_int8_str", "xrange",
]

int8_to_str = int8
str_to_int8 = oid_to_int
int4_to_str = int4


def str_to_int4(data: bytes) -> int:
    """The number in a 4-byte big-endian string, for Durus 4.3 programs."""
    return struct.unpack(">L", data)[0]


IS_PYPY = platform.python_implementation() == "PyPy"  # for Durus 4.3 programs
# Durus 4.3's Python 2/3 names, for Durus 4.3 programs.
xrange = range
next = builtins.next
bytes = builtins.bytes
bytearray = builtins.bytearray
byte_string = (builtins.bytearray, builtins.bytes)
BytesIO = io.BytesIO
dumps, loads, Pickler, Unpickler = pickle.dumps, pickle.loads, pickle.Pickler, pickle.Unpickler
empty_byte_string = b""
join_bytes = b"".join
TRACE = False  # set True to print every read() and write(), for Durus 4.3 programs
all_bytes = [builtins.bytes((value,)) for value in range(256)]  # each one-byte string, for Durus 4.3 programs


def iteritems(mapping: Any) -> Any:
    """``mapping.items()``, for Durus 4.3 programs."""
    return mapping.items()


def as_bytes(s: str | builtins.bytes | builtins.bytearray) -> builtins.bytes | builtins.bytearray:
    """Bytes as they are, a str encoded as latin-1, for Durus 4.3 programs."""
    return s if isinstance(s, byte_string) else s.encode("latin-1")


class ShortRead(IOError):
    """Fewer bytes came than were asked for, for Durus 4.3 programs."""


def read(f: Any, n: int) -> builtins.bytes:
    """Exactly ``n`` bytes from a file (``read``) or socket (``recv``), else ShortRead; for Durus 4.3 programs."""
    if hasattr(f, "read"):
        data = f.read(n)
        if len(data) < n:
            raise ShortRead(f"{len(data)} of {n} bytes")
    else:
        pieces, missing = [], n
        while missing > 0:
            piece = f.recv(min(missing, 1 << 20))
            if not piece:
                raise ShortRead(f"{n - missing} of {n} bytes")
            pieces.append(piece)
            missing -= len(piece)
        data = b"".join(pieces)
    if TRACE:
        sys.stdout.write(f"read({f!r}, {n!r}) -> {data!r}\n")
    return data


def write(f: Any, s: str | builtins.bytes) -> None:
    """All of ``s`` to a file (``write``) or socket (``send``), for Durus 4.3 programs."""
    data = as_bytes(s)
    if TRACE:
        sys.stdout.write(f"write({f!r}, {data!r})\n")
    if hasattr(f, "write"):
        f.write(data)
        return
    view, stalls = memoryview(data), 0
    while view:
        sent = f.send(view)
        if sent == 0:
            stalls += 1
            if stalls > 10:
                raise IOError("send() sent nothing")
        view = view[sent:]


def write_all(f: Any, *pieces: str | builtins.bytes) -> None:
    """The pieces joined, in one write(), for Durus 4.3 programs."""
    write(f, b"".join(as_bytes(piece) for piece in pieces))


def read_int8(f: Any) -> int:
    """An 8-byte number read from ``f``, for Durus 4.3 programs."""
    return str_to_int8(read(f, 8))


def write_int8(f: Any, n: int) -> None:
    """``n`` written as 8 bytes, for Durus 4.3 programs."""
    write(f, int8_to_str(n))


def read_int4(f: Any) -> int:
    """A 4-byte number read from ``f``, for Durus 4.3 programs."""
    return str_to_int4(read(f, 4))


def write_int4(f: Any, n: int) -> None:
    """``n`` written as 4 bytes, for Durus 4.3 programs."""
    write(f, int4_to_str(n))


def read_int8_str(f: Any) -> builtins.bytes:
    """Bytes preceded by their 8-byte length, for Durus 4.3 programs."""
    return read(f, read_int8(f))


def write_int8_str(f: Any, s: builtins.bytes) -> None:
    """Bytes preceded by their 8-byte length, for Durus 4.3 programs."""
    write(f, int8_to_str(len(s)) + as_bytes(s))


def read_int4_str(f: Any) -> builtins.bytes:
    """Bytes preceded by their 4-byte length, for Durus 4.3 programs."""
    return read(f, read_int4(f))


def write_int4_str(f: Any, s: builtins.bytes) -> None:
    """Bytes preceded by their 4-byte length, for Durus 4.3 programs."""
    write(f, int4_to_str(len(s)) + as_bytes(s))


def _position(index: int, length: int) -> int:
    """``index`` (negative counts from the end) as a position in ``range(length)``."""
    position = index + length if index < 0 else index
    if not 0 <= position < length:
        raise IndexError(index)
    return position


def _end(file: Any) -> int:
    """Go to the end of ``file``; where that is (File.seek returns nothing, so tell())."""
    file.seek(0, 2)
    return file.tell()


class ByteArray:
    """Bytes kept in a file from its position at creation on, for Durus 4.3 programs."""

    def __init__(self, size: int = 0, file: Any = None) -> None:
        self.file = io.BytesIO() if file is None else file
        self.start = self.file.tell()
        self.size = 0
        self.set_size(size)

    def get_size(self) -> int:
        return self.size

    def gen_set_size(self, size: int, init_byte: builtins.bytes = b"\x00") -> Iterator[int]:
        """Grow to ``size`` bytes, filling with ``init_byte``; yields the bytes still to write."""
        assert size >= self.size and len(init_byte) == 1
        if size > self.size:
            end = _end(self.file)
            assert end >= self.start + self.size, "the file is shorter than the array"
            if end < self.start + size:
                assert end == self.start + self.size, "the file holds other data after the array"
                missing = self.start + size - end
                while missing > 0:
                    chunk = min(missing, 8192)
                    write(self.file, init_byte * chunk)
                    missing -= chunk
                    yield missing
        self.size = size
        self.file.seek(self.start + size)

    def set_size(self, size: int, init_byte: builtins.bytes = b"\x00") -> None:
        for _ in self.gen_set_size(size, init_byte):
            pass

    def _span(self, key: slice) -> tuple[int, int]:
        if key.step not in (None, 1):
            raise IndexError(key)
        j = 0 if key.start is None else key.start
        k = self.size if key.stop is None else key.stop
        if not 0 <= j < k <= self.size:
            raise IndexError((j, k))
        return j, k

    def __getitem__(self, key: int | slice) -> builtins.bytes:
        if isinstance(key, slice):
            return self.__getslice__(*self._span(key))
        if not 0 <= key < self.size:
            raise IndexError(key)
        self.file.seek(self.start + key)
        return read(self.file, 1)

    def __setitem__(self, key: int | slice, value: builtins.bytes) -> None:
        if isinstance(key, slice):
            self.__setslice__(*self._span(key), value)
            return
        if not 0 <= key < self.size:
            raise IndexError(key)
        if len(value) != 1:
            raise ValueError("one byte expected")
        self.file.seek(self.start + key)
        write(self.file, value)

    def __getslice__(self, j: int, k: int) -> builtins.bytes:
        if not 0 <= j < k <= self.size:
            raise IndexError((j, k))
        self.file.seek(self.start + j)
        return read(self.file, k - j)

    def __setslice__(self, j: int, k: int, value: builtins.bytes) -> None:
        if not 0 <= j < k <= self.size:
            raise IndexError((j, k))
        if len(value) != k - j:
            raise ValueError(f"{k - j} bytes expected")
        self.file.seek(self.start + j)
        write(self.file, value)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[builtins.bytes]:
        self.file.seek(self.start)
        for _ in range(self.size):
            yield read(self.file, 1)


class Byte:
    """The 8 bits of a byte, bit 0 the most significant, for Durus 4.3 programs."""

    def __init__(self, v: int | builtins.bytes) -> None:
        if isinstance(v, byte_string) and len(v) == 1:
            self.value = v[0]
        elif isinstance(v, int) and 0 <= v <= 255:
            self.value = v
        else:
            raise TypeError(repr(v))

    def __getitem__(self, j: int) -> int:
        return (self.value >> (7 - _position(j, 8))) & 1

    def __setitem__(self, j: int, bit: Any) -> None:
        mask = 0x80 >> _position(j, 8)
        self.value = self.value | mask if bit else self.value & ~mask

    def __str__(self) -> str:
        return chr(self.value)

    def __int__(self) -> int:
        return self.value

    def byte(self) -> builtins.bytes:
        return builtins.bytes((self.value,))


class BitArray:
    """Bits kept in a ByteArray, for Durus 4.3 programs."""

    def __init__(self, size: int, file: Any = None) -> None:
        self.byte_array = ByteArray(file=file)
        self.set_size(size)

    def get_size(self) -> int:
        return self.size

    def set_size(self, size: int) -> None:
        self.byte_array.set_size((size + 7) // 8)
        self.size = size

    def __getitem__(self, j: int) -> int:
        byte, bit = divmod(_position(j, self.size), 8)
        return Byte(self.byte_array[byte])[bit]

    def __setitem__(self, j: int, v: Any) -> None:
        byte, bit = divmod(_position(j, self.size), 8)
        b = Byte(self.byte_array[byte])
        b[bit] = v
        self.byte_array[byte] = b.byte()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        for j, byte in enumerate(list(self.byte_array)):
            for bit in range(min(8, self.size - 8 * j)):
                yield Byte(byte)[bit]

    def __str__(self) -> str:
        return "".join(str(bit) for bit in self)


class WordArray:
    """A fixed number of fixed-size words kept in a file after a 24-byte header, for Durus 4.3 programs."""

    def __init__(self, file: Any = None, bytes_per_word: int | None = None,
                 number_of_words: int | None = None) -> None:
        self.file = io.BytesIO() if file is None else file
        start = self.file.tell()
        if _end(self.file) == start:
            for _ in type(self).generate(self.file, bytes_per_word, number_of_words, b"\x00"):
                pass
        self.file.seek(start)
        header = read(self.file, 24)
        total, self.bytes_per_word, self.number_of_words = (str_to_int8(header[i:i + 8]) for i in (0, 8, 16))
        assert total == 16 + self.bytes_per_word * self.number_of_words, "not a WordArray header"
        self.byte_array = ByteArray(self.bytes_per_word * self.number_of_words, file=self.file)

    @staticmethod
    def generate(file: Any, bytes_per_word: int, number_of_words: int,
                 init_byte: builtins.bytes) -> Iterator[int]:
        """Write a new array at the end of ``file`` (where it must be); yields the bytes still to write."""
        start = file.tell()
        assert _end(file) == start, "a new WordArray goes at the end of the file"
        size = bytes_per_word * number_of_words
        write(file, int8_to_str(16 + size) + int8_to_str(bytes_per_word) + int8_to_str(number_of_words))
        yield from ByteArray(file=file).gen_set_size(size, init_byte)
        file.seek(start)

    def __len__(self) -> int:
        return self.number_of_words

    def _span(self, j: int) -> slice:
        start = _position(j, self.number_of_words) * self.bytes_per_word
        return slice(start, start + self.bytes_per_word)

    def __getitem__(self, j: int) -> builtins.bytes:
        return self.byte_array[self._span(j)]

    def __setitem__(self, j: int, word: builtins.bytes) -> None:
        self.byte_array[self._span(j)] = word

    def __iter__(self) -> Iterator[builtins.bytes]:
        for j in range(self.number_of_words):
            yield self[j]

    def get_bytes_per_word(self) -> int:
        return self.bytes_per_word


class IntArray:
    """Non-negative ints in a WordArray (all 0xff bytes: no value), for Durus 4.3 programs."""

    def __init__(self, file: Any = None, number_of_ints: int | None = None,
                 maximum_int: int | None = None) -> None:
        self.file = io.BytesIO() if file is None else file
        start = self.file.tell()
        if _end(self.file) == start:
            for _ in type(self).generate(self.file, number_of_ints, maximum_int):
                pass
        self.file.seek(start)
        self.word_array = WordArray(self.file)
        width = self.word_array.get_bytes_per_word()
        self.pad = b"\x00" * (8 - width)
        self.blank = b"\xff" * width

    @staticmethod
    def generate(file: Any, number_of_ints: int, maximum_int: int | None) -> Iterator[int]:
        """Write a new array at the end of ``file``, words just wide enough for ``maximum_int``."""
        if maximum_int is None:
            width = 8
        else:
            width = len(int8_to_str(maximum_int + 1).lstrip(b"\x00"))
        yield from WordArray.generate(file, width, number_of_ints, b"\xff")

    def get_blank_value(self) -> int:
        return str_to_int8(self.pad + self.blank)

    def get(self, j: int, default: Any = None) -> Any:
        try:
            word = self.word_array[j]
        except IndexError:
            return default
        return default if word == self.blank else str_to_int8(self.pad + word)

    def __getitem__(self, j: int) -> int:
        return str_to_int8(self.pad + self.word_array[j])

    def __setitem__(self, j: int, value: int) -> None:
        encoded = int8_to_str(value)
        if not encoded.startswith(self.pad):
            raise ValueError(f"{value} does not fit in {len(self.blank)} bytes")
        self.word_array[j] = encoded[len(self.pad):]

    def __iter__(self) -> Iterator[int]:
        for word in self.word_array:
            yield str_to_int8(self.pad + word)

    def iteritems(self) -> Iterator[tuple[int, int]]:
        for j, word in enumerate(self.word_array):
            if word != self.blank:
                yield j, str_to_int8(self.pad + word)

    items = iteritems

    def __len__(self) -> int:
        return len(self.word_array)


class IntSet:
    """A set of non-negative ints as a BitArray, growing with the largest, for Durus 4.3 programs."""

    def __init__(self, size: int = 2**10 - 1, file: Any = None) -> None:
        self.bit_array = BitArray(size=size, file=file)

    def add(self, n: int) -> None:
        if n >= self.bit_array.get_size():
            self.bit_array.set_size(max(n + 1, int(n * 1.2)))
        self.bit_array[n] = 1

    def __contains__(self, n: int) -> bool:
        return n < self.bit_array.get_size() and self.bit_array[n] == 1

    def discard(self, n: int) -> None:
        if n < self.bit_array.get_size():
            self.bit_array[n] = 0

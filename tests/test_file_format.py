"""Pin docs/file-format.md: files the code writes match its tables byte for byte."""

from __future__ import annotations

import io
import pickle
import re
import zlib
from pathlib import Path
from struct import unpack_from

import pytest

from durus.file_storage import FileStorage
from durus.record import int_to_oid, pack_record
from durus.serialize import COMPRESS_THRESHOLD
from durus.shelf import PREFIX, Shelf, empty_shelf, encode_offset_map, encode_transaction, gen_offset_map, word_width

DOC = Path(__file__).resolve().parent.parent / "docs" / "file-format.md"


def int8_at(data: bytes, offset: int) -> int:
    return unpack_from(">Q", data, offset)[0]


def int4_at(data: bytes, offset: int) -> int:
    return unpack_from(">I", data, offset)[0]


def doc_hex_block(section: str) -> bytes:
    """The bytes of the first hex dump in the doc's section titled ``section``."""
    text = DOC.read_text()
    start = text.index(f"## {section}")
    block = text[text.index("```text", start) + len("```text"):]
    block = block[:block.index("```")]
    data = bytearray()
    for line in block.strip().splitlines():
        offset, _, hex_bytes = line.partition("  ")
        assert int(offset, 16) == len(data), f"hex dump line {line!r} is out of place"
        data.extend(bytes.fromhex(hex_bytes))
    return bytes(data)


def oid(n: int) -> bytes:
    return int_to_oid(n)


def build_worked_example(path: Path) -> FileStorage:
    """The file of section 9: four records, a pack, one more commit."""
    storage = FileStorage(str(path))
    oids = [storage.new_oid() for _ in range(4)]
    assert oids == [oid(0), oid(1), oid(2), oid(3)]
    storage.begin()
    storage.store(oid(0), pack_record(oid(0), b"root", oid(1) + oid(3)))
    storage.store(oid(1), pack_record(oid(1), b"one", b""))
    storage.store(oid(2), pack_record(oid(2), b"two", b""))
    storage.store(oid(3), pack_record(oid(3), b"three", b""))
    storage.end()
    storage.pack()
    assert storage.sync() == [oid(2)]
    new = storage.new_oid()
    storage.begin()
    storage.store(new, pack_record(new, b"new", b""))
    storage.end()
    return storage


def test_new_file_is_the_documented_40_bytes(tmp_path: Path) -> None:
    FileStorage(str(tmp_path / "new.durus")).close()
    data = (tmp_path / "new.durus").read_bytes()
    assert data == doc_hex_block("1. The file") == empty_shelf()
    assert len(data) == 40
    assert data[:8] == PREFIX == b"SHELF-1\n"
    assert int8_at(data, 8) == 0                   # L = 0
    assert int8_at(data, 16) == 16                 # S = 16: 16 + W*N bytes follow
    assert int8_at(data, 24) == 1                  # W
    assert int8_at(data, 32) == 0                  # N


def test_transaction_and_entry_layout(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "t.durus"))
    first, second = storage.new_oid(), storage.new_oid()
    records = [pack_record(first, b"abc", second), pack_record(second, b"", b"")]
    storage.begin()
    storage.store(first, records[0])
    storage.store(second, records[1])
    storage.end()
    storage.close()
    data = (tmp_path / "t.durus").read_bytes()
    t = 40                                          # after the empty map
    assert int8_at(data, t) == len(data) - t - 8    # L fills the rest
    e = t + 8
    for expected_oid, record in zip((first, second), records):
        assert int8_at(data, e) == 8 + len(record)
        assert data[e + 8:e + 16] == expected_oid
        assert data[e + 16:e + 16 + len(record)] == record
        e += 16 + len(record)
    assert e == len(data)


def test_record_layout() -> None:
    record = pack_record(oid(7), b"data!", oid(1) + oid(9))
    assert record[0:8] == oid(7)
    assert int4_at(record, 8) == 5
    assert record[12:17] == b"data!"
    assert record[17:] == oid(1) + oid(9)


@pytest.mark.parametrize("size", [0, 1, 50, 990, 1030, 5000])
def test_every_state_pickle_is_a_zlib_stream(size: int) -> None:
    """As in Durus 4.3: the data is the class pickle, then the state pickle
    zlib-compressed; a small one as the stored block zlib's level 0 makes.
    """
    from durus.connection import Connection
    from durus.persistent import Persistent
    from durus.storage import MemoryStorage

    obj = Persistent()
    obj.text = "t" * size
    connection = Connection(MemoryStorage())
    connection.get_root()["obj"] = obj
    connection.commit()
    record = connection.get_storage().load(obj._p_oid)
    data = record[12:12 + int4_at(record, 8)]
    stream = io.BytesIO(data)
    assert pickle.load(stream) is Persistent
    end = stream.tell()
    assert data[end] == 0x78
    state_pickle = zlib.decompress(data[end:])
    assert pickle.loads(state_pickle) == {"text": "t" * size}
    if len(state_pickle) < COMPRESS_THRESHOLD:
        assert data[end:] == zlib.compress(state_pickle, 0)
    else:
        assert len(data) - end < len(state_pickle)  # really deflated


def test_encode_transaction_offsets() -> None:
    data, offsets = encode_transaction([(oid(1), pack_record(oid(1), b"x", b""))], 1000)
    assert int8_at(data, 0) == len(data) - 8
    assert offsets == {oid(1): 1008}


@pytest.mark.parametrize(
    ("map_start", "count", "width"),
    [(16, 0, 1), (128, 5, 1), (250, 4, 1), (250, 5, 2), (255, 0, 2), (65530, 4, 2), (65530, 5, 3),
     (2**32 - 10, 8, 4), (2**32 - 10, 9, 5)],
)
def test_word_width_is_fewest_bytes_holding_s_plus_n_plus_1(map_start: int, count: int, width: int) -> None:
    assert word_width(map_start, count) == width
    assert map_start + count + 1 < 256 ** width
    assert map_start + count + 1 >= 256 ** (width - 1) or width == 1


def test_offset_map_layout_and_hole_cycle() -> None:
    # Records for oids 1, 4, 5 in the initial transaction: N = 7, holes 0, 2, 3, 6.
    s = 1000
    data = encode_offset_map(s, 7, {1: 100, 4: 200, 5: 300})
    assert int8_at(data, 0) == 16 + 2 * 7
    assert int8_at(data, 8) == 2
    assert int8_at(data, 16) == 7
    words = [int.from_bytes(data[24 + 2 * i:26 + 2 * i], "big") for i in range(7)]
    # The first hole links to N - 1, each later hole to the hole before it.
    assert words == [s + 6, 100, s + 0, s + 2, 200, 300, s + 3]


def test_holes_are_walked_descending_from_n_minus_1(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "h.durus"))
    oids = [storage.new_oid() for _ in range(6)]
    storage.begin()
    # Root refers to 1 and 4 only: 2, 3 and 5 become holes, N = 6.
    storage.store(oids[0], pack_record(oids[0], b"r", oids[1] + oids[4]))
    for n in (1, 2, 3, 4, 5):
        storage.store(oids[n], pack_record(oids[n], b"x", b""))
    storage.end()
    storage.pack()
    storage.sync()
    assert storage.shelf.map_size() == 6
    assert list(storage.shelf.gen_holes()) == [3, 2, 5]
    assert [storage.new_oid() for _ in range(5)] == [oid(3), oid(2), oid(5), oid(6), oid(7)]
    storage.close()


def test_worked_example_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "example.durus"
    storage = build_worked_example(path)
    assert [storage.new_oid(), storage.new_oid()] == [oid(4), oid(5)]
    storage.close()
    data = path.read_bytes()
    assert data == doc_hex_block("9. Worked example")
    assert len(data) == 196
    assert int8_at(data, 8) == 112
    assert [int8_at(data, e) for e in (16, 64, 95)] == [40, 23, 25]
    assert [data[e + 8:e + 16] for e in (16, 64, 95)] == [oid(0), oid(1), oid(3)]
    s = 128
    assert (int8_at(data, s), int8_at(data, s + 8), int8_at(data, s + 16)) == (21, 1, 5)
    assert list(data[s + 24:s + 29]) == [16, 64, s + 4, 95, s + 2]
    assert int8_at(data, 157) == 31
    assert data[165 + 8:165 + 16] == oid(2)


def test_worked_example_reads_back_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "example.durus"
    path.write_bytes(doc_hex_block("9. Worked example"))
    with open(path, "r+b") as file:
        shelf = Shelf(file.fileno(), str(path))
        assert shelf.map_start == 128
        assert list(shelf.map_words) == [16, 64, 132, 95, 130]
        assert list(shelf.gen_holes()) == [2, 4]
        assert [shelf.get_position(oid(n)) for n in range(5)] == [16, 64, 165, 95, None]
        assert shelf.load(oid(2)) == pack_record(oid(2), b"new", b"")
        assert shelf.end == 196
        unused = shelf.gen_unused_oids()
        assert [next(unused) for _ in range(3)] == [oid(4), oid(5), oid(6)]


def test_doc_tables_name_the_offsets_checked_here() -> None:
    text = DOC.read_text()
    for row in ("| S + 8 | 8 | W:", "| S + 16 | 8 | N:", "| E + 8 | 8 | the oid |",
                "| T | 8 | L:", "| P + 8 | 4 | D:", "| C + 24 | 8 | A:", "| C + 32 | 8 | B:",
                "| C + 44 | 4 | the CRC-32 of the 44 bytes", "| Z − 8192 | 4096 | trailer slot 0",
                "| E | 48 | the *seal*"):
        assert row in text
    assert re.search(r"W is the fewest bytes that hold S \+ N \+ 1", text)


def test_open_file_has_a_seal_and_trailer_slots_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "open.durus"
    storage = FileStorage(str(path))
    storage.begin()
    storage.store(oid(0), pack_record(oid(0), b"root", b""))
    storage.end()
    end = storage.shelf.end
    data = path.read_bytes()  # as a crash would leave it
    size = len(data)
    assert size % 4096 == 0 and data[end + 48:size - 8192] == bytes(size - 8192 - end - 48)
    seal = data[end:end + 48]
    assert seal[:8] == b"SHELF-SL" == bytes.fromhex("53 48 45 4c 46 2d 53 4c")
    start = int8_at(seal, 24)
    assert (int8_at(seal, 8), int8_at(seal, 16), int8_at(seal, 32)) == (end, 0, end)
    assert int4_at(seal, 40) == zlib.crc32(data[start:end]) and int4_at(seal, 44) == zlib.crc32(seal[:44])
    trailers = []
    for slot in (size - 8192, size - 4096):
        page = data[slot:slot + 4096]
        assert page[48:] == bytes(4048)
        if page[:8] == b"SHELF-TR" == bytes.fromhex("53 48 45 4c 46 2d 54 52"):
            assert int8_at(page, 8) == slot and int4_at(page, 44) == zlib.crc32(page[:44])
            a, b = int8_at(page, 24), int8_at(page, 32)
            assert int4_at(page, 40) == zlib.crc32(data[a:b])
            trailers.append((int8_at(page, 16), b))
    assert max(trailers)[1] == end  # the newest vouches for the commit
    storage.close()
    assert path.read_bytes() == data[:end]  # closed: none of it is left


def test_offset_map_in_pieces_is_the_same_map() -> None:
    offsets = {0: 16, 3: 40, 4: 70, 9: 99, 10: 120}
    whole = encode_offset_map(200, 12, offsets)
    for chunk in (1, 2, 3, 5, 64):
        assert b"".join(gen_offset_map(200, 12, offsets, chunk)) == whole
    assert encode_offset_map(200, 12, offsets) == old_style_map(200, 12, offsets)


def old_style_map(map_start: int, count: int, offsets: dict[int, int]) -> bytes:
    """The map word by word, as section 4 says it."""
    words = []
    previous_hole = count - 1
    for index in range(count):
        if index in offsets:
            words.append(offsets[index])
        else:
            words.append(map_start + previous_hole)
            previous_hole = index
    width = word_width(map_start, count)
    header = b"".join(n.to_bytes(8, "big") for n in (16 + width * count, width, count))
    return header + b"".join(word.to_bytes(width, "big") for word in words)

"""A record that cannot be read raises DamagedRecordError, saying which part
failed (class pickle, zlib stream, state pickle), never pickle's own
"invalid load key"; the oid and location are filled in by the caller.
"""

from __future__ import annotations

import pickle
import zlib

import pytest

from durus.connection import Connection
from durus.error import DamagedRecordError, DurusError
from durus.record import int_to_oid, pack_record, record_data, unpack_record
from durus.serialize import ObjectReader, class_pickle, compress_state, record_location
from durus.storage import MemoryStorage
from tests.models import Item


def _stored(value: object) -> tuple[MemoryStorage, bytes]:
    """A storage whose root holds an Item with ``value``; the Item's oid."""
    storage = MemoryStorage()
    connection = Connection(storage)
    item = Item("x", value)
    connection.get_root()["item"] = item
    connection.commit()
    return storage, item._p_oid


def _replace_data(storage: MemoryStorage, oid: bytes, change) -> None:
    _, data, refs = unpack_record(storage.records[oid])
    storage.records[oid] = pack_record(oid, change(data), refs)


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:]


def _reader() -> ObjectReader:
    return ObjectReader(Connection(MemoryStorage()))


@pytest.mark.parametrize("size", [10, 5000], ids=["stored block", "deflated"])
def test_a_state_failing_its_checksum_fails_to_decompress(size):
    storage, oid = _stored("v" * size if size < 1024 else bytes(range(256)) * (size // 256))
    data = record_data(storage.records[oid])
    damaged = _flip(data, len(data) - 6)  # in the last bytes of the stream
    with pytest.raises(DamagedRecordError, match="fails to decompress") as caught:
        _reader().get_state(damaged)
    assert "zlib" in str(caught.value) and "invalid load key" not in str(caught.value)
    assert caught.value.oid is None and isinstance(caught.value.__cause__, zlib.error)
    assert isinstance(caught.value, DurusError)


def test_a_truncated_stream_fails_to_decompress():
    storage, oid = _stored("value")
    data = record_data(storage.records[oid])
    with pytest.raises(DamagedRecordError, match="fails to decompress"):
        _reader().get_state(data[:-3], Item)


@pytest.mark.parametrize("refers", [True, False])
def test_a_damaged_state_pickle_fails_to_unpickle(refers):
    pickled = pickle.dumps({"name": "x", "value": 1}, 2)
    for broken in (b"\x80\x02\xff" + pickled[3:], pickled[:-4]):
        data = class_pickle(Item) + compress_state(broken)
        with pytest.raises(DamagedRecordError, match="its state pickle fails to unpickle"):
            _reader().get_state(data, Item, refers)


def test_a_damaged_plain_state_fails_to_unpickle():
    pickled = pickle.dumps({"name": "x"}, 2)
    data = class_pickle(Item) + pickled[:-2]
    with pytest.raises(DamagedRecordError, match="fails to unpickle"):
        _reader().get_state(data)


@pytest.mark.parametrize("damage", [
    lambda data: b"\x80\x02q" + data[3:],  # no longer a GLOBAL
    lambda data: data[:5],  # cut inside the class pickle
    lambda data: pickle.dumps(42, 2) + data[len(class_pickle(Item)):],  # not a class
])
def test_a_damaged_class_pickle(damage):
    storage, oid = _stored("value")
    data = damage(record_data(storage.records[oid]))
    for read in (_reader().get_class, _reader().get_state, _reader().get_state_pickle):
        with pytest.raises(DamagedRecordError, match="class pickle"):
            read(data)


def test_the_class_is_read_without_the_state():
    storage, oid = _stored("v" * 10)
    data = record_data(storage.records[oid])
    assert _reader().get_class(_flip(data, len(data) - 6)) is Item


def test_for_record_names_the_oid_and_location_and_keeps_the_cause():
    error = DamagedRecordError("its state fails to decompress (zlib checksum or stream error: x)")
    error.__cause__ = zlib.error("x")
    assert str(error) == "a record is damaged: its state fails to decompress (zlib checksum or stream error: x)"
    named = error.for_record(int_to_oid(42), "at byte 1234 of data.durus")
    assert (named.oid, named.location, named.problem) == (int_to_oid(42), "at byte 1234 of data.durus", error.problem)
    assert str(named).startswith("the record of oid 42 (at byte 1234 of data.durus) is damaged: its state")
    assert named.__cause__ is error.__cause__
    # A nested load's error already names its own record: it stays as it is.
    assert named.for_record(int_to_oid(7), "elsewhere") is named
    assert str(error.for_record(int_to_oid(3))) == "the record of oid 3 is damaged: " + error.problem
    copy = pickle.loads(pickle.dumps(named))
    assert (copy.oid, copy.location, copy.problem) == (named.oid, named.location, named.problem)


def test_record_location_asks_the_storage_and_never_raises():
    class Described(MemoryStorage):
        def describe_record(self, oid):
            return f"at byte {int.from_bytes(oid, 'big') * 10}"

    class Broken(MemoryStorage):
        def describe_record(self, oid):
            raise OSError("closed")

    assert record_location(Described(), int_to_oid(4)) == "at byte 40"
    assert record_location(Broken(), int_to_oid(4)) is None
    assert record_location(MemoryStorage(), int_to_oid(4)) is None


def test_a_connection_loading_a_damaged_record_raises_it():
    storage, oid = _stored("v" * 10)
    _replace_data(storage, oid, lambda data: _flip(data, len(data) - 6))
    connection = Connection(storage)
    item = connection.get_root()["item"]
    with pytest.raises(DamagedRecordError, match="fails to decompress"):
        item.name
    assert item._p_is_ghost()  # nothing half-loaded


def test_a_connection_names_the_damaged_record():
    class Described(MemoryStorage):
        def describe_record(self, oid):
            return "at byte 99"

    storage, oid = _stored("v" * 10)
    described = Described()
    described.records = storage.records
    _replace_data(described, oid, lambda data: _flip(data, len(data) - 6))
    item = Connection(described).get_root()["item"]
    with pytest.raises(DamagedRecordError) as caught:
        item.name
    assert caught.value.oid == oid and caught.value.location == "at byte 99"
    assert f"oid {int.from_bytes(oid, 'big')} (at byte 99)" in str(caught.value)


def test_a_missing_class_is_not_reported_as_damage():
    storage, oid = _stored("value")
    _replace_data(storage, oid, lambda data: data.replace(b"tests.models\nItem\n", b"tests.models\nGone\n"))
    with pytest.raises(AttributeError, match="Gone"):
        _reader().get_state(record_data(storage.records[oid]))

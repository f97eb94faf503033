"""The shortcuts for states that hold no objects: pickling them, and loading
the records that list no references."""

from __future__ import annotations

import io
import pickle
import zlib

import pytest

from durus.connection import Connection
from durus.persistent import Persistent
from durus.persistent_dict import PersistentDict
from durus.persistent_set import PersistentSet
from durus.serialize import holds_no_objects
from durus.storage import MemoryStorage
from tests.models import Item
from tests.raw_records import store_raw


class Text(str):
    pass


PLAIN_STATES = [
    {"name": "x", "n": 1, "f": 2.5, "b": b"raw", "none": None, "flag": True},
    {"s": {f"slug-{n}" for n in range(300)}},
    {"data": {"a": [1, 2, (3, "four")], "b": frozenset({5})}},
    {"items": [((1.5, "slug"), 7), ((2.5, "other"), 8)], "nodes": None, "_count": 2},
]


@pytest.mark.parametrize("state", PLAIN_STATES)
def test_states_of_atoms_and_builtin_containers_hold_no_objects(state) -> None:
    assert holds_no_objects(state)


@pytest.mark.parametrize("state", [
    {"author": Persistent()},
    {"s": {"a", "b", Text("c")}},  # a subclass may pickle itself any way it likes
    {"data": {"k": [1, (2, PersistentDict())]}},
    {"deep": [[[[[1]]]]]},  # deeper than the walk goes: not sure, so no
    {"object": object()},
])
def test_anything_else_may_hold_objects(state) -> None:
    assert not holds_no_objects(state)


class Hooked(pickle.Pickler):
    def persistent_id(self, obj):
        return None


@pytest.mark.parametrize("state", PLAIN_STATES)
def test_records_are_what_the_hooked_pickler_writes(state) -> None:
    """The shortcut changes how fast a state pickles, never its bytes."""
    connection = Connection(MemoryStorage())
    obj = Persistent()
    obj.__dict__.update(state)
    connection.get_root()["obj"] = obj
    connection.commit()
    record = connection.get_storage().load(obj._p_oid)
    stream = io.BytesIO(record[12:12 + int.from_bytes(record[8:12], "big")])
    pickle.load(stream)  # the class
    stored = zlib.decompress(stream.read())
    expected = io.BytesIO()
    Hooked(expected, 2).dump(state)
    assert stored == expected.getvalue()


def test_a_set_of_persistent_objects_still_refers_to_them() -> None:
    connection = Connection(MemoryStorage())
    member = Persistent()
    member.n = 1
    connection.get_root()["members"] = PersistentSet([member])
    connection.commit()
    fresh = Connection(connection.get_storage())
    (member,) = fresh.get_root()["members"]
    assert member.n == 1 and member._p_oid is not None


def test_a_state_without_references_may_name_its_class_by_memo() -> None:
    storage = MemoryStorage()
    connection = Connection(storage)
    oid = connection.new_oid()
    assert b"h\x00" in store_raw(storage, oid, Item, {"name": "x", "kind": Item})  # BINGET 0
    loaded = Connection(storage).get(oid)
    assert loaded.name == "x" and loaded.kind is Item


def test_a_record_that_lists_no_references_yet_holds_one_still_loads() -> None:
    storage = MemoryStorage()
    connection = Connection(storage)
    connection.get_root()["target"] = target = Item("target")
    connection.commit()
    oid = connection.new_oid()
    store_raw(storage, oid, Item, {"name": "x", "other": target})
    fresh = Connection(storage)
    assert fresh.get(oid).other is fresh.get_root()["target"]
    assert fresh.get(oid).other.name == "target"

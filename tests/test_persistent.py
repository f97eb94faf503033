"""Persistent objects: status machine, ghosts, state, tracking classes."""

from __future__ import annotations

import pytest

from durus.connection import Connection
from durus.persistent import (
    GHOST,
    SAVED,
    UNSAVED,
    ComputedAttribute,
    Persistent,
    PersistentObject,
    real_class,
)
from durus.storage import MemoryStorage
from tests.models import Cached, Item, Slotted, WithDefaults


def test_status_constants_are_durus_values() -> None:
    assert (UNSAVED, SAVED, GHOST) == (1, 0, -1)


def test_new_object_is_unsaved_and_detached() -> None:
    item = Item("a", 1)
    assert item._p_status == UNSAVED and item._p_is_unsaved()
    assert item._p_oid is None and item._p_connection is None
    assert item._p_serial == 0
    assert "@" in repr(item) and "Item" in repr(item)


def test_state_of_persistent_is_its_dict() -> None:
    item = Item("a", [1, 2])
    assert item.__getstate__() == {"name": "a", "value": [1, 2]}
    other = Item()
    other.__setstate__({"name": "b", "value": None})
    assert other.name == "b" and other.__dict__ == {"name": "b", "value": None}


def test_slotted_state_includes_mangled_private_slots() -> None:
    obj = Slotted(1, 2)
    obj._Slotted__hidden = 3
    assert obj.__getstate__() == {"a": 1, "b": 2, "_Slotted__hidden": 3}
    copy = Slotted()
    copy.__setstate__({"a": "x"})
    assert copy.a == "x"
    with pytest.raises(AttributeError):
        copy.b


def committed(*objects: PersistentObject) -> tuple[Connection, MemoryStorage]:
    storage = MemoryStorage()
    connection = Connection(storage)
    for index, obj in enumerate(objects):
        connection.root[index] = obj
    connection.commit()
    return connection, storage


def test_commit_saves_and_writing_marks_changed() -> None:
    item = Item("a", 1)
    connection, _ = committed(item)
    assert item._p_is_saved() and item._p_connection is connection
    assert item._p_oid is not None and item._p_format_oid() == str(int.from_bytes(item._p_oid, "big"))
    item.value = 2
    assert item._p_is_unsaved()
    assert connection.changed_objects[item._p_oid] is item


def test_p_attributes_neither_load_nor_mark_changed() -> None:
    _, storage = committed(Item("a", 1))
    fresh = Connection(storage)
    ghost = fresh.root[0]
    assert ghost._p_is_ghost()
    assert ghost._p_oid is not None
    ghost._p_serial = 5
    assert ghost._p_is_ghost()
    assert ghost.__class__ is Item and isinstance(ghost, Item)
    assert ghost._p_is_ghost()


def test_reading_a_ghost_loads_it_and_writing_a_ghost_marks_it_changed() -> None:
    _, storage = committed(Item("a", 1), Item("b", 2))
    fresh = Connection(storage)
    first, second = fresh.root[0], fresh.root[1]
    assert first._p_is_ghost() and second._p_is_ghost()
    assert first.name == "a"
    assert first._p_is_saved()
    second.value = 20
    assert second._p_is_unsaved() and second.name == "b"
    fresh.commit()
    assert Connection(storage).root[1].value == 20


def test_method_call_and_dict_access_load_a_ghost() -> None:
    _, storage = committed(Item("a", {"k": 1}))
    fresh = Connection(storage)
    ghost = fresh.root[0]
    assert vars(ghost) == {"name": "a", "value": {"k": 1}}
    fresh.abort()
    ghost._p_set_status_ghost()
    assert ghost.__dict__["name"] == "a"


def test_tracking_class_is_invisible_to_class_checks() -> None:
    _, storage = committed(Item("a", 1))
    fresh = Connection(storage)
    ghost = fresh.root[0]
    assert type(ghost).__name__ == "Item"
    assert real_class(type(ghost)) is Item
    assert ghost.__class__ is Item
    ghost.name
    assert type(ghost) is Item
    fresh.commit()
    assert type(ghost) is not Item and isinstance(ghost, Item)


registry: list[type] = []


class Model(Persistent):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        registry.append(cls)


class Note(Model):
    pass


def test_tracking_classes_are_not_announced_to_init_subclass() -> None:
    connection = Connection(MemoryStorage())
    connection.get_root()["notes"] = [Note(), Model()]
    connection.commit()
    fresh = Connection(connection.get_storage())
    notes = fresh.get_root()["notes"]
    assert {real_class(type(note)) for note in notes} == {Note, Model}
    assert any(type(note) is not note.__class__ for note in notes)  # trackers were made
    assert registry == [Note]
    assert "__init_subclass__" in Model.__dict__ and "__init_subclass__" not in Note.__dict__


def test_custom_setstate_filling_defaults_does_not_mark_changed() -> None:
    obj = WithDefaults()
    obj.x = 1
    _, storage = committed(obj)
    fresh = Connection(storage)
    loaded = fresh.root[0]
    assert loaded.added_later == "default"
    assert loaded._p_is_saved()
    assert not fresh.has_changes()


def test_delattr_marks_changed() -> None:
    item = Item("a", 1)
    connection, storage = committed(item)
    del item.value
    assert item._p_is_unsaved()
    connection.commit()
    assert not hasattr(Connection(storage).root[0], "value")


def test_computed_attribute_caches_and_invalidates_across_connections() -> None:
    cached = Cached()
    connection, storage = committed(cached)
    calls = []
    assert cached.get(lambda: calls.append(1) or 42) == 42
    assert cached.get(lambda: calls.append(1) or 43) == 42
    assert calls == [1] and cached._p_is_saved()
    other = Connection(storage)
    other_cached = other.root[0]
    assert other_cached.get(lambda: "x") == "x"
    cached.invalidate()
    connection.commit()
    assert cached.get(lambda: "recomputed") == "recomputed"


def test_computed_attribute_state_is_none() -> None:
    assert ComputedAttribute().__getstate__() is None


def test_persistent_subclass_without_connection_behaves_like_plain_object() -> None:
    class Plain(Persistent):
        pass

    obj = Plain()
    obj.a = 1
    obj.a += 1
    assert obj.a == 2 and obj._p_is_unsaved()

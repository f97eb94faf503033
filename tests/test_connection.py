"""Connection: cache, commit/abort, crawler, helpers (single client)."""

from __future__ import annotations

import pytest

from durus.connection import Connection, gen_every_instance, touch_every_reference
from durus.persistent_dict import PersistentDict
from durus.record import ROOT_OID, int_to_oid
from durus.storage import MemoryStorage
from tests.models import Item, Root


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


def test_new_storage_gets_a_persistent_dict_root_at_oid_0(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    root = connection.get_root()
    assert isinstance(root, PersistentDict) and root._p_oid == ROOT_OID
    assert ROOT_OID in storage.records
    assert connection.get(0) is root and connection.get(ROOT_OID) is root


def test_root_class_is_used_and_checked(storage: MemoryStorage) -> None:
    assert isinstance(Connection(storage, root_class=Root).root, Root)
    with pytest.raises(TypeError, match="root is a Root"):
        Connection(storage, root_class=PersistentDict)


def test_get_unknown_oid_is_none(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    assert connection.get(12345) is None
    assert connection[int_to_oid(99)] is None


def test_commit_stores_new_objects_reachable_from_changed_ones(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    leaf = Item("leaf")
    connection.root["a"] = Item("a", [Item("b", leaf)])
    connection.commit()
    assert leaf._p_oid is not None and leaf._p_is_saved()
    other = Connection(storage)
    assert other.root["a"].value[0].value.name == "leaf"
    assert len(storage.records) == 4


def test_abort_discards_changes_and_new_objects(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    connection.root["x"] = Item("x", 1)
    connection.commit()
    item = connection.root["x"]
    item.value = 2
    connection.root["y"] = Item("y")
    connection.abort()
    assert item.value == 1
    assert "y" not in connection.root
    assert item._p_is_saved()


def test_object_of_another_connection_is_refused(storage: MemoryStorage) -> None:
    first = Connection(storage)
    first.root["x"] = Item("x")
    first.commit()
    second = Connection(MemoryStorage())
    second.root["stolen"] = first.root["x"]
    with pytest.raises(ValueError, match="another connection"):
        second.commit()


def test_cache_keeps_about_cache_size_loaded_objects_least_recent_ghosted(storage: MemoryStorage) -> None:
    writer = Connection(storage)
    writer.root["items"] = [Item(str(i), i) for i in range(50)]
    writer.commit()
    connection = Connection(storage, cache_size=10)
    items = connection.root["items"]
    assert [item.value for item in items] == list(range(50))
    connection.commit()
    loaded = [item for item in items if not item._p_is_ghost()]
    assert len(loaded) <= 10
    assert items[49]._p_is_saved() and items[0]._p_is_ghost()
    assert [item.value for item in items] == list(range(50))
    assert connection.get_load_count() >= 50 + 40


def test_changed_objects_are_never_evicted(storage: MemoryStorage) -> None:
    writer = Connection(storage)
    writer.root["items"] = [Item(str(i), i) for i in range(20)]
    writer.commit()
    connection = Connection(storage, cache_size=2)
    items = connection.root["items"]
    for item in items:
        item.value += 100
    connection.shrink_cache()
    assert all(item._p_is_unsaved() for item in items)
    connection.commit()
    assert [item.value for item in Connection(storage).root["items"]] == list(range(100, 120))


def test_cache_size_must_be_positive(storage: MemoryStorage) -> None:
    connection = Connection(storage, cache_size=5)
    assert connection.get_cache_size() == 5
    connection.set_cache_size(7)
    assert connection.get_cache_size() == 7
    with pytest.raises(ValueError):
        connection.set_cache_size(0)


def test_transaction_serial_advances_and_stamps_used_objects(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    serial = connection.get_transaction_serial()
    connection.root["x"] = 1
    connection.commit()
    assert connection.get_transaction_serial() == serial + 1
    assert connection.root._p_serial == serial
    connection.abort()
    assert connection.get_transaction_serial() == serial + 2


def test_get_crawler_yields_reachable_objects_loaded(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    connection.root["items"] = PersistentDict({i: Item(str(i)) for i in range(5)})
    connection.commit()
    orphan_connection = Connection(storage)
    crawled = list(orphan_connection.get_crawler())
    assert len(crawled) == 7
    assert all(obj._p_is_saved() for obj in crawled)
    assert {obj.name for obj in crawled if isinstance(obj, Item)} == {str(i) for i in range(5)}


def test_gen_every_instance_and_touch_every_reference(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    connection.root["items"] = [Item("needle"), Item("hay")]
    connection.commit()
    found = list(gen_every_instance(connection, Item))
    assert sorted(item.name for item in found) == ["hay", "needle"]
    touch_every_reference(connection, "needle")
    assert [obj.name for obj in connection.changed_objects.values()] == ["needle"]


def test_cache_count_counts_live_objects(storage: MemoryStorage) -> None:
    connection = Connection(storage)
    connection.root["items"] = [Item(str(i)) for i in range(10)]
    connection.commit()
    assert connection.get_cache_count() == 11


def test_ghosts_nothing_refers_to_are_let_go_and_the_rest_keep_their_identity(storage: MemoryStorage) -> None:
    writer = Connection(storage)
    writer.root["a"] = PersistentDict({i: Item(str(i)) for i in range(3000)})
    writer.root["b"] = Item("b")
    writer.commit()
    connection = Connection(storage)
    items = connection.root["a"]
    kept = items[7]
    assert kept._p_is_ghost()
    assert connection.get_cache_count() == 1 + 2 + 3000
    items._p_set_status_ghost()  # its 3000 ghosts lose their last referrer
    assert connection.root["b"].name == "b"  # (the last load's state goes)
    assert connection.get_cache_count() == 1 + 2 + 1  # root, a, b, kept
    assert items[7] is kept
    assert items[8]._p_is_ghost() and items[8].name == "8"


def test_filename_opens_a_file_storage(tmp_path) -> None:
    path = tmp_path / "data.durus"
    connection = Connection(str(path))
    connection.root["x"] = Item("x", 1)
    connection.commit()
    connection.get_storage().close()
    reopened = Connection(str(path))
    assert reopened.root["x"].value == 1
    reopened.get_storage().close()

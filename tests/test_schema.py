"""durus.schema: renamed and moved classes load through a registry, and
rewrite_instances writes their records again under the new name.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess

from durus import schema, serialize
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
from durus.serialize import inspect_data
from durus.storage import MemoryStorage

OLD = "schema_test_a.Old"
NEW = "schema_test_b.New"
COUNT = 25


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path for the test's modules; the registry and the
    modules are cleaned up afterwards.
    """
    folder = tmp_path / "modules"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in ("schema_test_a", "schema_test_b"):
            sys.modules.pop(name, None)
        schema._renames.clear()
        serialize.forget_classes()


def write_old_database(modules: Path, storage) -> None:
    """Store Old objects (and references to them in other states) through
    ``storage``, then remove the module Old was in.
    """
    write_module(modules, "schema_test_a", """
        from durus.persistent import Persistent

        class Old(Persistent):
            def __init__(self, n):
                self.n = n
    """)
    from schema_test_a import Old

    connection = Connection(storage)
    root = connection.get_root()
    root["first"] = first = Old(0)
    root["holder"] = PersistentDict(ref=first)
    root["many"] = PersistentList(Old(n) for n in range(1, COUNT))
    connection.commit()
    storage.close()
    (modules / "schema_test_a.py").unlink()
    sys.modules.pop("schema_test_a", None)
    importlib.invalidate_caches()
    write_module(modules, "schema_test_b", """
        from durus.persistent import Persistent

        class New(Persistent):
            color = "red"  # an attribute added since: old records get the default
    """)


def check_loads_as_new(connection: Connection) -> None:
    from schema_test_b import New

    root = connection.get_root()
    first = root["first"]
    assert isinstance(first, New) and first.n == 0
    assert root["holder"]["ref"] is first
    assert [item.n for item in root["many"]] == list(range(1, COUNT))
    assert all(isinstance(item, New) for item in root["many"])


def test_old_class_name_loads_as_the_new_class_after_rename_class(modules: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.durus"
    write_old_database(modules, FileStorage(str(path)))
    storage = FileStorage(str(path))
    with pytest.raises(ImportError, match="schema_test_a"):
        Connection(storage)  # the root's state refers to an Old
    storage.close()

    schema.rename_class(OLD, NEW)
    connection = Connection(FileStorage(str(path)))
    check_loads_as_new(connection)
    # Loading rewrites nothing: the records still name the old class, as
    # Durus 4.3 reads them.
    assert not connection.changed_objects
    connection.get_storage().close()
    assert OLD.replace(".", "\n").encode() in path.read_bytes()


def test_renamed_from_decorator_and_a_name_string_target(modules: Path) -> None:
    storage = MemoryStorage()
    write_old_database(modules, storage)
    from schema_test_b import New

    assert schema.renamed_from(OLD)(New) is New
    assert schema.old_names(New) == [OLD]
    check_loads_as_new(Connection(storage))
    schema._renames.clear()
    schema.rename_class(OLD, NEW)  # imported when first needed
    check_loads_as_new(Connection(storage))
    assert schema.old_names(New) == [OLD]


def test_an_added_attribute_gets_its_default_without_marking_the_object_changed(modules: Path) -> None:
    storage = MemoryStorage()
    write_old_database(modules, storage)
    write_module(modules, "schema_test_b", """
        from durus.persistent import Persistent

        class New(Persistent):
            color = "red"

            def __setstate__(self, state):
                state.setdefault("size", 1)
                super().__setstate__(state)
    """)
    schema.rename_class(OLD, NEW)
    connection = Connection(storage)
    first = connection.get_root()["first"]
    assert (first.color, first.size, first.n) == ("red", 1, 0)
    assert first._p_is_saved()
    assert not connection.changed_objects


def test_rewrite_instances_writes_every_record_naming_the_old_class(modules: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.durus"
    write_old_database(modules, FileStorage(str(path)))
    schema.rename_class(OLD, NEW)
    from schema_test_b import New

    connection = Connection(FileStorage(str(path)))
    reports = []
    count = schema.rewrite_instances(connection, New, batch_size=10, progress=lambda *done: reports.append(done))
    # The COUNT instances, and the root, dict and list naming them in persistent ids.
    assert count == COUNT + 3
    assert reports == [(10, count), (20, count), (count, count)]
    connection.pack()
    connection.get_storage().close()
    data = path.read_bytes()
    assert b"schema_test_a" not in data and b"schema_test_b\nNew\n" in data

    schema._renames.clear()
    serialize.forget_classes()
    check_loads_as_new(Connection(FileStorage(str(path))))


def test_rewrite_instances_by_old_name_retries_a_batch_after_a_conflict(modules: Path, monkeypatch) -> None:
    storage = MemoryStorage()
    write_old_database(modules, storage)
    schema.rename_class(OLD, NEW)
    connection = Connection(storage)
    real_commit = connection.commit
    failures = [ConflictError([b"\0" * 8])]

    def commit() -> None:
        if failures:
            raise failures.pop()
        real_commit()

    monkeypatch.setattr(connection, "commit", commit)
    assert schema.rewrite_instances(connection, OLD, batch_size=100) == COUNT + 3
    assert not failures
    for _, record in storage.gen_oid_record():
        data = serialize.unpack_record(record)[1]
        assert inspect_data(data)[0] != OLD
        assert b"schema_test_a" not in serialize.split_data(data)[1]


def test_rewrite_instances_refuses_uncommitted_changes(modules: Path) -> None:
    storage = MemoryStorage()
    write_old_database(modules, storage)
    schema.rename_class(OLD, NEW)
    connection = Connection(storage)
    connection.get_root()["x"] = 1
    with pytest.raises(ValueError, match="commit or abort"):
        schema.rewrite_instances(connection, OLD)


def test_rename_and_rewrite_through_a_server(modules: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.durus"
    with ServerProcess(path) as server:
        write_old_database(modules, ClientStorage(address=server.address))
        schema.rename_class(OLD, NEW)
        storage = ClientStorage(address=server.address)
        try:
            connection = Connection(storage)
            check_loads_as_new(connection)
            assert schema.rewrite_instances(connection, OLD, batch_size=7) == COUNT + 3
            connection.pack()
        finally:
            storage.close()
        schema._renames.clear()
        serialize.forget_classes()
        storage = ClientStorage(address=server.address)
        try:
            check_loads_as_new(Connection(storage))
        finally:
            storage.close()
    assert b"schema_test_a" not in path.read_bytes()


def test_classes_that_import_never_consult_the_registry(modules: Path, monkeypatch) -> None:
    storage = MemoryStorage()
    write_old_database(modules, storage)
    schema.rename_class(OLD, NEW)
    asked = []
    real = schema.renamed_class
    monkeypatch.setattr(schema, "renamed_class", lambda *name: asked.append(name) or real(*name))
    connection = Connection(storage)
    root = connection.get_root()
    root["plain"] = PersistentDict(inner=PersistentDict(n=1))
    connection.commit()
    serialize.forget_classes()
    fresh = Connection(storage)  # the root refers to an Old: the registry is asked
    asked.clear()
    assert fresh.get_root()["plain"]["inner"]["n"] == 1
    assert asked == []
    check_loads_as_new(fresh)
    assert ("schema_test_a", "Old") in asked

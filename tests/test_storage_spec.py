"""Opening a storage named by a string, telling a file's format by its first
bytes, and the ``durus`` command's ``--storage-class`` and detection.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import DurusError
from durus.file_storage import FileStorage
from durus.file_storage2 import FileStorage2
from durus.persistent_dict import PersistentDict
from durus.record import int4, int8
from durus.sqlite_storage import SqliteStorage
from durus.storage import MemoryStorage
from durus.storage_spec import UnknownFormatError, import_storage_class, open_storage, storage_class_for_file
from server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def make_database(storage, **items) -> None:
    connection = Connection(storage)
    connection.get_root().update(items)
    connection.commit()
    storage.close()


def empty_dfs20(path: Path) -> None:
    """A DFS20 file as Durus 4.3 creates it: header, then an empty index."""
    index = zlib.compress(pickle.dumps({}, 2))
    path.write_bytes(b"DFS20\0" + int8(14) + int8(len(index)) + index)


def dfs20_with(path: Path, **items) -> None:
    """A DFS20 file holding a root with ``items``, in one transaction after
    the (empty) index, as Durus 4.3 appends commits.
    """
    memory = MemoryStorage()
    make_database(memory, **items)
    empty_dfs20(path)
    with open(path, "ab") as file:
        for _, record in memory.gen_oid_record():
            file.write(int4(len(record)) + record)
        file.write(int4(0))


def durus(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or REPO)


def test_each_format_is_told_by_its_first_bytes(tmp_path: Path) -> None:
    make_database(FileStorage(str(tmp_path / "a.durus")), x=1)
    make_database(SqliteStorage(str(tmp_path / "a.sqlite")), x=1)
    empty_dfs20(tmp_path / "a.dfs")
    (tmp_path / "empty").write_bytes(b"")
    assert storage_class_for_file(str(tmp_path / "a.durus")) is FileStorage
    assert storage_class_for_file(str(tmp_path / "a.sqlite")) is SqliteStorage
    assert storage_class_for_file(str(tmp_path / "a.dfs")) is FileStorage2
    assert storage_class_for_file(str(tmp_path / "missing")) is FileStorage
    assert storage_class_for_file(str(tmp_path / "empty")) is FileStorage


def test_an_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("shopping list\n")
    with pytest.raises(UnknownFormatError, match="not a Durus file: it starts with b'shopping'"):
        storage_class_for_file(str(tmp_path / "notes.txt"))
    with pytest.raises(UnknownFormatError, match="is a folder"):
        storage_class_for_file(str(tmp_path))


def test_open_storage_takes_paths_and_file_and_sqlite_uris(tmp_path: Path) -> None:
    make_database(SqliteStorage(str(tmp_path / "a.sqlite")), x=1)
    for spec in (str(tmp_path / "a.sqlite"), f"file://{tmp_path}/a.sqlite", f"sqlite://{tmp_path}/a.sqlite"):
        storage = open_storage(spec, readonly=True)
        assert isinstance(storage, SqliteStorage)
        assert Connection(storage).get_root()["x"] == 1
        storage.close()
    storage = open_storage(f"sqlite://{tmp_path}/new.sqlite")
    assert isinstance(storage, SqliteStorage) and (tmp_path / "new.sqlite").exists()
    storage.close()
    storage = open_storage(str(tmp_path / "new.durus"))
    assert isinstance(storage, FileStorage)
    storage.close()


def test_open_storage_reaches_servers_over_tcp_and_unix_sockets(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "tcp.durus") as server:
        host, port = server.address
        storage = open_storage(f"durus://{host}:{port}")
        assert isinstance(storage, ClientStorage)
        make_database(storage, where="tcp")
    socket = str(tmp_path / "s.sock")
    with ServerProcess(tmp_path / "unix.durus", address=socket):
        storage = open_storage(f"unix://{socket}")
        make_database(storage, where="unix")
    assert Connection(FileStorage(str(tmp_path / "unix.durus"))).get_root()["where"] == "unix"


def test_open_storage_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names no storage: use PATH"):
        open_storage("ftp://example.com/data")
    with pytest.raises(ValueError, match="names no path"):
        open_storage("sqlite://")


def test_a_postgresql_uri_opens_a_postgres_storage(postgres_dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from durus.postgres_storage import PostgresStorage

    params = conninfo_to_dict(postgres_dsn)
    uri = f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    storage = open_storage(uri)
    try:
        assert isinstance(storage, PostgresStorage)
        connection = Connection(storage)
        connection.get_root()["k"] = 1
        connection.commit()
    finally:
        storage.close()
    reader = open_storage(uri.replace("postgresql://", "postgres://"), readonly=True)
    try:
        assert reader.readonly and Connection(reader).get_root()["k"] == 1
    finally:
        reader.close()


def test_import_storage_class_names_module_and_class() -> None:
    assert import_storage_class("durus.sqlite_storage.SqliteStorage") is SqliteStorage
    with pytest.raises(ValueError, match="MODULE.CLASS"):
        import_storage_class("SqliteStorage")
    with pytest.raises(ValueError, match="no_such_module"):
        import_storage_class("no_such_module.Storage")


# -- the durus command ----------------------------------------------------------


def test_durus_p_packs_an_sqlite_file_found_by_its_first_bytes(tmp_path: Path) -> None:
    path = tmp_path / "data.sqlite"
    storage = SqliteStorage(str(path))
    connection = Connection(storage)
    connection.get_root()["gone"] = PersistentDict()
    connection.commit()
    gone = connection.get_root()["gone"]._p_oid
    del connection.get_root()["gone"]
    connection.commit()
    storage.close()
    result = durus("-p", "--file", str(path))
    assert result.returncode == 0, result.stderr
    assert f"packed {path}" in result.stdout
    assert gone not in SqliteStorage(str(path)) and b"\0" * 8 in SqliteStorage(str(path))


def test_durus_p_with_storage_class_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    make_database(SqliteStorage(str(path)), x=1)
    result = durus("-p", "--file", str(path), "--storage-class", "durus.sqlite_storage.SqliteStorage")
    assert result.returncode == 0, result.stderr
    result = durus("-p", "--file", str(path), "--storage-class", "durus.nothing.Here")
    assert result.returncode == 2 and "durus.nothing.Here" in result.stderr


def test_durus_commands_refuse_a_file_of_unknown_format_and_a_stray_storage_class(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("shopping list\n")
    result = durus("-p", "--file", str(tmp_path / "notes.txt"))
    assert result.returncode == 2
    assert "not a Durus file" in result.stderr and "Traceback" not in result.stderr
    result = durus("-c", "--storage-class", "durus.sqlite_storage.SqliteStorage")
    assert result.returncode == 2 and "--storage-class goes with --file" in result.stderr


def test_durus_s_serves_an_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "data.sqlite"
    make_database(SqliteStorage(str(path)), greeting="hello")
    with ServerProcess(path) as server:
        connection = Connection(ClientStorage(address=server.address))
        assert connection.get_root()["greeting"] == "hello"
        connection.get_root()["reply"] = "hi"
        connection.commit()
        connection.get_storage().close()
    assert Connection(SqliteStorage(str(path))).get_root()["reply"] == "hi"


def test_durus_c_opens_an_old_dfs20_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old.durus"
    dfs20_with(path, greeting="hello", box=PersistentDict(n=1))
    script = "print(root['greeting'], root['box']['n'])\nroot['x'] = 1\nconnection.commit()\n"
    result = subprocess.run([sys.executable, "-m", "durus", "-c", "--file", str(path)], input=script,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "hello 1" in result.stdout
    assert "old DFS20 file, which is only read" in result.stderr
    assert "durus --copy" in result.stderr


def test_durus_s_serves_an_old_dfs20_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "old.durus"
    dfs20_with(path, greeting="hello")
    with ServerProcess(path) as server:
        connection = Connection(ClientStorage(address=server.address))
        assert connection.get_root()["greeting"] == "hello"
        connection.get_root()["reply"] = "hi"
        with pytest.raises(DurusError):  # the server refuses, and drops the client
            connection.commit()
        connection.get_storage().close()
        assert server.is_running()
    assert Connection(FileStorage2(str(path))).get_root().get("reply") is None

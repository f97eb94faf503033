"""``durus --copy`` and durus.copy: every record, oids unchanged, between any
two kinds of storage, verified.  (Copies of files made by the real Durus
4.3 are in test_compat_sqlite.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.copy import CopyError, copy_storage, verify_copy
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict
from durus.record import pack_record
from durus.sqlite_storage import SqliteStorage
from durus.storage import MemoryStorage
from server_process import ServerProcess

REPO = Path(__file__).resolve().parent.parent


def build(storage, garbage: bool = True) -> dict[bytes, bytes]:
    """Fill ``storage`` with a few hundred objects, with holes in the oids
    (a pack removed some); every record it then holds.
    """
    connection = Connection(storage)
    root = connection.get_root()
    root["items"] = [PersistentDict(n=n, text="x" * n) for n in range(300)]
    root["doomed"] = [PersistentDict(n=n) for n in range(50)]
    connection.commit()
    del root["doomed"]
    root["later"] = PersistentDict(cycle=root)
    connection.commit()
    if not garbage:
        connection.pack()
    records = dict(storage.gen_oid_record())
    storage.close()
    return records


def durus_copy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", "--copy", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_copy_from_a_file_to_sqlite_and_back_keeps_every_record(tmp_path: Path) -> None:
    records = build(FileStorage(str(tmp_path / "a.durus")))
    result = durus_copy(str(tmp_path / "a.durus"), f"sqlite://{tmp_path}/b.sqlite")
    assert result.returncode == 0, result.stderr
    assert f"copied {len(records)} records" in result.stdout
    assert f"verified: all {len(records)} records equal" in result.stdout
    assert f"copy: {len(records)} records" in result.stderr  # a progress line
    assert dict(SqliteStorage(str(tmp_path / "b.sqlite")).gen_oid_record()) == records
    result = durus_copy(str(tmp_path / "b.sqlite"), str(tmp_path / "c.durus"))
    assert result.returncode == 0, result.stderr
    assert dict(FileStorage(str(tmp_path / "c.durus"), readonly=True).gen_oid_record()) == records


def test_copy_into_a_server_keeps_oids_past_holes_and_new_oids_come_after(tmp_path: Path) -> None:
    records = build(SqliteStorage(str(tmp_path / "a.sqlite")), garbage=False)
    highest = max(records)
    assert len(records) < int.from_bytes(highest, "big") + 1  # the pack left holes
    with ServerProcess(tmp_path / "served.durus") as server:
        host, port = server.address
        result = durus_copy(str(tmp_path / "a.sqlite"), f"durus://{host}:{port}")
        assert result.returncode == 0, result.stderr
        assert "verified" in result.stdout
        copied = FileStorage(str(tmp_path / "served.durus"), readonly=True)
        assert dict(copied.gen_oid_record()) == records
        connection = Connection(ClientStorage(address=server.address))
        assert [item["n"] for item in connection.get_root()["items"]] == list(range(300))
        connection.get_root()["new"] = PersistentDict()
        connection.commit()
        assert connection.get_root()["new"]._p_oid not in records
        connection.get_storage().close()


def test_copy_from_a_server_into_sqlite(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "served.durus") as server:
        records = build(ClientStorage(address=server.address), garbage=False)
        host, port = server.address
        result = durus_copy(f"durus://{host}:{port}", f"sqlite://{tmp_path}/b.sqlite", "--quiet")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    assert dict(SqliteStorage(str(tmp_path / "b.sqlite")).gen_oid_record()) == records


def test_a_destination_that_is_not_empty_is_refused_and_left_alone(tmp_path: Path) -> None:
    build(FileStorage(str(tmp_path / "a.durus")))
    build(SqliteStorage(str(tmp_path / "b.sqlite")))
    before = dict(SqliteStorage(str(tmp_path / "b.sqlite")).gen_oid_record())
    result = durus_copy(str(tmp_path / "a.durus"), str(tmp_path / "b.sqlite"))
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "Traceback" not in result.stderr
    assert dict(SqliteStorage(str(tmp_path / "b.sqlite")).gen_oid_record()) == before


def test_a_missing_source_or_the_same_file_twice_is_refused(tmp_path: Path) -> None:
    result = durus_copy(str(tmp_path / "nothing.durus"), str(tmp_path / "b.durus"))
    assert result.returncode == 2 and "no such file" in result.stderr
    assert not (tmp_path / "b.durus").exists()
    build(FileStorage(str(tmp_path / "a.durus")))
    result = durus_copy(str(tmp_path / "a.durus"), str(tmp_path / "a.durus"))
    assert result.returncode == 2 and "same file" in result.stderr


def test_verification_names_every_record_that_differs() -> None:
    source, dest = MemoryStorage(), MemoryStorage()
    build(source)
    report = copy_storage(source, dest)
    assert report.verified and report.records == len(source.records)
    oids = sorted(dest.records)
    dest.records[oids[3]] = pack_record(oids[3], b"changed", b"")
    del dest.records[oids[5]]
    assert sorted(verify_copy(source, dest)) == [oids[3], oids[5]]


def test_copy_storage_refuses_a_destination_with_records() -> None:
    source, dest = MemoryStorage(), MemoryStorage()
    build(source)
    build(dest)
    with pytest.raises(CopyError, match="not empty"):
        copy_storage(source, dest)


@pytest.mark.parametrize("garbage", [False, True])
def test_copy_into_postgresql_and_back(tmp_path: Path, postgres_dsn, garbage) -> None:
    """Forward references between the batches included (a B-tree whose
    nodes come before what they refer to), holes in the oids kept, new oids
    after the copied ones; and back out of PostgreSQL into SQLite.
    """
    from durus.btree import BTree
    from durus.postgres_storage import PostgresStorage
    from support.postgres import uri_of

    storage = FileStorage(str(tmp_path / "a.durus"))
    connection = Connection(storage)
    connection.get_root()["tree"] = tree = BTree()
    for number in range(3000):
        tree[number] = PersistentDict(n=number)
    connection.commit()
    records = build(storage, garbage=garbage)  # closes it
    assert len(records) > 3000
    result = durus_copy(str(tmp_path / "a.durus"), uri_of(postgres_dsn))
    assert result.returncode == 0, result.stderr
    assert f"verified: all {len(records):,} records equal" in result.stdout
    result = durus_copy(uri_of(postgres_dsn), f"sqlite://{tmp_path}/b.sqlite", "--quiet")
    assert result.returncode == 0, result.stderr
    assert dict(SqliteStorage(str(tmp_path / "b.sqlite")).gen_oid_record()) == records
    copied = PostgresStorage(postgres_dsn)
    assert dict(copied.gen_oid_record()) == records
    connection = Connection(copied)
    assert connection.get_root()["tree"][2999]["n"] == 2999
    connection.get_root()["new"] = PersistentDict()
    connection.commit()
    assert connection.get_root()["new"]._p_oid > max(records)
    copied.close()

"""``durus --init``: a database made ready (or its schema upgraded) before
applications that may not create anything open it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from durus.connection import Connection
from durus.sqlite_storage import SqliteStorage
from tests.support.postgres import uri_of


def durus_init(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", "--init", *args], capture_output=True, text=True,
                          timeout=120)


def test_init_creates_the_postgresql_schema_once_and_an_app_then_needs_no_create(postgres_dsn: str) -> None:
    from durus.postgres_storage import SCHEMA_VERSION, PostgresStorage, PostgresStorageError

    with pytest.raises(PostgresStorageError):
        PostgresStorage(postgres_dsn, create=False)
    done = durus_init(uri_of(postgres_dsn))
    assert done.returncode == 0, done.stderr
    assert f"created the durus schema, version {SCHEMA_VERSION}" in done.stdout
    connection = Connection(PostgresStorage(postgres_dsn, create=False))
    connection.get_root()["kept"] = 1
    connection.commit()
    connection.storage.close()
    again = durus_init(uri_of(postgres_dsn))
    assert again.returncode == 0 and "already at version" in again.stdout
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT version FROM durus_schema_version").fetchone() == (SCHEMA_VERSION,)
    connection = Connection(PostgresStorage(postgres_dsn, readonly=True))
    assert connection.get_root()["kept"] == 1
    connection.storage.close()


def test_init_says_why_it_cannot(tmp_path: Path, postgres_cluster) -> None:
    nowhere = uri_of(postgres_cluster.new_dsn()).rsplit("/", 1)[0] + "/no_such_database"
    done = durus_init(nowhere)
    assert done.returncode == 2 and "no_such_database" in done.stderr and "password" not in done.stderr
    done = durus_init("durus://localhost:2972")
    assert done.returncode == 2 and "storage server" in done.stderr
    stray = tmp_path / "notes.txt"
    stray.write_text("not a database")
    done = durus_init(str(stray))
    assert done.returncode == 2 and "not a Durus file" in done.stderr
    assert stray.read_text() == "not a database"


def test_init_makes_a_new_sqlite_or_shelf_file(tmp_path: Path) -> None:
    assert durus_init(f"sqlite://{tmp_path / 'db.sqlite'}").returncode == 0
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "objects" in tables  # Durus 4.3's table, and ours beside it
    connection = Connection(SqliteStorage(str(tmp_path / "db.sqlite")))
    connection.get_root()["x"] = 1
    connection.commit()
    connection.storage.close()
    assert durus_init(str(tmp_path / "db.durus")).returncode == 0
    assert (tmp_path / "db.durus").read_bytes().startswith(b"SHELF-1\n")

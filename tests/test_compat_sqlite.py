"""The storages Durus 4.3 has besides FileStorage, against the real Durus
4.3: its SqliteStorage files open here and ours open there; its DFS20
files (FileStorage2) are read here; ``durus --copy`` copies each of its
formats (into PostgreSQL too).  Both sides run tests/durus43_scripts/storage_driver.py, and
their oid-free dumps must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durus43 import SCRIPTS, Durus43, durus43  # noqa: F401  (the fixture)

sys.path.insert(0, str(SCRIPTS))

import storage_driver  # noqa: E402  (needs SCRIPTS on the path)

from durus.file_storage import FileStorage  # noqa: E402
from durus.postgres_storage import PostgresStorage  # noqa: E402
from durus.sqlite_storage import SqliteStorage  # noqa: E402
from support.postgres import uri_of  # noqa: E402

pytestmark = pytest.mark.compat

DRIVER = SCRIPTS / "storage_driver.py"
REPO = Path(__file__).resolve().parent.parent


def theirs(durus43: Durus43, command: str, *args: Any) -> Any:
    return durus43.run_json(script=DRIVER, args=[command, *map(str, args)])


def ours(command: str, *args: Any) -> Any:
    # The same trip through JSON as the other side's output takes.
    return json.loads(json.dumps(storage_driver.run_command(command, [str(arg) for arg in args])))


def test_an_sqlite_file_of_durus43_reads_here_and_changes_made_here_read_there(
        durus43: Durus43, tmp_path: Path) -> None:
    path = tmp_path / "theirs.sqlite"
    built = theirs(durus43, "build", "sqlite", path, "--no-btree")  # 4.3 cannot read our B-tree nodes
    assert built["problems"] == []
    assert ours("dump", "sqlite", path) == built
    changed = ours("mutate", "sqlite", path, 1)  # adds our tables and WAL mode
    assert changed != built
    assert theirs(durus43, "dump", "sqlite", path) == changed


def test_an_sqlite_file_written_here_reads_in_durus43(durus43: Durus43, tmp_path: Path) -> None:
    path = tmp_path / "ours.sqlite"
    ours("build", "sqlite", path, "--no-btree")
    changed = ours("mutate", "sqlite", path, 1, "--pack")
    assert theirs(durus43, "dump", "sqlite", path) == changed


def test_new_objects_here_never_overwrite_durus43s_highest_oid(durus43: Durus43, tmp_path: Path) -> None:
    # Durus 4.3 reopening this file would hand out its highest oid again.
    path = tmp_path / "theirs.sqlite"
    theirs(durus43, "build", "sqlite", path)
    storage = SqliteStorage(str(path))
    highest = max(oid for oid, _ in storage.gen_oid_record())
    assert storage.new_oid() > highest


@pytest.mark.parametrize("pack", [False, True])
def test_a_dfs20_file_of_durus43_reads_here(durus43: Durus43, tmp_path: Path, pack: bool) -> None:
    path = tmp_path / "theirs.dfs"
    flags = ["--pack"] if pack else []
    theirs(durus43, "build", "dfs20", path, *flags)
    # After a pack the records sit before the index; commits after it follow.
    changed = theirs(durus43, "mutate", "dfs20", path, 1)
    assert changed["problems"] == []
    assert ours("dump", "dfs20", path) == changed


@pytest.mark.parametrize("kind, name", [("shelf", "a.durus"), ("dfs20", "a.dfs"), ("sqlite", "a.sqlite")])
def test_durus_copy_copies_each_format_of_durus43(
        durus43: Durus43, tmp_path: Path, kind: str, name: str, postgres_dsn: str) -> None:
    source = tmp_path / name
    expected = theirs(durus43, "build", kind, source)
    if kind != "sqlite":  # 4.3's SqliteStorage, reopened, overwrites its highest oid
        expected = theirs(durus43, "mutate", kind, source, 1)
    for dest_kind, dest in (("sqlite", tmp_path / "copy.sqlite"), ("shelf", tmp_path / "copy.durus")):
        spec = f"sqlite://{dest}" if dest_kind == "sqlite" else str(dest)
        result = subprocess.run([sys.executable, "-m", "durus", "--copy", str(source), spec],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr
        assert "verified: all" in result.stdout
        assert ours("dump", dest_kind, dest) == expected
    # The SHELF-1 copy opens in Durus 4.3 too (records are copied unchanged).
    assert theirs(durus43, "dump", "shelf", tmp_path / "copy.durus") == expected
    # Into PostgreSQL: the same records as the SHELF-1 copy holds.
    result = subprocess.run([sys.executable, "-m", "durus", "--copy", str(source), uri_of(postgres_dsn)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "verified: all" in result.stdout
    in_postgres, in_file = PostgresStorage(postgres_dsn), FileStorage(str(tmp_path / "copy.durus"), readonly=True)
    assert dict(in_postgres.gen_oid_record()) == dict(in_file.gen_oid_record())
    in_postgres.close()
    in_file.close()

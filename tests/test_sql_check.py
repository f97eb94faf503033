"""``durus --check`` on databases kept in SQL (durus.sql_check): SQLite files
and PostgreSQL databases, damaged on purpose row by row.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durus.btree import BTree
from durus.check import DAMAGED, DANGLING, CheckReport, UncheckableFileError, check_named
from durus.connection import Connection
from durus.persistent_set import PersistentSet
from durus.record import ROOT_OID, oid_to_int
from durus.sql_check import check_postgres, check_sqlite
from durus.sqlite_storage import SqliteStorage
from durus.storage import Storage
from tests.models import Item


def build(storage: Storage) -> dict[str, int]:
    """A small database with a tree, a set, an object referring to itself
    and one unreachable object; oids (as numbers) by name.
    """
    connection = Connection(storage)
    root = connection.get_root()
    root["tree"] = tree = BTree()
    for n in range(40):
        tree[n] = Item(str(n), {"n": n})
    root["set"] = PersistentSet({1, "two"})
    root["self"] = item = Item("refers to itself")
    item.value = item
    root["garbage"] = Item("soon unreachable")
    connection.commit()
    oids = {"root": 0, "tree": oid_to_int(tree._p_oid), "first": oid_to_int(tree[0]._p_oid),
            "garbage": oid_to_int(root["garbage"]._p_oid), "self": oid_to_int(item._p_oid)}
    del root["garbage"]
    connection.commit()
    storage.close()
    return oids


def problems(report: CheckReport, kind: str) -> list[int]:
    return sorted(oid_to_int(problem.oid) for problem in report.problems if problem.kind == kind)


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", "--check", *args], capture_output=True, text=True,
                          timeout=120)


# -- SQLite ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    path = tmp_path / "db.sqlite"
    return path, build(SqliteStorage(str(path)))


def sql(path: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement, args)
    db.close()


def row(path: Path, oid: int) -> tuple[bytes, bytes]:
    with sqlite3.connect(path) as db:
        data, refs = db.execute("SELECT data, refs FROM objects WHERE id = ?", (oid,)).fetchone()
    db.close()
    return data, refs or b""


def test_a_sound_sqlite_database_checks_clean_with_its_counts(sqlite_db) -> None:
    path, oids = sqlite_db
    report = check_sqlite(path)
    assert report.clean, report.format()
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT count(*) FROM objects").fetchone()
    assert report.records == report.objects == rows
    assert report.unreachable == 1  # the garbage object, not yet packed
    assert report.references > 40
    assert "clean" in report.format() and "transactions" not in report.format()


def damage_data(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    sql(path, "UPDATE objects SET data = ? WHERE id = ?", b"\x80\x04not a pickle", oids["first"])
    return DAMAGED, oids["first"]


def drop_a_ref(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    _, refs = row(path, 0)
    sql(path, "UPDATE objects SET refs = ? WHERE id = 0", refs[8:])
    return DAMAGED, 0


def unsort_refs(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    _, refs = row(path, 0)
    assert len(refs) >= 16
    sql(path, "UPDATE objects SET refs = ? WHERE id = 0", refs[8:16] + refs[:8] + refs[16:])
    return DAMAGED, 0


def cut_refs(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    _, refs = row(path, 0)
    sql(path, "UPDATE objects SET refs = ? WHERE id = 0", refs[:-3])
    return DAMAGED, 0


def text_data(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    sql(path, "UPDATE objects SET data = 'text' WHERE id = ?", oids["self"])
    return DAMAGED, oids["self"]


def referrer(path: Path, oid: int) -> int:
    """The one row whose refs list ``oid``."""
    with sqlite3.connect(path) as db:
        found = [number for number, refs in db.execute("SELECT id, refs FROM objects")
                 if refs and oid.to_bytes(8, "big") in [refs[i:i + 8] for i in range(0, len(refs), 8)]]
    db.close()
    assert len(found) == 1
    return found[0]


def remove_a_referred_row(path: Path, oids: dict[str, int]) -> tuple[str, int]:
    holder = referrer(path, oids["first"])
    sql(path, "DELETE FROM objects WHERE id = ?", oids["first"])
    return DANGLING, holder


@pytest.mark.parametrize("damage", [damage_data, drop_a_ref, unsort_refs, cut_refs, text_data,
                                    remove_a_referred_row])
def test_each_kind_of_damage_to_an_sqlite_row_is_reported_with_its_oid(
        sqlite_db, damage: Callable[[Path, dict[str, int]], tuple[str, int]]) -> None:
    path, oids = sqlite_db
    kind, oid = damage(path, oids)
    report = check_sqlite(path)
    assert problems(report, kind) == [oid], report.format()
    assert len(report.problems) == 1, report.format()
    assert f"oid {oid}" in report.format()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_whatever_the_check_calls_clean_loads(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Random bytes overwritten in one record's data: either the check
    reports that record damaged, or every object still loads, but for a
    class name changed to one that cannot be imported (the check reads
    class names without importing anything: it runs without the
    application's code).
    """
    path = tmp_path_factory.mktemp("flip") / "db.sqlite"
    build(SqliteStorage(str(path)))
    with sqlite3.connect(path) as db:
        ids = [number for (number,) in db.execute("SELECT id FROM objects ORDER BY id")]
    target = data.draw(st.sampled_from(ids))
    record, _ = row(path, target)
    start = data.draw(st.integers(0, len(record) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=4))
    sql(path, "UPDATE objects SET data = ? WHERE id = ?", record[:start] + patch + record[start + len(patch):],
        target)
    report = check_sqlite(path)
    if report.clean:
        connection = Connection(SqliteStorage(str(path), readonly=True))
        try:
            for number in ids:
                try:
                    connection.load_state(connection.get(number.to_bytes(8, "big")))
                except (ImportError, AttributeError):
                    assert number == target
        finally:
            connection.storage.close()
    else:
        assert problems(report, DAMAGED) == [target], report.format()


def test_the_check_names_what_it_cannot_check(tmp_path: Path) -> None:
    with pytest.raises(UncheckableFileError, match="no such file"):
        check_sqlite(tmp_path / "missing.sqlite")
    other = tmp_path / "other.sqlite"
    sql(other, "CREATE TABLE t (x)")
    with pytest.raises(UncheckableFileError, match="objects"):
        check_sqlite(other)
    with pytest.raises(UncheckableFileError, match="durus://"):
        check_named("durus://localhost:2972")


def test_durus_check_reads_sqlite_by_its_header_or_uri_and_exits_by_the_verdict(sqlite_db, tmp_path: Path) -> None:
    path, oids = sqlite_db
    for spec in (str(path), f"sqlite://{path}", f"sqlite:///{path}"):
        done = run_check(spec)
        assert done.returncode == 0, done.stderr
        assert "clean" in done.stdout
    _, holder = remove_a_referred_row(path, oids)
    done = run_check(str(path))
    assert done.returncode == 1
    assert f"dangling, oid {holder}: refers to oid {oids['first']}" in done.stdout
    dfs20 = tmp_path / "old.durus"
    dfs20.write_bytes(b"DFS20\0" + bytes(40))
    done = run_check(str(dfs20))
    assert done.returncode == 2 and "durus --copy" in done.stderr


def test_an_sqlite_file_made_by_durus43_checks_clean(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from durus43 import SCRIPTS, durus43_python

    path = tmp_path / "theirs.sqlite"
    subprocess.run([str(durus43_python()), str(SCRIPTS / "storage_driver.py"), "build", "sqlite", str(path),
                    "--no-btree"], check=True, capture_output=True, timeout=300)
    report = check_sqlite(path)
    assert report.clean, report.format()
    assert report.objects > 10


# -- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture
def pg_db(postgres_dsn: str) -> tuple[str, dict[str, int]]:
    from durus.postgres_storage import PostgresStorage

    return postgres_dsn, build(PostgresStorage(postgres_dsn))


def pg(dsn: str, statement: str, *args: object) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, args)


def test_a_sound_postgresql_database_checks_clean(pg_db) -> None:
    dsn, oids = pg_db
    report = check_postgres(dsn)
    assert report.clean, report.format()
    assert report.objects == report.records > 40
    assert report.unreachable == 1
    assert "password" not in report.path


def test_damage_in_postgresql_rows_is_reported_with_its_oid(pg_db) -> None:
    dsn, oids = pg_db
    # The record's state pickle overwritten (its length kept).
    pg(dsn, "UPDATE durus_object SET record = overlay(record placing '\\xdeadbeef'::bytea from 30) "
            "WHERE oid = %s", oids["first"])
    # A refs column that lost a ref the record still has.
    pg(dsn, "UPDATE durus_object SET refs = refs[2:] WHERE oid = 0")
    # A row that is not a record of its oid.
    pg(dsn, "UPDATE durus_object SET record = '\\x00'::bytea WHERE oid = %s", oids["self"])
    report = check_postgres(dsn)
    assert problems(report, DAMAGED) == sorted([oids["first"], 0, oids["self"]]), report.format()
    assert "refs column" in report.format()
    assert problems(report, DANGLING) == []


def test_a_missing_row_and_a_sequence_behind_are_reported(pg_db) -> None:
    dsn, oids = pg_db
    pg(dsn, "DELETE FROM durus_object WHERE oid = %s", oids["first"])
    pg(dsn, "SELECT setval('durus_oid_seq', 2)")
    report = check_postgres(dsn)
    assert [problem.message for problem in report.problems if problem.kind == DANGLING] == [
        f"refers to oid {oids['first']}, which has no row"], report.format()
    assert any("durus_oid_seq" in problem.message for problem in report.problems)


def test_durus_check_takes_a_postgresql_dsn(pg_db, postgres_cluster) -> None:
    from tests.support.postgres import uri_of

    dsn, oids = pg_db
    uri = uri_of(dsn)
    done = run_check(uri)
    assert done.returncode == 0, done.stderr
    assert "clean" in done.stdout
    pg(dsn, "DELETE FROM durus_object WHERE oid = %s", oids["first"])
    assert run_check(uri).returncode == 1
    done = run_check(uri_of(postgres_cluster.new_dsn()))
    assert done.returncode == 2 and "no Durus data" in done.stderr


def test_a_check_sees_one_commit_while_writers_go_on(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-check, a commit drops the root's reference to a set and a pack
    removes the set's row: the check, reading as of one commit, sees the
    root and the set as they were, not a dangling reference.
    """
    from durus import sql_check
    from durus.postgres_storage import PostgresStorage

    connection = Connection(PostgresStorage(postgres_dsn))
    root = connection.get_root()
    root["items"] = [Item(str(n)) for n in range(1200)]
    root["set"] = PersistentSet({1})
    connection.commit()
    monkeypatch.setattr(sql_check, "FETCH_ROWS", 50)
    monkeypatch.setattr(sql_check, "PROGRESS_INTERVAL", 0.0)
    seen: list[int] = []

    def commit_meanwhile(done: int, total: int) -> None:
        if not seen:
            del root["set"]
            connection.commit()
            connection.pack()
        seen.append(done)

    report = check_postgres(postgres_dsn, commit_meanwhile)
    connection.storage.close()
    assert seen and seen[0] < 1200
    assert report.clean, report.format()
    assert report.objects == 1202 and report.unreachable == 0  # the root, 1,200 items, the set
    assert check_postgres(postgres_dsn).objects == 1201

"""SqliteStorage on its own: the table layout, oids, the invalidation log,
packing, damaged and foreign files.  What every storage must do alike is in
test_storage_contract.py.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from durus.connection import Connection
from durus.error import DamagedRecordError, DurusError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.file_storage import ReadOnlyError
from durus.persistent_dict import PersistentDict
from durus.record import ROOT_OID, int_to_oid, oid_to_int, pack_record
from durus import sqlite_storage
from durus.sqlite_storage import SqliteStorage

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "data.sqlite")


def commit(storage: SqliteStorage, *records: bytes, handler=None) -> None:
    storage.begin()
    for record in records:
        storage.store(record[:8], record)
    storage.end(handler)


def record(oid: int, data: bytes = b"data", refs: tuple[int, ...] = ()) -> bytes:
    return pack_record(int_to_oid(oid), data, b"".join(int_to_oid(ref) for ref in refs))


def test_records_are_rows_of_the_objects_table_as_durus43_lays_them_out(path: str) -> None:
    storage = SqliteStorage(path)
    commit(storage, record(0, b"root-data", (5, 7)), record(5, b"five"))
    storage.close()
    db = sqlite3.connect(path)
    columns = [(name, kind) for _, name, kind, *_ in db.execute("PRAGMA table_info(objects)")]
    assert columns == [("id", "INTEGER"), ("data", "BLOB"), ("refs", "BLOB")]
    rows = db.execute("SELECT id, data, refs FROM objects ORDER BY id").fetchall()
    assert rows == [(0, b"root-data", int_to_oid(5) + int_to_oid(7)), (5, b"five", b"")]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_load_gives_back_the_record_and_a_missing_oid_is_a_key_error(path: str) -> None:
    storage = SqliteStorage(path)
    commit(storage, record(0, refs=(1,)), record(1, b"x"))
    assert storage.load(ROOT_OID) == record(0, refs=(1,))
    assert list(storage.bulk_load([int_to_oid(1), ROOT_OID])) == [record(1, b"x"), record(0, refs=(1,))]
    with pytest.raises(DurusKeyError):
        storage.load(int_to_oid(9))
    assert [oid_to_int(oid) for oid, _ in storage.gen_oid_record(batch_size=1)] == [0, 1]


def test_new_oids_never_repeat_after_a_reopen_unlike_durus43(path: str) -> None:
    # Durus 4.3 hands out its highest stored oid again after a reopen (and
    # so overwrites that object); this storage keeps a counter instead.
    storage = SqliteStorage(path)
    given = [storage.new_oid() for _ in range(5)]
    commit(storage, *(record(oid_to_int(oid)) for oid in given[:3]))
    storage.close()
    storage = SqliteStorage(path)
    again = [storage.new_oid() for _ in range(5)]
    assert not set(again) & set(given)
    assert min(oid_to_int(oid) for oid in again) > max(oid_to_int(oid) for oid in given)


def test_new_oids_skip_past_oids_stored_without_the_counter(path: str) -> None:
    storage = SqliteStorage(path)
    storage.close()
    db = sqlite3.connect(path)  # as Durus 4.3 (or another program) would write
    db.executemany("INSERT INTO objects VALUES (?, ?, ?)", [(0, b"root", b""), (40, b"d", b"")])
    db.commit()
    db.close()
    storage = SqliteStorage(path)
    assert oid_to_int(storage.new_oid()) == 41


def test_two_processes_taking_oids_at_once_never_share_one(path: str) -> None:
    Connection(SqliteStorage(path)).get_storage().close()  # the root is stored
    code = ("import sys; from durus.sqlite_storage import SqliteStorage\n"
            "s = SqliteStorage(sys.argv[1])\n"
            "print(' '.join(str(int.from_bytes(s.new_oid(), 'big')) for _ in range(2000)))\n")
    processes = [subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True, cwd=REPO)
                 for _ in range(3)]
    oids = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        oids.extend(int(word) for word in out.split())
    assert len(oids) == 6000 == len(set(oids))


def test_the_root_oid_goes_out_again_once_the_process_holding_it_died_without_a_root(path: str) -> None:
    code = ("import sys; from durus.sqlite_storage import SqliteStorage\n"
            "print(int.from_bytes(SqliteStorage(sys.argv[1]).new_oid(), 'big'))\n")
    taken = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, cwd=REPO, check=True)
    assert taken.stdout.split() == ["0"]  # then that process exited, root not created
    storage = SqliteStorage(path)
    assert storage.new_oid() == ROOT_OID
    other = SqliteStorage(path)  # this process holds oid 0 now
    assert other.new_oid() != ROOT_OID


def test_sync_reports_what_another_storage_committed_and_a_load_of_it_conflicts(path: str) -> None:
    first, second = SqliteStorage(path), SqliteStorage(path)
    commit(first, record(0), record(1))
    assert sorted(second.sync()) == [int_to_oid(0), int_to_oid(1)]
    commit(first, record(1, b"new"))
    with pytest.raises(ReadConflictError):
        second.load(int_to_oid(1))
    assert second.load(ROOT_OID) == record(0)  # not changed since the sync
    assert second.sync() == [int_to_oid(1)]
    assert second.load(int_to_oid(1)) == record(1, b"new")
    assert second.sync() == [] and first.sync() == []  # nobody hears of its own commits


def test_end_hands_over_newer_commits_and_a_raising_handler_writes_nothing(path: str) -> None:
    first, second = SqliteStorage(path), SqliteStorage(path)
    commit(first, record(0), record(1))
    second.sync()
    commit(first, record(1, b"first"))

    def refuse(oids: list[bytes]) -> None:
        assert oids == [int_to_oid(1)]
        raise WriteConflictError(oids)

    with pytest.raises(WriteConflictError):
        commit(second, record(2, b"second"), handler=refuse)
    with pytest.raises(DurusKeyError):
        first.load(int_to_oid(2))
    # A record for an oid just handed over conflicts even if the handler lets it be.
    commit(first, record(1, b"again"))
    with pytest.raises(WriteConflictError):
        commit(second, record(1, b"second"), handler=lambda oids: None)
    assert first.load(int_to_oid(1)) == record(1, b"again")


def test_a_storage_left_behind_by_the_trimmed_log_is_told_everything_changed(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "LOG_KEEP", 5)
    writer, idle = SqliteStorage(path), SqliteStorage(path)
    commit(writer, record(0), record(1), record(2))
    idle.sync()
    for _ in range(300):
        commit(writer, record(2, b"busy"))
    assert sqlite3.connect(path).execute("SELECT count(*) FROM durus_log").fetchone()[0] < 200
    # Oids 0 and 1 never changed, but nothing says so any more.
    assert sorted(idle.sync()) == [int_to_oid(0), int_to_oid(1), int_to_oid(2)]


def test_connections_in_two_storages_conflict_and_retry(path: str) -> None:
    first, second = Connection(SqliteStorage(path)), Connection(SqliteStorage(path))
    first.get_root()["n"] = 1
    first.commit()
    second.abort()
    second.get_root()["n"] = 2
    first.get_root()["n"] = 3
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.get_root()["n"] == 3


def test_pack_removes_unreachable_records_and_keeps_commits_made_during_it(path: str) -> None:
    connection = Connection(SqliteStorage(path))
    root = connection.get_root()
    root["keep"] = PersistentDict(a=1)
    root["drop"] = PersistentDict(b=2)
    connection.commit()
    dropped = root["drop"]._p_oid
    del root["drop"]
    connection.commit()
    other = Connection(SqliteStorage(path))
    packer = connection.get_storage().get_packer()
    next(packer)
    # Another process makes a new object reachable while the pack marks.
    other.get_root()["late"] = PersistentDict(c=3)
    other.commit()
    list(packer)
    storage = SqliteStorage(path)
    with pytest.raises(DurusKeyError):
        storage.load(dropped)
    check = Connection(storage)
    assert check.get_root()["late"]["c"] == 3 and check.get_root()["keep"]["a"] == 1
    assert dropped in other.get_storage().sync()  # the removal is an invalidation


def test_pack_refuses_records_without_a_root(path: str) -> None:
    storage = SqliteStorage(path)
    commit(storage, record(3))
    with pytest.raises(DurusError, match="no root"):
        storage.pack()


def test_readonly_storage_reads_and_refuses_changes(path: str) -> None:
    storage = SqliteStorage(path)
    commit(storage, record(0))
    storage.close()
    reader = SqliteStorage(path, readonly=True)
    assert reader.load(ROOT_OID) == record(0)
    with pytest.raises(ReadOnlyError):
        reader.begin()
    with pytest.raises(ReadOnlyError):
        reader.new_oid()


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "not.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(DurusError, match="cannot open .* as a Durus SQLite database"):
        SqliteStorage(str(path))


def test_an_sqlite_database_of_another_program_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "other.sqlite")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (name text)")
    db.commit()
    db.close()
    for readonly in (True, False):
        with pytest.raises(DurusError, match="without an objects table"):
            SqliteStorage(path, readonly=readonly)
    db = sqlite3.connect(path)
    assert [name for (name,) in db.execute("SELECT name FROM sqlite_master")] == ["people"]


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DurusError, match="cannot open .*unable to open"):
        SqliteStorage(str(tmp_path / "no" / "such" / "data.sqlite"))


@pytest.mark.parametrize("data, refs, problem", [
    (None, b"", "not a blob"),
    (b"data", b"\0" * 5, "not whole 8-byte oids"),
])
def test_a_damaged_row_is_a_damaged_record_error(path: str, data, refs, problem: str) -> None:
    SqliteStorage(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO objects VALUES (4, ?, ?)", (data, refs))
    db.commit()
    db.close()
    storage = SqliteStorage(path)
    with pytest.raises(DamagedRecordError, match=problem) as raised:
        storage.load(int_to_oid(4))
    assert raised.value.oid == int_to_oid(4)


def test_an_oid_beyond_sqlite_integers_is_refused(path: str) -> None:
    storage = SqliteStorage(path)
    storage.begin()
    with pytest.raises(ValueError, match="largest SQLite integer"):
        storage.store(b"\xff" * 8, pack_record(b"\xff" * 8, b"d", b""))


def test_a_reference_to_an_object_a_pack_removed_meanwhile_is_a_conflict(path: str) -> None:
    packer, holder = SqliteStorage(path), SqliteStorage(path)
    commit(packer, record(0, refs=(1,)), record(1))
    holder.sync()
    commit(packer, record(0))  # oid 1 is garbage now
    packer.pack()
    # The holder still has oid 1 and makes a new object refer to it.
    with pytest.raises(WriteConflictError) as raised:
        commit(holder, record(2, refs=(1,)), handler=lambda oids: None)
    assert raised.value.oids == [int_to_oid(1)]
    with pytest.raises(DurusKeyError):
        packer.load(int_to_oid(2))


def test_end_without_a_handler_keeps_what_others_committed_for_the_next_sync(path: str) -> None:
    first, second = SqliteStorage(path), SqliteStorage(path)
    commit(first, record(0))
    commit(second, record(1))  # no handler: oid 0 stays pending
    assert second.sync() == [int_to_oid(0)]


# -- several storages on one file against a model of what each must see ---------


class SharedFileModel(RuleBasedStateMachine):
    """Three SqliteStorages on one file, driven in generated orders.

    The model: the committed records, and for each storage the oids others
    committed since its last sync or commit.  A storage must report exactly
    those (``sync`` and the handler of ``end``), refuse to load them
    (ReadConflictError), refuse a commit writing one of them, and hand out
    oids no one had or has.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp()
        path = os.path.join(self.folder, "data.sqlite")
        self.storages = [SqliteStorage(path) for _ in range(3)]
        self.committed: dict[bytes, bytes] = {}
        self.pending: list[set[bytes]] = [set() for _ in self.storages]
        self.handed: set[bytes] = set()
        self.serial = 0

    def teardown(self) -> None:
        for storage in self.storages:
            storage.close()
        shutil.rmtree(self.folder)

    @rule(who=st.integers(0, 2), oids=st.sets(st.integers(0, 5), min_size=1, max_size=3))
    def commit(self, who: int, oids: set[int]) -> None:
        self.serial += 1
        records = [record(oid, f"{self.serial}".encode()) for oid in sorted(oids)]
        delivered = []
        try:
            commit(self.storages[who], *records, handler=delivered.extend)
        except WriteConflictError:
            assert {int_to_oid(oid) for oid in oids} & self.pending[who]
        else:
            assert not {int_to_oid(oid) for oid in oids} & self.pending[who]
            for item in records:
                self.committed[item[:8]] = item
            for other, pending in enumerate(self.pending):
                if other != who:
                    pending.update(item[:8] for item in records)
        assert set(delivered) == self.pending[who]
        self.pending[who] = set()

    @rule(who=st.integers(0, 2))
    def sync(self, who: int) -> None:
        assert set(self.storages[who].sync()) == self.pending[who]
        self.pending[who] = set()

    @rule(who=st.integers(0, 2), oid=st.integers(0, 6))
    def load(self, who: int, oid: int) -> None:
        key = int_to_oid(oid)
        if key in self.pending[who]:
            with pytest.raises(ReadConflictError):
                self.storages[who].load(key)
        elif key not in self.committed:
            with pytest.raises(DurusKeyError):
                self.storages[who].load(key)
        else:
            assert self.storages[who].load(key) == self.committed[key]

    @rule(who=st.integers(0, 2))
    def new_oid(self, who: int) -> None:
        oid = self.storages[who].new_oid()
        assert oid not in self.handed and oid not in self.committed
        self.handed.add(oid)

    @invariant()
    def nobody_hears_of_its_own_commits(self) -> None:
        for storage, pending in zip(self.storages, self.pending):
            assert storage.invalid <= pending


SharedFileModel.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_storages_sharing_a_file_see_what_the_model_says = SharedFileModel.TestCase


def test_pack_keeps_an_object_whose_reference_moved_to_an_object_already_marked(path: str) -> None:
    storage, other = SqliteStorage(path), SqliteStorage(path)
    commit(storage, record(0, refs=(1,)), record(1, refs=(2,)), record(2, b"x"))
    packer = storage.get_packer()
    next(packer)  # started
    next(packer)  # the root is marked: oid 1 is queued, not yet read
    # The reference to 2 moves from 1 (not yet read) to the root (read).
    other.sync()
    commit(other, record(0, refs=(1, 2)), record(1))
    list(packer)
    assert storage.load(int_to_oid(2)) == record(2, b"x")


def test_a_pack_outrun_by_the_trimmed_log_removes_nothing(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "LOG_KEEP", 5)
    storage, other = SqliteStorage(path), SqliteStorage(path)
    commit(storage, record(0), record(1))  # oid 1 is garbage
    packer = storage.get_packer()
    next(packer)
    other.sync()
    for _ in range(200):
        commit(other, record(0))
    with pytest.raises(DurusError, match="pack .* abandoned, nothing removed"):
        list(packer)
    assert SqliteStorage(path).load(int_to_oid(1)) == record(1)


def test_left_behind_by_the_log_a_reference_to_a_removed_object_still_conflicts(
        path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "LOG_KEEP", 5)
    busy, idle = SqliteStorage(path), SqliteStorage(path)
    commit(busy, record(0, refs=(1,)), record(1))
    idle.sync()
    commit(busy, record(0))
    busy.pack()  # removes oid 1; then the log row saying so is trimmed away
    for _ in range(200):
        commit(busy, record(0))
    with pytest.raises(WriteConflictError) as raised:
        commit(idle, record(2, refs=(1,)), handler=lambda oids: None)
    assert raised.value.oids == [int_to_oid(1)]
    commit(idle, record(3))  # caught up: commits go on

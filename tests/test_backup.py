"""durus.backup: consistent copies of a live database, verified, and restored."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from server_process import ServerProcess

from durus import backup as backup_module
from durus.backup import BackupError, backup, run_backup_command
from durus.btree import BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict

ITEMS = 1500


def seed(storage) -> None:
    connection = Connection(storage)
    root = connection.get_root()
    root["a"] = PersistentDict(n=0)
    root["b"] = PersistentDict(n=0)
    root["items"] = items = BTree()
    for i in range(ITEMS):
        items[i] = PersistentDict(value=0)
    connection.commit()


class Writer(threading.Thread):
    """Commits, until stopped, transactions that keep a["n"] == b["n"] and
    bump a few items each time.
    """

    def __init__(self, address) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stopped = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        storage = ClientStorage(address=self.address)
        connection = Connection(storage)
        rng = random.Random(1)
        try:
            while not self.stopped.is_set():
                root = connection.get_root()
                root["a"]["n"] += 1
                root["b"]["n"] += 1
                for i in rng.sample(range(ITEMS), 20):
                    root["items"][i]["value"] += 1
                try:
                    connection.commit()
                    self.commits += 1
                except ConflictError:
                    connection.abort()
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            storage.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)
        assert self.error is None, self.error


def assert_consistent(storage) -> int:
    root = Connection(storage).get_root()
    assert root["a"]["n"] == root["b"]["n"]
    assert len(root["items"]) == ITEMS
    return root["a"]["n"]


def restored_state(backup_file, tmp_path) -> int:
    """Restore as the README says (the backup moved into a server's place) and read it."""
    data = tmp_path / "restored.durus"
    shutil.copyfile(backup_file, data)
    with ServerProcess(data) as server:
        storage = ClientStorage(address=server.address)
        try:
            return assert_consistent(storage)
        finally:
            storage.close()


def test_backup_through_a_server_while_a_client_commits(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        storage = ClientStorage(address=server.address)
        seed(storage)
        writer = Writer(server.address)
        writer.start()
        try:
            while writer.commits < 3:
                writer.join(0.05)
            reports = [backup(storage, tmp_path / f"backup{k}.durus") for k in range(3)]
            during = writer.commits
        finally:
            writer.stop()
            storage.close()
    assert during > 3
    for k, report in enumerate(reports):
        assert report.objects > ITEMS and report.file_bytes == os.path.getsize(report.destination)
        restore_dir = tmp_path / f"r{k}"
        restore_dir.mkdir()
        assert restored_state(tmp_path / f"backup{k}.durus", restore_dir) > 0
    assert not list(tmp_path.glob("*.partial*"))


class CommitsDuringTheWalk(ClientStorage):
    """A client that lets another client commit a == b == 1 (and change the
    root) after its first load, the root's.
    """

    other: Connection
    loads = 0

    def bulk_load(self, oids):
        self.loads += 1
        if self.loads == 2:
            root = self.other.get_root()
            root["a"]["n"] += 1
            root["b"]["n"] += 1
            root["c"] = 1
            self.other.commit()
        return super().bulk_load(oids)


def test_a_commit_met_mid_walk_makes_another_walk_from_that_state(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        other = ClientStorage(address=server.address)
        seed(other)
        storage = CommitsDuringTheWalk(address=server.address)
        storage.other = Connection(other)
        report = backup(storage, tmp_path / "backup.durus")
        storage.close()
        other.close()
    assert report.walks == 2 and report.reread >= 1
    copy = FileStorage(str(tmp_path / "backup.durus"), readonly=True)
    try:
        assert assert_consistent(copy) == 1
    finally:
        copy.close()


def test_backup_of_a_file_a_server_is_writing(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data.durus"
    with ServerProcess(data) as server:
        storage = ClientStorage(address=server.address)
        seed(storage)
        storage.close()
        writer = Writer(server.address)
        writer.start()
        try:
            while writer.commits < 3:
                writer.join(0.05)
            monkeypatch.setattr(backup_module, "PROGRESS_INTERVAL", 0.0)
            assert run_backup_command([str(tmp_path / "backup.durus"), "--file", str(data)]) == 0
            # and through the server, by address
            host, port = server.address
            assert run_backup_command([str(tmp_path / "by-address.durus"), "--host", host,
                                       "--port", str(port), "--quiet"]) == 0
        finally:
            writer.stop()
    out, err = capsys.readouterr()
    assert "verified" in out and "copy: " in err and "verify: " in err
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    assert restored_state(tmp_path / "backup.durus", tmp_path / "r1") > 0
    assert restored_state(tmp_path / "by-address.durus", tmp_path / "r2") > 0


def test_the_copy_keeps_oids_and_records_and_drops_garbage(tmp_path):
    source = FileStorage(str(tmp_path / "data.durus"))
    seed(source)
    connection = Connection(source)
    connection.get_root()["gone"] = PersistentDict(x=1)
    connection.commit()
    del connection.get_root()["gone"]
    connection.commit()
    report = backup(source, tmp_path / "copy.durus")
    copy = FileStorage(str(tmp_path / "copy.durus"), readonly=True)
    try:
        copied = dict(copy.gen_oid_record())
        reachable = dict(source.gen_oid_record(start_oid=b"\0" * 8))
    finally:
        copy.close()
        source.close()
    assert copied == reachable and report.objects == len(copied) and report.walks == 1


def test_a_failed_backup_leaves_the_destination_alone(tmp_path, monkeypatch):
    source = FileStorage(str(tmp_path / "data.durus"))
    seed(source)
    dest = tmp_path / "backup.durus"
    dest.write_bytes(b"the previous backup")
    (tmp_path / "backup.durus.partial").write_bytes(b"left by an interrupted backup")

    def damage(records, path):
        original(records, path)
        with open(path, "r+b") as file:
            file.seek(-3, os.SEEK_END)
            file.write(b"XYZ")

    original = backup_module._write
    monkeypatch.setattr(backup_module, "_write", damage)
    with pytest.raises(BackupError):
        backup(source, dest)
    source.close()
    assert dest.read_bytes() == b"the previous backup"
    assert not (tmp_path / "backup.durus.partial").exists()
    empty = FileStorage(str(tmp_path / "empty.durus"))
    with pytest.raises(BackupError, match="no root"):
        backup(empty, dest)
    empty.close()
    assert run_backup_command([str(dest), "--file", str(tmp_path / "missing.durus")]) == 1


def test_the_example_app_backs_up_through_its_server(tmp_path):
    from example_app import create_app

    with ServerProcess(tmp_path / "data.durus") as server:
        app = create_app({"DURUS_STORAGE": f"durus://127.0.0.1:{server.address[1]}",
                          "SECRET_KEY": "test"}, instance_path=str(tmp_path / "instance"))
        app.test_client().get("/")  # the app makes its wiki
        result = app.test_cli_runner().invoke(args=["backup", str(tmp_path / "wiki.durus")])
    assert result.exit_code == 0, result.output
    assert "Backed up 127.0.0.1:" in result.output and "0 wiki pages" in result.output
    copy = FileStorage(str(tmp_path / "wiki.durus"), readonly=True)
    try:
        assert "wiki" in Connection(copy).get_root()
    finally:
        copy.close()


def test_the_commands_back_up_a_live_server_and_an_embedded_file(tmp_path: Path) -> None:
    """`durus --backup` and `flask durus backup`, as the README gives them."""
    import subprocess
    import sys

    from durus.connection import Connection

    with ServerProcess(tmp_path / "live.durus") as server:
        connection = Connection(ClientStorage(address=server.address))
        connection.get_root()["answer"] = 42
        connection.commit()
        host, port = server.address
        result = subprocess.run(
            [sys.executable, "-m", "durus", "--backup", str(tmp_path / "copy.durus"), "--host", host, "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        connection.get_storage().close()
    env = dict(os.environ, FLASK_DURUS_STORAGE=f"file://{tmp_path / 'copy.durus'}")
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.flask_apps.bank:create_app", "durus", "backup", str(tmp_path / "again.durus")],
        capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    copy = Connection(FileStorage(str(tmp_path / "again.durus"), readonly=True))
    assert copy.get_root()["answer"] == 42


def test_backups_taken_while_three_clients_commit_equal_the_database_at_their_commit(tmp_path):
    """Three clients commit continuously through a server; backups taken
    meanwhile, through the server and from its file, hold exactly the
    records of the database as of one commit, object by object, and so
    does each backup restored behind a server.

    The writers log every record they commit and number their commits
    (``tests/support/commit_history.py``), so the state as of commit ``n``
    is known; the backup's own ``root["txn"]`` says which ``n`` it is.
    """
    from support.commit_history import CountingWriter, differences, history, seed, state_after

    items = 300
    data = tmp_path / "data.durus"
    taken = {}
    with ServerProcess(data) as server:
        storage = ClientStorage(address=server.address)
        start = seed(storage, items, writers=3)
        writers = [CountingWriter(server.address, index, items) for index in range(3)]
        for writer in writers:
            writer.start()

        def committed() -> int:
            return sum(len(writer.numbers) for writer in writers)

        def wait_for(count: int) -> None:
            """Until ``count`` commits in all, and each writer has made one more."""
            least = min(len(writer.numbers) for writer in writers) + 1
            deadline = time.monotonic() + 60
            while (committed() < count or min(len(writer.numbers) for writer in writers) < least) \
                    and time.monotonic() < deadline:
                for writer in writers:
                    assert writer.error is None, repr(writer.error)
                time.sleep(0.01)
            assert committed() >= count, committed()
            assert min(len(writer.numbers) for writer in writers) >= least, [len(w.numbers) for w in writers]

        try:
            wait_for(10)
            for name, source in [("by-client", storage), ("by-file", data), ("by-client-2", storage)]:
                before = committed()
                backup(source, tmp_path / f"{name}.durus")
                taken[name] = (before, committed())
                wait_for(committed() + 5)
        finally:
            for writer in writers:
                writer.stop()
            storage.close()
    commits = history(writers)
    assert all(writer.numbers for writer in writers), [len(writer.numbers) for writer in writers]
    for name, (before, after) in taken.items():
        copy = FileStorage(str(tmp_path / f"{name}.durus"), readonly=True)
        try:
            copied = dict(copy.gen_oid_record())
            n = Connection(copy).get_root()["txn"][0]
        finally:
            copy.close()
        # The commit the backup is as of was made while the backup ran.
        assert before <= n <= after < len(commits), (name, before, n, after)
        expected = state_after(start, commits, n)
        assert len(expected) > items
        assert differences(expected, copied) == [], name
        restore_dir = tmp_path / f"restore-{name}"
        restore_dir.mkdir()
        restored = restore_dir / "data.durus"
        shutil.copyfile(tmp_path / f"{name}.durus", restored)
        with ServerProcess(restored) as server:
            client = ClientStorage(address=server.address)
            try:
                served = dict(client.gen_oid_record(start_oid=b"\0" * 8))
            finally:
                client.close()
        assert differences(expected, served) == [], f"{name} restored"

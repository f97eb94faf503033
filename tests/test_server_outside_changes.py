"""Changes a storage server learns of from its storage rather than from
its clients: oids a pack removed, and, serving an SQLite file that other
processes also write directly (SqliteStorage needs no server, so both may
happen at once), oids those processes changed.

Both must count as commits: a served client that used an object changed
or removed since must not commit on it (write skew, SPEC §2), and a commit
the server stored must never be reported to the client as a conflict (the
application would do its work again).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.persistent_dict import PersistentDict
from durus.sqlite_storage import SqliteStorage
from tests.models import Item
from server_process import ServerProcess


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def served(tmp_path: Path):
    path = tmp_path / "shared.sqlite"
    direct = Connection(SqliteStorage(str(path)))
    root = direct.get_root()
    root["a"], root["b"] = PersistentDict(on=True), PersistentDict(on=True)
    direct.commit()
    with ServerProcess(path) as server:
        yield direct, server
    direct.storage.close()


@pytest.mark.parametrize("rounds", [1, 5])
def test_a_served_client_does_not_commit_on_what_a_direct_writer_changed(served, rounds: int) -> None:
    """On call: a and b both on; each writer turns one off if the other is
    on.  Whatever the order, they must never both be off.
    """
    direct, server = served
    client = Connection(ClientStorage(address=server.address))
    try:
        for _ in range(rounds):
            direct.abort()
            root = direct.get_root()
            root["a"]["on"] = root["b"]["on"] = True
            direct.commit()
            client.abort()
            # The client reads b, then the direct writer reads a and turns b off.
            assert client.get_root()["b"]["on"]
            direct_root = direct.get_root()
            assert direct_root["a"]["on"]
            direct_root["b"]["on"] = False
            direct.commit()
            # The client, on what it read, turns a off: b changed under it.
            client.get_root()["a"]["on"] = False
            with pytest.raises(ConflictError):
                client.commit()
            client.abort()
            root = client.get_root()
            assert root["a"]["on"] or root["b"]["on"]
    finally:
        client.storage.close()


def test_a_commit_using_an_object_a_pack_removed_meanwhile_is_a_conflict_or_stands(tmp_path: Path) -> None:
    """Client A holds an object from an earlier transaction and uses it;
    meanwhile B drops the root's reference to it and packs it away.  A's
    commit is then a conflict (nothing stored) or stands (stored, no
    error): never an error for a commit that was stored.
    """
    with ServerProcess(tmp_path / "packed.durus") as server:
        a = Connection(ClientStorage(address=server.address))
        b = Connection(ClientStorage(address=server.address))
        try:
            a.get_root()["held"] = Item("held")
            a.get_root()["count"] = Item("count", 0)
            a.commit()
            held, count = a.get_root()["held"], a.get_root()["count"]
            a.abort()
            assert held.name == "held"  # used in A's new transaction, from A's cache
            b.abort()
            del b.get_root()["held"]
            b.commit()
            b.pack()
            wait_until(lambda: "pack finished" in server.log())  # it goes on in the server after pack() returns
            count.value = 1
            try:
                a.commit()
                stored = True
            except ConflictError:
                stored = False
            a.abort()
            b.abort()
            assert b.get_root()["count"].value == (1 if stored else 0)
            assert "held" not in b.get_root()
        finally:
            a.storage.close()
            b.storage.close()

"""Records fetched ahead (ClientStorage's default): few round trips for cold
key lookups, a bounded buffer, and reads that stay serializable with
another client committing concurrently (real server process).
"""

from __future__ import annotations

import os
import random

import pytest

from durus import client_storage
from durus.btree import BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError, WriteConflictError
from durus.persistent import Persistent
from server_process import ServerProcess


class Cell(Persistent):
    """One value in a tree."""

    def __init__(self, value: int) -> None:
        self.value = value


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("prefetch") / "data.durus") as server:
        yield server


def connect(server, **options) -> Connection:
    return Connection(ClientStorage(address=server.address, **options))


def make_tree(connection: Connection, name: str, size: int, value: int = 0) -> None:
    tree = BTree()
    for key in range(size):
        tree[key] = Cell(value)
    connection.get_root()[name] = tree
    connection.commit()


class CountingSocket:
    """Counts the requests a ClientStorage sends."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.sent = 0

    def sendall(self, data) -> None:
        self.sent += 1
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def counting(connection: Connection) -> CountingSocket:
    storage = connection.get_storage()
    storage._channel.sock = counter = CountingSocket(storage._channel.sock)
    return counter


def test_cold_lookups_by_key_take_few_round_trips_by_default(server):
    writer = connect(server)
    make_tree(writer, "lookups", 3000)
    for options, most in (({}, 150), ({"prefetch": False}, None)):
        reader = connect(server, **options)
        counter = counting(reader)
        tree = reader.get_root()["lookups"]
        assert sum(tree[key].value + 1 for key in range(3000)) == 3000
        if most is not None:
            assert counter.sent < most, counter.sent
        else:
            assert counter.sent > 3000  # Durus 4.3's way: a round trip per record
        reader.get_storage().close()


def test_a_few_lookups_in_a_large_tree_read_one_level_ahead_only(server):
    """Records fetched ahead that go unused cost the server work: deeper
    read-ahead waits until most of them get used."""
    writer = connect(server)
    make_tree(writer, "sparse", 5000)
    reader = connect(server)
    storage = reader.get_storage()
    tree = reader.get_root()["sparse"]
    for key in random.Random(5).sample(range(5000), 5):
        assert tree[key].value == 0
    storage._receive_prefetched()
    # Five paths of four nodes, each node's children and values: no more.
    assert storage.prefetched.fetched_ahead <= 5 * 4 * 64
    assert not storage.prefetched.reading_ahead_pays()


def test_a_buffered_record_is_never_older_than_the_last_sync(server):
    writer, reader = connect(server), connect(server)
    make_tree(writer, "fresh", 400)
    reader.abort()
    tree = reader.get_root()["fresh"]
    assert tree[0].value == 0  # brings nodes and cells ahead
    storage = reader.get_storage()
    storage.load(reader.get_root()._p_oid)  # drain what is in flight
    assert len(storage.prefetched.records) > 20
    wtree = writer.get_root()["fresh"]
    for key in range(0, 400, 3):
        wtree[key].value = 7
    writer.commit()
    reader.abort()
    assert [tree[key].value for key in range(400)] == [7 if key % 3 == 0 else 0 for key in range(400)]


def test_a_read_of_a_record_changed_after_the_view_conflicts_at_commit(server):
    """The reader's view predates the writer's commit: it sees both cells as
    they were together, and a commit that depends on them fails."""
    writer, reader = connect(server), connect(server)
    make_tree(writer, "skew", 100, value=50)
    reader.abort()
    tree = reader.get_root()["skew"]
    assert tree[0].value == 50  # buffered: the cells of this leaf
    wtree = writer.get_root()["skew"]
    wtree[1].value -= 30
    wtree[2].value += 30
    writer.commit()
    assert tree[1].value + tree[2].value == 100  # one snapshot, never a mix
    tree[3].value = tree[1].value
    with pytest.raises(WriteConflictError):
        reader.commit()
    reader.abort()
    assert (tree[1].value, tree[2].value) == (20, 80)


def test_the_buffer_stays_bounded(server, monkeypatch):
    monkeypatch.setattr(client_storage, "PREFETCH_RECORDS", 50)
    monkeypatch.setattr(client_storage, "PREFETCH_BYTES", 4000)
    writer = connect(server)
    make_tree(writer, "bounded", 2000)
    reader = connect(server)
    storage = reader.get_storage()
    tree = reader.get_root()["bounded"]
    for key in range(0, 2000, 7):
        assert tree[key].value == 0
        assert len(storage.prefetched.records) <= 50
        assert sum(map(len, storage.prefetched.records.values())) == storage.prefetched.size <= 4000


@pytest.mark.parametrize("seed", range(6))
def test_transfers_with_a_concurrent_committer_keep_the_total(server, seed):
    """Generated interleavings: a reader (prefetch on, the default) looks up
    every cell of a tree by key, in a random order, while a writer moves
    value between cells and commits at random points in the middle of the
    reader's transaction; then the reader moves value itself, computed from
    what it read, and commits.  Every transaction must see the total
    unchanged (a consistent snapshot) or raise a ConflictError; after each
    sync every buffered record must equal the committed one; and the stored
    total never changes (no lost update).
    """
    chooser = random.Random(seed)
    size, name = 200, f"bank{seed}"
    setup = connect(server)
    make_tree(setup, name, size, value=10)
    checker = ClientStorage(address=server.address, prefetch=False)
    writer, reader = connect(server), connect(server)
    outcomes = []
    for _ in range(15):
        reader.abort()
        check_buffer(reader.get_storage(), checker)
        tree = reader.get_root()[name]
        order = list(range(size))
        chooser.shuffle(order)
        commit_points = set(chooser.sample(range(size), chooser.choice([0, 0, 1, 2])))
        try:
            seen = {}
            for index, key in enumerate(order):
                if index in commit_points:
                    transfer(writer, chooser, size, name)
                seen[key] = tree[key].value
            assert sum(seen.values()) == 10 * size, "a transaction saw a mix of states"
            source, target = chooser.sample(order, 2)
            amount = chooser.randint(0, seen[source])
            tree[source].value = seen[source] - amount
            tree[target].value = seen[target] + amount
            reader.commit()
            outcomes.append("committed")
        except ConflictError:
            outcomes.append("conflict")
            reader.abort()
        assert total(setup, name, size) == 10 * size
    assert "committed" in outcomes
    checker.close()


def check_buffer(storage: ClientStorage, checker: ClientStorage) -> None:
    """Every buffered record is the committed one (just after a sync)."""
    storage._receive_prefetched()
    checker.sync()
    for oid, record in storage.prefetched.records.items():
        assert record == checker.load(oid), "a buffered record outlived a commit"


def transfer(writer: Connection, chooser: random.Random, size: int, name: str) -> None:
    writer.abort()
    tree = writer.get_root()[name]
    source, target = chooser.sample(range(size), 2)
    amount = chooser.randint(0, tree[source].value)
    tree[source].value -= amount
    tree[target].value += amount
    writer.commit()


def total(connection: Connection, name: str, size: int) -> int:
    """The sum of every cell, read in one transaction."""
    connection.abort()
    tree = connection.get_root()[name]
    return sum(tree[key].value for key in range(size))


def test_objects_others_changed_are_fetched_again_in_one_round_trip(server):
    """The reader had loaded the cells; the writer changes 40 of them.  At
    the reader's next boundary they come back in one bulk load sent ahead,
    not one round trip each."""
    writer, reader = connect(server), connect(server)
    make_tree(writer, "again", 200)
    reader.abort()
    tree = reader.get_root()["again"]
    assert sum(tree[key].value for key in range(200)) == 0
    wtree = writer.get_root()["again"]
    for key in range(0, 200, 5):
        wtree[key].value = 1
    writer.commit()
    reader.abort()
    counter = counting(reader)
    assert sum(tree[key].value for key in range(200)) == 40
    assert counter.sent <= 2, counter.sent


def test_a_record_fetched_again_is_the_view_s_so_a_later_commit_is_no_read_conflict(server):
    """Cells a and b are fetched again at the reader's boundary.  The writer
    moves 30 from a to b after the reader read a: reading b gives the
    version of the reader's view (no ReadConflictError, no mix), and a commit
    that depends on both conflicts."""
    writer, reader = connect(server), connect(server)
    make_tree(writer, "moved", 3, value=50)
    reader.abort()
    tree = reader.get_root()["moved"]
    assert tree[1].value + tree[2].value == 100
    wtree = writer.get_root()["moved"]
    wtree[1].value += 1
    wtree[2].value -= 1
    writer.commit()
    reader.abort()  # fetches cells 1 and 2 again, as of now
    assert tree[1].value == 51
    wtree[1].value -= 30
    wtree[2].value += 30
    writer.commit()
    assert tree[2].value == 49  # the view's version: 51 + 49 == 100
    tree[0].value = tree[1].value + tree[2].value
    with pytest.raises(WriteConflictError):
        reader.commit()
    reader.abort()
    assert (tree[1].value, tree[2].value) == (21, 79)


def test_without_prefetch_nothing_is_fetched_again(server):
    writer, reader = connect(server), connect(server, prefetch=False)
    make_tree(writer, "plain", 50)
    reader.abort()
    tree = reader.get_root()["plain"]
    assert sum(tree[key].value for key in range(50)) == 0
    wtree = writer.get_root()["plain"]
    for key in range(50):
        wtree[key].value = 2
    writer.commit()
    reader.abort()
    counter = counting(reader)
    assert sum(tree[key].value for key in range(50)) == 100
    assert counter.sent >= 50  # one round trip per record, as in Durus 4.3


class Blob(Persistent):
    """Bytes large enough to fill socket buffers."""

    def __init__(self, size: int) -> None:
        self.data = os.urandom(size)


def test_a_restart_while_records_fetched_ahead_are_unread_leaves_the_commit_replayable(tmp_path):
    """The boundary sent a bulk load ahead that the transaction never read;
    the server restarts; the commit must fail as nothing stored
    (DisconnectedError, a ConflictError the Flask extension replays), not
    as a commit in doubt."""
    with ServerProcess(tmp_path / "data.durus") as server:
        writer = connect(server)
        root = writer.get_root()
        root["x"], root["y"] = Cell(0), Cell(0)
        writer.commit()
        reader = connect(server)
        mine = reader.get_root()
        assert mine["x"].value + mine["y"].value == 0
        reader.abort()
        root["x"].value = 1
        writer.commit()
        reader.abort()  # x is fetched again ahead; nobody reads it
        server.stop()
        server.start()
        mine["y"].value = 5
        with pytest.raises(client_storage.DisconnectedError):
            reader.commit()
        reader.abort()
        assert (mine["x"].value, mine["y"].value) == (1, 0)


def test_a_large_commit_after_large_records_fetched_ahead_does_not_wait_on_the_server(tmp_path):
    """Records fetched ahead fill the socket toward the client while a large
    commit fills it toward the server: the client must read them first, or
    each side waits for the other until the timeout."""
    with ServerProcess(tmp_path / "data.durus") as server:
        writer = connect(server)
        writer.get_root()["blobs"] = [Blob(60_000) for _ in range(120)]
        writer.get_root()["mine"] = Blob(10)
        writer.commit()
        reader = connect(server, timeout=5)
        assert sum(len(blob.data) for blob in reader.get_root()["blobs"]) == 120 * 60_000
        reader.abort()
        for blob in writer.get_root()["blobs"]:
            blob.data = os.urandom(60_000)
        writer.commit()
        reader.abort()  # 7 MB fetched again ahead
        reader.get_root()["mine"].data = os.urandom(12_000_000)
        reader.commit()
        assert len(connect(server).get_root()["mine"].data) == 12_000_000

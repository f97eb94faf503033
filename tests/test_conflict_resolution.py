"""Conflict resolution between real client processes on a real storage server.

Several worker processes (tests/resolution_worker.py) change different keys
of one shared BTree leaf, dict or set, or bump one counter, with their
transactions overlapping.  Resolution must let every commit through with
every change kept; the same key on both sides, or an object only read, must
still conflict; a Durus 4.3 client keeps its old behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from durus.btree import BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import WriteConflictError
from durus.persistent_counter import PersistentCounter
from durus.persistent_dict import PersistentDict
from durus.persistent_set import PersistentSet
from durus43 import durus43_python
from server_process import ServerProcess

WORKER = Path(__file__).with_name("resolution_worker.py")
WORKERS = 4
ROUNDS = 12


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        yield server


def connect(server: ServerProcess) -> Connection:
    host, port = server.address
    return Connection(ClientStorage(host, port))


def run_workers(server: ServerProcess, kind: str) -> list[list[str]]:
    host, port = server.address
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), host, str(port), kind, str(index), str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(WORKERS)
    ]
    conflicts = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        conflicts.append(json.loads(out)["conflicts"])
    return conflicts


def expected_keys() -> set[str]:
    """Each worker keeps the keys of its even rounds and of its last round."""
    keys = set()
    for index in range(WORKERS):
        for round_ in range(ROUNDS):
            if round_ % 2 == 0 and round_ + 1 < ROUNDS:
                continue
            keys.add(f"w{index}-{round_}")
    return keys


@pytest.mark.parametrize("kind", ["btree", "dict", "set"])
def test_overlapping_changes_to_different_keys_all_commit_and_all_survive(server, kind) -> None:
    setup = connect(server)
    root = setup.get_root()
    root["tree"], root["dict"], root["set"] = BTree(), PersistentDict(), PersistentSet()
    setup.commit()
    conflicts = run_workers(server, kind)
    assert conflicts == [[]] * WORKERS
    check = connect(server).get_root()
    container = {"btree": check["tree"], "dict": check["dict"], "set": check["set"]}[kind]
    assert set(container) == expected_keys()
    assert len(container) == len(expected_keys())


def test_btree_inserts_across_a_deep_tree_keep_len_exact(server) -> None:
    setup = connect(server)
    tree = setup.get_root()["tree"] = BTree()
    for number in range(0, 4000, 2):  # leaves half full: room for the workers
        tree[f"a{number:05d}"] = number
    setup.commit()
    depth = tree.get_depth()
    assert depth >= 3
    conflicts = run_workers(server, "btree")
    check = connect(server).get_root()["tree"]
    assert set(check) == expected_keys() | {f"a{number:05d}" for number in range(0, 4000, 2)}
    assert len(check) == 2000 + len(expected_keys())
    # Workers' keys all sort after the initial ones, into the rightmost leaf,
    # which may split: a split is a real structural conflict, retried.
    assert sum(map(len, conflicts)) <= ROUNDS * WORKERS


def test_counter_increments_from_many_processes_all_count(server) -> None:
    setup = connect(server)
    setup.get_root()["counter"] = PersistentCounter()
    setup.commit()
    conflicts = run_workers(server, "counter")
    assert conflicts == [[]] * WORKERS
    assert connect(server).get_root()["counter"].value == WORKERS * ROUNDS


def test_same_key_changed_on_both_sides_still_conflicts(server) -> None:
    first, second = connect(server), connect(server)
    first.get_root()["dict"] = PersistentDict(shared=0)
    first.commit()
    second.abort()
    assert second.get_root()["dict"]["shared"] == 0
    first.get_root()["dict"]["shared"] = 1
    second.get_root()["dict"]["shared"] = 2
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.get_root()["dict"]["shared"] == 1


def test_reading_a_resolvable_object_and_writing_elsewhere_still_conflicts(server) -> None:
    first, second = connect(server), connect(server)
    root = first.get_root()
    root["counter"], root["report"] = PersistentCounter(), PersistentDict()
    first.commit()
    second.abort()
    seen = second.get_root()["counter"].value
    first.get_root()["counter"].increment()
    first.commit()
    second.get_root()["report"]["total"] = seen
    with pytest.raises(WriteConflictError):
        second.commit()


DURUS43_DICT_WRITER = """
import json, sys
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
connection = Connection(ClientStorage(port=int(sys.argv[1])))
mapping = connection.get_root()["dict"]
mapping["from_durus43"] = 1
print("ready", flush=True)
sys.stdin.readline()
try:
    connection.commit()
    print(json.dumps("committed"))
except ConflictError:
    print(json.dumps("conflict"))
"""


def test_durus43_client_on_the_same_server_keeps_its_old_behaviour(server) -> None:
    ours = connect(server)
    ours.get_root()["dict"] = PersistentDict()
    ours.commit()
    old = subprocess.Popen(
        [str(durus43_python()), "-c", DURUS43_DICT_WRITER, str(server.address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert old.stdout.readline().strip() == "ready"
    ours.abort()
    ours.get_root()["dict"]["from_ours"] = 1
    ours.commit()
    out, err = old.communicate("go\n", timeout=60)
    # Durus 4.3 has no resolution: a different key of the same dict conflicts.
    assert json.loads(out) == "conflict", err
    check = connect(server).get_root()["dict"]
    assert dict(check) == {"from_ours": 1}

"""What every kind of storage does alike (SPEC section 2), tested once and run
against each kind in support.storage_kinds: an embedded shared file, a
storage server, an SQLite file shared by processes without a server (and
whatever kinds are added there).

Clients are independent, as separate processes are: each ``kind.open()``
is a new client of the one database, and worker processes reach it by
``kind.make_spec()``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from durus.connection import Connection
from durus.error import ConflictError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.persistent_counter import PersistentCounter
from durus.persistent_dict import PersistentDict
from durus.record import ROOT_OID, oid_to_int
from support.storage_kinds import KINDS, StorageKind
from support.workers import WorkerPool

CONTRACT_WORKER = Path(__file__).resolve().parent / "support" / "contract_worker.py"


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> StorageKind:
    database = KINDS[request.param].for_test(tmp_path, request)
    yield database
    database.close()


def connect(kind: StorageKind) -> Connection:
    return Connection(kind.open())


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def setup_two(kind: StorageKind, **items: object) -> tuple[Connection, Connection]:
    """Two clients that both see ``root`` holding ``items``, committed."""
    first, second = connect(kind), connect(kind)
    first.get_root().update(items)
    first.commit()
    second.abort()
    return first, second


# -- visibility and invalidation ---------------------------------------------


def test_a_commit_reaches_another_client_at_its_next_transaction_boundary(kind: StorageKind) -> None:
    first, second = setup_two(kind, box=PersistentDict(value=1))
    box = second.get_root()["box"]
    assert box["value"] == 1  # cached in the second client now
    first.get_root()["box"]["value"] = 2
    first.commit()
    second.abort()  # a boundary: the cached copy is invalidated, not reopened
    assert box["value"] == 2
    assert second.get_root()["box"] is box


def test_a_load_mid_transaction_of_an_object_changed_since_never_mixes_states(kind: StorageKind) -> None:
    """The load raises ReadConflictError, or (a record fetched ahead, as a
    server's client does by default) gives the state from before the other
    commit, like the rest of the transaction's; then a commit that used it
    conflicts.
    """
    first, second = setup_two(kind, x=PersistentDict(v=1), y=PersistentDict(v=1))
    second.get_root()["x"]["v"]  # used by the second client's transaction
    first.get_root()["x"]["v"] = 2
    first.get_root()["y"]["v"] = 2
    first.commit()
    try:
        seen = second.get_root()["y"]["v"]  # never loaded by the second client: a load now
    except ReadConflictError:
        pass
    else:
        assert seen == 1  # the state x was read in, not a mix
        second.get_root()["y"]["v"] = 3
        with pytest.raises(WriteConflictError):
            second.commit()
    second.abort()
    assert (second.get_root()["x"]["v"], second.get_root()["y"]["v"]) == (2, 2)


# -- conflicts -------------------------------------------------------------------


def test_two_writes_of_one_object_conflict_and_the_loser_retries(kind: StorageKind) -> None:
    first, second = setup_two(kind, box=PersistentDict(value=0))
    first.get_root()["box"]["value"] = 1
    second.get_root()["box"]["value"] = 2
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.get_root()["box"]["value"] == 1
    second.get_root()["box"]["value"] = 3
    second.commit()
    first.abort()
    assert first.get_root()["box"]["value"] == 3


def test_an_object_only_read_conflicts_too(kind: StorageKind) -> None:
    first, second = setup_two(kind, price=PersistentDict(v=10), order=PersistentDict(total=0))
    price = second.get_root()["price"]["v"]
    first.get_root()["price"]["v"] = 20
    first.commit()
    second.get_root()["order"]["total"] = price * 2  # computed from a stale read
    with pytest.raises(ConflictError):
        second.commit()


def test_transactions_on_disjoint_objects_both_commit(kind: StorageKind) -> None:
    first, second = setup_two(kind, a=PersistentDict(v=0), b=PersistentDict(v=0))
    first.get_root()["a"]["v"] = 1
    second.get_root()["b"]["v"] = 2
    first.commit()
    second.commit()
    check = connect(kind)
    assert (check.get_root()["a"]["v"], check.get_root()["b"]["v"]) == (1, 2)


def test_counter_increments_and_inserts_of_different_keys_merge(kind: StorageKind) -> None:
    first, second = setup_two(kind, hits=PersistentCounter(), names=PersistentDict())
    for connection, name in ((first, "ann"), (second, "bob")):
        connection.get_root()["hits"].increment()
        connection.get_root()["names"][name] = True
    first.commit()
    second.commit()  # resolved in the client, without replaying anything
    check = connect(kind)
    assert check.get_root()["hits"].value == 2
    assert dict(check.get_root()["names"]) == {"ann": True, "bob": True}


def test_write_skew_between_processes_lets_only_one_commit(kind: StorageKind) -> None:
    spec = kind.make_spec()
    admin = connect(kind)
    admin.get_root()["doctors"] = PersistentDict(alice="on", bob="on")
    admin.commit()
    with WorkerPool(spec, 2) as pool:
        alice, bob = pool.get(2)
        mine = {"name": "doctors", "style": "value"}
        assert alice.result("take_off_call", me="alice", other="bob", **mine) is True
        assert bob.result("take_off_call", me="bob", other="alice", **mine) is True
        assert [alice.commit(), bob.commit()] == ["committed", "conflict"]
        retried = bob.retry("take_off_call", me="bob", other="alice", **mine)
        assert retried["status"] == "committed" and retried["result"] is False
    admin.abort()
    assert dict(admin.get_root()["doctors"]) == {"alice": "off", "bob": "on"}


def test_processes_racing_to_read_and_increment_one_counter_lose_no_update(kind: StorageKind) -> None:
    spec = kind.make_spec()
    admin = connect(kind)
    admin.get_root()["counter"] = PersistentCounter()
    admin.commit()
    seen = []
    with WorkerPool(spec, 3) as pool:
        workers = pool.get(3)
        for _ in range(15):
            for worker in workers:  # all three at once
                worker.send("retry", scenario="increment_if_below", params={"name": "counter", "limit": 10**9},
                            limit=100)
            for worker in workers:
                reply = worker.receive()
                assert reply["status"] == "committed", reply
                seen.append(reply["result"])
    admin.abort()
    assert admin.get_root()["counter"].value == 45
    # Each committed transaction read the value the one before it left.
    assert sorted(seen) == list(range(45))


# -- oids ------------------------------------------------------------------------


def test_new_oids_are_unique_across_processes_and_never_an_existing_one(kind: StorageKind) -> None:
    spec = kind.make_spec()
    admin = connect(kind)
    admin.get_root()["things"] = [PersistentDict(n=n) for n in range(20)]
    admin.commit()
    stored = {oid_to_int(oid) for oid, _ in admin.get_storage().gen_oid_record(ROOT_OID)}
    command = [sys.executable, str(CONTRACT_WORKER), spec, "oids", "300"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    handed = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        handed.extend(int(word) for word in out.split())
    handed.extend(oid_to_int(kind.open().new_oid()) for _ in range(50))  # a client opened after them
    assert len(handed) == 950 == len(set(handed)), "an oid was handed out twice"
    assert not set(handed) & stored, "an oid of a stored object was handed out"


# -- packing ---------------------------------------------------------------------


def test_pack_removes_unreachable_objects_and_keeps_the_rest(kind: StorageKind) -> None:
    first, second = setup_two(kind, keep=PersistentDict(v=1), drop=PersistentDict(v=2))
    dropped = first.get_root()["drop"]._p_oid
    del first.get_root()["drop"]
    first.commit()
    first.pack()  # a server packs in the background

    def removed() -> bool:
        storage = second.get_storage()
        storage.sync()
        try:
            storage.load(dropped)
        except DurusKeyError:
            return True
        except ReadConflictError:
            pass  # the pack finished between the sync and the load
        return False

    wait_until(removed)
    second.abort()
    assert second.get_root()["keep"]["v"] == 1
    second.get_root()["new"] = PersistentDict(v=3)
    second.commit()
    check = connect(kind)
    assert check.get_root()["new"]["v"] == 3 and check.get_root()["keep"]["v"] == 1


# -- crashes -----------------------------------------------------------------------


def _acknowledged(process: subprocess.Popen, at_least: int, timeout: float = 60.0) -> int:
    """Read the worker's acknowledgements until ``at_least`` arrived; the last."""
    last = 0
    deadline = time.monotonic() + timeout
    while last < at_least:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the worker acknowledged only {last} commits in {timeout}s"
        line = process.stdout.readline()
        assert line, f"the worker exited ({process.wait()}) after {last} commits"
        last = int(line)
    return last


def start_committer(spec: str) -> subprocess.Popen:
    """A contract_worker process committing numbered commits until killed."""
    return subprocess.Popen([sys.executable, str(CONTRACT_WORKER), spec, "commits"],
                            stdout=subprocess.PIPE, text=True)


def kill(process: subprocess.Popen, acknowledged: int) -> int:
    """SIGKILL ``process``; the last commit it acknowledged (counting lines
    printed before it died).
    """
    try:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        rest = process.stdout.read().split()
        return max([acknowledged, *map(int, rest)])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def check_whole_commits(kind: StorageKind, acknowledged: int) -> None:
    """Every acknowledged commit of the committer is there, no commit is
    there in part, and every object it made can be loaded.
    """
    check = connect(kind)
    root = check.get_root()
    left, right, items = root["left"]["n"], root["right"]["n"], root["items"]
    assert left == right, "a commit is there in part: one object changed and not the other"
    assert left >= acknowledged, f"commit {acknowledged} was acknowledged but is lost"
    assert [item["n"] for item in items] == list(range(1, left + 1))
    check.get_storage().close()


def crash_and_check(kind: StorageKind, spec: str, rng: random.Random) -> None:
    """Start a committing worker, kill -9 it at a random moment, and check
    every acknowledged commit is there and no commit is there in part.
    """
    process = start_committer(spec)
    acknowledged = 0
    try:
        acknowledged = _acknowledged(process, rng.randint(2, 6))
        time.sleep(rng.uniform(0, 0.03))  # a random point inside a later commit
    finally:
        acknowledged = kill(process, acknowledged)
    check_whole_commits(kind, acknowledged)


def test_a_pack_while_another_process_commits_keeps_everything_reachable(kind: StorageKind) -> None:
    spec = kind.make_spec()
    admin = connect(kind)
    admin.get_root()["garbage"] = PersistentDict()
    admin.commit()
    garbage = admin.get_root()["garbage"]._p_oid
    del admin.get_root()["garbage"]
    admin.commit()
    process = start_committer(spec)
    acknowledged = 0
    try:
        acknowledged = _acknowledged(process, 3)
        admin.get_storage().pack()  # a server packs in the background

        def packed() -> bool:
            storage = admin.get_storage()
            storage.sync()
            try:
                storage.load(garbage)
            except DurusKeyError:
                return True
            except ReadConflictError:
                pass  # the pack finished between the sync and the load
            return False

        wait_until(packed)
        acknowledged = _acknowledged(process, acknowledged + 3)
    finally:
        acknowledged = kill(process, acknowledged)
    check_whole_commits(kind, acknowledged)


def test_a_worker_killed_while_committing_leaves_whole_commits(kind: StorageKind) -> None:
    spec = kind.make_spec()
    rng = random.Random(12)
    for _ in range(2):
        crash_and_check(kind, spec, rng)


@pytest.mark.slow
def test_many_kills_of_committing_workers_leave_whole_commits(kind: StorageKind) -> None:
    spec = kind.make_spec()
    rng = random.Random(1234)
    for _ in range(25):
        crash_and_check(kind, spec, rng)

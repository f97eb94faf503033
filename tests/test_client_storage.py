"""ClientStorage and Connections over a real server process: invalidations,
conflicts, prefetching, reconnecting, authentication, crash durability and
serializability under concurrent processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from server_process import ServerProcess, free_port

from durus.client_storage import (
    AuthenticationError,
    ClientStorage,
    CommitInDoubtError,
    DisconnectedError,
    ServerUnavailableError,
    TransactionTooLargeError,
)
from durus.btree import BTree
from durus.connection import Connection
from durus.error import ConflictError, ReadConflictError, WriteConflictError
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
from durus.record import int4, int_to_oid
from durus.storage_server import wait_for_server

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        yield server


def connect(server, **options) -> Connection:
    return Connection(ClientStorage(address=server.address, **options))


def test_commits_and_invalidations_between_connections(server):
    one, two = connect(server), connect(server)
    one.get_root()["greeting"] = "hello"
    one.commit()
    assert "greeting" not in two.get_root()
    two.abort()
    assert two.get_root()["greeting"] == "hello"
    two.get_root()["items"] = PersistentList([PersistentDict(n=n) for n in range(3)])
    two.commit()
    one.abort()
    assert [item["n"] for item in one.get_root()["items"]] == [0, 1, 2]


def test_write_conflict(server):
    one, two = connect(server), connect(server)
    one.get_root()["counter"] = PersistentDict(value=0)
    one.commit()
    two.abort()
    one.get_root()["counter"]["value"] = 1
    two.get_root()["counter"]["value"] = 2
    one.commit()
    with pytest.raises(WriteConflictError):
        two.commit()
    two.abort()
    assert two.get_root()["counter"]["value"] == 1


def test_read_then_write_elsewhere_conflicts(server):
    """Read-set validation: what a transaction read may not change under it."""
    one, two = connect(server), connect(server)
    root = one.get_root()
    root["a"], root["b"] = PersistentDict(v=1), PersistentDict(v=1)
    one.commit()
    two.abort()
    a_seen = two.get_root()["a"]["v"]  # two reads a ...
    one.get_root()["a"]["v"] = 5
    one.commit()
    two.get_root()["b"]["v"] = a_seen + 1  # ... and writes b from it
    with pytest.raises(WriteConflictError):
        two.commit()


def _read_a_then_b_after_another_commit(server, **options):
    one, two = connect(server), connect(server, **options)
    root = one.get_root()
    root["a"], root["b"] = PersistentDict(v=1), PersistentDict(v=1)
    one.commit()
    two.abort()
    two_root = two.get_root()
    assert two_root["a"]["v"] == 1  # two uses a in this transaction
    one.get_root()["a"]["v"] = 2
    one.get_root()["b"]["v"] = 2
    one.commit()
    return two, two_root


def test_read_conflict_when_loading_a_changed_object(server):
    two, two_root = _read_a_then_b_after_another_commit(server, prefetch=False)  # as in Durus 4.3
    # Loading b means catching up, which finds that a, already read, is stale.
    with pytest.raises(ReadConflictError):
        two_root["b"]["v"]
    two.abort()
    assert (two_root["a"]["v"], two_root["b"]["v"]) == (2, 2)


def test_prefetched_reads_are_a_consistent_snapshot(server):
    two, two_root = _read_a_then_b_after_another_commit(server, prefetch=True)
    # b came ahead with the root, before the other commit: two sees a and b
    # as they were together, and its commit fails because they changed.
    assert two_root["b"]["v"] == 1
    two_root["c"] = two_root["a"]["v"] + two_root["b"]["v"]
    with pytest.raises(WriteConflictError):
        two.commit()
    two.abort()
    assert (two_root["a"]["v"], two_root["b"]["v"]) == (2, 2)


def test_new_oids_are_recycled_after_a_conflict(server):
    one, two = connect(server), connect(server)
    one.get_root()["x"] = 1
    one.commit()
    two.get_root()["x"] = PersistentDict()  # the same key: no merge
    with pytest.raises(WriteConflictError):
        two.commit()
    spare = list(two.get_storage()._oid_pool)
    two.abort()
    two.get_root()["y"] = PersistentDict(z=1)
    two.commit()
    assert two.get_root()["y"]._p_oid == spare[-1]  # the oid handed out before
    one.abort()
    assert one.get_root()["y"]["z"] == 1


def test_prefetched_records_never_outlive_an_invalidation(server):
    writer, reader = connect(server), connect(server, prefetch=True)
    writer.get_root()["items"] = PersistentList(PersistentDict(n=n) for n in range(50))
    writer.commit()
    reader.abort()
    items = reader.get_root()["items"]
    assert len(items) == 50  # loading the list fetches its items ahead
    storage = reader.get_storage()
    storage.load(writer.get_root()["items"]._p_oid)  # drain what is in flight
    assert len(storage.prefetched.records) > 40
    for item in writer.get_root()["items"]:
        item["n"] += 1000
    writer.commit()
    reader.abort()  # the invalidations drop the prefetched items
    assert [item["n"] for item in items] == list(range(1000, 1050))


def test_cold_loads_take_few_round_trips(server):
    writer = connect(server)
    writer.get_root()["items"] = PersistentList(PersistentDict(n=n) for n in range(2000))
    writer.commit()
    reader = connect(server, prefetch=True)
    storage = reader.get_storage()
    sent = []
    storage._channel.sock = CountingSocket(storage._channel.sock, sent)
    assert sum(item["n"] for item in reader.get_root()["items"]) == sum(range(2000))
    assert len(sent) < 50  # bulk loads ahead, not one load per object


class CountingSocket:
    """Counts the requests a ClientStorage sends (their command bytes)."""

    def __init__(self, sock, sent: list[bytes]):
        self.sock = sock
        self.sent = sent

    def sendall(self, data):
        self.sent.append(data[:1])
        self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("container", ["list", "btree"])
def test_iterating_a_container_loads_its_objects_in_batches(server, container):
    writer = connect(server)
    items = [PersistentDict(n=n) for n in range(2000)]
    if container == "list":
        writer.get_root()["items"] = PersistentList(items)
    else:
        writer.get_root()["items"] = tree = BTree()
        tree.update(enumerate(items))
    writer.commit()
    reader = connect(server, prefetch=False)  # batches come from iterating
    sent = []
    reader.get_storage()._channel.sock = CountingSocket(reader.get_storage()._channel.sock, sent)
    found = reader.get_root()["items"]
    values = found if container == "list" else found.values()
    assert sum(item["n"] for item in values) == sum(range(2000))
    assert len(sent) < len(items) / 4  # a bulk load per batch or leaf, not a load per object
    assert sent.count(b"B") >= 20


def test_a_batch_that_meets_a_newer_commit_loads_one_by_one(server):
    one, two = connect(server), connect(server, prefetch=False)  # prefetched items would be a snapshot
    one.get_root()["items"] = PersistentList(PersistentDict(n=n) for n in range(3))
    one.commit()
    two.abort()
    items = two.get_root()["items"]
    assert len(items) == 3  # two now uses the list; its items are ghosts
    one.get_root()["items"][1]["n"] = 10
    one.commit()
    # The bulk load meets the newer commit of item 1, so the batch is left
    # alone: each item loads by itself, item 1 catching up with the commit
    # (nothing two used is stale), never a stale copy.
    assert [item["n"] for item in items] == [0, 10, 2]
    two.commit()


def test_no_server_is_a_clear_error():
    with pytest.raises(ServerUnavailableError, match="durus -s"):
        ClientStorage(port=free_port())


def test_socket_operations_time_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts, and never answers
    try:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            ClientStorage(address=listener.getsockname(), timeout=0.5)
        assert time.monotonic() - start < 3
    finally:
        listener.close()


def test_a_server_that_goes_silent_after_the_handshake_times_out():
    """The timeout is the kernel's (SO_RCVTIMEO) on a blocking socket: a
    load that gets no answer fails after it, as ServerUnavailableError."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []

    def answer_the_version_only():
        conn, _ = listener.accept()
        accepted.append(conn)
        assert conn.recv(5)[:1] == b"V"
        conn.sendall(int4(2))

    thread = threading.Thread(target=answer_the_version_only)
    thread.start()
    try:
        storage = ClientStorage(address=listener.getsockname(), timeout=0.3)
        thread.join(5)
        assert storage.version == 2
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="did not answer within 0.3s"):
            storage.load(int_to_oid(1))
        assert 0.25 < time.monotonic() - start < 3
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_reconnect_after_server_restart(server):
    one, two = connect(server), connect(server)
    one.get_root()["x"] = PersistentDict(v=1)
    one.commit()
    two.abort()
    x = two.get_root()["x"]
    assert x["v"] == 1
    server.stop()
    server.start()
    # The transaction underway fails like a conflict ...
    two.get_root()["y"] = 1
    with pytest.raises(DisconnectedError) as raised:
        two.commit()
    assert isinstance(raised.value, ConflictError)
    assert "abort()" in str(raised.value)
    # ... one commits while two is away ...
    one.abort()
    one.get_root()["x"]["v"] = 2
    one.commit()
    # ... and abort() reconnects, dropping every cached state.
    two.abort()
    assert x["v"] == 2
    two.get_root()["y"] = 2
    two.commit()
    one.abort()
    assert one.get_root()["y"] == 2


def test_connection_lost_after_commit_data_is_in_doubt():
    """A server that vanishes after taking the records, before answering."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve_once():
        # As a Durus 4.3 server: asked for version 2, it answers 1 and closes.
        sock, _ = listener.accept()
        assert sock.recv(5) == b"V" + (2).to_bytes(4, "big")
        sock.sendall((1).to_bytes(4, "big"))
        sock.close()
        sock, _ = listener.accept()
        reader = sock.makefile("rb")
        assert reader.read(5) == b"V" + (1).to_bytes(4, "big")
        sock.sendall((1).to_bytes(4, "big"))
        while True:
            command = reader.read(1)
            if command == b"L":
                reader.read(8)
                sock.sendall(b"K")
            elif command == b"M":
                count = reader.read(1)[0]
                sock.sendall(b"".join(n.to_bytes(8, "big") for n in range(count)))
            elif command == b"C":
                sock.sendall(b"\0\0\0\0")
                reader.read(int.from_bytes(reader.read(4), "big"))
                break
        reader.close()
        sock.close()

    thread = threading.Thread(target=serve_once)
    thread.start()
    try:
        with pytest.raises(CommitInDoubtError, match="may or may not be stored"):
            Connection(ClientStorage(address=listener.getsockname()))
    finally:
        thread.join(10)
        listener.close()
    assert not issubclass(CommitInDoubtError, ConflictError)  # not replayed blindly


def test_abort_while_the_server_is_down_says_so(server):
    connection = connect(server)
    connection.get_root()["x"] = 1
    connection.commit()
    server.kill()
    with pytest.raises((DisconnectedError, ServerUnavailableError)):
        connection.get_root()["x"] = 2
        connection.commit()
    with pytest.raises(ServerUnavailableError, match="durus -s"):
        connection.abort()
    server.start()
    connection.abort()
    assert connection.get_root()["x"] == 1


def test_transaction_too_large_is_refused_before_sending(server):
    connection = connect(server, max_transaction_size=1000)
    connection.get_root()["big"] = os.urandom(5000)
    with pytest.raises(TransactionTooLargeError, match="max-transaction-size"):
        connection.commit()
    connection.abort()
    connection.get_root()["small"] = 1
    connection.commit()


def test_server_drops_a_commit_over_its_limit(tmp_path):
    with ServerProcess(tmp_path / "limit.durus", args=["--max-transaction-size", "2000"]) as server:
        connection = connect(server)
        connection.get_root()["big"] = os.urandom(5000)
        with pytest.raises(Exception) as raised:
            connection.commit()
        assert isinstance(raised.value, (DisconnectedError, ServerUnavailableError))
        assert "exceeds the limit" in server.log()


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "key"
    path.write_text("s3cret shared by server and clients\n")
    return str(path)


def test_authentication(tmp_path, keyfile):
    wrong = tmp_path / "wrong"
    wrong.write_text("not it")
    with ServerProcess(tmp_path / "auth.durus", args=["--keyfile", keyfile]) as server:
        connection = connect(server, keyfile=keyfile)
        connection.get_root()["x"] = 1
        connection.commit()
        with pytest.raises(AuthenticationError, match="same key"):
            ClientStorage(address=server.address, keyfile=str(wrong))
        # A client without the key (as Durus 4.3) is dropped at its first command.
        with pytest.raises((DisconnectedError, ServerUnavailableError)):
            connect(server)
        # Stopping needs the key too.
        result = subprocess.run([sys.executable, "-m", "durus", "-s", "--stop", "--port", str(server.address[1])],
                                capture_output=True, timeout=30, check=False)
        assert server.is_running()
        result = subprocess.run([sys.executable, "-m", "durus", "-s", "--stop", "--port", str(server.address[1]),
                                 "--keyfile", keyfile], capture_output=True, timeout=30, check=False)
        assert result.returncode == 0
        assert server.process.wait(10) == 0
        server.process = None


def test_key_given_but_server_has_none(server, keyfile):
    with pytest.raises(AuthenticationError, match="none configured"):
        ClientStorage(address=server.address, keyfile=keyfile)


def test_wait_for_server(tmp_path):
    port = free_port()
    with pytest.raises(TimeoutError, match="durus -s"):
        wait_for_server(port=port, maxtries=2, sleeptime=0.05)
    server = ServerProcess(tmp_path / "w.durus", address=("127.0.0.1", port))
    starter = threading.Timer(0.3, server.start)
    starter.start()
    try:
        wait_for_server(port=port, maxtries=100, sleeptime=0.1)
    finally:
        starter.join()
        server.stop()


def test_unix_socket_client(tmp_path):
    path = str(tmp_path / "s.sock")
    with ServerProcess(tmp_path / "u.durus", address=path) as server:
        connection = Connection(ClientStorage(address=path))
        connection.get_root()["via"] = "unix"
        connection.commit()
        assert Connection(ClientStorage(address=server.address)).get_root()["via"] == "unix"


# -- several processes ------------------------------------------------------------

WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError, DurusError
from durus.persistent_dict import PersistentDict
mode, host, port, name = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
connection = Connection(ClientStorage(host, port, timeout=10))
root = connection.get_root()
if mode == "count":
    while True:
        try:
            if name not in root:
                root[name] = PersistentDict(value=0)
            root[name]["value"] += 1
            value = root[name]["value"]
            connection.commit()
        except ConflictError:
            try:
                connection.abort()
            except DurusError:
                break
            continue
        except (DurusError, OSError):
            break
        print(value, flush=True)
elif mode == "transfer":
    import random
    rng = random.Random(name)
    done = conflicts = 0
    while done < int(sys.argv[6]):
        try:
            accounts = root["accounts"]
            a, b = rng.sample(range(len(accounts)), 2)
            amount = rng.randint(1, 20)
            accounts[a]["balance"] -= amount
            accounts[a]["ops"] += 1
            accounts[b]["balance"] += amount
            accounts[b]["ops"] += 1
            connection.commit()
            done += 1
        except ConflictError:
            conflicts += 1
            connection.abort()
    print(json.dumps({"done": done, "conflicts": conflicts}), flush=True)
"""


def _worker(mode: str, server: ServerProcess, name: str, *extra: str) -> subprocess.Popen:
    host, port = server.address
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(TESTS), mode, host, str(port), name, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_during_commits(tmp_path, rounds: int) -> None:
    # A kill in the middle of a commit's write leaves a torn, unacknowledged
    # tail, which a server refuses to open without --repair (SPEC §3).
    server = ServerProcess(tmp_path / "crash.durus", args=("--repair",))
    acknowledged: dict[str, int] = {}
    for round_ in range(rounds):
        server.start()
        workers = {f"w{n}": _worker("count", server, f"w{n}") for n in range(3)}
        first_lines = {name: worker.stdout.readline() for name, worker in workers.items()}
        time.sleep(0.05 * (round_ % 5))  # every worker is committing: crash now
        server.kill()
        for name, worker in workers.items():
            out, _ = worker.communicate(timeout=30)
            values = [int(line) for line in (first_lines[name] + out).split()]
            if values:
                acknowledged[name] = values[-1]
        server.start()
        check = Connection(ClientStorage(address=server.address))
        root = check.get_root()
        for name, value in acknowledged.items():
            assert root[name]["value"] >= value, f"round {round_}: {name} lost acknowledged commits"
        check.get_storage().close()
        server.stop()
    assert sum(acknowledged.values()) > 0


def test_kill_9_keeps_every_acknowledged_commit(tmp_path):
    _kill_during_commits(tmp_path, rounds=5)


@pytest.mark.slow
def test_kill_9_keeps_every_acknowledged_commit_many_times(tmp_path):
    _kill_during_commits(tmp_path, rounds=30)


def test_transfers_between_accounts_are_serializable(server):
    setup = connect(server)
    setup.get_root()["accounts"] = PersistentList(PersistentDict(balance=1000, ops=0) for _ in range(6))
    setup.commit()
    workers = [_worker("transfer", server, f"t{n}", "60") for n in range(4)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    setup.abort()
    accounts = setup.get_root()["accounts"]
    assert sum(account["balance"] for account in accounts) == 6000
    # No lost update: every committed transfer touched two accounts.
    assert sum(account["ops"] for account in accounts) == 2 * sum(r["done"] for r in results) == 2 * 240


# -- interoperability with the real Durus 4.3 ---------------------------------------

DURUS43_CLIENT = r"""
import sys
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.persistent_dict import PersistentDict
connection = Connection(ClientStorage(port=int(sys.argv[1])))
root = connection.get_root()

def say(*words):
    print(*words, flush=True)

for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    try:
        if command == "set":
            key, value = argument.split()
            if key not in root:
                root[key] = PersistentDict()
            root[key]["v"] = int(value)
        elif command == "get":
            say(root[argument]["v"] if argument in root else None)
        elif command == "commit":
            connection.commit()
            say("ok")
        elif command == "abort":
            connection.abort()
            say("ok")
    except ConflictError as error:
        say("conflict", type(error).__name__)
"""


class Durus43Client:
    """A Durus 4.3 Connection in its own interpreter, driven line by line."""

    def __init__(self, python: str, port: int) -> None:
        self.process = subprocess.Popen(
            [python, "-c", DURUS43_CLIENT, str(port)], cwd="/", env={"PATH": os.environ["PATH"]},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ask(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer:
            raise RuntimeError(self.process.stderr.read())
        return answer

    def tell(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


def _durus43() -> str:
    from durus43 import durus43_python

    return str(durus43_python())


@pytest.fixture(params=["our server", "Durus 4.3 server"])
def either_server(request, tmp_path):
    python = _durus43()
    server_python = python if request.param == "Durus 4.3 server" else None
    with ServerProcess(tmp_path / "interop.durus", python=server_python) as server:
        yield server


@pytest.mark.compat
def test_durus43_clients_and_ours_share_a_server(either_server):
    python = _durus43()
    port = either_server.address[1]
    theirs = Durus43Client(python, port)  # first: it creates the root (oid 0)
    try:
        theirs.tell("set shared 1")
        assert theirs.ask("commit") == "ok"
        ours = connect(either_server)
        root = ours.get_root()
        assert root["shared"]["v"] == 1
        # Ours commits; theirs sees it after abort (invalidation crosses over).
        root["shared"]["v"] = 2
        ours.commit()
        assert theirs.ask("abort") == "ok"
        assert theirs.ask("get shared") == "2"
        # Both change the same object: the second to commit conflicts.
        theirs.tell("set shared 3")
        root["shared"]["v"] = 4
        ours.commit()
        assert theirs.ask("commit") == "conflict WriteConflictError"
        assert theirs.ask("abort") == "ok"
        assert theirs.ask("get shared") == "4"
        theirs.tell("set shared 5")
        assert theirs.ask("commit") == "ok"
        root["shared"]["v"] = 6
        with pytest.raises(WriteConflictError):
            ours.commit()
        ours.abort()
        assert root["shared"]["v"] == 5
        # Objects each created reach the other.
        root["ours"] = PersistentDict(v=7)
        ours.commit()
        assert theirs.ask("abort") == "ok"
        assert theirs.ask("get ours") == "7"
    finally:
        theirs.close()

"""The storage server over real sockets, byte by byte, and the shared-storage
rules it applies (which in-process sessions share).

Every bad-input test checks that the offending client is dropped, that
nothing it sent was written, and that another client, connected all along,
is still served at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from server_process import ServerProcess

from durus import protocol
from durus.error import ReadConflictError, WriteConflictError
from durus.record import ROOT_OID, int4, int_to_oid, oid_to_int, pack_record
from durus.shared_storage import RequestRefusedError, SharedStorage
from durus.storage import MemoryStorage
from durus.storage_server import StorageServer

PROMPT = 0.5  # seconds within which a healthy client must be answered


class RawClient:
    """A client that speaks the protocol by hand, to send anything at all."""

    def __init__(self, address, handshake: bool = True) -> None:
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=5)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(5)
            self.sock.connect(address)
        if handshake:
            self.send(b"V" + int4(1))
            assert self.read(4) == int4(1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionResetError(f"closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    def new_oids(self, count: int) -> list[bytes]:
        self.send(b"M" + bytes((count,)))
        data = self.read(8 * count)
        return [data[i:i + 8] for i in range(0, len(data), 8)]

    def load(self, oid: bytes) -> tuple[bytes, bytes | None]:
        self.send(b"L" + oid)
        status = self.read(1)
        if status != b"O":
            return status, None
        return status, self.read(int.from_bytes(self.read(4), "big"))

    def read_oids(self) -> list[bytes]:
        count = int.from_bytes(self.read(4), "big")
        data = self.read(8 * count)
        return sorted(data[i:i + 8] for i in range(0, len(data), 8))

    def sync(self) -> list[bytes]:
        self.send(b"S")
        return self.read_oids()

    def commit(self, records: dict[bytes, bytes]) -> tuple[list[bytes], bytes | None]:
        self.send(b"C")
        invalid = self.read_oids()
        self.send(protocol.commit_data(records.items()))
        return invalid, (self.read(1) if records else None)

    def is_dropped(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def record(oid: bytes, data: bytes = b"state", refs: bytes = b"") -> bytes:
    return pack_record(oid, data, refs)


def assert_served_promptly(client: RawClient) -> None:
    start = time.monotonic()
    status, _ = client.load(ROOT_OID)
    assert status == b"O"
    oid = client.new_oids(1)[0]
    root = record(ROOT_OID, b"root", oid)
    assert client.commit({oid: record(oid), ROOT_OID: root})[1] == b"O"
    assert time.monotonic() - start < PROMPT


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "data.durus", args=["--logginglevel", "10"]) as server:
        setup = RawClient(server.address)
        assert setup.new_oids(1) == [ROOT_OID]
        assert setup.commit({ROOT_OID: record(ROOT_OID, b"root")}) == ([], b"O")
        setup.close()
        yield server
    assert server.process is None


# -- every command, byte by byte ---------------------------------------------------


def test_every_command(server):
    client = RawClient(server.address)
    client.send(b"N")
    first = client.read(8)
    oids = client.new_oids(3)
    assert len({first, *oids}) == 4 and ROOT_OID not in oids
    client.send(b"M\x00")  # zero oids: an empty answer, then the next command
    assert client.load(int_to_oid(999)) == (b"K", None)
    status, root = client.load(ROOT_OID)
    assert status == b"O" and root == record(ROOT_OID, b"root")
    new = {oid: record(oid, b"x" * 10) for oid in oids}
    assert client.commit(new) == ([], b"O")
    # Bulk load: one reply per oid, in order, K for a missing one.
    client.send(protocol.bulk_load_request([oids[2], int_to_oid(999), oids[0]]))
    assert client.read(1) == b"O" and client.read(4) == int4(len(new[oids[2]])) and client.read(len(new[oids[2]]))
    assert client.read(1) == b"K"
    assert client.read(1) == b"O"
    client.read(int.from_bytes(client.read(4), "big"))
    assert client.sync() == []
    # An empty commit (int4(0)) gets no status byte.
    assert client.commit({}) == ([], None)
    client.send(b"P")
    assert client.read(1) == b"O"
    client.send(b".")
    assert client.is_dropped()


def test_invalidations_reach_other_clients(server):
    one, two = RawClient(server.address), RawClient(server.address)
    assert two.load(ROOT_OID)[0] == b"O"
    oid = one.new_oids(1)[0]
    assert one.commit({oid: record(oid), ROOT_OID: record(ROOT_OID, b"root2", oid)}) == ([], b"O")
    # Until two syncs, a load of what one committed answers I.
    assert two.load(ROOT_OID) == (b"I", None)
    assert two.sync() == [ROOT_OID, oid]
    assert two.load(ROOT_OID) == (b"O", record(ROOT_OID, b"root2", oid))
    # The committer itself is not told about its own commit.
    assert one.sync() == []
    # The first reply to C carries the invalidations.
    assert one.commit({oid: record(oid, b"v2")}) == ([], b"O")
    assert two.commit({ROOT_OID: record(ROOT_OID, b"root3", oid)}) == ([oid], b"O")
    assert one.sync() == [ROOT_OID]


def test_record_for_a_delivered_invalidation_is_a_conflict(server):
    one, two = RawClient(server.address), RawClient(server.address)
    assert one.commit({ROOT_OID: record(ROOT_OID, b"one")}) == ([], b"O")
    invalid, status = two.commit({ROOT_OID: record(ROOT_OID, b"two")})
    assert (invalid, status) == ([ROOT_OID], b"I")
    assert two.load(ROOT_OID) == (b"O", record(ROOT_OID, b"one"))
    assert_served_promptly(two)


def test_abandoned_commit(server):
    one, two = RawClient(server.address), RawClient(server.address)
    assert one.commit({ROOT_OID: record(ROOT_OID, b"one")})[1] == b"O"
    two.send(b"C")
    assert two.read_oids() == [ROOT_OID]
    two.send(int4(0))  # saw the conflict; gives up
    assert two.load(ROOT_OID) == (b"O", record(ROOT_OID, b"one"))


def test_oids_are_never_shared(server):
    clients = [RawClient(server.address) for _ in range(3)]
    handed = [oid for client in clients for oid in client.new_oids(255)]
    assert len(set(handed)) == len(handed) == 765
    assert ROOT_OID not in handed


def test_only_the_root_oid_comes_back_when_a_client_leaves(tmp_path):
    with ServerProcess(tmp_path / "empty.durus") as server:
        first = RawClient(server.address)
        assert first.new_oids(3) == [ROOT_OID, int_to_oid(1), int_to_oid(2)]
        first.send(b".")
        assert first.is_dropped()
        # The root's oid goes to the next client: it creates the root.
        # The others are never handed out again.
        second = RawClient(server.address)
        assert second.new_oids(2) == [ROOT_OID, int_to_oid(3)]


def test_version_mismatch_drops_only_that_client(server):
    other = RawClient(server.address)
    bad = RawClient(server.address, handshake=False)
    bad.send(b"V" + int4(3))
    assert bad.read(4) == int4(1)  # as Durus 4.3 answers any version it does not speak
    assert bad.is_dropped()
    assert_served_promptly(other)


# -- bad input: drop that client, write nothing, serve the others -------------


def _commit_bytes(records: dict[bytes, bytes]) -> bytes:
    return protocol.commit_data(records.items())


def _frame(tdata: bytes) -> bytes:
    return int4(len(tdata)) + tdata


def _bad_inputs(client: RawClient, other: RawClient) -> dict[str, bytes]:
    given = client.new_oids(1)[0]
    others = other.new_oids(1)[0]
    good = record(given)
    return {
        "unknown command": b"Z",
        "truncated commit data": b"C" + _frame(int4(8 + len(good) + 50) + given + good),
        "record of another oid": b"C" + _commit_bytes({given: record(int_to_oid(77))}),
        "inconsistent record": b"C" + _frame(int4(8 + 12 + 4) + given + given + int4(9) + b"abcd"),
        "oid never given": b"C" + _commit_bytes({int_to_oid(5000): record(int_to_oid(5000))}),
        "oid given to another": b"C" + _commit_bytes({others: record(others)}),
        "reference never handed out": b"C" + _commit_bytes({given: record(given, refs=int_to_oid(2**31))}),
        "huge length prefix": b"C" + int4(0xFFFFFFF0),
        "huge bulk load": b"B" + int4(0xFFFFFFF0),
    }


@pytest.mark.parametrize("kind", [
    "unknown command", "truncated commit data", "record of another oid", "inconsistent record",
    "oid never given", "oid given to another", "reference never handed out", "huge length prefix",
    "huge bulk load",
])
def test_bad_input_drops_that_client_only(server, kind):
    other = RawClient(server.address)
    bad = RawClient(server.address)
    assert other.load(ROOT_OID)[0] == b"O"
    size = os.path.getsize(server.file)
    data = _bad_inputs(bad, other)[kind]
    bad.send(data)
    assert bad.is_dropped()
    assert os.path.getsize(server.file) == size  # nothing of it written
    assert_served_promptly(other)
    assert "dropping client" in server.log()


def test_a_commit_referring_to_an_oid_never_handed_out_is_refused(server):
    """Whether the record is new or the root's, the commit is refused as a
    whole (one log line), nothing is written, the server keeps serving.
    """
    other = RawClient(server.address)
    size = os.path.getsize(server.file)
    never = int_to_oid(2**31)
    for root_too in (False, True):
        bad = RawClient(server.address)
        new = bad.new_oids(1)[0]
        records = {new: record(new, b"new")}
        if root_too:
            records[ROOT_OID] = record(ROOT_OID, b"root2", new + never)
        else:
            records[new] = record(new, b"new", never)
        bad.send(b"C")
        assert bad.read_oids() == []
        bad.send(_commit_bytes(records))
        assert bad.is_dropped()
        assert os.path.getsize(server.file) == size
        assert other.load(ROOT_OID) == (b"O", record(ROOT_OID, b"root"))
    refusals = [line for line in server.log().splitlines() if "refers to oid 2147483648" in line]
    assert len(refusals) == 2 and "dropping client" in refusals[0], refusals
    assert_served_promptly(other)


def test_references_to_stored_new_and_handed_out_oids_pass(server):
    client = RawClient(server.address)
    given_elsewhere = RawClient(server.address).new_oids(1)[0]
    leaving = RawClient(server.address)
    left_unused = leaving.new_oids(1)[0]
    leaving.send(b".")
    assert leaving.is_dropped()
    new = client.new_oids(1)[0]
    # Refs to a stored oid, one in the commit, one given to another client
    # and one a departed client left unused: all were handed out.
    refs = b"".join(sorted([ROOT_OID, new, given_elsewhere, left_unused]))
    assert client.commit({new: record(new, b"x", refs)}) == ([], b"O")
    assert "refers to oid" not in server.log()


def test_a_normal_clients_new_objects_pass(tmp_path):
    from durus.client_storage import ClientStorage
    from durus.connection import Connection
    from durus.persistent_list import PersistentList
    from tests.models import Item

    with ServerProcess(tmp_path / "objects.durus") as server:
        connection = Connection(ClientStorage(address=server.address))
        items = PersistentList(Item(str(n)) for n in range(50))
        for item, following in zip(items, items[1:]):
            item.value = following
        connection.get_root()["items"] = items
        connection.commit()
        items.append(Item("late", items[0]))
        connection.commit()
        connection.get_storage().close()
        reader = Connection(ClientStorage(address=server.address))
        assert [item.name for item in reader.get_root()["items"]][-2:] == ["49", "late"]
        assert reader.get_root()["items"][-1].value is reader.get_root()["items"][0]
        reader.get_storage().close()
        assert "refers to oid" not in server.log()


def test_replies_to_requests_before_a_bad_one_are_sent(server):
    client = RawClient(server.address)
    client.send(b"S" + b"L" + ROOT_OID + b"Z")  # in one write
    assert client.read(4) == int4(0)
    assert client.read(1) == b"O"
    assert client.read(int.from_bytes(client.read(4), "big")) == record(ROOT_OID, b"root")
    assert client.is_dropped()


def test_pack_on_a_readonly_server_answers_and_packs_nothing(server):
    server.stop()
    size = os.path.getsize(server.file)
    with ServerProcess(server.file, args=["--readonly"]) as readonly:
        client = RawClient(readonly.address)
        client.send(b"P")
        assert client.read(1) == b"O"
        assert client.load(ROOT_OID) == (b"O", record(ROOT_OID, b"root"))
    assert os.path.getsize(server.file) == size


def test_commit_to_a_readonly_server_drops_the_client(server):
    server.stop()
    with ServerProcess(server.file, args=["--readonly"]) as readonly:
        other = RawClient(readonly.address)
        bad = RawClient(readonly.address)
        size = os.path.getsize(server.file)
        bad.send(b"C")
        assert bad.read_oids() == []
        bad.send(_commit_bytes({ROOT_OID: record(ROOT_OID, b"changed")}))
        assert bad.is_dropped()
        assert os.path.getsize(server.file) == size
        start = time.monotonic()
        assert other.load(ROOT_OID) == (b"O", record(ROOT_OID, b"root"))
        assert time.monotonic() - start < PROMPT
        assert "read-only" in readonly.log()


# -- stalls: a slow or silent client waits only for itself -------------------------


def test_half_a_request_stalls_nobody(server):
    other = RawClient(server.address)
    half = RawClient(server.address)
    half.send(b"L\0\0\0")
    silent = RawClient(server.address, handshake=False)
    assert silent
    assert_served_promptly(other)
    half.send(b"\0\0\0\0\0")
    assert half.read(1) == b"I"  # completed: other committed the root meanwhile


def test_client_holding_the_commit_turn_loses_it(server):
    other = RawClient(server.address)
    stuck = RawClient(server.address)
    stuck.send(b"C")
    assert stuck.read_oids() == []
    stuck.send(int4(1000) + b"partial")  # and then nothing
    start = time.monotonic()
    assert other.commit({ROOT_OID: record(ROOT_OID, b"other")}) == ([], b"O")
    assert time.monotonic() - start < 2.0  # the turn timeout (0.5 s), not forever
    assert other.load(ROOT_OID)[0] == b"O"


def test_client_that_lets_its_commit_turn_time_out_is_dropped(server):
    slow = RawClient(server.address)
    other = RawClient(server.address)
    oid = slow.new_oids(1)[0]
    slow.send(b"C")
    assert slow.read_oids() == []
    other_oid = other.new_oids(1)[0]
    other.send(b"C")  # waits for the turn behind slow
    time.sleep(1.0)  # slow's turn times out: it is dropped; other gets the turn
    assert other.read_oids() == []
    other.send(_commit_bytes({other_oid: record(other_oid)}))
    assert other.read(1) == b"O"
    slow.send(_commit_bytes({oid: record(oid)}))  # too late: nothing of it is written
    assert slow.is_dropped()
    assert other.load(oid)[0] == b"K"


def test_client_that_does_not_read_replies_stalls_nobody(server):
    other = RawClient(server.address)
    greedy = RawClient(server.address)
    oids = greedy.new_oids(200)
    big = {oid: record(oid, b"x" * 50_000) for oid in oids}
    assert greedy.commit(big)[1] == b"O"
    # Ask for ~1 GB of replies and never read them.
    request = protocol.bulk_load_request(oids * 100)
    greedy.send(request)
    for _ in range(3):
        assert_served_promptly(other)
    greedy.close()


def test_many_commits_from_several_clients(server):
    clients = [RawClient(server.address) for _ in range(4)]
    oids = [client.new_oids(1)[0] for client in clients]
    for client, oid in zip(clients, oids):
        assert client.commit({oid: record(oid, b"0")})[1] == b"O"
    errors = []

    def work(client, oid):
        try:
            for step in range(50):
                invalid, status = client.commit({oid: record(oid, str(step).encode())})
                assert status == b"O" and oid not in invalid
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(clients, oids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    check = RawClient(server.address)
    for oid in oids:
        assert check.load(oid) == (b"O", record(oid, b"49"))


# -- packing -------------------------------------------------------------------


def test_pack_while_others_commit(server):
    client = RawClient(server.address)
    kept, garbage = client.new_oids(2)
    root = record(ROOT_OID, b"root", kept)
    assert client.commit({ROOT_OID: root, kept: record(kept), garbage: record(garbage)})[1] == b"O"
    other = RawClient(server.address)
    client.send(b"P")
    assert client.read(1) == b"O"
    for step in range(20):
        assert other.commit({kept: record(kept, str(step).encode())})[1] == b"O"
    deadline = time.monotonic() + 5
    while client.load(garbage)[0] != b"K":
        assert time.monotonic() < deadline, "the pack did not finish"
        client.sync()
        time.sleep(0.05)
    assert client.load(kept) == (b"O", record(kept, b"19"))
    assert client.load(ROOT_OID) == (b"O", root)


def test_gcbytes_packs_by_itself(tmp_path):
    with ServerProcess(tmp_path / "gc.durus", args=["--gcbytes", "20000"]) as server:
        client = RawClient(server.address)
        root_oid, garbage = client.new_oids(2)
        assert client.commit({root_oid: record(root_oid), garbage: record(garbage)})[1] == b"O"
        for step in range(100):
            assert client.commit({root_oid: record(root_oid, b"x" * 400)})[1] == b"O"
        deadline = time.monotonic() + 5
        while client.load(garbage)[0] != b"K":
            assert time.monotonic() < deadline, "gcbytes did not start a pack"
            client.sync()
            time.sleep(0.05)
        assert "pack finished" in server.log()


# -- quitting, addresses, authentication ------------------------------------------


def test_quit_stops_the_server_gracefully(server):
    client = RawClient(server.address)
    client.send(b"Q")
    assert client.is_dropped()
    assert server.process.wait(10) == 0
    server.process = None


def test_unix_socket_with_umask(tmp_path):
    path = str(tmp_path / "durus.sock")
    with ServerProcess(tmp_path / "unix.durus", address=path, args=["--umask", "077"]) as server:
        assert os.stat(path).st_mode & 0o077 == 0
        client = RawClient(path)
        assert client.new_oids(1) == [ROOT_OID]
        client.send(b"Q")
        assert server.process.wait(10) == 0
        server.process = None
    assert not os.path.exists(path)


def test_stale_unix_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(path)
    leftover.close()
    with ServerProcess(tmp_path / "unix.durus", address=path) as server:
        assert RawClient(server.address).new_oids(1) == [ROOT_OID]


def test_abstract_socket(tmp_path):
    name = f"@durus-test-{os.getpid()}-{time.monotonic_ns()}"
    with ServerProcess(tmp_path / "abstract.durus", address=name):
        client = RawClient("\0" + name[1:])
        assert client.new_oids(1) == [ROOT_OID]


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")
def test_ipv6(tmp_path):
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    with ServerProcess(tmp_path / "v6.durus", address=("::1", port)):
        client = RawClient(("::1", port))
        assert client.sock.family == socket.AF_INET6
        assert client.new_oids(1) == [ROOT_OID]


def test_unix_socket_owner_and_group(tmp_path):
    path = str(tmp_path / "owned.sock")
    owner, group = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    args = ["--owner", str(owner), "--group", str(group)]
    with ServerProcess(tmp_path / "owned.durus", address=path, args=args):
        status = os.stat(path)
        assert (status.st_uid, status.st_gid) == (owner, group)


@pytest.fixture
def keyed_server(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("correct horse battery staple\n")
    with ServerProcess(tmp_path / "auth.durus", args=["--keyfile", str(keyfile)]) as server:
        server.keyfile = str(keyfile)
        yield server


def _authenticate(client: RawClient, secret: bytes) -> bytes:
    client_nonce = b"c" * 32
    client.send(b"A" + client_nonce)
    assert client.read(1) == b"O"
    server_nonce = client.read(32)
    client.send(protocol.authentication_proof(secret, False, server_nonce, client_nonce))
    status = client.read(1)
    if status == b"O":
        assert client.read(32) == protocol.authentication_proof(secret, True, server_nonce, client_nonce)
    return status


def test_authentication_handshake(keyed_server):
    client = RawClient(keyed_server.address)
    assert _authenticate(client, b"correct horse battery staple") == b"O"
    assert client.new_oids(1) == [ROOT_OID]


def test_wrong_key_is_refused(keyed_server):
    client = RawClient(keyed_server.address)
    assert _authenticate(client, b"wrong") == b"I"
    assert client.is_dropped()


@pytest.mark.parametrize("command", [b"N", b"L" + ROOT_OID, b"S", b"C", b"P", b"Q"])
def test_unauthenticated_commands_are_refused(keyed_server, command):
    client = RawClient(keyed_server.address)  # the Durus 4.3 handshake only
    client.send(command)
    assert client.is_dropped()
    assert keyed_server.is_running()
    good = RawClient(keyed_server.address)
    assert _authenticate(good, b"correct horse battery staple") == b"O"
    start = time.monotonic()
    assert good.load(ROOT_OID)[0] == b"K"
    assert time.monotonic() - start < PROMPT


def test_authentication_without_a_server_key(server):
    client = RawClient(server.address)
    client.send(b"A" + b"c" * 32)
    assert client.read(1) == b"K"
    assert client.load(ROOT_OID)[0] == b"O"  # still served, as any Durus 4.3 client


# -- the shared storage, in process ------------------------------------------------


def test_sessions_in_process_follow_the_same_rules():
    shared = SharedStorage(MemoryStorage())
    one, two = shared.session(), shared.session()
    assert one.new_oid() == ROOT_OID
    one.begin()
    one.store(ROOT_OID, record(ROOT_OID, b"one"))
    one.end()
    assert two.sync() == [ROOT_OID]
    assert two.load(ROOT_OID) == record(ROOT_OID, b"one")
    one.begin()
    one.store(ROOT_OID, record(ROOT_OID, b"one again"))
    one.end()
    with pytest.raises(ReadConflictError):
        two.load(ROOT_OID)
    seen = []

    def refuse(oids):
        seen.extend(oids)
        raise WriteConflictError(oids)

    two.begin()
    two.store(ROOT_OID, record(ROOT_OID, b"two"))
    with pytest.raises(WriteConflictError):
        two.end(refuse)
    assert seen == [ROOT_OID]
    assert two.load(ROOT_OID) == record(ROOT_OID, b"one again")
    # A record for an oid delivered at the commit conflicts without a handler.
    one.begin()
    one.store(ROOT_OID, record(ROOT_OID, b"three"))
    one.end()
    two.begin()
    two.store(ROOT_OID, record(ROOT_OID, b"two"))
    with pytest.raises(WriteConflictError):
        two.end()


def test_sessions_refuse_oids_never_given_and_readonly_commits():
    shared = SharedStorage(MemoryStorage())
    one, two = shared.session(), shared.session()
    oid = one.new_oid()
    two.begin()
    two.store(oid, record(oid))
    with pytest.raises(RequestRefusedError, match="another client"):
        two.end()
    two.begin()
    two.store(int_to_oid(50), record(int_to_oid(50)))
    with pytest.raises(RequestRefusedError, match="never given"):
        two.end()
    readonly = SharedStorage(MemoryStorage(), readonly=True).session()
    readonly.begin()
    readonly.store(ROOT_OID, record(ROOT_OID))
    with pytest.raises(RequestRefusedError, match="read-only"):
        readonly.end()


def test_sessions_refuse_references_to_oids_never_handed_out():
    shared = SharedStorage(MemoryStorage(), max_given_oids=3)
    one, two = shared.session(), shared.session()
    root, new = one.new_oids(2)

    def commit(session, records):
        session.sync()
        session.begin()
        for oid, data in records.items():
            session.store(oid, data)
        session.end()

    with pytest.raises(RequestRefusedError, match="record of oid 0 refers to oid 1000, which has no record"):
        commit(one, {root: record(root, refs=int_to_oid(1000))})
    commit(one, {root: record(root, refs=new), new: record(new)})  # in the same commit
    commit(two, {root: record(root, b"again", new)})  # stored
    # Handed out to another session, open or closed: referring passes.
    leaving = shared.session()
    unused = leaving.new_oids(3)
    commit(two, {root: record(root, b"open", b"".join(unused))})
    leaving.close()
    commit(two, {root: record(root, b"closed", b"".join(unused))})
    # Closed sessions' unused oids are remembered up to max_given_oids.
    later = shared.session()
    later.new_oids(2)
    later.close()
    refused = 0
    for oid in unused:
        try:
            commit(two, {root: record(root, b"forgotten?", oid)})
        except RequestRefusedError:
            refused += 1
    assert refused == 2


def test_a_reference_to_an_object_a_pack_removed_is_a_conflict(tmp_path):
    from durus.file_storage import FileStorage

    shared = SharedStorage(FileStorage(str(tmp_path / "packed.durus")))
    one, two = shared.session(), shared.session()
    root, gone = one.new_oids(2)
    one.begin()
    one.store(root, record(root, b"with", gone))
    one.store(gone, record(gone))
    one.end()
    one.begin()
    one.store(root, record(root, b"without"))
    one.end()
    one.pack()
    assert gone in two.sync()
    size = os.path.getsize(tmp_path / "packed.durus")
    two.begin()
    two.store(root, record(root, b"back", gone))  # a stale client, not a hostile one
    with pytest.raises(WriteConflictError) as caught:
        two.end()
    assert caught.value.oids == [gone]
    assert os.path.getsize(tmp_path / "packed.durus") == size
    shared.close()


def test_sessions_hold_bounded_unused_oids():
    shared = SharedStorage(MemoryStorage(), max_given_oids=10)
    session = shared.session()
    session.new_oids(10)
    with pytest.raises(RequestRefusedError, match="at most 10"):
        session.new_oid()


def test_closed_session_oids_are_not_handed_out_again_but_the_root_s():
    shared = SharedStorage(MemoryStorage())
    first = shared.session()
    assert [oid_to_int(oid) for oid in first.new_oids(3)] == [0, 1, 2]
    second = shared.session()
    assert oid_to_int(second.new_oid()) == 3
    first.close()
    third = shared.session()
    assert [oid_to_int(oid) for oid in third.new_oids(3)] == [0, 4, 5]
    with pytest.raises(RequestRefusedError, match="never given"):
        third.begin()
        third.store(int_to_oid(1), record(int_to_oid(1)))
        third.end()


def test_threads_commit_in_turns():
    shared = SharedStorage(MemoryStorage())
    setup = shared.session()
    oids = setup.new_oids(4)
    setup.begin()
    for oid in oids:
        setup.store(oid, record(oid, b"0"))
    setup.end()
    errors = []

    def work(oid):
        session = shared.session()
        try:
            for step in range(200):
                session.begin()
                session.store(oid, record(oid, str(step).encode()))
                session.end(lambda invalid: None)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(oid,)) for oid in oids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(setup.sync()) == sorted(oids)
    assert all(setup.load(oid) == record(oid, b"199") for oid in oids)


class SlowSyncStorage(MemoryStorage):
    """A storage that can defer its disk sync, as group commit needs; it
    records which write each thread made last and what each sync covered.
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0
        self.written = 0
        self.synced = 0
        self.last_write: dict[int, int] = {}
        self.lock = threading.Lock()

    def end(self, handle_invalidations=None, sync=True):
        super().end(handle_invalidations)
        with self.lock:
            self.written += 1
            self.last_write[threading.get_ident()] = self.written

    def sync_to_disk(self):
        with self.lock:
            covered = self.written
        time.sleep(0.005)
        with self.lock:
            self.synced = max(self.synced, covered)
            self.syncs += 1


def _sessions_commit_concurrently(shared: SharedStorage, acknowledged_early) -> tuple[list[bytes], list[bytes]]:
    """Four threads, each with its own session, commit 25 times to one oid
    each; ``acknowledged_early(oid)``, asked after each commit returns, says
    whether it returned before a disk sync covered it.  Returns the oids and
    those that were acknowledged early.
    """
    setup = shared.session()
    oids = setup.new_oids(4)
    setup.begin()
    for oid in oids:
        setup.store(oid, record(oid))
    setup.end()
    early = []

    def work(oid):
        session = shared.session()
        for step in range(25):
            session.begin()
            session.store(oid, record(oid, str(step).encode()))
            session.end(lambda invalid: None)
            if acknowledged_early(oid):
                early.append(oid)

    threads = [threading.Thread(target=work, args=(oid,)) for oid in oids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return oids, early


def test_group_commit_shares_one_sync_among_concurrent_commits():
    storage = SlowSyncStorage()
    shared = SharedStorage(storage)
    syncs_before = storage.syncs + 1  # the set-up commit's

    def early(oid):
        return storage.synced < storage.last_write[threading.get_ident()]

    _, unsynced_acknowledgements = _sessions_commit_concurrently(shared, early)
    assert not unsynced_acknowledgements  # no commit returned before its sync
    assert storage.written == 101
    assert storage.syncs - syncs_before < 100 * 0.7  # commits shared their syncs


def test_connections_in_one_process_share_commits_and_conflicts():
    from durus.connection import Connection
    from durus.persistent_dict import PersistentDict

    shared = SharedStorage(MemoryStorage())
    roots = []
    errors = []

    def open_connection():
        try:
            roots.append(Connection(shared.session()).get_root())
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    # Concurrent first connections on an empty storage: one creates the root.
    threads = [threading.Thread(target=open_connection) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(roots) == 4
    one, two = (root._p_connection for root in roots[:2])
    one.get_root()["shared"] = PersistentDict(v=1)
    one.commit()
    two.abort()
    assert two.get_root()["shared"]["v"] == 1
    one.get_root()["shared"]["v"] = 2
    two.get_root()["shared"]["v"] = 3
    one.commit()
    with pytest.raises(WriteConflictError):
        two.commit()
    two.abort()
    assert two.get_root()["shared"]["v"] == 2


# -- group commit with the real FileStorage -------------------------------------

def _commit_in_threads(address, names: list[str], commits: int, after_commit=None) -> None:
    """Each name a client of its own, in a thread, committing ``commits``
    changes to its own object; ``after_commit(name, obj)`` runs after each.
    """
    from durus.client_storage import ClientStorage
    from durus.connection import Connection
    from durus.persistent_dict import PersistentDict

    setup = Connection(ClientStorage(address=address))
    for name in names:
        setup.get_root()[name] = PersistentDict(v=0)
    setup.commit()
    setup.get_storage().close()
    errors = []
    start = threading.Barrier(len(names))

    def work(name: str) -> None:
        try:
            connection = Connection(ClientStorage(address=address))
            mine = connection.get_root()[name]
            start.wait(10)
            for _ in range(commits):
                mine["v"] += 1
                connection.commit()
                if after_commit is not None:
                    after_commit(name, mine)
            connection.get_storage().close()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_server_process_shares_disk_syncs_among_clients(tmp_path):
    """A real server on a real file: concurrent commits share fdatasyncs,
    counted in its debug log (one line per commit, one per disk sync).
    """
    with ServerProcess(tmp_path / "data.durus", args=["--logginglevel", "10"]) as server:
        _commit_in_threads(server.address, [f"c{n}" for n in range(4)], 60)
        log = server.log()
    commits = log.count(" committed ")
    syncs = log.count("disk sync: commits up to byte")
    assert commits == 4 * 60 + 2  # and the root's, and the setup's
    # A real disk syncs fast (here 0.2 ms), so sharing varies with timing:
    # measured 0.7 to 0.95 syncs per commit; the slow-disk test below
    # shows sharing more strongly.
    assert 0 < syncs < commits, f"{syncs} disk syncs for {commits} commits"


class WatchedFileStorage:
    """Builds a FileStorage whose appends and disk syncs are recorded, to
    check that no commit is acknowledged before a sync that covers it.

    Instance attributes: ``written_at`` (oid -> file position its latest
    record was written up to); ``durable`` (position up to which a finished
    sync or a syncing commit made the file durable); ``syncs``.
    """

    def __new__(cls, path):
        from durus.file_storage import FileStorage

        class Watched(FileStorage):
            def end(self, handle_invalidations=None, sync=True):
                oids = list(self.pending or ())
                super().end(handle_invalidations, sync)
                for oid in oids:
                    self.written_at[oid] = self.shelf.end
                if sync:
                    self.durable = self.shelf.end

            def sync_to_disk(self):
                covered = self.shelf.end if "shelf" in self.__dict__ else 0
                time.sleep(0.002)  # a slow disk: commits pile up meanwhile
                super().sync_to_disk()
                self.durable = max(self.durable, covered)
                self.syncs += 1

        storage = Watched(path)
        storage.written_at, storage.durable, storage.syncs = {}, 0, 0
        return storage


def test_commits_are_acknowledged_only_after_their_disk_sync(tmp_path):
    from server_process import free_port

    from durus.storage_server import StorageServer

    storage = WatchedFileStorage(str(tmp_path / "data.durus"))
    server = StorageServer(storage, port=free_port())
    thread = threading.Thread(target=server.serve)
    thread.start()
    early = []

    def check(name, obj):
        if storage.durable < storage.written_at[obj._p_oid]:
            early.append(name)

    try:
        while server.listening_address is None:
            time.sleep(0.01)
        address = (server.listening_address.host, server.listening_address.port)
        _commit_in_threads(address, [f"c{n}" for n in range(4)], 40, after_commit=check)
    finally:
        server.stop()
        thread.join(10)
    assert not early
    assert 0 < storage.syncs < 4 * 40 * 0.8


def test_in_process_sessions_on_a_file_share_disk_syncs(tmp_path):
    storage = WatchedFileStorage(str(tmp_path / "data.durus"))
    shared = SharedStorage(storage)
    syncs_before = storage.syncs + 1  # the set-up commit's
    oids, early = _sessions_commit_concurrently(shared, lambda oid: storage.durable < storage.written_at[oid])
    assert not early
    assert storage.syncs - syncs_before < 100 * 0.7
    shared.close()
    reopened = SharedStorage(WatchedFileStorage(str(tmp_path / "data.durus"))).session()
    assert all(reopened.load(oid) == record(oid, b"24") for oid in oids)
    reopened.shared.close()


def test_gcbytes_may_be_given_as_a_float_as_in_durus43():
    assert StorageServer(MemoryStorage(), port=0, gcbytes=1e6).gcbytes == 1_000_000
    for bad in (-1, float("nan"), "100"):
        with pytest.raises(ValueError, match="gcbytes"):
            StorageServer(MemoryStorage(), port=0, gcbytes=bad)


def test_invalidation_log_keeps_a_bounded_number_of_oids():
    from durus.invalidation_log import InvalidationLog

    log = InvalidationLog(max_oids=5)
    first = log.append([int_to_oid(1), int_to_oid(2)], author=1)
    assert log.changes_after(0, reader=2) == ({int_to_oid(1), int_to_oid(2)}, set())
    assert log.changes_after(0, reader=1) == (set(), set())  # its own commit
    for n in range(3, 10):
        log.append([int_to_oid(n)], author=1)
    assert log.size <= 5
    assert log.is_behind(first - 1) and log.changes_after(0, reader=2) is None
    assert log.changed_after(int_to_oid(9), 0, reader=2)  # behind: everything changed
    assert not log.is_behind(log.latest) and log.changes_after(log.latest, reader=2) == (set(), set())
    log.append([int_to_oid(n) for n in range(100, 120)], author=3)  # one commit over the bound
    assert log.size == 20 and log.changes_after(log.latest - 1, reader=2)[0] == {
        int_to_oid(n) for n in range(100, 120)}


def test_a_session_behind_the_log_reports_every_oid_it_loaded():
    shared = SharedStorage(MemoryStorage(), max_logged_oids=2)
    one, two = shared.session(), shared.session()
    oids = one.new_oids(6)
    one.begin()
    for oid in oids:
        one.store(oid, record(oid))
    one.end()
    assert sorted(two.sync()) == sorted(oids)
    assert two.load(oids[0]) == record(oids[0])
    for oid in oids[1:4]:  # three commits: the log keeps two oids
        one.begin()
        one.store(oid, record(oid, b"changed"))
        one.end()
    assert two.is_behind()
    with pytest.raises(ReadConflictError):
        two.load(oids[5])  # unchanged, but nobody can tell any more
    assert two.sync() == [oids[0]]  # everything it loaded
    assert two.load(oids[1]) == record(oids[1], b"changed")


def test_invalidation_log_matches_per_reader_sets():
    """Generated: the shared log with cursors tells each reader exactly what
    a set per reader (the old way) would hold, or that it is behind.
    """
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from durus.invalidation_log import InvalidationLog

    steps = st.lists(st.tuples(st.sampled_from(["commit", "pack", "sync"]), st.integers(1, 3),
                               st.lists(st.integers(0, 15), min_size=1, max_size=6)), max_size=40)

    @settings(max_examples=200, deadline=None)
    @given(steps, st.integers(1, 12))
    def check(actions, bound):
        log = InvalidationLog(max_oids=bound)
        cursors = {reader: 0 for reader in (1, 2, 3)}
        pending = {reader: set() for reader in (1, 2, 3)}
        last_author: dict[bytes, int] = {}
        latest_size = 0
        for action, reader, numbers in actions:
            oids = [int_to_oid(n) for n in numbers]
            if action == "sync":
                changes = log.changes_after(cursors[reader], reader)
                if changes is None:
                    assert log.is_behind(cursors[reader])
                else:
                    assert changes[0] | changes[1] == pending[reader]
                    for oid in map(int_to_oid, range(16)):
                        refused = log.changed_after(oid, cursors[reader], reader)
                        assert not refused or oid in pending[reader]
                        if oid in pending[reader] and last_author[oid] != reader:
                            assert refused
                cursors[reader] = log.latest
                pending[reader] = set()
            else:
                author = 0 if action == "pack" else reader
                log.append(oids, author=author, removed=action == "pack")
                latest_size = len(oids)
                for oid in oids:
                    last_author[oid] = author
                for other in pending:
                    if other != author:
                        pending[other].update(oids)
            assert log.size <= max(bound, latest_size)

    check()

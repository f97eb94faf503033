"""What a crash leaves of a FileStorage's file opens as whole commits.

The crash images are built from a real FileStorage's writes: every write,
size change and fdatasync it makes to its file is recorded, and an image is
the file as the writes up to some point left it,

- cut inside a write (a process killed at any byte of it), the rest as the
  file had it, or missing (the file ends there), or zeros to the end;
- or, for a power cut before an fdatasync returned, with every piece of
  the writes since the last completed fdatasync read as written, as it was
  before, or as zeros, and the file at its old size or its new one.

Each image must open as exactly the state after some commit, at least the
last acknowledged one (and, for a killed process, every commit whose write
completed); an image with a commit cut off must not open without
``repair=True``.  The slow tests kill real writer and server processes.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import durus.shelf
from durus.file_storage import FileStorage
from durus.record import int_to_oid, pack_record
from durus.shelf import TRAILER_SIZE, TornTransactionError
from tests.models import Item

Records = dict[bytes, bytes]

# Small free space, so that commits often move the trailer slots.
SMALL_RESERVE = 24 * 1024


# -- records as Durus writes them ----------------------------------------------

class Reference:
    """Stands for a persistent object the state of a record refers to."""

    def __init__(self, n: int) -> None:
        self.n = n


class RecordPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple[bytes, type] | None:
        return (int_to_oid(obj.n), Item) if isinstance(obj, Reference) else None


def item_record(n: int, payload: bytes, refs: Iterable[int] = ()) -> bytes:
    """The record of an Item whose state holds ``payload`` and references to
    ``refs``, pickled and compressed as Durus does it.
    """
    refs = sorted(set(refs) - {n})
    state = {"name": f"item {n}", "value": payload, "others": [Reference(r) for r in refs]}
    stream = io.BytesIO()
    RecordPickler(stream, 2).dump(state)
    data = pickle.dumps(Item, 2) + zlib.compress(stream.getvalue())
    return pack_record(int_to_oid(n), data, b"".join(int_to_oid(r) for r in refs))


def commit_records(rng: random.Random, known: list[int], size: int) -> dict[int, bytes]:
    """A commit of about ``size`` bytes: the root, some records changed, some
    new, each referring to a few known ones; the new oids join ``known``.
    The last record refers to one object only, so that zeros over the end of
    its refs still read as a sorted list of oids.
    """
    records = {0: b""}
    total = 0
    while total < size:
        if known and rng.random() < 0.6:
            n = rng.choice(known)
        else:
            n = max(known, default=0) + 1
            known.append(n)
        length = rng.choice([40, 300, 2000, 6000])
        record = item_record(n, rng.randbytes(length), rng.sample(known, min(3, len(known))))
        records.pop(n, None)
        records[n] = record
        total += len(record)
    last = records.pop(n)
    records[0] = item_record(0, b"root %d" % rng.getrandbits(32), known)
    records[n] = item_record(n, last[-200:], [rng.choice([k for k in known if k != n] or [0])])
    return records


# -- recording what a FileStorage writes -----------------------------------------

class FileLog:
    """The writes, size changes and syncs made to one file, in order, with
    markers: ``("commit", k)`` before commit k's ``end()``, ``("ack", k)``
    when the commit was reported durable.

    Instance attributes: ``base`` (the file's bytes when recording began),
    ``ops``, ``states`` (the records after each commit, ``states[0]`` the
    ones at the start).
    """

    def __init__(self, path: str, state: Records) -> None:
        self.path = path
        self.inode = os.stat(path).st_ino
        self.base = Path(path).read_bytes()
        self.ops: list[tuple] = []
        self.states: list[Records] = [dict(state)]

    @contextmanager
    def recording(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        real = {name: getattr(os, name) for name in ("pwrite", "pwritev", "ftruncate", "posix_fallocate")}
        real_sync = durus.shelf._fdatasync

        def ours(fd: int) -> bool:
            return os.fstat(fd).st_ino == self.inode

        def pwrite(fd: int, data: bytes, position: int) -> int:
            written = real["pwrite"](fd, data, position)
            if ours(fd):
                self.ops.append(("write", position, bytes(data)[:written], "other"))
            return written

        def pwritev(fd: int, parts: list[bytes], position: int) -> int:
            written = real["pwritev"](fd, parts, position)
            if ours(fd):
                # Only appends use pwritev: a transaction and its seal.
                self.ops.append(("write", position, b"".join(parts)[:written], "transaction"))
            return written

        def ftruncate(fd: int, size: int) -> None:
            real["ftruncate"](fd, size)
            if ours(fd):
                self.ops.append(("size", size))

        def posix_fallocate(fd: int, offset: int, length: int) -> None:
            real["posix_fallocate"](fd, offset, length)
            if ours(fd):
                self.ops.append(("allocate", offset + length))

        def fdatasync(fd: int) -> None:
            real_sync(fd)
            if ours(fd):
                self.ops.append(("sync",))

        with monkeypatch.context() as patch:
            for name, replacement in [("pwrite", pwrite), ("pwritev", pwritev),
                                      ("ftruncate", ftruncate), ("posix_fallocate", posix_fallocate)]:
                patch.setattr(os, name, replacement)
            patch.setattr(durus.shelf, "_fdatasync", fdatasync)
            yield

    def commit(self, storage: FileStorage, records: dict[int, bytes], sync: bool = True) -> None:
        state = dict(self.states[-1])
        storage.begin()
        for n, record in records.items():
            storage.store(int_to_oid(n), record)
            state[int_to_oid(n)] = record
        self.states.append(state)
        self.ops.append(("commit", len(self.states) - 1))
        storage.end(sync=sync)
        if sync:
            self.acknowledge()

    def acknowledge(self) -> None:
        """Every commit so far is durable (its sync returned)."""
        acked = {op[1] for op in self.ops if op[0] == "ack"}
        for k in range(1, len(self.states)):
            if k not in acked:
                self.ops.append(("ack", k))

    def image(self, count: int, cut: int | None = None) -> bytearray:
        """The file after the first ``count`` ops, and ``cut`` bytes of the next write."""
        image = bytearray(self.base)
        for op in self.ops[:count]:
            apply(image, op)
        if cut is not None:
            _, position, data, _ = self.ops[count]
            apply(image, ("write", position, data[:cut]))
        return image

    def acked(self, count: int) -> int:
        return max((op[1] for op in self.ops[:count] if op[0] == "ack"), default=0)

    def started(self, count: int) -> int:
        return max((op[1] for op in self.ops[:count] if op[0] == "commit"), default=0)


def apply(image: bytearray, op: tuple) -> None:
    kind = op[0]
    if kind == "write":
        position, data = op[1], op[2]
        if len(image) < position + len(data):
            image.extend(bytes(position + len(data) - len(image)))
        image[position:position + len(data)] = data
    elif kind == "size":
        if op[1] < len(image):
            del image[op[1]:]
        else:
            image.extend(bytes(op[1] - len(image)))
    elif kind == "allocate" and op[1] > len(image):
        image.extend(bytes(op[1] - len(image)))


def data_writes(log: FileLog) -> list[int]:
    """The indexes of the ops that write a transaction (and its seal)."""
    return [index for index, op in enumerate(log.ops) if op[0] == "write" and op[3] == "transaction"]


def entry_boundaries(data: bytes) -> list[int]:
    """Where the entries of the transaction at the start of ``data`` begin and end."""
    end = 8 + int.from_bytes(data[:8], "big")
    boundaries = [0, 8]
    position = 8
    while position < end:
        position += 8 + int.from_bytes(data[position:position + 8], "big")
        boundaries.append(position)
    return boundaries


# -- opening crash images ------------------------------------------------------------

class Opener:
    """Opens crash images in one scratch file, without real disk syncs."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = directory / "image.durus"
        monkeypatch.setattr(durus.shelf, "_fdatasync", lambda fd: None)
        self.opened = 0

    def open(self, image: bytes) -> tuple[bool, Records]:
        """Whether the image needed repair, and the records it holds then."""
        self.path.write_bytes(image)
        self.opened += 1
        try:
            storage = FileStorage(str(self.path), readonly=True)
            torn = False
        except TornTransactionError:
            storage = FileStorage(str(self.path), repair=True)
            torn = True
        try:
            records = dict(storage.gen_oid_record())
        finally:
            storage.close()
        if torn:
            again = FileStorage(str(self.path), readonly=True)  # repaired for good
            assert dict(again.gen_oid_record()) == records
            again.close()
        return torn, records


def assert_state(log: FileLog, records: Records, low: int, high: int, where: str) -> int:
    """``records`` must be the state after one of the commits low..high; which."""
    for k in range(high, low - 1, -1):
        if records == log.states[k]:
            return k
    kept = {int.from_bytes(oid, "big") for oid in records}
    raise AssertionError(f"{where}: the file holds no whole commit {low}..{high} (oids {sorted(kept)[:20]})")


# -- building the logs -----------------------------------------------------------------

def started_log(path: str, monkeypatch: pytest.MonkeyPatch, rng: random.Random, known: list[int]) -> tuple[FileStorage, FileLog]:
    """A FileStorage with a first commit, and the log that starts after it."""
    monkeypatch.setattr(durus.shelf, "RESERVE", SMALL_RESERVE)
    storage = FileStorage(path)
    first = commit_records(rng, known, 3000)
    storage.begin()
    for n, record in first.items():
        storage.store(int_to_oid(n), record)
    storage.end()
    return storage, FileLog(path, {int_to_oid(n): record for n, record in first.items()})


def synced_commits_log(path: str, monkeypatch: pytest.MonkeyPatch, seed: int, count: int = 5) -> FileLog:
    """``count`` commits of about 20 kB, each synced."""
    rng = random.Random(seed)
    known: list[int] = []
    storage, log = started_log(path, monkeypatch, rng, known)
    with log.recording(monkeypatch):
        for _ in range(count):
            log.commit(storage, commit_records(rng, known, 20_000))
    storage.close()
    return log


def group_commits_log(path: str, monkeypatch: pytest.MonkeyPatch, seed: int) -> FileLog:
    """As a server does it: several commits with sync=False, then one sync."""
    rng = random.Random(seed)
    known: list[int] = []
    storage, log = started_log(path, monkeypatch, rng, known)
    with log.recording(monkeypatch):
        for group in (3, 1, 2):
            for _ in range(group):
                log.commit(storage, commit_records(rng, known, rng.choice([500, 9000, 20_000])), sync=False)
            storage.sync_to_disk()
            log.acknowledge()
    storage.close()
    return log


# -- a process killed at any byte ----------------------------------------------------------

def cut_points(data: bytes) -> set[int]:
    """Every 512 bytes, and around each entry boundary and the seal."""
    points = set(range(0, len(data), 512))
    transaction_end = len(data) - TRAILER_SIZE
    for boundary in entry_boundaries(data[:transaction_end]) + [len(data)]:
        points.update(boundary + delta for delta in (-8, -1, 0, 1, 9))
    return {point for point in points if 0 < point <= len(data)}


def check_killed_at_every_cut(log: FileLog, opener: Opener) -> None:
    writes = set(data_writes(log))
    assert len(writes) == sum(1 for op in log.ops if op[0] == "commit")
    for index, op in enumerate(log.ops):
        if op[0] != "write":
            continue
        data = op[2]
        points = cut_points(data) if index in writes else {1, len(data) // 2, len(data) - 1, len(data)}
        for cut in sorted(points):
            image = log.image(index, cut)
            complete = sum(1 for i in writes if i < index) + (index in writes and cut == len(data))
            where = f"killed at byte {cut} of write {index} ({len(data)} bytes at {op[1]})"
            torn, records = opener.open(bytes(image))
            if index in writes and cut < len(data):
                # The transaction cut short went over the seal of the one
                # before: commits written since the last sync may go too.
                assert_state(log, records, log.acked(index), complete, where)
                if any(data[:cut]):
                    assert torn, f"{where}: opened without repair=True"
            else:
                # Killed between writes of transactions, or in a trailer's:
                # every commit whose write completed is there, sealed.
                assert records == log.states[complete], where
            if index in writes:
                # The same cut, with the rest of the file missing or zeroed
                # (trailers gone too): checked by content alone.
                position = op[1] + cut
                for variant in (image[:position], image[:position] + bytes(len(image) - position)):
                    _, records = opener.open(bytes(variant))
                    assert_state(log, records, log.acked(index), log.started(index + 1), where + ", rest gone")


def test_killed_writer_at_every_cut_of_synced_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = synced_commits_log(str(tmp_path / "data.durus"), monkeypatch, seed=1)
    assert any(op[0] == "allocate" for op in log.ops)  # the slots moved at least once
    check_killed_at_every_cut(log, Opener(tmp_path, monkeypatch))


def test_killed_writer_at_every_cut_of_group_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = group_commits_log(str(tmp_path / "data.durus"), monkeypatch, seed=2)
    check_killed_at_every_cut(log, Opener(tmp_path, monkeypatch))


# -- a power cut before an fdatasync returned --------------------------------------------

def power_cut_image(log: FileLog, count: int, rng: random.Random) -> bytes:
    """The file after the first ``count`` ops, had the power gone then: every
    512-byte piece written since the last completed sync reads as written,
    as before, or as zeros; the file has its old size or its new one.
    """
    last_sync = max((i for i, op in enumerate(log.ops[:count]) if op[0] == "sync"), default=-1)
    before = log.image(last_sync + 1)
    after = log.image(count)
    image = bytearray(after)
    for op in log.ops[last_sync + 1:count]:
        if op[0] != "write":
            continue
        position, data = op[1], op[2]
        piece = position
        while piece < position + len(data):
            following = min((piece // 512 + 1) * 512, position + len(data))
            choice = rng.random()
            if choice < 0.3:
                old = bytes(before[piece:following])
                image[piece:following] = old + bytes(following - piece - len(old))
            elif choice < 0.45:
                image[piece:following] = bytes(following - piece)
            piece = following
    if len(before) < len(image) and rng.random() < 0.3:
        del image[len(before):]
    return bytes(image)


@pytest.mark.parametrize("build", [synced_commits_log, group_commits_log])
def test_power_cut_at_any_moment(
    build: Callable[..., FileLog], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = build(str(tmp_path / "data.durus"), monkeypatch, seed=3)
    opener = Opener(tmp_path, monkeypatch)
    rng = random.Random(4)
    kept = set()
    for count in range(1, len(log.ops) + 1):
        acked, started = log.acked(count), log.started(count)
        for attempt in range(20):
            image = power_cut_image(log, count, rng)
            _, records = opener.open(image)
            where = f"power cut after op {count - 1}, image {attempt}"
            kept.add(assert_state(log, records, acked, started, where) - acked)
    assert {0, 1} <= kept  # some images kept only acknowledged commits, some kept more


# -- a damaged tail: an error unless repaired -------------------------------------------------

def test_unacknowledged_tail_is_an_error_naming_path_and_offset(tmp_path: Path) -> None:
    path = str(tmp_path / "data.durus")
    storage = FileStorage(path)
    rng = random.Random(5)
    known: list[int] = []
    storage.begin()
    for n, record in commit_records(rng, known, 20_000).items():
        storage.store(int_to_oid(n), record)
    storage.end()
    end = storage.shelf.end
    expected = dict(storage.gen_oid_record())
    image = bytearray(Path(path).read_bytes())
    storage.close()
    image[end:end + 5000] = rng.randbytes(5000)  # what a killed commit left
    Path(path).write_bytes(image)
    with pytest.raises(TornTransactionError) as raised:
        FileStorage(path)
    assert raised.value.path == path and raised.value.offset == end
    assert path in str(raised.value) and str(end) in str(raised.value)
    repaired = FileStorage(path, repair=True)
    assert dict(repaired.gen_oid_record()) == expected
    repaired.close()
    assert os.path.getsize(path) == end


def test_a_reader_beside_a_live_writer_sees_whole_commits(tmp_path: Path) -> None:
    """Unsynced commits, and one being written, are no damage to a
    read-only open while their writer holds the file's lock.
    """
    path = str(tmp_path / "data.durus")
    writer = FileStorage(path)
    writer.begin()
    writer.store(int_to_oid(0), item_record(0, b"synced"))
    writer.end()
    writer.begin()
    writer.store(int_to_oid(0), item_record(0, b"not synced yet"))
    writer.end(sync=False)
    reader = FileStorage(path, readonly=True)
    assert reader.load(int_to_oid(0)) == item_record(0, b"not synced yet")  # sealed, so whole
    reader.close()
    # A commit being written right now: its first bytes, over that seal.
    end = writer.shelf.end
    os.pwrite(writer.shelf.fd, b"\0\0\0\0\0\0\x10\0partial", end)
    reader = FileStorage(path, readonly=True)
    assert reader.load(int_to_oid(0)) == item_record(0, b"synced")
    reader.close()
    writer.close()  # makes the commits durable, and drops what follows them
    reader = FileStorage(path, readonly=True)
    assert reader.load(int_to_oid(0)) == item_record(0, b"not synced yet")
    reader.close()


# -- real processes killed with SIGKILL ----------------------------------------------------------

WRITER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from durus.file_storage import FileStorage
from tests.test_crash_safety import killed_writer_commit
storage = FileStorage(sys.argv[2])
k = int(sys.argv[3])
while True:
    k += 1
    storage.begin()
    for oid, record in killed_writer_commit(k).items():
        storage.store(oid, record)
    storage.end()
    print(k, flush=True)
"""

SLOTS = 8


def killed_writer_commit(k: int) -> Records:
    """Commit ``k`` of the killed writer: the root names k, and two of the
    slots get about 10 kB each for k (commit 1 writes every slot).
    """
    rng = random.Random(k)
    numbers = range(1, SLOTS + 1) if k == 1 else {k % SLOTS + 1, (k + 3) % SLOTS + 1}
    records = {int_to_oid(n): item_record(n, b"%d:" % k + rng.randbytes(10_000)) for n in numbers}
    records[int_to_oid(0)] = item_record(0, b"%d" % k, range(1, SLOTS + 1))
    return records


class KilledWriterModel:
    """The records after each commit of the killed writer, built forward."""

    def __init__(self) -> None:
        self.k = 0
        self.state: Records = {}

    def after(self, k: int) -> Records:
        assert k >= self.k
        for j in range(self.k + 1, k + 1):
            self.state.update(killed_writer_commit(j))
        self.k = k
        return self.state


def read_after_crash(path: str) -> Records:
    try:
        storage = FileStorage(path)
    except TornTransactionError:
        storage = FileStorage(path, repair=True)
    try:
        return dict(storage.gen_oid_record())
    finally:
        storage.close()


@pytest.mark.slow
def test_kill_9_writer_keeps_acknowledged_commits_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "data.durus")
    repo = str(Path(__file__).resolve().parent.parent)
    rng = random.Random(6)
    model = KilledWriterModel()
    last = repaired = 0
    for run in range(24):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, repo, path, str(last)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = writer.stdout.readline()  # committing now
        assert first, writer.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
        acked = [int(line) for line in (first + out).split()]
        try:
            FileStorage(path, readonly=True).close()
        except TornTransactionError:
            repaired += 1
        state = read_after_crash(path)
        k = root_commit(state)
        assert acked[-1] <= k <= acked[-1] + 1, f"run {run}: commit {k} kept, {acked[-1]} acknowledged"
        assert state == model.after(k), f"run {run}: commit {k} is not whole"
        last = k
    print(f"{last} commits in 24 runs; {repaired} files needed repair=True")


def root_commit(state: Records) -> int:
    """The commit number the root's record names."""
    record = state[int_to_oid(0)]
    data = record[12:12 + int.from_bytes(record[8:12], "big")]
    state_pickle = zlib.decompress(data[len(pickle.dumps(Item, 2)):])

    class Loader(pickle.Unpickler):
        def persistent_load(self, pid: object) -> object:
            return pid

    return int(Loader(io.BytesIO(state_pickle)).load()["value"])


def server_payload(name: str, k: int) -> bytes:
    return random.Random(f"{name} {k}").randbytes(10_000)


def commit_through_server(address: tuple[str, int], name: str, acked: dict[str, int]) -> None:
    """Commit ``name``'s two items with the next number until the server dies;
    ``acked[name]`` is the last commit that returned.
    """
    from durus.client_storage import ClientStorage
    from durus.connection import Connection

    try:
        connection = Connection(ClientStorage(address=address))
        root = connection.get_root()
        first, second = root[name], root[name + " too"]
        k = first.value[0]
        while True:
            k += 1
            first.value = (k, server_payload(name, k))
            second.value = (k, server_payload(name + " too", k))
            connection.commit()
            acked[name] = k
    except Exception:
        return  # the server was killed


@pytest.mark.slow
def test_kill_9_storage_server_keeps_acknowledged_commits_whole(tmp_path: Path) -> None:
    """Clients commit about 20 kB at a time through a server that shares
    its disk syncs among them, until it is killed at a random moment.
    """
    from server_process import ServerProcess

    from durus.connection import Connection

    path = str(tmp_path / "data.durus")
    names = ["a", "b", "c"]
    setup = Connection(FileStorage(path))
    for name in names:
        setup.get_root()[name] = Item(name, (0, b""))
        setup.get_root()[name + " too"] = Item(name, (0, b""))
    setup.commit()
    setup.get_storage().close()
    rng = random.Random(7)
    acked = dict.fromkeys(names, 0)
    repaired = 0
    for run in range(20):
        server = ServerProcess(path).start()
        threads = [threading.Thread(target=commit_through_server, args=(server.address, name, acked))
                   for name in names]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.05, 0.4))
        server.kill()
        for thread in threads:
            thread.join(30)
        try:
            FileStorage(path, readonly=True).close()
        except TornTransactionError:
            repaired += 1
            FileStorage(path, repair=True).close()
        storage = FileStorage(path, readonly=True)
        root = Connection(storage).get_root()
        for name in names:
            first, second = root[name].value, root[name + " too"].value
            k = first[0]
            assert second[0] == k, f"run {run}: {name}'s commit {k} is half there"
            assert acked[name] <= k <= acked[name] + 1, f"run {run}: {name} kept {k}, {acked[name]} acknowledged"
            if k:
                assert first[1] == server_payload(name, k) and second[1] == server_payload(name + " too", k)
            acked[name] = k
        storage.close()
    print(f"{sum(acked.values())} commits in 20 runs; {repaired} files needed repair=True")
    assert min(acked.values()) > 20

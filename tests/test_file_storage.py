"""FileStorage: commits, loads, oids, locking, readonly, repair, packing, and
files shared with the real Durus 4.3 both ways.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path

import pytest

import durus.file_storage
import durus.shelf
from durus.connection import Connection
from durus.error import DurusError, DurusKeyError
from durus.file_storage import FileLockedError, FileStorage, ReadOnlyError, TempFileStorage, UnknownReferenceError
from durus.record import int_to_oid, pack_record, record_refs, split_oids
from durus.shelf import ShelfError, TornTransactionError
from durus.storage import MemoryStorage
from tests.durus43 import durus43_python
from tests.models import Item
from tests.raw_records import store_raw

# The real Durus 4.3 lives in its own virtual environment; a later fixture
# shared by all test modules will build it, until then this finds one.


def oid(n: int) -> bytes:
    return int_to_oid(n)


def record(n: int, data: bytes = b"x", refs: Iterable[int] = ()) -> bytes:
    return pack_record(oid(n), data, b"".join(oid(r) for r in sorted(refs)))


def commit(storage: FileStorage, records: dict[int, tuple[bytes, Iterable[int]]]) -> None:
    storage.begin()
    for n, (data, refs) in records.items():
        storage.store(oid(n), record(n, data, refs))
    storage.end()


def all_records(storage: FileStorage) -> dict[bytes, bytes]:
    return dict(storage.gen_oid_record())


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "data.durus")


def run_durus43(tmp_path: Path, code: str, *args: str) -> str:
    """Run ``code`` in the real Durus 4.3 (outside this repo, so its ``durus``
    is the one imported); its stdout.
    """
    result = subprocess.run(
        [str(durus43_python()), "-I", "-c", code, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    if result.returncode:
        raise AssertionError(f"Durus 4.3 script failed:\n{result.stderr}")
    return result.stdout


def run_ours(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


# -- commits, loads and oids ------------------------------------------------

def test_commit_load_and_reopen(path: str) -> None:
    storage = FileStorage(path)
    assert [storage.new_oid() for _ in range(3)] == [oid(0), oid(1), oid(2)]
    commit(storage, {0: (b"root", [1]), 1: (b"one", [])})
    commit(storage, {1: (b"one again", [2]), 2: (b"two", [])})
    assert storage.load(oid(1)) == record(1, b"one again", [2])
    assert list(storage.bulk_load([oid(2), oid(0)])) == [record(2, b"two"), record(0, b"root", [1])]
    storage.close()
    storage = FileStorage(path)
    assert all_records(storage) == {
        oid(0): record(0, b"root", [1]), oid(1): record(1, b"one again", [2]), oid(2): record(2, b"two")}
    storage.close()


def test_large_record_loads_whole(path: str) -> None:
    storage = FileStorage(path)
    big = os.urandom(100_000)
    commit(storage, {0: (big, [])})
    assert storage.load(oid(0)) == record(0, big)
    storage.close()


def test_unknown_oid_raises_durus_key_error(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    for missing in (oid(1), oid(2**40), b"short"):
        with pytest.raises(DurusKeyError):
            storage.load(missing)
    with pytest.raises(DurusKeyError):
        list(storage.bulk_load([oid(0), oid(5)]))
    storage.close()


def test_store_checks_its_arguments(path: str) -> None:
    storage = FileStorage(path)
    with pytest.raises(RuntimeError, match="begin"):
        storage.store(oid(0), record(0))
    storage.begin()
    with pytest.raises(ValueError, match="start with"):
        storage.store(oid(0), record(1))
    storage.end()
    with pytest.raises(RuntimeError, match="begin"):
        storage.end()
    storage.close()


def test_empty_commit_writes_nothing(path: str) -> None:
    storage = FileStorage(path)
    size = os.path.getsize(path)
    storage.begin()
    storage.end()
    assert os.path.getsize(path) == size
    storage.close()


def test_commit_is_two_writes_and_one_fdatasync(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sealed transaction in one write, its commit trailer in another
    (the first commit also reserves free space, with a trailer of its own).
    """
    storage = FileStorage(path)
    calls: list[str] = []
    count_syncs(monkeypatch, calls)
    commit(storage, {0: (b"root", [1]), 1: (b"a" * 5000, []), 2: (b"b", [])})
    assert calls == ["write", "sync", "write", "write", "sync"]
    calls.clear()
    commit(storage, {1: (b"a" * 6000, [])})
    assert calls == ["write", "write", "sync"]
    storage.close()


def test_new_oid_skips_stored_and_handed_out_oids(path: str) -> None:
    storage = FileStorage(path)
    handed = [storage.new_oid() for _ in range(3)]
    commit(storage, {0: (b"root", []), 5: (b"five", [])})
    storage.close()
    storage = FileStorage(path)
    assert storage.new_oid() == oid(1)
    assert [storage.new_oid() for _ in range(4)] == [oid(2), oid(3), oid(4), oid(6)]
    assert len(set(handed)) == 3
    storage.close()


def test_sync_returns_nothing_without_a_pack(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    assert storage.sync() == []
    storage.close()


def test_describe_record_names_the_offset_and_the_file(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    position = storage.shelf.get_position(oid(0))
    assert storage.describe_record(oid(0)) == f"offset {position} of {path}"
    assert Path(path).read_bytes()[position + 16:position + 16 + 8] == oid(0)  # the record's start
    assert storage.describe_record(oid(9)) == f"no record in {path}"
    storage.close()
    assert path in storage.describe_record(oid(0))


def test_commit_referring_to_oids_never_handed_out_is_refused(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"one", [])})
    handed = storage.new_oid()
    before = Path(path).read_bytes()
    with pytest.raises(UnknownReferenceError) as raised:
        commit(storage, {1: (b"changed", [0, int.from_bytes(handed, "big"), 2**31])})
    assert isinstance(raised.value, DurusError)
    assert raised.value.oid == oid(1) and raised.value.ref == oid(2**31)
    assert str(2**31) in str(raised.value) and path in str(raised.value)
    assert Path(path).read_bytes() == before  # nothing written
    assert storage.load(oid(1)) == record(1, b"one")
    # Stored before, stored by the same commit, or handed out: all fine.
    commit(storage, {1: (b"later", [0, int.from_bytes(handed, "big"), 5]), 5: (b"five", [1])})
    commit(storage, {int.from_bytes(handed, "big"): (b"handed", [5])})
    storage.close()
    storage = FileStorage(path)
    assert storage.load(oid(1)) == record(1, b"later", [0, int.from_bytes(handed, "big"), 5])
    storage.close()


@pytest.mark.parametrize("bad", [b"\0" * 8 + b"\0\0", b"\0" * 8 + b"\0\0\0\x09abc", b"\0" * 8 + b"\0\0\0\x01a" + b"\0" * 7])
def test_store_refuses_a_malformed_record(path: str, bad: bytes) -> None:
    storage = FileStorage(path)
    storage.begin()
    with pytest.raises(ValueError, match="not oid"):
        storage.store(oid(0), bad)
    storage.close()


def test_failed_write_leaves_no_partial_transaction(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    size = storage.shelf.end
    real_pwritev = os.pwritev

    def half_then_full_disk(fd: int, parts: list[bytes], position: int) -> int:
        data = b"".join(parts)
        real_pwritev(fd, [data[:len(data) // 2]], position)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durus.shelf.os, "pwritev", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        commit(storage, {0: (b"changed", []), 1: (b"new", [])})
    monkeypatch.undo()
    assert os.path.getsize(path) == size
    assert storage.load(oid(0)) == record(0, b"root")
    commit(storage, {1: (b"later", [])})
    storage.close()
    storage = FileStorage(path)
    assert all_records(storage) == {oid(0): record(0, b"root"), oid(1): record(1, b"later")}
    storage.close()


def test_gen_oid_record_all_or_reachable(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"one", [2]), 2: (b"two", [0]), 3: (b"lost", [1])})
    assert set(all_records(storage)) == {oid(0), oid(1), oid(2), oid(3)}
    reachable = dict(storage.gen_oid_record(oid(0), batch_size=1))
    assert reachable == {n: storage.load(n) for n in (oid(0), oid(1), oid(2))}
    assert set(dict(storage.gen_oid_record(oid(3)))) == {oid(0), oid(1), oid(2), oid(3)}
    storage.close()


def test_closed_storage_refuses_commits(path: str) -> None:
    storage = FileStorage(path)
    storage.close()
    storage.close()
    with pytest.raises(DurusError, match="closed"):
        storage.begin()


def test_forked_child_cannot_commit(path: str) -> None:
    storage = FileStorage(path)
    pid = os.fork()
    if pid == 0:
        try:
            storage.begin()
        except DurusError as error:
            os._exit(0 if "fork" in str(error) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    commit(storage, {0: (b"root", [])})
    storage.close()


# -- temporary files ---------------------------------------------------------

@pytest.mark.parametrize("make", [FileStorage, TempFileStorage])
def test_temporary_file_is_removed_on_close(make: type) -> None:
    storage = make()
    name = storage.get_filename()
    assert os.path.exists(name)
    commit(storage, {0: (b"root", [1]), 1: (b"one", []), 2: (b"lost", [])})
    storage.pack()
    assert storage.load(oid(1)) == record(1, b"one")
    storage.close()
    assert not os.path.exists(name)
    assert not os.path.exists(name + ".pack")


# -- locking and readonly ----------------------------------------------------

def test_second_writer_process_gets_a_clear_error(path: str, tmp_path: Path) -> None:
    storage = FileStorage(path)
    result = run_ours(tmp_path, (
        "import sys\n"
        "from durus.file_storage import FileStorage, FileLockedError\n"
        "try:\n"
        "    FileStorage(sys.argv[1])\n"
        "except FileLockedError as error:\n"
        "    print(isinstance(error, OSError), error)\n"
    ), path)
    storage.close()
    assert result.stdout.startswith("True ")
    message = result.stdout
    assert path in message and "another process" in message and "storage server" in message


def test_second_writer_in_the_same_process_is_refused_too(path: str) -> None:
    storage = FileStorage(path)
    with pytest.raises(FileLockedError):
        FileStorage(path)
    storage.close()
    FileStorage(path).close()


def test_readonly_reads_but_refuses_changes(path: str) -> None:
    writer = FileStorage(path)
    commit(writer, {0: (b"root", [])})
    reader = FileStorage(path, readonly=True)  # no lock: works beside the writer
    assert reader.load(oid(0)) == record(0, b"root")
    for refused in (reader.begin, reader.new_oid, reader.pack, reader.get_packer):
        with pytest.raises(ReadOnlyError, match="readonly=True"):
            refused()
    with pytest.raises(ReadOnlyError):
        reader.store(oid(0), record(0))
    with pytest.raises(ReadOnlyError):
        reader.end()
    reader.close()
    writer.close()


def test_readonly_needs_an_existing_shelf(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="readonly"):
        FileStorage(str(tmp_path / "missing.durus"), readonly=True)
    (tmp_path / "empty.durus").write_bytes(b"")
    with pytest.raises(DurusError, match="empty"):
        FileStorage(str(tmp_path / "empty.durus"), readonly=True)
    with pytest.raises(ValueError):
        FileStorage(str(tmp_path / "x.durus"), readonly=True, repair=True)


def test_not_a_shelf_file(tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(b"DFS20\0\0\0" + bytes(100))
    with pytest.raises(ShelfError, match="not a SHELF-1 file"):
        FileStorage(str(tmp_path / "other"))


# -- torn transactions and repair ---------------------------------------------

def two_commit_file(path: str) -> tuple[bytes, int]:
    """A file whose last commit changes oid 1 and adds oid 2; its bytes and
    the size before that commit.
    """
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"first", [])})
    size = storage.shelf.end
    commit(storage, {1: (b"second", [2]), 2: (b"new", [])})
    storage.close()
    with open(path, "rb") as file:
        return file.read(), size


def assert_repaired(path: str, size_before_last: int) -> None:
    with pytest.raises(TornTransactionError) as raised:
        FileStorage(path)
    assert "repair=True" in str(raised.value) and "--repair" in str(raised.value)
    storage = FileStorage(path, repair=True)
    assert all_records(storage) == {oid(0): record(0, b"root", [1]), oid(1): record(1, b"first")}
    storage.close()
    assert os.path.getsize(path) == size_before_last
    storage = FileStorage(path)
    assert storage.load(oid(1)) == record(1, b"first")
    storage.close()


def test_torn_last_transaction_at_every_cut(path: str, tmp_path: Path) -> None:
    data, size_before_last = two_commit_file(path)
    torn = str(tmp_path / "torn.durus")
    for cut in range(size_before_last + 1, len(data)):
        with open(torn, "wb") as file:
            file.write(data[:cut])
        assert_repaired(torn, size_before_last)


def test_torn_new_file_at_every_cut(tmp_path: Path) -> None:
    torn = str(tmp_path / "torn.durus")
    FileStorage(torn).close()
    empty = Path(torn).read_bytes()
    for cut in range(1, len(empty)):
        Path(torn).write_bytes(empty[:cut])
        with pytest.raises(TornTransactionError):
            FileStorage(torn)
        FileStorage(torn, repair=True).close()
        assert Path(torn).read_bytes() == empty


@pytest.mark.parametrize("damage", ["entries zeroed", "zeros after a prefix"])
def test_last_transaction_full_length_but_zeros(path: str, damage: str) -> None:
    data, size_before_last = two_commit_file(path)
    last = bytearray(data[size_before_last:])
    if damage == "entries zeroed":
        last[8:] = bytes(len(last) - 8)
    else:
        last[30:] = bytes(len(last) - 30)
    Path(path).write_bytes(data[:size_before_last] + bytes(last))
    assert_repaired(path, size_before_last)


def test_last_transaction_all_zeros_is_free_space(path: str) -> None:
    """Nothing of the last commit landed, not even its length: the file
    holds only the commits before it, followed by free space.
    """
    data, size_before_last = two_commit_file(path)
    Path(path).write_bytes(data[:size_before_last] + bytes(len(data) - size_before_last))
    storage = FileStorage(path)
    assert all_records(storage) == {oid(0): record(0, b"root", [1]), oid(1): record(1, b"first")}
    storage.close()
    assert os.path.getsize(path) == size_before_last  # given back on close


@pytest.mark.parametrize("extra", [1, 7])
def test_fewer_than_8_zeros_after_the_last_transaction_are_torn(path: str, extra: int) -> None:
    """What a crash leaves of the length of a transaction (its first bytes are zeros)."""
    data, _ = two_commit_file(path)
    Path(path).write_bytes(data + bytes(extra))
    with pytest.raises(TornTransactionError):
        FileStorage(path)
    FileStorage(path, repair=True).close()
    assert Path(path).read_bytes() == data


@pytest.mark.parametrize("extra", [8, 13, 4095])
def test_8_zeros_or_more_after_the_last_transaction_are_free_space(path: str, extra: int) -> None:
    data, _ = two_commit_file(path)
    Path(path).write_bytes(data + bytes(extra))
    storage = FileStorage(path)
    expected = all_records(storage)
    commit(storage, {5: (b"over the free space", [])})
    storage.close()
    assert os.path.getsize(path) == len(data) + 8 + 16 + len(record(5, b"over the free space"))
    storage = FileStorage(path)
    assert all_records(storage) == {**expected, oid(5): record(5, b"over the free space")}
    storage.close()
    Path(path).write_bytes(data + bytes(extra))
    FileStorage(path, repair=True).close()
    assert Path(path).read_bytes() == data


def test_commits_go_into_reserved_free_space_given_back_on_close(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    end, size = storage.shelf.end, os.path.getsize(path)
    assert size >= end + durus.shelf.RESERVE
    commit(storage, {1: (b"one", [])})
    assert os.path.getsize(path) == size > storage.shelf.end > end  # the file did not grow
    reader = FileStorage(path, readonly=True)  # the free space reads as such meanwhile
    assert reader.load(oid(1)) == record(1, b"one")
    reader.close()
    storage.close()
    assert os.path.getsize(path) == storage_end(path)
    assert Path(path).read_bytes()[-1:] != b"\0"


def test_opening_and_closing_without_commits_changes_nothing(path: str) -> None:
    data, _ = two_commit_file(path)
    FileStorage(path).close()
    assert Path(path).read_bytes() == data


def test_opening_for_writing_drops_the_free_space_a_crash_left(path: str, tmp_path: Path) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    end = storage.shelf.end
    crashed = Path(path).read_bytes()  # free space, trailers and seal included
    storage.close()
    Path(path).write_bytes(crashed)
    storage = FileStorage(path)
    assert os.path.getsize(path) == end
    assert all_records(storage) == {oid(0): record(0, b"root")}
    storage.close()


def storage_end(path: str) -> int:
    storage = FileStorage(path, readonly=True)
    try:
        return storage.shelf.end
    finally:
        storage.close()


@pytest.mark.parametrize("empty", [1, 512])
def test_empty_transactions_at_the_end_are_valid(path: str, empty: int) -> None:
    """Durus 4.3's packer may end a file with empty transactions (int8(0)):
    the file opens as it is, and a repair drops them, as they hold nothing.
    """
    data, _ = two_commit_file(path)
    Path(path).write_bytes(data + bytes(8 * empty))
    storage = FileStorage(path)
    expected = all_records(storage)
    commit(storage, {5: (b"after them", [])})
    storage.close()
    reopened = FileStorage(path)
    assert all_records(reopened) == {**expected, oid(5): record(5, b"after them")}
    reopened.close()
    Path(path).write_bytes(data + bytes(8 * empty))
    FileStorage(path, repair=True).close()
    assert Path(path).read_bytes() == data


def three_transactions_after_map(path: str) -> tuple[bytes, list[int]]:
    storage = FileStorage(path)
    starts = []
    for n in range(3):
        starts.append(storage.shelf.end)
        commit(storage, {n: (b"data %d" % n, [])})
    storage.close()
    return Path(path).read_bytes(), starts


@pytest.mark.parametrize("change", [+5, -5, +10**9])
def test_bad_length_mid_file_is_reported_not_repaired(path: str, change: int) -> None:
    data, starts = three_transactions_after_map(path)
    damaged = bytearray(data)
    length = int.from_bytes(data[starts[0]:starts[0] + 8], "big")
    damaged[starts[0]:starts[0] + 8] = (length + change).to_bytes(8, "big")
    Path(path).write_bytes(damaged)
    for repair in (False, True):
        with pytest.raises(ShelfError) as raised:
            FileStorage(path, repair=repair)
        assert not isinstance(raised.value, TornTransactionError)
        assert "byte offset" in str(raised.value) and raised.value.offset >= starts[0]
    assert Path(path).read_bytes() == bytes(damaged)


def test_entry_not_matching_its_record_mid_file_is_reported(path: str) -> None:
    data, starts = three_transactions_after_map(path)
    damaged = bytearray(data)
    damaged[starts[1] + 16 + 7] ^= 0xFF  # the record's own oid, second transaction
    Path(path).write_bytes(damaged)
    with pytest.raises(ShelfError, match="does not start with the entry's oid") as raised:
        FileStorage(path, repair=True)
    assert raised.value.offset == starts[1] + 8


def test_damaged_offset_map_header_is_reported(path: str) -> None:
    FileStorage(path).close()
    damaged = bytearray(Path(path).read_bytes())
    damaged[24 + 7] = 9  # W = 9
    Path(path).write_bytes(damaged)
    with pytest.raises(ShelfError, match="offset map"):
        FileStorage(path, repair=True)


# -- packing -------------------------------------------------------------------

def reachable_model(model: dict[int, tuple[bytes, list[int]]]) -> dict[bytes, bytes]:
    """oid -> record of what is reachable from the root in ``model``."""
    seen, todo = {0}, [0]
    while todo:
        n = todo.pop()
        for ref in model[n][1]:
            if ref not in seen and ref in model:
                seen.add(ref)
                todo.append(ref)
    return {oid(n): record(n, *model[n]) for n in seen}


def test_pack_keeps_exactly_the_reachable_records(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1, 3]), 1: (b"one", [2]), 2: (b"two", [1]),
                     3: (b"three", []), 4: (b"lost", [5]), 5: (b"lost too", [1])})
    commit(storage, {0: (b"root", [1]), 1: (b"one, later", [2])})
    size = storage.shelf.end
    storage.pack()
    expected = {oid(0): record(0, b"root", [1]), oid(1): record(1, b"one, later", [2]),
                oid(2): record(2, b"two", [1])}
    assert all_records(storage) == expected
    assert storage.shelf.end < size
    assert sorted(os.listdir(os.path.dirname(path))) == ["data.durus"]
    assert sorted(storage.sync()) == [oid(3), oid(4), oid(5)]
    assert storage.sync() == []
    for missing in (3, 4, 5):
        with pytest.raises(DurusKeyError):
            storage.load(oid(missing))
    storage.close()
    storage = FileStorage(path)
    assert all_records(storage) == expected
    # N = 4 (largest oid 2, plus 2): index 3 is the only hole.
    assert [storage.new_oid() for _ in range(3)] == [oid(3), oid(4), oid(5)]
    storage.close()


def test_freed_oids_are_not_reused_before_sync(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [2]), 1: (b"lost", []), 2: (b"two", []), 3: (b"lost", [])})
    storage.pack()
    before_sync = [storage.new_oid() for _ in range(3)]
    assert not {oid(1), oid(3)} & set(before_sync)
    assert sorted(storage.sync()) == [oid(1), oid(3)]
    storage.close()


def test_pack_of_a_new_file(path: str) -> None:
    storage = FileStorage(path)
    storage.pack()
    assert Path(path).read_bytes()[:storage.shelf.end] == durus.shelf.empty_shelf()
    assert storage.new_oid() == oid(0)
    storage.close()
    assert Path(path).read_bytes() == durus.shelf.empty_shelf()


@pytest.mark.parametrize("far", [2**31, 2**44, 2**64 - 1])
def test_pack_of_a_reference_to_a_far_oid_takes_little_memory(path: str, far: int) -> None:
    """A record referring to an oid that has no record (a dangling reference,
    written as older programs could) costs a pack what any reference does:
    memory and map words go by the objects, not by the oid's value.
    """
    memory = MemoryStorage()
    store_raw(memory, oid(1), Item, {"name": "far", "value": 1}, refs=oid(far))
    store_raw(memory, oid(0), Item, {"name": "root", "value": 0}, refs=oid(1))
    storage = FileStorage(path)
    storage.shelf.append([(oid(0), memory.load(oid(0))), (oid(1), memory.load(oid(1)))])
    for _ in range(2):  # and every later pack
        tracemalloc.start()
        try:
            storage.pack()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2_000_000, f"packing took {peak} bytes"
        assert all_records(storage) == {oid(0): memory.load(oid(0)), oid(1): memory.load(oid(1))}
        assert storage.shelf.map_size() == 3  # the largest oid with a record, 1, plus 2
    assert storage.new_oid() == oid(2)
    storage.close()


def test_pack_refuses_a_file_without_a_root(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {1: (b"orphan", [])})
    with pytest.raises(DurusError, match="no root"):
        storage.pack()
    assert storage.load(oid(1)) == record(1, b"orphan")
    storage.close()


def random_graph_commit(rng: random.Random, storage: FileStorage, model: dict) -> None:
    """Change a few objects: new ones, changed refs, references dropped."""
    changes = {}
    for _ in range(rng.randint(1, 4)):
        existing = sorted(model)
        choice = rng.random()
        if choice < 0.4:
            n = int.from_bytes(storage.new_oid(), "big")
            parent = rng.choice(existing)
            changes[n] = (b"new %d" % n, [rng.choice(existing)] if rng.random() < 0.5 else [])
            data, refs = changes.get(parent, model[parent])
            changes[parent] = (data + b"+", sorted(set(refs) | {n}))
        else:
            n = rng.choice(existing)
            data, refs = changes.get(n, model[n])
            refs = [r for r in refs if rng.random() < 0.7]
            if rng.random() < 0.6:
                refs = sorted(set(refs) | {rng.choice(existing)})
            changes[n] = (data + b".", refs)
    commit(storage, changes)
    model.update(changes)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_pack_interleaved_with_commits_loses_nothing(
    path: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(durus.file_storage, "_PACK_STEP_RECORDS", 1)
    storage = FileStorage(path)
    model = {0: (b"root", [])}
    commit(storage, {0: model[0]})
    storage.new_oid()
    for _ in range(40):
        random_graph_commit(rng, storage, model)
    packer = storage.get_packer()
    next(packer)
    assert list(storage.get_packer()) == []  # one pack at a time
    steps = 0
    for _ in packer:
        steps += 1
        if rng.random() < 0.7:
            random_graph_commit(rng, storage, model)
    assert steps > 5
    expected = reachable_model(model)
    assert dict(storage.gen_oid_record(oid(0))) == expected
    assert set(all_records(storage)) >= set(expected)
    freed = set(storage.sync())
    assert not freed & set(expected)
    storage.close()
    storage = FileStorage(path)
    assert dict(storage.gen_oid_record(oid(0))) == expected
    # Records that commits cut off while the pack ran go in the next pack.
    storage.pack()
    assert all_records(storage) == expected
    storage.close()


def test_packer_skipped_during_a_commit(path: str) -> None:
    storage = FileStorage(path)
    storage.begin()
    assert list(storage.get_packer()) == []
    storage.end()
    storage.close()


def test_failed_pack_removes_its_file_and_keeps_the_data(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"one", []), 2: (b"lost", [])})
    data = Path(path).read_bytes()

    def fail(*args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durus.file_storage.os, "replace", fail)
    with pytest.raises(OSError, match="Input/output"):
        storage.pack()
    monkeypatch.undo()
    assert not os.path.exists(path + ".pack")
    assert Path(path).read_bytes() == data
    commit(storage, {1: (b"one again", [])})
    storage.pack()
    assert all_records(storage) == {oid(0): record(0, b"root", [1]), oid(1): record(1, b"one again")}
    storage.close()


def test_abandoned_packer_cleans_up(path: str) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"one", [])})
    packer = storage.get_packer()
    next(packer)
    assert os.path.exists(path + ".pack")
    packer.close()
    assert not os.path.exists(path + ".pack")
    storage.pack()
    assert storage.load(oid(1)) == record(1, b"one")
    storage.close()


def test_lock_is_held_on_the_packed_file(path: str, tmp_path: Path) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", []), 1: (b"lost", [])})
    storage.pack()
    result = run_ours(tmp_path, (
        "import sys\n"
        "from durus.file_storage import FileStorage, FileLockedError\n"
        "try:\n"
        "    FileStorage(sys.argv[1])\n"
        "except FileLockedError:\n"
        "    print('locked')\n"
    ), path)
    assert result.stdout.strip() == "locked"
    commit(storage, {0: (b"root after pack", [])})
    storage.close()
    storage = FileStorage(path)
    assert storage.load(oid(0)) == record(0, b"root after pack")
    storage.close()


@pytest.mark.slow
def test_opening_100k_objects_is_fast(path: str) -> None:
    storage = FileStorage(path)
    for start in reversed(range(0, 100_000, 5000)):  # each refers to one stored already
        commit(storage, {n: (b"d" * 60, [n + 1] if n < 99_999 else []) for n in range(start, start + 5000)})
    storage.close()
    began = time.perf_counter()
    storage = FileStorage(path)
    unpacked = time.perf_counter() - began
    storage.pack()
    storage.close()
    began = time.perf_counter()
    storage = FileStorage(path)
    packed = time.perf_counter() - began
    assert len(all_records(storage)) == 100_000
    storage.close()
    assert unpacked < 1.0 and packed < 0.2


# -- files shared with Durus 4.3 ------------------------------------------------

DURUS43_WRITE = """
import sys
from durus.file_storage import FileStorage
from durus.connection import Connection
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
connection = Connection(FileStorage(sys.argv[1]))
root = connection.get_root()
for i in range(30):
    root[i] = PersistentDict(n=i, items=PersistentList(range(i)))
    if i % 7 == 0:
        connection.commit()
connection.commit()
for i in range(0, 30, 3):
    del root[i]
connection.commit()
"""

DURUS43_DUMP = """
import sys, json
from durus.file_storage import FileStorage
storage = FileStorage(sys.argv[1])
if sys.argv[2] == 'pack':
    storage.pack()
    storage.sync()
records = {oid.hex(): rec.hex() for oid, rec in storage.gen_oid_record()}
oids = [storage.new_oid().hex() for _ in range(5)]
print(json.dumps({'records': records, 'new_oids': oids}))
"""


def durus43_view(tmp_path: Path, path: str, pack: bool = False) -> tuple[dict[bytes, bytes], list[bytes]]:
    out = json.loads(run_durus43(tmp_path, DURUS43_DUMP, path, "pack" if pack else "read"))
    records = {bytes.fromhex(k): bytes.fromhex(v) for k, v in out["records"].items()}
    return records, [bytes.fromhex(o) for o in out["new_oids"]]


def our_view(path: str, pack: bool = False) -> tuple[dict[bytes, bytes], list[bytes]]:
    storage = FileStorage(path)
    if pack:
        storage.pack()
        storage.sync()
    records = all_records(storage)
    storage.close()
    storage = FileStorage(path)
    oids = [storage.new_oid() for _ in range(5)]
    storage.close()
    return records, oids


@pytest.mark.compat
def test_new_file_matches_durus43_bytes(tmp_path: Path) -> None:
    run_durus43(tmp_path, "import sys\nfrom durus.file_storage import FileStorage\nFileStorage(sys.argv[1]).close()",
                str(tmp_path / "theirs.durus"))
    FileStorage(str(tmp_path / "ours.durus")).close()
    assert (tmp_path / "ours.durus").read_bytes() == (tmp_path / "theirs.durus").read_bytes()


@pytest.mark.compat
def test_durus43_files_open_here_unpacked_and_packed(tmp_path: Path) -> None:
    path = str(tmp_path / "theirs.durus")
    run_durus43(tmp_path, DURUS43_WRITE, path)
    theirs, _ = durus43_view(tmp_path, path)
    ours, _ = our_view(path)
    assert ours == theirs and len(ours) == 31 + 30  # root, 30 dicts, 30 lists
    theirs_packed, their_oids = durus43_view(tmp_path, path, pack=True)
    assert len(theirs_packed) == 1 + 20 + 20
    ours_packed, our_oids = our_view(path)
    assert ours_packed == theirs_packed
    storage = FileStorage(path)
    assert storage.shelf.map_size() > 0  # really their packed layout, read through the map
    storage.close()
    # Durus allocated its 5 oids in a process that then exited: the same walk here.
    assert our_oids == their_oids


DURUS43_PACK_DURING_COMMITS = """
import sys
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict
storage = FileStorage(sys.argv[1])
connection = Connection(storage)
root = connection.get_root()
root["x"] = PersistentDict(y=PersistentDict())
root["junk"] = PersistentDict()
connection.commit()
del root["junk"]
connection.commit()
packer = storage.get_packer()
next(packer)
root["x"]["a"] = 1
root["x"]["y"]["b"] = 2
connection.commit()
for _ in packer:
    pass
storage.close()
"""


@pytest.mark.compat
def test_durus43_pack_during_commits_opens_here(tmp_path: Path) -> None:
    """Durus 4.3 copies the commits made during a pack one oid at a time and
    writes an empty transaction for an oid it already copied, often last.
    """
    ending_empty = 0
    for attempt in range(12):  # the copying order follows a set of oids, so it varies by process
        path = str(tmp_path / f"theirs{attempt}.durus")
        run_durus43(tmp_path, DURUS43_PACK_DURING_COMMITS, path)
        ending_empty += Path(path).read_bytes().endswith(bytes(8))
        storage = FileStorage(path, readonly=True)
        root = Connection(storage).get_root()
        assert sorted(root) == ["x"] and root["x"]["a"] == 1 and root["x"]["y"]["b"] == 2
        storage.close()
    assert ending_empty  # the case in hand really was met


@pytest.mark.compat
def test_a_program_that_never_closes_its_storage_leaves_a_file_durus43_opens(tmp_path: Path) -> None:
    path = str(tmp_path / "unclosed.durus")
    result = run_ours(tmp_path, (
        "import sys\n"
        "from durus.connection import Connection\n"
        "from durus.file_storage import FileStorage\n"
        "connection = Connection(FileStorage(sys.argv[1]))\n"
        "connection.get_root()['answer'] = 42\n"
        "connection.commit()\n"
        "assert connection.get_storage().shelf.size > connection.get_storage().shelf.end  # free space\n"
    ), path)
    assert result.returncode == 0, result.stderr
    out = run_durus43(tmp_path, (
        "import sys\n"
        "from durus.connection import Connection\n"
        "from durus.file_storage import FileStorage\n"
        "print(Connection(FileStorage(sys.argv[1], readonly=True)).get_root()['answer'])\n"
    ), path)
    assert out.strip() == "42"


@pytest.mark.compat
def test_our_files_open_in_durus43_unpacked_and_packed(tmp_path: Path, path: str) -> None:
    storage = FileStorage(path)
    rng = random.Random(7)
    model = {0: (b"root", [])}
    commit(storage, {0: model[0]})
    storage.new_oid()
    for _ in range(30):
        random_graph_commit(rng, storage, model)
    storage.close()
    ours, our_oids = our_view(path)
    theirs, their_oids = durus43_view(tmp_path, path)
    assert theirs == ours and their_oids == our_oids
    ours_packed, our_oids = our_view(path, pack=True)
    assert set(ours_packed) == set(reachable_model(model))
    theirs_packed, their_oids = durus43_view(tmp_path, path)
    assert theirs_packed == ours_packed and their_oids == our_oids
    # Durus appends to our packed file; we read what it wrote.
    run_durus43(tmp_path, (
        "import sys\nfrom durus.file_storage import FileStorage\n"
        "from durus.serialize import pack_record\n"
        "s = FileStorage(sys.argv[1]); o = s.new_oid(); s.begin()\n"
        "s.store(o, pack_record(o, b'from durus', b'')); s.end(); print(o.hex())\n"
    ), path)
    storage = FileStorage(path)
    assert storage.load(our_oids[0]) == pack_record(our_oids[0], b"from durus", b"")
    storage.close()


@pytest.mark.compat
def test_refs_of_durus43_records_are_what_pack_follows(tmp_path: Path) -> None:
    path = str(tmp_path / "theirs.durus")
    run_durus43(tmp_path, DURUS43_WRITE, path)
    storage = FileStorage(path)
    reachable = dict(storage.gen_oid_record(oid(0)))
    for rec in reachable.values():
        for ref in split_oids(record_refs(rec)):
            assert ref in reachable
    storage.pack()
    assert set(all_records(storage)) == set(reachable)
    storage.close()


# -- deferred syncs (group commit) ----------------------------------------------

def count_syncs(monkeypatch: pytest.MonkeyPatch, calls: list[str], before=None) -> None:
    """Record "write" and "sync" calls of the shelf in ``calls``; ``before``,
    if given, runs inside each fdatasync before the real one.
    """
    real_pwrite, real_pwritev, real_sync = os.pwrite, os.pwritev, durus.shelf._fdatasync

    def sync(fd: int) -> None:
        calls.append("sync")
        if before is not None:
            before(fd)
        real_sync(fd)

    monkeypatch.setattr(durus.shelf.os, "pwrite", lambda *a: calls.append("write") or real_pwrite(*a))
    monkeypatch.setattr(durus.shelf.os, "pwritev", lambda *a: calls.append("write") or real_pwritev(*a))
    monkeypatch.setattr(durus.shelf, "_fdatasync", sync)


def deferred_commit(storage: FileStorage, records: dict[int, tuple[bytes, Iterable[int]]]) -> None:
    storage.begin()
    for n, (data, refs) in records.items():
        storage.store(oid(n), record(n, data, refs))
    storage.end(sync=False)


def test_deferred_commits_share_one_sync(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each deferred commit is one write (sealed); one sync makes them all
    durable: a commit trailer, then one fdatasync.
    """
    storage = FileStorage(path)
    commit(storage, {9: (b"first, which reserves free space", [])})
    calls: list[str] = []
    count_syncs(monkeypatch, calls)
    for n in range(3):
        deferred_commit(storage, {n: (b"v%d" % n, [])})
    assert calls == ["write"] * 3
    assert storage.load(oid(2)) == record(2, b"v2")  # readable before the sync
    storage.sync_to_disk()
    synced = ["write"] * 3 + ["write", "sync"]
    assert calls == synced
    storage.sync_to_disk()  # nothing new to sync
    assert calls == synced
    deferred_commit(storage, {3: (b"v3", [])})
    commit(storage, {4: (b"v4", [])})  # a plain end() syncs what came before too
    assert calls == synced + ["write", "write", "write", "sync"]
    storage.sync_to_disk()
    assert calls.count("sync") == 2
    storage.close()


def test_close_syncs_deferred_commits(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing makes them durable under a trailer first, then gives back the
    free space (trailers included) and syncs that.
    """
    storage = FileStorage(path)
    commit(storage, {9: (b"first, which reserves free space", [])})
    calls: list[str] = []
    count_syncs(monkeypatch, calls)
    deferred_commit(storage, {0: (b"root", [])})
    storage.close()
    assert calls == ["write", "write", "sync", "sync"]
    storage.sync_to_disk()  # closed: nothing left to do
    assert calls == ["write", "write", "sync", "sync"]
    monkeypatch.undo()
    storage = FileStorage(path)
    assert storage.load(oid(0)) == record(0, b"root")
    storage.close()


def test_failed_sync_refuses_later_commits(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [])})
    deferred_commit(storage, {1: (b"one", [])})

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durus.shelf, "_fdatasync", fail)
    with pytest.raises(OSError, match="Input/output"):
        storage.sync_to_disk()
    monkeypatch.undo()
    # The kernel may have dropped the data: a retry must not report success.
    with pytest.raises(DurusError, match="disk sync .* failed"):
        storage.sync_to_disk()
    with pytest.raises(DurusError, match="disk sync .* failed"):
        storage.begin()
    storage.close()
    storage = FileStorage(path)
    commit(storage, {2: (b"two", [])})
    storage.close()


def test_crash_after_deferred_commits_repairs_to_the_last_whole_one(path: str, tmp_path: Path) -> None:
    """A closed file cut inside its last commits (no trailers left), padded
    or not with zeros, opens with repair=True and keeps every whole commit
    of that prefix.  (These records' data are not pickles, so zeros that
    replace only the end of a record's data leave nothing to see: a torn
    commit may then be kept too.  tests/test_crash_safety.py covers what a
    crash leaves of an open file, trailers included.)
    """
    storage = FileStorage(path)
    commit(storage, {0: (b"root", [1]), 1: (b"synced", [])})
    ends = [os.path.getsize(path)]
    for n in range(2, 5):
        deferred_commit(storage, {1: (b"v%d" % n, [n]), n: (b"new %d" % n, [])})
        ends.append(os.path.getsize(path))
    storage.close()
    data = Path(path).read_bytes()
    torn = str(tmp_path / "torn.durus")
    for cut in range(ends[0], len(data)):
        whole = sum(1 for end in ends[1:] if end <= cut)
        expected = {oid(0): record(0, b"root", [1]), oid(1): record(1, b"synced")}
        for n in range(2, 2 + whole):
            expected[oid(1)] = record(1, b"v%d" % n, [n])
            expected[oid(n)] = record(n, b"new %d" % n)
        for padding in {0, len(data) - cut}:
            Path(torn).write_bytes(data[:cut] + bytes(padding))
            if cut in ends and not padding:
                FileStorage(torn).close()
            elif not padding:
                with pytest.raises(TornTransactionError):
                    FileStorage(torn)
            repaired = FileStorage(torn, repair=True)
            if not padding:
                assert all_records(repaired) == expected, cut
            repaired.close()
            kept = os.path.getsize(torn)
            assert kept in ends and kept >= ends[whole], (cut, padding)


def test_sync_to_disk_from_another_thread_during_commits_and_packs(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a server: one thread commits with sync=False and packs, another
    syncs.  Each sync must reach an open descriptor of the current file, and
    a pack must not swap files while a sync is running.
    """
    monkeypatch.setattr(durus.file_storage, "_PACK_STEP_RECORDS", 2)
    storage = FileStorage(path)
    model = {0: (b"root", [])}
    commit(storage, {0: model[0]})
    problems: list[str] = []

    def check(fd: int) -> None:
        if threading.current_thread() is not thread:
            return  # the packer syncing its new file
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            problems.append("synced a file that is no longer the storage's")
        time.sleep(0.002)  # a slow disk: widen the window for a swap-in
        syncs.append(fd)

    calls: list[str] = []
    syncs: list[int] = []
    count_syncs(monkeypatch, calls, before=check)
    stop = False
    errors: list[BaseException] = []

    def syncer() -> None:
        while not stop:
            try:
                storage.sync_to_disk()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
                return
            time.sleep(0.0005)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        rng = random.Random(7)
        for round_ in range(15):
            packer = storage.get_packer()
            for _ in packer:
                # A new object, linked from a live one that drops some links.
                live = [int.from_bytes(o, "big") for o in reachable_model(model)]
                n = int.from_bytes(storage.new_oid(), "big")
                parent = rng.choice(live)
                kept = [r for r in model[parent][1] if rng.random() < 0.6]
                changes = {n: (b"round %d" % round_, [rng.choice(live)]), parent: (b"p", kept + [n])}
                deferred_commit(storage, changes)
                model.update(changes)
            storage.sync()
    finally:
        stop = True
        thread.join()
    assert not errors and not problems
    assert len(syncs) > 15  # the syncer really ran alongside
    expected = reachable_model(model)
    assert dict(storage.gen_oid_record(oid(0))) == expected
    storage.close()
    storage = FileStorage(path)
    assert dict(storage.gen_oid_record(oid(0))) == expected
    storage.close()


def test_swap_in_waits_for_a_running_sync_and_syncs_the_rename_first(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(path)
    commit(storage, {0: (b"root", []), 1: (b"lost", [])})
    deferred_commit(storage, {0: (b"root 2", [])})
    events: list[str] = []
    syncing = threading.Event()
    real_sync, real_sync_directory = durus.shelf._fdatasync, durus.file_storage.sync_directory

    def slow_sync(fd: int) -> None:
        syncing.set()
        time.sleep(0.2)
        real_sync(fd)
        events.append("sync done")

    def sync_directory(name: str) -> None:
        events.append("rename synced")
        real_sync_directory(name)

    monkeypatch.setattr(durus.shelf, "_fdatasync", slow_sync)
    monkeypatch.setattr(durus.file_storage, "sync_directory", sync_directory)
    thread = threading.Thread(target=storage.sync_to_disk)
    thread.start()
    syncing.wait(5)
    storage.pack()  # its swap-in must wait for the sync underway
    thread.join()
    assert events[0] == "sync done" and "rename synced" in events
    deferred_commit(storage, {0: (b"root 3", [])})
    events.clear()
    monkeypatch.setattr(durus.shelf, "_fdatasync", lambda fd: events.append("sync done") or real_sync(fd))
    storage.sync_to_disk()
    assert events == ["sync done"]
    storage.close()
    storage = FileStorage(path)
    assert all_records(storage) == {oid(0): record(0, b"root 3")}
    storage.close()

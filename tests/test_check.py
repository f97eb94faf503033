"""``durus --check`` and durus.check.check_file: every transaction, record and
reference of a SHELF-1 file, with each problem's oid and byte offset.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from durus import check
from durus.btree import BTree
from durus.check import DAMAGED, DANGLING, FRAMING, TORN, check_file
from durus.connection import Connection
from durus.error import DamagedRecordError
from durus.file_storage import FileStorage
from durus.persistent_set import PersistentSet
from durus.record import ROOT_OID, int8, oid_to_int, pack_record, unpack_record
from durus.serialize import class_pickle
from durus.shelf import encode_transaction
from durus.storage import MemoryStorage
from tests.models import Item

ITEM_STATE = 28 + len(class_pickle(Item))  # where an Item's stored state starts in its entry


class Plain:
    """A non-persistent object inside a state (imported by no checker)."""

    def __init__(self, n: int) -> None:
        self.n = n


def build(path: Path, items: int = 30) -> dict[str, bytes]:
    """A file of several transactions, a pack, and garbage; oids by name."""
    connection = Connection(FileStorage(str(path)))
    root = connection.get_root()
    root["tree"] = tree = BTree()
    for n in range(items):
        tree[n] = Item(str(n), {"n": n, "when": datetime.date(2024, 1, 1 + n % 28), "plain": Plain(n)})
    root["set"] = PersistentSet({1, "two", (3,)})
    root["big"] = Item("big", bytes(range(256)) * 20)  # deflated, not a stored block
    connection.commit()
    tree[items] = Item("late", frozenset({1, 2}))
    root["self"] = item = Item("refers to itself")
    item.value = item
    connection.commit()
    connection.pack()
    root["garbage"] = Item("soon unreachable")
    connection.commit()
    oids = {"root": ROOT_OID, "big": root["big"]._p_oid, "garbage": root["garbage"]._p_oid,
            "first": tree[0]._p_oid, "tree": tree._p_oid}
    del root["garbage"]
    root["last"] = Item("last")
    connection.commit()
    oids["last"] = root["last"]._p_oid
    connection.get_storage().close()
    return oids


def entry_offset(path: Path, oid: bytes) -> int:
    storage = FileStorage(str(path), readonly=True)
    try:
        return storage.shelf.get_position(oid)
    finally:
        storage.close()


def transaction_starts(path: Path) -> list[int]:
    """Where the transactions after the offset map start (SPEC section 3)."""
    data = path.read_bytes()
    map_start = 16 + int.from_bytes(data[8:16], "big")
    position = map_start + 8 + int.from_bytes(data[map_start:map_start + 8], "big")
    starts = []
    while position < len(data):
        starts.append(position)
        position += 8 + int.from_bytes(data[position:position + 8], "big")
    return starts


def patch(path: Path, offset: int, change) -> None:
    """Replace the byte at ``offset`` with ``change(byte)``."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([change(byte)]))


def only_problem(path: Path, kind: str):
    report = check_file(path)
    assert [problem.kind for problem in report.problems] == [kind], report.format()
    return report.problems[0]


def test_a_clean_file_passes(tmp_path):
    path = tmp_path / "clean.durus"
    build(path)
    report = check_file(path)
    assert report.clean, report.format()
    assert report.transactions == 3  # the packed initial one and the two commits after
    assert report.objects == report.records - 2  # the root written again by both commits
    assert report.unreachable == 1
    assert report.references > 30
    assert report.format().startswith(f"{path}: clean: 3 transactions")


def test_a_new_empty_file_is_clean(tmp_path):
    path = tmp_path / "new.durus"
    FileStorage(str(path)).close()
    report = check_file(path)
    assert report.clean and (report.objects, report.transactions) == (0, 1)


@pytest.mark.parametrize("name", ["first", "big"], ids=["stored block", "deflated"])
def test_a_flipped_byte_in_a_compressed_state(tmp_path, name):
    path = tmp_path / "flipped.durus"
    oids = build(path)
    offset = entry_offset(path, oids[name])
    patch(path, offset + ITEM_STATE + 20, lambda byte: byte ^ 0x04)
    problem = only_problem(path, DAMAGED)
    assert (problem.oid, problem.offset) == (oids[name], offset)
    assert "its state fails to decompress (zlib checksum or stream error" in problem.message
    assert str(problem).startswith(f"damaged at byte {offset}, oid {oid_to_int(oids[name])}: its state fails")
    # The reader says so too, rather than pickle's "invalid load key".
    connection = Connection(FileStorage(str(path), readonly=True))
    with pytest.raises(DamagedRecordError, match="fails to decompress"):
        connection.get(oids[name]).name
    connection.get_storage().close()


def test_a_bad_class_pickle(tmp_path):
    path = tmp_path / "class.durus"
    oids = build(path)
    offset = entry_offset(path, oids["first"])
    patch(path, offset + 28 + 2, lambda byte: 0xFF)  # the GLOBAL opcode
    problem = only_problem(path, DAMAGED)
    assert (problem.oid, problem.offset) == (oids["first"], offset)
    assert problem.message.startswith("its class pickle fails to unpickle (UnpicklingError")


def test_damage_in_the_last_record_of_the_file_reads_as_a_tear(tmp_path):
    """FileStorage takes a last record that does not read for what a crash
    leaves (zeros where its end should be), so the check says torn, naming
    the record, and that it may be damage.
    """
    path = tmp_path / "last.durus"
    oids = build(path)
    offset = entry_offset(path, oids["last"])
    patch(path, offset + 28 + 2, lambda byte: 0xFF)
    problem = only_problem(path, TORN)
    assert problem.offset == transaction_starts(path)[-1]
    assert f"its record of oid {oid_to_int(oids['last'])} at byte {offset}: its class pickle fails" in problem.message
    assert "a crash during a commit, or damage" in problem.message


def _store(path: Path, records: dict[bytes, bytes]) -> None:
    """Append a transaction of ``records`` as a FileStorage would, but with
    no questions asked (a FileStorage refuses a dangling reference).
    """
    if not path.exists():
        FileStorage(str(path)).close()
    transaction, _ = encode_transaction(records.items(), path.stat().st_size)
    with open(path, "ab") as file:
        file.write(transaction)


def _records_of(graph: dict) -> dict[bytes, bytes]:
    """The records of a graph committed as the root of a MemoryStorage."""
    connection = Connection(MemoryStorage())
    connection.get_root().update(graph)
    connection.commit()
    return dict(connection.get_storage().records)


def test_a_dangling_reference(tmp_path):
    path = tmp_path / "dangling.durus"
    records = _records_of({"a": Item("a"), "b": Item("b")})
    missing = sorted(records)[-1]
    del records[missing]
    _store(path, records)
    problem = only_problem(path, DANGLING)
    assert (problem.oid, problem.offset) == (ROOT_OID, entry_offset(path, ROOT_OID))
    assert problem.message == f"refers to oid {oid_to_int(missing)}, which has no record"
    assert check_file(path).unreachable == 0


def test_refs_that_differ_from_the_state_or_are_unsorted(tmp_path):
    path = tmp_path / "refs.durus"
    records = _records_of({"a": Item("a"), "b": Item("b")})
    _, data, refs = unpack_record(records[ROOT_OID])
    records[ROOT_OID] = pack_record(ROOT_OID, data, refs[8:] + refs[:8])
    _store(path, records)
    problem = only_problem(path, DAMAGED)
    assert problem.oid == ROOT_OID and problem.message == "its refs are not sorted, or list an oid twice"
    records[ROOT_OID] = pack_record(ROOT_OID, data, refs[8:])
    _store(path, records)
    report = check_file(path)
    assert [problem.kind for problem in report.problems] == [DAMAGED, DAMAGED]
    assert report.problems[0].superseded and not report.problems[1].superseded
    assert "(an old version of the object, superseded by a later record)" in str(report.problems[0])
    assert report.problems[1].message == (
        f"the state refers to oid {oid_to_int(refs[:8])}, which its refs omit")


def test_a_torn_last_transaction(tmp_path):
    path = tmp_path / "torn.durus"
    build(path)
    size = os.path.getsize(path)
    with open(path, "ab") as file:
        file.write(int8(500) + int8(100) + b"\x00" * 7 + b"\x01" + b"partial")
    problem = only_problem(path, TORN)
    assert problem.offset == size and "repair=True" in problem.message
    # As FileStorage sees it: repair cuts exactly there.
    FileStorage(str(path), repair=True).close()
    assert os.path.getsize(path) == size and check_file(path).clean


def test_zeros_at_the_end_are_free_space(tmp_path):
    path = tmp_path / "free.durus"
    build(path)
    with open(path, "ab") as file:
        file.write(bytes(4096 + 3))
    assert check_file(path).clean
    with open(path, "ab") as file:
        file.write(b"\x01")
    assert only_problem(path, TORN).offset == os.path.getsize(path) - 4096 - 4


def test_a_file_open_for_writing_or_left_open_by_a_crash(tmp_path):
    """The free space, seal and commit trailers a writer keeps at the end are
    read as FileStorage reads them: whole commits, nothing torn.
    """
    path = tmp_path / "open.durus"
    build(path)
    connection = Connection(FileStorage(str(path)))
    connection.get_root()["more"] = Item("more")
    connection.commit()
    assert os.path.getsize(path) % 4096 == 0  # free space and trailers
    report = check_file(path)
    assert report.clean, report.format()
    code = ("import os, sys; sys.path.insert(0, '.'); from durus.connection import Connection; "
            "from durus.file_storage import FileStorage; from tests.models import Item; "
            f"c = Connection(FileStorage({str(path)!r})); c.get_root()['crash'] = Item('x'); c.commit(); "
            "os._exit(0)")
    connection.get_storage().close()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert os.path.getsize(path) % 4096 == 0
    crashed = check_file(path)
    assert crashed.clean and crashed.objects == report.objects + 1, crashed.format()


def test_framing_damage_mid_file_is_reported_and_the_rest_checked(tmp_path):
    path = tmp_path / "framing.durus"
    oids = build(path)
    offset, later = entry_offset(path, oids["garbage"]), entry_offset(path, oids["last"])
    patch(path, offset + 16 + 7, lambda byte: byte ^ 1)  # the record's own oid
    patch(path, later + ITEM_STATE + 10, lambda byte: byte ^ 1)
    report = check_file(path)
    assert [(problem.kind, problem.offset) for problem in report.problems] == [
        (FRAMING, offset), (DAMAGED, later)], report.format()
    assert "does not start with the entry's oid" in report.problems[0].message


def test_a_wrong_transaction_length_is_damage_not_a_tear(tmp_path):
    """A length running past the end of the file looks like a crash's tear,
    but whole transactions follow the entries: cutting there would lose them.
    """
    path = tmp_path / "length.durus"
    build(path)
    clean = check_file(path)
    transaction = transaction_starts(path)[-2]
    patch(path, transaction + 5, lambda byte: byte ^ 1)
    report = check_file(path)
    problem = only_problem(path, FRAMING)
    assert problem.offset == transaction and "the length is damaged; this is no torn commit" in problem.message
    assert (report.transactions, report.records) == (clean.transactions, clean.records)


def test_a_wrong_offset_map_word(tmp_path):
    path = tmp_path / "map.durus"
    oids = build(path)
    data = path.read_bytes()
    map_start = 16 + int.from_bytes(data[8:16], "big")
    width = int.from_bytes(data[map_start + 8:map_start + 16], "big")
    first = oid_to_int(oids["first"])
    word = map_start + 24 + first * width
    patch(path, word + width - 1, lambda byte: byte ^ 1)
    problems = check_file(path).problems
    assert {problem.kind for problem in problems} == {FRAMING}
    assert problems[0].offset == word and f"says oid {first}'s record is at byte" in problems[0].message
    assert problems[1].oid == oids["first"] and "not in the offset map" in problems[1].message


def test_progress_is_reported_on_a_long_check_only(tmp_path, monkeypatch):
    path = tmp_path / "progress.durus"
    build(path, items=2000)
    calls = []
    assert check_file(path, lambda done, total: calls.append((done, total))).clean
    assert calls == []  # well under a second
    monkeypatch.setattr(check, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(check, "_ENTRIES_PER_CLOCK_LOOK", 100)
    assert check_file(path, lambda done, total: calls.append((done, total))).clean
    size = os.path.getsize(path)
    assert len(calls) >= 10 and all(0 < done <= total == size for done, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


# -- the command ---------------------------------------------------------------------


def durus_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run from elsewhere, without the tests on the path: the checker must
    # not need the application's classes (tests.models here).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "durus", "--check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_command_and_its_exit_status(tmp_path):
    path = tmp_path / "cli.durus"
    oids = build(path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in ([str(path)], ["--file", str(path)]):
        result = durus_check(*args, cwd=elsewhere)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert result.stdout.startswith(f"{path}: clean: ") and "1 unreachable" in result.stdout
    offset = entry_offset(path, oids["big"])
    patch(path, offset + ITEM_STATE + 100, lambda byte: byte ^ 0x80)
    result = durus_check(str(path), cwd=elsewhere)
    assert result.returncode == 1 and result.stderr == ""
    assert f"damaged at byte {offset}, oid {oid_to_int(oids['big'])}: its state fails to decompress" in result.stdout
    assert durus_check("-q", str(path), cwd=elsewhere).stdout == ""

    not_shelf = tmp_path / "text.txt"
    not_shelf.write_text("hello\n")
    for args, message in [
        ([str(tmp_path / "missing.durus")], "cannot open"),
        ([str(not_shelf)], "is not a SHELF-1 file"),
        ([str(tmp_path)], "is not a file"),
        ([], "give the file to check"),
        ([str(path), "--file", str(path)], "give the file to check"),
    ]:
        result = durus_check(*args, cwd=elsewhere)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("durus --check")


# -- files written by the real Durus 4.3 ----------------------------------------------


@pytest.mark.compat
@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_a_file_written_by_durus43_is_clean(tmp_path, pack):
    from durus43 import SCRIPTS, durus43_python, run_python

    path = tmp_path / "durus43.durus"
    flags = ["--pack"] if pack else []
    driver = SCRIPTS / "compat_driver.py"
    python = durus43_python()
    run_python(python, script=driver, args=["build", str(path), *flags])
    run_python(python, script=driver, args=["mutate", str(path), "1", *flags])
    report = check_file(path)
    assert report.clean, report.format()
    assert report.objects > 100 and report.references > 100
    if pack:
        assert report.transactions == 1 and report.unreachable == 0

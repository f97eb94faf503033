"""FileStorage2 reads the older DFS20 format (files made by the real Durus
4.3 are read in test_compat_sqlite.py); here, files laid out by hand.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import pytest

from durus.connection import Connection
from durus.error import DurusError, DurusKeyError
from durus.file_storage import ReadOnlyError
from durus.file_storage2 import FileStorage2
from durus.persistent_dict import PersistentDict
from durus.record import ROOT_OID, int4, int8, int_to_oid
from durus.storage import MemoryStorage


def records_of(**items) -> list[bytes]:
    memory = MemoryStorage()
    connection = Connection(memory)
    connection.get_root().update(items)
    connection.commit()
    return [record for _, record in memory.gen_oid_record()]


def transaction(records: list[bytes]) -> bytes:
    return b"".join(int4(len(record)) + record for record in records) + int4(0)


def dfs20(records_before_index: list[bytes], index_pickle: bytes | None = None, after: bytes = b"") -> bytes:
    """A DFS20 file: one transaction before the index (as a pack writes it),
    the index of those records, then ``after``.
    """
    body = transaction(records_before_index) if records_before_index else b""
    offsets, position = {}, 14
    for record in records_before_index:
        offsets[record[:8]] = position
        position += 4 + len(record)
    index = zlib.compress(index_pickle if index_pickle is not None else pickle.dumps(offsets, 2))
    return b"DFS20\0" + int8(14 + len(body)) + body + int8(len(index)) + index + after


def test_records_before_and_after_the_index_are_read_the_later_winning(tmp_path: Path) -> None:
    old = records_of(n=1, box=PersistentDict(a=1))
    new = records_of(n=2, box=PersistentDict(a=2))
    path = tmp_path / "data.dfs"
    path.write_bytes(dfs20(old, after=transaction(new[:1])))
    connection = Connection(FileStorage2(str(path)))
    assert connection.get_root()["n"] == 2 and connection.get_root()["box"]["a"] == 1
    storage = connection.get_storage()
    assert sorted(oid for oid, _ in storage.gen_oid_record()) == [ROOT_OID, int_to_oid(1)]
    with pytest.raises(DurusKeyError):
        storage.load(int_to_oid(7))


def test_python2_string_keys_in_the_index_are_read_as_bytes(tmp_path: Path) -> None:
    old = records_of(n=1)
    # Python 2 pickled its byte strings as str: they come back as latin-1 text.
    index = pickle.dumps({ROOT_OID.decode("latin1"): 14}, 2)
    path = tmp_path / "data.dfs"
    path.write_bytes(dfs20(old, index_pickle=index))
    assert Connection(FileStorage2(str(path))).get_root()["n"] == 1


def test_an_index_pickle_that_calls_functions_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            import os
            return (os.getpid, ())

    path = tmp_path / "data.dfs"
    path.write_bytes(dfs20([], index_pickle=pickle.dumps(Evil(), 2)))
    with pytest.raises(DurusError, match="index cannot be read .*may not refer to"):
        FileStorage2(str(path))


def test_a_partial_transaction_at_the_end_is_refused_unless_repair(tmp_path: Path) -> None:
    old = records_of(n=1)
    new = records_of(n=2)
    path = tmp_path / "data.dfs"
    path.write_bytes(dfs20(old, after=transaction(new)[:-10]))
    with pytest.raises(DurusError, match="partial or damaged transaction"):
        FileStorage2(str(path))
    assert Connection(FileStorage2(str(path), repair=True)).get_root()["n"] == 1


def test_not_a_dfs20_file_and_changes_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "data.dfs"
    path.write_bytes(b"SHELF-1\n" + b"\0" * 40)
    with pytest.raises(DurusError, match="not a DFS20 file"):
        FileStorage2(str(path))
    path.write_bytes(dfs20(records_of(n=1)))
    storage = FileStorage2(str(path))
    for change in (storage.begin, storage.new_oid, storage.pack):
        with pytest.raises(ReadOnlyError, match="durus --copy"):
            change()

"""Durus 4.3's storage tools: census, class and reference listings, and the
number helpers of ``durus.utils``, checked against the real Durus 4.3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from durus43 import durus43  # noqa: F401  (the fixture)

from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
from durus.record import ROOT_OID
from durus.storage import gen_oid_class, gen_referring_oid_record, get_census, get_reference_index
from durus.utils import int4_to_str, int8_to_str, str_to_int4, str_to_int8


def make_file(path: Path) -> dict[str, bytes]:
    connection = Connection(FileStorage(str(path)))
    root = connection.get_root()
    shared = PersistentDict(name="shared")
    root["lists"] = PersistentList([PersistentList([shared]), PersistentList([shared])])
    root["shared"] = shared
    connection.commit()
    oids = {"lists": root["lists"]._p_oid, "shared": shared._p_oid}
    connection.get_storage().close()
    return oids


def test_census_classes_and_references(tmp_path: Path) -> None:
    path = tmp_path / "data.durus"
    oids = make_file(path)
    storage = FileStorage(str(path), readonly=True)
    assert get_census(storage) == {"PersistentDict": 2, "PersistentList": 3}
    lists = dict(gen_oid_class(storage, "PersistentList", b"NoSuchClass"))
    assert oids["lists"] in lists and len(lists) == 3
    referring = sorted(oid for oid, _ in gen_referring_oid_record(storage, oids["shared"]))
    index = get_reference_index(storage)
    assert len(referring) == 3  # the root and the two inner lists
    assert sorted(index[oids["shared"]]) == referring and ROOT_OID in referring
    storage.close()


@pytest.mark.compat
def test_the_same_answers_as_durus43(tmp_path: Path, durus43) -> None:
    path = tmp_path / "data.durus"
    make_file(path)
    theirs = durus43.run_json(
        "import json, sys\n"
        "from durus.file_storage import FileStorage\n"
        "from durus.storage import get_census, get_reference_index\n"
        "storage = FileStorage(sys.argv[1], readonly=True)\n"
        "index = {k.hex(): sorted(v.hex() for v in vs) for k, vs in get_reference_index(storage).items()}\n"
        "census = {name.decode(): count for name, count in get_census(storage).items()}\n"
        "print(json.dumps([census, index]))\n",
        args=[str(path)])
    storage = FileStorage(str(path), readonly=True)
    index = {k.hex(): sorted(v.hex() for v in vs) for k, vs in get_reference_index(storage).items()}
    assert [get_census(storage), index] == theirs
    storage.close()


def test_number_helpers() -> None:
    assert int8_to_str(5) == b"\0" * 7 + b"\5" and str_to_int8(int8_to_str(2**40 + 3)) == 2**40 + 3
    assert int4_to_str(258) == b"\0\0\1\2" and str_to_int4(b"\0\0\1\2") == 258

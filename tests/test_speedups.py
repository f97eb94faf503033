"""The optional C accelerator and the pure-Python versions it stands in for.

The behaviour tests here run in both modes, as the others do: CI runs the
whole suite once with the accelerator and once more (the slow test at the
end, all but the browser and deployment tests) with ``DURUS_PURE_PYTHON=1``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import MappingProxyType

import pytest

import durus.persistent
import durus.serialize
from durus.connection import Connection
from durus.error import DamagedRecordError, ReadConflictError
from durus.persistent import Persistent
from durus.speedups import speedups
from tests.models import Item
from tests.test_persistent import committed
from tests.raw_records import store_raw

REPO = Path(__file__).resolve().parent.parent
PURE = os.environ.get("DURUS_PURE_PYTHON", "") not in ("", "0")


def can_build_extensions() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return bool(compiler) and shutil.which(compiler[0]) is not None and headers.exists()


@pytest.mark.skipif(PURE, reason="pure Python asked for")
@pytest.mark.skipif(not can_build_extensions(), reason="no C compiler or Python headers here")
def test_the_accelerator_is_built_and_used_where_it_can_be() -> None:
    assert speedups is not None, "durus._speedups was not built: see the install's output"
    assert durus.persistent.new_ghost is speedups.new_ghost
    assert durus.serialize.PersistentLoader is speedups.PersistentLoader


def test_the_environment_can_ask_for_pure_python() -> None:
    code = "import durus.persistent as p, durus.speedups as s; print(s.speedups, p.new_ghost.__module__)"
    env = {**os.environ, "DURUS_PURE_PYTHON": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["None", "durus.persistent"]


def test_a_load_that_fails_leaves_a_ghost_that_loads_once_it_can() -> None:
    _, storage = committed(Item("a", 1))
    fresh = Connection(storage)
    ghost = fresh.get_instance(b"\x00" * 7 + b"\x63", Item)  # no such record
    with pytest.raises(ReadConflictError):
        ghost.name
    assert ghost._p_is_ghost() and type(ghost) is not Item  # still tracked
    assert fresh.root[0].name == "a"


class Late(Persistent):
    pass


def test_a_class_given_its_own_getattribute_later_is_still_tracked() -> None:
    late = Late()
    late.x = 1
    _, storage = committed(late)
    Connection(storage).root[0].x  # makes Late's tracking class
    reads = []

    def counting(self, name):
        reads.append(name)
        return object.__getattribute__(self, name)

    Late.__getattribute__ = counting
    try:
        fresh = Connection(storage)
        ghost = fresh.root[0]
        assert ghost.x == 1 and "x" in reads
        assert type(ghost) is Late
        fresh.commit()
        assert type(ghost) is not Late  # tracked again at the boundary
    finally:
        del Late.__getattribute__


class Fallback(Persistent):
    def __getattr__(self, name):
        return f"no {name}"


def test_a_class_with_getattr_falls_back_to_it_while_tracked() -> None:
    obj = Fallback()
    obj.x = 1
    _, storage = committed(obj)
    ghost = Connection(storage).root[0]
    assert type(ghost) is not Fallback  # tracked
    assert ghost._p_missing == "no _p_missing"  # a _p_ name passes through, to __getattr__
    assert ghost.x == 1 and ghost.y == "no y"


def test_loaded_attribute_names_are_interned_for_fast_reads() -> None:
    _, storage = committed(Item("a", 1))
    loaded = Connection(storage).root[0]
    assert loaded.name == "a"
    assert all(sys.intern(name) is name for name in vars(loaded))


def test_a_state_may_be_any_mapping() -> None:
    obj = Item("a", 1)
    obj.__setstate__(MappingProxyType({"name": "b", "value": 2}))
    assert vars(obj) == {"name": "b", "value": 2}
    assert all(sys.intern(name) is name for name in vars(obj))


class WrongIds(pickle.Pickler):
    def persistent_id(self, obj):
        return (obj._p_oid, Item, "extra") if isinstance(obj, Item) else None


def test_a_persistent_id_of_the_wrong_shape_is_an_error() -> None:
    _, storage = committed(Item("target"))
    target = Connection(storage).root[0]
    oid = b"\x00" * 7 + b"\x50"
    store_raw(storage, oid, Item, {"name": "x", "other": target}, refs=target._p_oid, pickler_class=WrongIds)
    with pytest.raises(DamagedRecordError) as raised:
        Connection(storage).get(oid)
    assert isinstance(raised.value.__cause__, ValueError)


# Deployments driven through a browser or a whole gunicorn set-up add
# nothing here that the other tests of the same code do not cover; the
# documentation describes the default install (the pure-Python fallbacks of
# the accelerator's types are not part of it).
NOT_RERUN = ["tests/test_browser.py", "tests/test_example_app_deploy.py", "tests/test_docs.py"]


@pytest.mark.slow
@pytest.mark.skipif(PURE, reason="this is the pure-Python run")
def test_the_pure_python_versions_pass_the_tests() -> None:
    env = {**os.environ, "DURUS_PURE_PYTHON": "1"}
    ignored = [f"--ignore={path}" for path in NOT_RERUN]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ignored, "tests"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]


_NEW_GRAPH = """
import json, sys
from durus.connection import Connection
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
from durus.speedups import speedups
from durus.storage import MemoryStorage
from tests.models import Item

connection = Connection(MemoryStorage())
shared = Item("shared", [1, 2])
items = [Item(str(n), shared if n % 3 else {"n": n, "next": Item(f"inner {n}")}) for n in range(40)]
items[5].value = items  # a cycle through a plain list
connection.get_root()["tree"] = PersistentDict(items=PersistentList(items), shared=shared)
connection.commit()
connection.get_root()["more"] = [Item("more", items[0])]
connection.commit()
records = dict(connection.get_storage().gen_oid_record())
print(json.dumps({"accelerated": speedups is not None,
                  "records": {oid.hex(): record.hex() for oid, record in records.items()}}))
"""


@pytest.mark.skipif(PURE, reason="this is the pure-Python run")
def test_new_objects_named_in_c_give_the_records_python_gives() -> None:
    """The accelerator names new objects met while pickling (as
    ObjectWriter.reference does): the same oids, records and refs.
    """
    import json

    runs = []
    for pure in ("0", "1"):
        env = {**os.environ, "DURUS_PURE_PYTHON": pure}
        done = subprocess.run([sys.executable, "-c", _NEW_GRAPH], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    accelerated, pure = runs
    assert accelerated["accelerated"] is (speedups is not None) and pure["accelerated"] is False
    assert len(pure["records"]) > 50
    assert accelerated["records"] == pure["records"]

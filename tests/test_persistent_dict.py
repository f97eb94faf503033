"""PersistentDict: the dict API, change tracking, and storage round trips."""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durus.btree import BTree
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent import PersistentObject
from durus.persistent_dict import PersistentDict
from durus.storage import MemoryStorage


class CountingDict(PersistentDict):
    """Missing keys read as 0, like collections.Counter."""

    __slots__ = ()

    def __missing__(self, key: Any) -> int:
        return 0


def saved(obj: PersistentObject) -> PersistentObject:
    """``obj`` committed through a fresh connection, so it is SAVED."""
    connection = Connection(MemoryStorage())
    connection.root["obj"] = obj
    connection.commit()
    assert obj._p_is_saved()
    return obj


# -- the dict API -------------------------------------------------------------


def test_random_operations_match_a_dict() -> None:
    rng = random.Random(7)
    model: dict[int, int] = {}
    pd = PersistentDict()
    for step in range(4000):
        key = rng.randrange(60)
        op = rng.randrange(9)
        if op == 0:
            pd[key] = model[key] = step
        elif op == 1:
            if key in model:
                del pd[key], model[key]
            else:
                with pytest.raises(KeyError):
                    del pd[key]
        elif op == 2:
            assert pd.pop(key, None) == model.pop(key, None)
        elif op == 3:
            assert pd.setdefault(key, step) == model.setdefault(key, step)
        elif op == 4:
            batch = {rng.randrange(60): step for _ in range(3)}
            pd.update(batch)
            model.update(batch)
        elif op == 5 and model:
            assert pd.popitem() == model.popitem()
        elif op == 6:
            assert pd.get(key, "none") == model.get(key, "none")
        elif op == 7:
            assert (key in pd) == (key in model)
        else:
            pd |= {key: -step}
            model |= {key: -step}
        assert len(pd) == len(model)
    assert list(pd) == list(model)
    assert list(pd.items()) == list(model.items())
    assert list(reversed(pd)) == list(reversed(model))


def test_missing_is_called_by_getitem_only() -> None:
    counts = CountingDict(a=1)
    assert counts["a"] == 1 and counts["b"] == 0
    assert "b" not in counts and counts.get("b") is None
    with pytest.raises(KeyError):
        PersistentDict()["b"]


def test_or_merges_into_new_dicts_both_ways() -> None:
    left = PersistentDict(a=1, b=2)
    merged = left | {"b": 3, "c": 4}
    assert isinstance(merged, PersistentDict) and merged is not left
    assert merged == {"a": 1, "b": 3, "c": 4} and left == {"a": 1, "b": 2}
    assert ({"a": 0, "z": 9} | left) == {"a": 1, "z": 9, "b": 2}
    assert (left | PersistentDict(x=1)) == {"a": 1, "b": 2, "x": 1}
    left |= [("c", 5)]
    assert left == {"a": 1, "b": 2, "c": 5}
    with pytest.raises(TypeError):
        left | [("d", 1)]


def test_comparisons_with_dicts_and_mappings() -> None:
    pd = PersistentDict(a=1)
    assert pd == {"a": 1} and {"a": 1} == pd
    assert pd == PersistentDict(a=1) and pd != PersistentDict(a=2)
    assert pd == OrderedDict(a=1)
    assert pd != [("a", 1)] and pd != {"a": 2}
    with pytest.raises(TypeError):
        hash(pd)


def test_copy_and_fromkeys_make_new_unsaved_dicts() -> None:
    original = saved(CountingDict(a=1))
    for clone in (original.copy(), copy.copy(original)):
        assert type(clone) is CountingDict and clone == {"a": 1}
        assert clone._p_is_unsaved() and clone._p_oid is None
        clone["b"] = 2
        assert "b" not in original
    made = CountingDict.fromkeys("xy", 5)
    assert type(made) is CountingDict and made == {"x": 5, "y": 5}
    assert PersistentDict.fromkeys([1]) == {1: None}


def test_views_update_and_errors_like_dict() -> None:
    pd = PersistentDict([("a", 1)], b=2)
    pd.update({"c": 3}, d=4)
    pd.update([("e", 5)])
    pd.update(PersistentDict(f=6))
    keys = pd.keys()
    pd["g"] = 7
    assert list(keys) == list("abcdefg")  # a live view
    assert sorted(pd.values()) == [1, 2, 3, 4, 5, 6, 7]
    assert ("a", 1) in pd.items()
    with pytest.raises(TypeError):
        pd.update({}, {})
    with pytest.raises(KeyError):
        pd.pop("nope")
    with pytest.raises(KeyError):
        PersistentDict().popitem()
    assert pd.pop("nope", "default") == "default"


def test_repr_shows_class_and_contents() -> None:
    text = repr(PersistentDict(a=1))
    assert text.startswith("<PersistentDict @") and text.endswith("{'a': 1}>")
    assert repr(saved(PersistentDict())).startswith("<PersistentDict 1 ")


def test_is_a_mutable_mapping() -> None:
    from collections.abc import MutableMapping

    assert isinstance(PersistentDict(), MutableMapping)
    assert PersistentDict[str, int] is not None


# -- change tracking ----------------------------------------------------------

CHANGES: list[tuple[str, Callable[[PersistentDict], Any]]] = [
    ("setitem", lambda d: d.__setitem__("z", 1)),
    ("setitem same value", lambda d: d.__setitem__("a", 1)),
    ("delitem", lambda d: d.__delitem__("a")),
    ("clear", lambda d: d.clear()),
    ("update", lambda d: d.update(z=1)),
    ("ior", lambda d: d.__ior__({"z": 1})),
    ("setdefault new", lambda d: d.setdefault("z", 1)),
    ("pop", lambda d: d.pop("a")),
    ("popitem", lambda d: d.popitem()),
]

READS: list[tuple[str, Callable[[PersistentDict], Any]]] = [
    ("getitem", lambda d: d["a"]),
    ("missing", lambda d: d.get("z")),
    ("len", len),
    ("iter", list),
    ("reversed", lambda d: list(reversed(d))),
    ("views", lambda d: (list(d.keys()), list(d.values()), list(d.items()))),
    ("contains", lambda d: "a" in d),
    ("eq", lambda d: d == {"a": 1}),
    ("or", lambda d: d | {"z": 1}),
    ("copy", lambda d: d.copy()),
    ("repr", repr),
    ("setdefault present", lambda d: d.setdefault("a", 2)),
    ("pop missing with default", lambda d: d.pop("z", None)),
    ("delitem missing", lambda d: pytest.raises(KeyError, d.__delitem__, "z")),
]


@pytest.mark.parametrize("name, change", CHANGES, ids=[name for name, _ in CHANGES])
def test_each_change_marks_the_dict_changed(name: str, change: Callable) -> None:
    pd = saved(PersistentDict(a=1, b=2))
    change(pd)
    assert pd._p_is_unsaved()


@pytest.mark.parametrize("name, read", READS, ids=[name for name, _ in READS])
def test_reads_leave_the_dict_saved(name: str, read: Callable) -> None:
    pd = saved(PersistentDict(a=1, b=2))
    read(pd)
    assert pd._p_is_saved()


def test_clearing_an_empty_dict_is_no_change() -> None:
    pd = saved(PersistentDict())
    pd.clear()
    assert pd._p_is_saved()


# -- storage ------------------------------------------------------------------


def test_state_is_a_data_dict() -> None:
    pd = PersistentDict(a=1)
    assert pd.__getstate__() == {"data": {"a": 1}}


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dict.durus"
    connection = Connection(FileStorage(str(path)))
    connection.root["plain"] = PersistentDict({1: "one", (2, 3): ["x"]})
    connection.root["counts"] = counts = CountingDict(a=3)
    connection.commit()
    counts["b"] = 4
    connection.commit()
    connection.get_storage().close()

    reopened = Connection(FileStorage(str(path)))
    assert reopened.root["plain"] == {1: "one", (2, 3): ["x"]}
    counts = reopened.root["counts"]
    assert counts.__class__ is CountingDict and counts == {"a": 3, "b": 4}
    assert counts["zzz"] == 0
    reopened.get_storage().close()


def test_abort_restores_the_stored_items() -> None:
    connection = Connection(MemoryStorage())
    connection.root["d"] = PersistentDict(a=1)
    connection.commit()
    pd = connection.root["d"]
    pd["b"] = 2
    del pd["a"]
    connection.abort()
    assert pd == {"a": 1}
    assert pd._p_is_ghost() or pd._p_is_saved()


# -- conflict resolution --------------------------------------------------------


def two_sessions() -> tuple[Connection, Connection]:
    from durus.shared_storage import SharedStorage

    shared = SharedStorage(MemoryStorage())
    first = Connection(shared.session())
    first.root["d"] = PersistentDict(a=1, b=2)
    first.commit()
    second = Connection(shared.session())
    return first, second


def test_changes_to_different_keys_merge() -> None:
    first, second = two_sessions()
    first.root["d"]["a"] = 10
    del first.root["d"]["b"]
    second.root["d"]["c"] = 3
    first.commit()
    second.commit()
    first.abort()
    assert first.root["d"] == second.root["d"] == {"a": 10, "c": 3}


def test_the_same_key_changed_on_both_sides_conflicts() -> None:
    from durus.error import WriteConflictError

    first, second = two_sessions()
    first.root["d"]["a"] = 10
    second.root["d"]["a"] = 20
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.root["d"] == {"a": 10, "b": 2}


@pytest.mark.parametrize("make", [PersistentDict, lambda items: _btree(items)])
def test_durus43_mapping_names(make) -> None:
    mapping = make({"b": 2, "a": 1})
    assert mapping.has_key("a") and not mapping.has_key("z")
    assert sorted(mapping.iteritems()) == [("a", 1), ("b", 2)]
    assert sorted(mapping.iterkeys()) == ["a", "b"] and sorted(mapping.itervalues()) == [1, 2]
    iterator = mapping.iteritems()
    assert next(iterator) in {("a", 1), ("b", 2)}  # an iterator, not a list


def _btree(items: dict) -> BTree:
    tree = BTree()
    tree.update(items)
    return tree

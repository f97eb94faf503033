"""PersistentList: the list API, change tracking, and storage round trips."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, MutableSequence
from pathlib import Path
from typing import Any

import pytest

from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent import PersistentObject
from durus.persistent_list import PersistentList
from durus.storage import MemoryStorage


def saved(obj: PersistentObject) -> PersistentObject:
    """``obj`` committed through a fresh connection, so it is SAVED."""
    connection = Connection(MemoryStorage())
    connection.root["obj"] = obj
    connection.commit()
    assert obj._p_is_saved()
    return obj


def random_slice(rng: random.Random, size: int) -> slice:
    def bound() -> int | None:
        return rng.choice([None, rng.randrange(-size - 2, size + 3)])

    return slice(bound(), bound(), rng.choice([None, 1, 2, -1, -3]))


# -- the list API -------------------------------------------------------------


def test_random_operations_match_a_list() -> None:
    rng = random.Random(11)
    model: list[int] = []
    pl = PersistentList()
    for step in range(4000):
        op = rng.randrange(12)
        size = len(model)
        if op == 0:
            pl.append(step)
            model.append(step)
        elif op == 1:
            i = rng.randrange(-size - 2, size + 3)
            pl.insert(i, step)
            model.insert(i, step)
        elif op == 2 and model:
            i = rng.randrange(-size, size)
            assert pl.pop(i) == model.pop(i)
        elif op == 3:
            part = random_slice(rng, size)
            assert pl[part] == model[part]
        elif op == 4:
            part = random_slice(rng, size)
            if part.step in (None, 1):
                values = [rng.randrange(100) for _ in range(rng.randrange(4))]
            else:
                values = [rng.randrange(100) for _ in range(len(model[part]))]
            pl[part] = values
            model[part] = values
        elif op == 5:
            part = random_slice(rng, size)
            del pl[part]
            del model[part]
        elif op == 6:
            extra = [rng.randrange(100) for _ in range(3)]
            pl += extra
            model += extra
        elif op == 7 and model:
            value = rng.choice(model)
            assert pl.index(value) == model.index(value)
            assert pl.count(value) == model.count(value)
            pl.remove(value)
            model.remove(value)
        elif op == 8:
            backwards = rng.random() < 0.5
            pl.sort(key=lambda v: v % 7, reverse=backwards)
            model.sort(key=lambda v: v % 7, reverse=backwards)
        elif op == 9:
            pl.reverse()
            model.reverse()
        elif op == 10 and model:
            i = rng.randrange(-size, size)
            pl[i] = model[i] = -step
        elif op == 11 and len(model) > 200:
            del pl[:100]
            del model[:100]
        assert pl == model and len(pl) == len(model)
    assert list(reversed(pl)) == list(reversed(model))


def test_index_with_bounds_and_errors_like_list() -> None:
    pl = PersistentList("abcabc")
    assert pl.index("a", 1) == 3 and pl.index("c", 0, 3) == 2
    with pytest.raises(ValueError):
        pl.index("a", 4)
    with pytest.raises(ValueError):
        pl.remove("z")
    with pytest.raises(IndexError):
        PersistentList().pop()
    with pytest.raises(IndexError):
        pl.pop(6)
    with pytest.raises(TypeError):
        pl.pop("0")


def test_arithmetic_makes_new_lists() -> None:
    pl = PersistentList([1, 2])
    for result, expected in [
        (pl + [3], [1, 2, 3]),
        ([0] + pl, [0, 1, 2]),
        (pl + PersistentList([9]), [1, 2, 9]),
        (pl * 2, [1, 2, 1, 2]),
        (2 * pl, [1, 2, 1, 2]),
        (pl.copy(), [1, 2]),
        (copy.copy(pl), [1, 2]),
    ]:
        assert isinstance(result, PersistentList) and result is not pl
        assert result == expected
    assert pl == [1, 2]
    with pytest.raises(TypeError):
        pl + (3,)
    same = pl
    pl *= 2
    pl += (7,)
    assert pl is same and pl == [1, 2, 1, 2, 7]
    pl.extend(pl)
    assert pl == [1, 2, 1, 2, 7] * 2


def test_slices_are_plain_lists_and_items_stay_whole() -> None:
    inner = PersistentList([1])
    pl = PersistentList([0, 1, 2, 3])
    assert type(pl[1:3]) is list and pl[::-2] == [3, 1]
    pl[0] = inner
    assert pl[0] is inner
    pl[1:3] = PersistentList(["x"])
    assert pl == [inner, "x", 3]


def test_comparisons_with_lists() -> None:
    pl = PersistentList([1, 2])
    assert pl == [1, 2] and [1, 2] == pl and pl != [2]
    assert pl < [1, 3] and [1, 3] > pl and pl <= [1, 2] and pl >= [1]
    assert pl < PersistentList([2]) and not pl > PersistentList([2])
    assert pl != (1, 2)
    with pytest.raises(TypeError):
        assert pl < (1, 3)
    assert 2 in pl and 5 not in pl
    with pytest.raises(TypeError):
        hash(pl)


def test_repr_and_abc() -> None:
    assert repr(PersistentList([1])).endswith(" [1]>")
    assert isinstance(PersistentList(), MutableSequence)


# -- change tracking ----------------------------------------------------------

CHANGES: list[tuple[str, Callable[[PersistentList], Any]]] = [
    ("setitem", lambda l: l.__setitem__(0, 9)),
    ("setitem slice", lambda l: l.__setitem__(slice(0, 1), [9])),
    ("delitem", lambda l: l.__delitem__(0)),
    ("iadd", lambda l: l.__iadd__([4])),
    ("imul", lambda l: l.__imul__(2)),
    ("append", lambda l: l.append(4)),
    ("insert", lambda l: l.insert(0, 4)),
    ("extend", lambda l: l.extend([4])),
    ("pop", lambda l: l.pop()),
    ("remove", lambda l: l.remove(2)),
    ("clear", lambda l: l.clear()),
    ("reverse", lambda l: l.reverse()),
    ("sort", lambda l: l.sort(reverse=True)),
]

READS: list[tuple[str, Callable[[PersistentList], Any]]] = [
    ("getitem", lambda l: l[0]),
    ("slice", lambda l: l[::2]),
    ("len", len),
    ("iter", list),
    ("reversed", lambda l: list(reversed(l))),
    ("contains", lambda l: 2 in l),
    ("index", lambda l: l.index(2)),
    ("count", lambda l: l.count(2)),
    ("compare", lambda l: (l == [1], l < [2])),
    ("add", lambda l: l + [1]),
    ("mul", lambda l: l * 2),
    ("copy", lambda l: l.copy()),
    ("repr", repr),
    ("failed pop", lambda l: pytest.raises(IndexError, l.pop, 10)),
    ("failed remove", lambda l: pytest.raises(ValueError, l.remove, 10)),
]


@pytest.mark.parametrize("name, change", CHANGES, ids=[name for name, _ in CHANGES])
def test_each_change_marks_the_list_changed(name: str, change: Callable) -> None:
    pl = saved(PersistentList([1, 2, 3]))
    change(pl)
    assert pl._p_is_unsaved()


@pytest.mark.parametrize("name, read", READS, ids=[name for name, _ in READS])
def test_reads_leave_the_list_saved(name: str, read: Callable) -> None:
    pl = saved(PersistentList([1, 2, 3]))
    read(pl)
    assert pl._p_is_saved()


# -- storage ------------------------------------------------------------------


def test_state_is_a_data_list() -> None:
    assert PersistentList([1]).__getstate__() == {"data": [1]}


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "list.durus"
    connection = Connection(FileStorage(str(path)))
    nested = PersistentList(["inner"])
    connection.root["list"] = PersistentList([1, "two", nested, nested])
    connection.commit()
    connection.root["list"].append(5)
    connection.commit()
    connection.get_storage().close()

    reopened = Connection(FileStorage(str(path)))
    pl = reopened.root["list"]
    assert pl == [1, "two", ["inner"], ["inner"], 5]
    assert pl[2] is pl[3] and isinstance(pl[2], PersistentList)
    reopened.get_storage().close()

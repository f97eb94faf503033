"""PersistentSet: the set API, change tracking, and storage round trips."""

from __future__ import annotations

import copy
import operator
import random
from collections.abc import Callable, MutableSet
from pathlib import Path
from typing import Any

import pytest

from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent import PersistentObject
from durus.persistent_set import PersistentSet
from durus.storage import MemoryStorage


def saved(obj: PersistentObject) -> PersistentObject:
    """``obj`` committed through a fresh connection, so it is SAVED."""
    connection = Connection(MemoryStorage())
    connection.root["obj"] = obj
    connection.commit()
    assert obj._p_is_saved()
    return obj


# -- the set API --------------------------------------------------------------


def test_random_operations_match_a_set() -> None:
    rng = random.Random(3)
    model: set[int] = set()
    ps = PersistentSet()
    updates = [
        "update",
        "intersection_update",
        "difference_update",
        "symmetric_difference_update",
    ]
    for _ in range(3000):
        op = rng.randrange(7)
        value = rng.randrange(80)
        others = [
            {rng.randrange(80) for _ in range(rng.randrange(12))}
            for _ in range(rng.randrange(1, 3))
        ]
        if op == 0:
            ps.add(value)
            model.add(value)
        elif op == 1:
            ps.discard(value)
            model.discard(value)
        elif op == 2 and value in model:
            ps.remove(value)
            model.remove(value)
        elif op == 3 and model and rng.random() < 0.3:
            popped = ps.pop()
            assert popped in model
            model.remove(popped)
        elif op == 4:
            name = rng.choice(updates)
            if name == "symmetric_difference_update":
                others = others[:1]
            getattr(ps, name)(*others)
            getattr(model, name)(*others)
        elif op == 5:
            for name in ("union", "intersection", "difference"):
                result = getattr(ps, name)(*others)
                assert isinstance(result, PersistentSet) and result == getattr(
                    model, name
                )(*others)
            assert ps.symmetric_difference(others[0]) == model.symmetric_difference(
                others[0]
            )
        else:
            other = others[0]
            assert ps.isdisjoint(other) == model.isdisjoint(other)
            assert ps.issubset(other) == model.issubset(other)
            assert ps.issuperset(other) == model.issuperset(other)
            assert (ps <= other, ps < other, ps >= other, ps > other) == (
                model <= other,
                model < other,
                model >= other,
                model > other,
            )
        assert ps == model and len(ps) == len(model)
    assert sorted(ps) == sorted(model)


@pytest.mark.parametrize("plain_type", [set, frozenset, PersistentSet])
@pytest.mark.parametrize(
    "op", [operator.or_, operator.and_, operator.sub, operator.xor]
)
def test_operators_with_sets_on_either_side(plain_type: type, op: Callable) -> None:
    ps = PersistentSet({1, 2, 3})
    other = plain_type({3, 4})
    for result, expected in [
        (op(ps, other), op({1, 2, 3}, {3, 4})),
        (op(other, ps), op({3, 4}, {1, 2, 3})),
    ]:
        assert (
            isinstance(result, (PersistentSet, set, frozenset)) and result == expected
        )
    assert isinstance(op(ps, other), PersistentSet)
    assert ps == {1, 2, 3}


@pytest.mark.parametrize(
    "op, expected",
    [
        (operator.ior, {1, 2, 3, 4}),
        (operator.iand, {3}),
        (operator.isub, {1, 2}),
        (operator.ixor, {1, 2, 4}),
    ],
)
def test_in_place_operators_keep_the_object(op: Callable, expected: set) -> None:
    for other in (
        {3, 4},
        frozenset({3, 4}),
        PersistentSet({3, 4}),
        {3: 0, 4: 0}.keys(),
    ):
        ps = PersistentSet({1, 2, 3})
        same = ps
        ps = op(ps, other)
        assert ps is same and ps == expected


def test_operators_refuse_non_sets() -> None:
    ps = PersistentSet({1})
    for op in (
        operator.or_,
        operator.and_,
        operator.sub,
        operator.xor,
        operator.ior,
        operator.le,
    ):
        with pytest.raises(TypeError):
            op(ps, [1])
    assert ps != [1]
    assert ps.union([2], (3,)) == {1, 2, 3}


def test_comparisons_with_plain_sets_both_ways() -> None:
    ps = PersistentSet({1, 2})
    assert ps == {1, 2} and {1, 2} == ps and frozenset({1, 2}) == ps
    assert ps <= {1, 2, 3} and {1} < ps and {1, 2, 3} >= ps > frozenset({2})
    assert ps == PersistentSet([2, 1]) and ps < PersistentSet([1, 2, 3])
    with pytest.raises(TypeError):
        hash(ps)


def test_copy_and_errors() -> None:
    original = saved(PersistentSet({1}))
    for clone in (original.copy(), copy.copy(original)):
        assert (
            isinstance(clone, PersistentSet) and clone == {1} and clone._p_is_unsaved()
        )
        clone.add(2)
        assert original == {1}
    with pytest.raises(KeyError):
        PersistentSet().pop()
    with pytest.raises(KeyError):
        PersistentSet().remove(1)
    assert repr(PersistentSet([5])).endswith(" {5}>")
    assert isinstance(PersistentSet(), MutableSet)


# -- change tracking ----------------------------------------------------------

CHANGES: list[tuple[str, Callable[[PersistentSet], Any]]] = [
    ("add", lambda s: s.add(9)),
    ("discard", lambda s: s.discard(1)),
    ("remove", lambda s: s.remove(1)),
    ("pop", lambda s: s.pop()),
    ("clear", lambda s: s.clear()),
    ("update", lambda s: s.update([9], [8])),
    ("intersection_update", lambda s: s.intersection_update([1])),
    ("difference_update", lambda s: s.difference_update([1])),
    ("symmetric_difference_update", lambda s: s.symmetric_difference_update([1])),
    ("ior", lambda s: s.__ior__({9})),
    ("iand", lambda s: s.__iand__({1})),
    ("isub", lambda s: s.__isub__({1})),
    ("ixor", lambda s: s.__ixor__({1})),
]

READS: list[tuple[str, Callable[[PersistentSet], Any]]] = [
    ("len", len),
    ("iter", list),
    ("contains", lambda s: 1 in s),
    ("add present", lambda s: s.add(1)),
    ("discard absent", lambda s: s.discard(9)),
    ("failed remove", lambda s: pytest.raises(KeyError, s.remove, 9)),
    ("operators", lambda s: (s | {9}, s & {1}, s - {1}, s ^ {1}, {9} | s)),
    (
        "methods",
        lambda s: (
            s.union([9]),
            s.intersection([1]),
            s.difference([1]),
            s.symmetric_difference([1]),
        ),
    ),
    (
        "predicates",
        lambda s: (
            s.isdisjoint([9]),
            s.issubset([1]),
            s.issuperset([1]),
            s <= {1},
            s == {1},
        ),
    ),
    ("copy", lambda s: s.copy()),
    ("repr", repr),
]


@pytest.mark.parametrize("name, change", CHANGES, ids=[name for name, _ in CHANGES])
def test_each_change_marks_the_set_changed(name: str, change: Callable) -> None:
    ps = saved(PersistentSet({1, 2}))
    change(ps)
    assert ps._p_is_unsaved()


@pytest.mark.parametrize("name, read", READS, ids=[name for name, _ in READS])
def test_reads_leave_the_set_saved(name: str, read: Callable) -> None:
    ps = saved(PersistentSet({1, 2}))
    read(ps)
    assert ps._p_is_saved()


# -- storage ------------------------------------------------------------------


def test_state_is_an_s_set() -> None:
    assert PersistentSet([1]).__getstate__() == {"s": {1}}


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "set.durus"
    connection = Connection(FileStorage(str(path)))
    connection.root["set"] = PersistentSet({1, "two", (3, 4)})
    connection.commit()
    connection.root["set"].discard(1)
    connection.commit()
    connection.get_storage().close()

    reopened = Connection(FileStorage(str(path)))
    assert reopened.root["set"] == {"two", (3, 4)}
    reopened.get_storage().close()


# -- conflict resolution --------------------------------------------------------


def two_sessions() -> tuple[Connection, Connection]:
    from durus.shared_storage import SharedStorage

    shared = SharedStorage(MemoryStorage())
    first = Connection(shared.session())
    first.root["s"] = PersistentSet({1, 2})
    first.commit()
    second = Connection(shared.session())
    return first, second


def test_changes_to_different_members_merge() -> None:
    first, second = two_sessions()
    first.root["s"].add(3)
    second.root["s"].discard(1)
    second.root["s"].add(4)
    first.commit()
    second.commit()
    first.abort()
    assert first.root["s"] == second.root["s"] == {2, 3, 4}


def test_the_same_member_changed_on_both_sides_conflicts() -> None:
    from durus.error import WriteConflictError

    first, second = two_sessions()
    first.root["s"].add(3)
    second.root["s"].add(3)
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()

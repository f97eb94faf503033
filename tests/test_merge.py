"""The merge rules of the built-in containers' conflict resolution."""

from __future__ import annotations

import pytest

from durus.error import ConflictError
from durus.merge import merge_bnode, merge_mapping, merge_set
from durus.persistent import Persistent


def test_mapping_merges_changes_to_different_keys() -> None:
    old = {"a": 1, "b": 2, "c": 3}
    committed = {"a": 10, "b": 2, "c": 3, "d": 4}
    mine = {"a": 1, "b": 20, "e": 5}
    assert merge_mapping(old, committed, mine) == {"a": 10, "b": 20, "d": 4, "e": 5}


@pytest.mark.parametrize(
    "committed, mine",
    [
        ({"a": 2}, {"a": 3}),  # both changed a
        ({"a": 2}, {"a": 2}),  # both made the same change: still both changed it
        ({}, {"a": 3}),  # deleted there, changed here
        ({"a": 2}, {}),  # changed there, deleted here
        ({"a": 1, "new": 1}, {"a": 1, "new": 2}),  # both added the same key
    ],
)
def test_mapping_same_key_changed_on_both_sides_conflicts(committed: dict, mine: dict) -> None:
    with pytest.raises(ConflictError):
        merge_mapping({"a": 1}, committed, mine)


def test_mapping_compares_persistent_values_by_identity() -> None:
    first, second = Persistent(), Persistent()
    assert merge_mapping({"a": first}, {"a": first, "b": 1}, {"a": second}) == {"a": second, "b": 1}
    with pytest.raises(ConflictError):
        merge_mapping({"a": first}, {"a": second}, {"a": Persistent()})


def test_set_merges_different_members_and_refuses_the_same_one() -> None:
    assert merge_set({1, 2, 3}, {1, 2, 3, 4}, {2, 3, 5}) == {2, 3, 4, 5}
    with pytest.raises(ConflictError):
        merge_set({1}, {1, 2}, {1, 2})
    with pytest.raises(ConflictError):
        merge_set({1, 2}, {1}, {1})


def leaf(*keys: int, count: bool = True) -> dict:
    state = {"items": [(key, str(key)) for key in keys], "nodes": None}
    if count:
        state["_count"] = len(keys)
    return state


def test_leaf_merges_inserts_and_deletes_of_different_keys() -> None:
    merged = merge_bnode(2, leaf(10, 20), leaf(5, 10, 20), leaf(10))
    assert merged == {"items": [(5, "5"), (10, "10")], "nodes": None, "_count": 2}


def test_leaf_that_would_overflow_or_underflow_conflicts() -> None:
    with pytest.raises(ConflictError):  # t=2 holds at most 3 items
        merge_bnode(2, leaf(1, 2), leaf(1, 2, 3), leaf(0, 1, 2))
    with pytest.raises(ConflictError):  # t=3 holds at least 2 items
        merge_bnode(3, leaf(1, 2, 3), leaf(1, 2), leaf(2, 3))


def test_small_root_leaf_may_shrink() -> None:
    assert merge_bnode(3, leaf(1), leaf(), leaf(1, 2))["items"] == [(2, "2")]


def test_inner_node_merges_counts_by_difference_when_shape_is_kept() -> None:
    left, right = Persistent(), Persistent()
    old = {"items": [(10, "x")], "nodes": [left, right], "_count": 7}
    committed = {"items": [(10, "x")], "nodes": [left, right], "_count": 8}
    mine = {"items": [(10, "y")], "nodes": [left, right], "_count": 9}
    assert merge_bnode(2, old, committed, mine) == {"items": [(10, "y")], "nodes": [left, right], "_count": 10}


def test_inner_node_shape_change_conflicts() -> None:
    left, right, extra = Persistent(), Persistent(), Persistent()
    old = {"items": [(10, "x")], "nodes": [left, right], "_count": 7}
    split = {"items": [(5, "f"), (10, "x")], "nodes": [left, extra, right], "_count": 8}
    mine = {"items": [(10, "x")], "nodes": [left, right], "_count": 8}
    with pytest.raises(ConflictError):
        merge_bnode(2, old, split, mine)
    replaced = {"items": [(10, "x")], "nodes": [left, extra], "_count": 8}
    with pytest.raises(ConflictError):
        merge_bnode(2, old, replaced, mine)


def test_unknown_counts_stay_unknown() -> None:
    left, right = Persistent(), Persistent()
    old = {"items": [(10, "x")], "nodes": [left, right]}
    committed = {"items": [(10, "x")], "nodes": [left, right], "_count": 8}
    assert "_count" not in merge_bnode(2, old, committed, dict(committed))

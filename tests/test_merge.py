"""The merge rules of the built-in containers' conflict resolution."""

from __future__ import annotations

import pytest

from durus.error import ConflictError
from durus.merge import merge_mapping, merge_set
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

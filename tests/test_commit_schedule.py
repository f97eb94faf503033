"""When written commits are synced and acknowledged: a lone committer never
waits for a group; commits whose clients shared the last sync wait a little
for each other, and never longer than the bound."""

from __future__ import annotations

import pytest

from durus.commit_schedule import Acknowledgements, GroupSync


class SlowDisk:
    """A disk that counts its syncs."""

    def __init__(self) -> None:
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1


def acknowledgements() -> tuple[Acknowledgements[str], GroupSync, SlowDisk]:
    disk = SlowDisk()
    group = GroupSync(disk.sync)
    failures: list[BaseException] = []
    return Acknowledgements(group, failures.append), group, disk


def commit(acks: Acknowledgements[str], group: GroupSync, name: str) -> None:
    acks.add(group.note_write(), name)


def test_a_lone_committer_never_waits_for_a_group():
    acks, group, disk = acknowledgements()
    for _ in range(5):
        commit(acks, group, "alone")
        assert acks.seconds_to_gather() == 0.0
        assert acks.sync() == ["alone"]
    assert disk.syncs == 5


def test_commits_that_shared_a_sync_wait_briefly_for_each_other():
    acks, group, disk = acknowledgements()
    for name in "abcd":
        commit(acks, group, name)
    assert acks.seconds_to_gather() == 0.0  # nothing known of a group yet
    assert sorted(acks.sync()) == list("abcd")
    commit(acks, group, "a")
    wait = acks.seconds_to_gather()
    assert 0.0 <= wait <= 0.002  # half the last sync's time, at most 2 ms
    for name in "bcd":
        commit(acks, group, name)
        assert (acks.seconds_to_gather() == 0.0) == (name == "d")
    assert sorted(acks.sync()) == list("abcd")
    assert disk.syncs == 2


def test_nothing_is_acknowledged_when_the_disk_cannot_sync():
    def failing() -> None:
        raise OSError(5, "I/O error")

    failures: list[BaseException] = []
    group = GroupSync(failing)
    acks: Acknowledgements[str] = Acknowledgements(group, failures.append)
    acks.add(group.note_write(), "a")
    assert acks.sync() == []
    assert len(failures) == 1 and group.synced == 0


@pytest.mark.parametrize("deferred", [True, False])
def test_a_storage_that_syncs_in_each_write_needs_no_group(deferred):
    disk = SlowDisk()
    group = GroupSync(disk.sync if deferred else None)
    acks: Acknowledgements[str] = Acknowledgements(group, lambda error: None)
    for name in "ab":
        acks.add(group.note_write(), name)
    assert acks.sync() == ["a", "b"]
    acks.add(group.note_write(), "c")
    if not deferred:
        assert acks.seconds_to_gather() == 0.0  # every write was durable at once
    assert disk.syncs == (1 if deferred else 0)

"""Optimistic conflict detection and conflict resolution between connections.

Connections share one storage through SharedStorage sessions, in-process:
the same rules the storage server applies to its clients.
"""

from __future__ import annotations

import threading
import time

import pytest

from durus.connection import Connection
from durus.error import ConflictError, ReadConflictError, WriteConflictError
from durus.persistent_counter import PersistentCounter
from durus.file_storage import FileStorage
from durus.record import ROOT_OID, pack_record, unpack_record
from durus.shared_storage import SharedStorage
from durus.storage import MemoryStorage
from tests.models import Item


@pytest.fixture
def connect():
    shared = SharedStorage(MemoryStorage())

    def connect() -> Connection:
        return Connection(shared.session())

    return connect


def setup_items(connection: Connection, **items: object) -> None:
    for name, value in items.items():
        connection.root[name] = Item(name, value)
    connection.commit()


def test_commit_is_seen_by_others_after_their_next_boundary(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=1)
    second.abort()
    assert second.root["a"].value == 1
    first.root["a"].value = 2
    first.commit()
    assert second.root["a"].value == 1  # same transaction: no snapshot refresh
    second.abort()
    assert second.root["a"].value == 2


def test_write_write_conflict_then_abort_and_retry_succeeds(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0)
    second.abort()
    first.root["a"].value = 1
    second.root["a"].value = 2
    first.commit()
    with pytest.raises(WriteConflictError) as raised:
        second.commit()
    assert raised.value.oids == [first.root["a"]._p_oid]
    with pytest.raises(ConflictError):
        second.commit()  # still conflicted until abort
    second.abort()
    assert second.root["a"].value == 1
    second.root["a"].value = 3
    second.commit()
    first.abort()
    assert first.root["a"].value == 3


def test_read_set_is_validated_write_skew_is_refused(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0, b=0)
    second.abort()
    # second reads a and writes b based on it; first changes a meanwhile.
    seen = second.root["a"].value
    first.root["a"].value = 10
    first.commit()
    second.root["b"].value = seen + 1
    with pytest.raises(WriteConflictError):
        second.commit()


def test_object_read_in_an_earlier_transaction_is_not_in_the_read_set(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0, b=0)
    second.abort()
    assert second.root["a"].value == 0
    second.commit()  # a was read in that transaction, not in the next one
    first.root["a"].value = 10
    first.commit()
    second.root["b"].value = 1
    second.commit()
    assert second.root["a"].value == 10


def test_disjoint_transactions_never_conflict(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0, b=0)
    second.abort()
    first_a, second_b = first.root["a"], second.root["b"]
    for round_ in range(5):
        first_a.value = round_
        second_b.value = round_
        first.commit()
        second.commit()
    first.abort()
    assert first.root["b"].value == 4


def test_loading_an_object_changed_since_the_transaction_used_others_raises_read_conflict(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0, b=0)
    second.abort()
    second.commit()
    a, b = second.root["a"], second.root["b"]
    b._p_set_status_ghost()
    assert a.value == 0  # used in this transaction
    first.root["a"].value = 1
    first.root["b"].value = 1
    first.commit()
    with pytest.raises(ReadConflictError):
        b.value
    second.abort()
    assert (a.value, b.value) == (1, 1)


def test_loading_an_object_changed_alone_just_loads_the_new_state(connect) -> None:
    first, second = connect(), connect()
    setup_items(first, a=0, b=0)
    second.abort()
    a, b = second.root["a"], second.root["b"]
    assert a.value == 0
    b._p_set_status_ghost()
    first.root["b"].value = 5
    first.commit()
    assert b.value == 5


def test_concurrent_first_connections_all_get_the_one_root() -> None:
    shared = SharedStorage(MemoryStorage())
    roots, errors = [], []

    def open_connection() -> None:
        try:
            connection = Connection(shared.session())
            roots.append(connection.root._p_oid)
        except Exception as error:  # noqa: BLE001 - reported by the assert
            errors.append(error)

    threads = [threading.Thread(target=open_connection) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and roots == [ROOT_OID] * 8


def test_connection_waits_for_the_client_that_was_given_oid_0() -> None:
    shared = SharedStorage(MemoryStorage())
    creator = shared.session()
    assert creator.new_oid() == ROOT_OID
    opened = []
    waiter = threading.Thread(target=lambda: opened.append(Connection(shared.session())))
    waiter.start()
    time.sleep(0.1)
    assert not opened  # still waiting for the root
    root_record = MemoryStorage()
    Connection(root_record)
    creator.begin()
    creator.store(ROOT_OID, root_record.load(ROOT_OID))
    creator.end()
    waiter.join(5)
    assert len(opened) == 1 and len(opened[0].root) == 0


def test_counter_increments_merge_instead_of_conflicting(connect) -> None:
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    first.commit()
    second.abort()
    first.root["hits"].increment(2)
    second.root["hits"].increment(5)
    first.commit()
    second.commit()
    first.abort()
    assert first.root["hits"].value == 7


def test_resolution_does_not_cover_objects_only_read(connect) -> None:
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, total=0)
    second.abort()
    # second reads the counter without changing it and writes elsewhere.
    seen = second.root["hits"].value
    first.root["hits"].increment()
    first.commit()
    second.root["total"].value = seen
    with pytest.raises(WriteConflictError):
        second.commit()


def test_resolution_needs_every_conflicting_object_to_resolve(connect) -> None:
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, a=0)
    second.abort()
    assert (second.root["hits"].value, second.root["a"].value) == (0, 0)
    first.root["hits"].increment()
    first.root["a"].value = 1
    first.commit()
    second.root["hits"].increment()
    second.root["a"].value = 2
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.root["hits"].value == 1 and second.root["a"].value == 1


def test_load_meeting_a_mergeable_change_fails_and_merges_nothing_mid_transaction(connect) -> None:
    """A transaction sees one state of what it used until it ends: a load
    that meets another client's commit of an object it changed stops it
    with a conflict, leaving that object as this transaction made it.
    """
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, a=0)
    second.abort()
    hits = second.root["hits"]
    hits.increment()  # changed here ...
    second.root["a"]._p_set_status_ghost()
    first.root["hits"].increment(10)  # ... and there, then a load in between
    first.root["a"].value = 1
    first.commit()
    with pytest.raises(ReadConflictError):
        second.root["a"].value
    assert hits._value == 1  # nothing merged into it
    second.abort()
    second.root["hits"].increment()
    second.commit()
    first.abort()
    assert first.root["hits"].value == 11


def test_load_meeting_a_change_to_an_object_only_read_still_fails(connect) -> None:
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, a=0)
    second.abort()
    assert second.root["hits"].value == 0  # read, not changed
    second.root["a"]._p_set_status_ghost()
    first.root["hits"].increment()
    first.root["a"].value = 1
    first.commit()
    with pytest.raises(ReadConflictError):
        second.root["a"].value


def test_resolution_rounds_zero_gives_durus43_behaviour(connect) -> None:
    first, second = connect(), connect()
    second.resolution_rounds = 0
    first.root["hits"] = PersistentCounter()
    first.commit()
    second.abort()
    first.root["hits"].increment()
    second.root["hits"].increment()
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()


def test_after_a_merge_only_what_the_merge_touched_is_pickled_again(connect, monkeypatch) -> None:
    from durus.serialize import ObjectWriter

    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, a=0, b=0)
    second.abort()
    second.root["hits"].increment()
    second.root["a"].value = 1
    second.root["b"].value = Item("new")
    first.root["hits"].increment()
    first.commit()
    pickled = []
    original = ObjectWriter.get_state
    monkeypatch.setattr(ObjectWriter, "get_state", lambda self, obj: pickled.append(obj) or original(self, obj))
    second.commit()
    names = sorted(getattr(obj, "name", "counter") for obj in pickled)
    # Again after the merge: the counter, and the new item with b, which
    # refers to it; a is pickled once.
    assert names == ["a", "b", "b", "counter", "counter", "new", "new"]
    first.abort()
    assert first.root["hits"].value == 2 and first.root["b"].value.name == "new"


def test_new_objects_of_a_merged_commit_keep_their_records(connect) -> None:
    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    setup_items(first, a=0)
    second.abort()
    second.root["hits"].increment()
    second.root["a"].value = Item("made before the merge")
    first.root["hits"].increment()
    first.commit()
    second.commit()
    second.root["a"].other = Item("made after it")
    second.commit()
    third = connect()
    a = third.root["a"]
    assert (a.value.name, a.other.name) == ("made before the merge", "made after it")
    assert a.value._p_oid != a.other._p_oid


def committed_with_garbage(tmp_path) -> tuple[SharedStorage, bytes, bytes]:
    """A shared file storage whose root holds ``keep``, and whose ``junk`` the
    root no longer refers to; the oids of both."""
    shared = SharedStorage(FileStorage(str(tmp_path / "data.durus")))
    writer = Connection(shared.session())
    setup_items(writer, keep=1, junk=2)
    keep, junk = writer.root["keep"]._p_oid, writer.root["junk"]._p_oid
    del writer.root["junk"]
    writer.commit()
    return shared, keep, junk


def test_a_pack_finishing_within_a_commit_does_not_refuse_it(tmp_path) -> None:
    shared, keep, junk = committed_with_garbage(tmp_path)
    session = shared.session()
    record = session.load(keep)
    assert session.claim_commit(wait=True)
    assert session.take_invalidations() == []
    shared.pack()  # between the delivery and the write, as a server's background pack may
    session.apply_commit({keep: record})
    session.release_commit()
    assert session.sync() == [junk]  # still told, at the next delivery


def test_a_commit_that_would_bring_back_what_a_pack_removed_is_refused(tmp_path) -> None:
    shared, keep, junk = committed_with_garbage(tmp_path)
    session = shared.session()
    oid, data, _ = unpack_record(session.load(keep))
    assert session.claim_commit(wait=True)
    session.take_invalidations()
    shared.pack()
    with pytest.raises(WriteConflictError) as refused:
        session.apply_commit({keep: pack_record(oid, data, junk)})
    session.release_commit()
    assert refused.value.oids == [junk]

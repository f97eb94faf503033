"""PostgresStorage on a throwaway PostgreSQL cluster: the storage interface,
serializability and conflict resolution through Connection, non-blocking
disjoint writers, invalidations, oids across processes, packing under
concurrent commits, errors, and (slow) kill -9 of clients and of the server.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from durus.connection import Connection
from durus.error import DamagedRecordError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.persistent_counter import PersistentCounter
from durus.persistent_dict import PersistentDict
from durus.postgres_storage import (
    DEFAULT_PREFETCH,
    SCHEMA_VERSION,
    PostgresStorage,
    PostgresStorageError,
    ReadOnlyStorageError,
    init_schema,
)
from durus._postgres_schema import MIGRATIONS
from durus.record import ROOT_OID, int_to_oid, oid_to_int, pack_record, record_refs, split_oids, unpack_record
from durus.shared_storage import RequestRefusedError
from durus.storage import MemoryStorage, gen_reachable_records
from tests.models import Item

# The in-process conflict tests, run here against PostgreSQL through their
# ``connect`` fixture (defined below): same rules, other storage.
from tests.test_conflicts import (  # noqa: F401
    test_load_meeting_a_change_to_an_object_only_read_still_fails,
    test_after_a_merge_only_what_the_merge_touched_is_pickled_again,
    test_commit_is_seen_by_others_after_their_next_boundary,
    test_counter_increments_merge_instead_of_conflicting,
    test_disjoint_transactions_never_conflict,
    test_load_meeting_a_mergeable_change_fails_and_merges_nothing_mid_transaction,
    test_loading_an_object_changed_alone_just_loads_the_new_state,
    test_loading_an_object_changed_since_the_transaction_used_others_raises_read_conflict,
    test_new_objects_of_a_merged_commit_keep_their_records,
    test_object_read_in_an_earlier_transaction_is_not_in_the_read_set,
    test_read_set_is_validated_write_skew_is_refused,
    test_resolution_does_not_cover_objects_only_read,
    test_resolution_needs_every_conflicting_object_to_resolve,
    test_resolution_rounds_zero_gives_durus43_behaviour,
    test_write_write_conflict_then_abort_and_retry_succeeds,
)


@pytest.fixture
def storages(postgres_dsn):
    """Open PostgresStorages on the test's database; all closed afterwards."""
    opened: list[PostgresStorage] = []

    def open_storage(**options) -> PostgresStorage:
        storage = PostgresStorage(postgres_dsn, **options)
        opened.append(storage)
        return storage

    yield open_storage
    for storage in opened:
        storage.close()


@pytest.fixture
def connect(storages):
    """Connections on the test's database, loading one record per round
    trip (prefetch=0), so that loads meet other commits as in Durus 4.3.
    """
    return lambda: Connection(storages(prefetch=0))


def test_prefetched_object_changed_by_another_is_the_snapshots_version(storages) -> None:
    """With prefetching, an object that came along with a sibling is the
    version of the same snapshot: a load gives that version instead of
    ReadConflictError (the transaction still sees one consistent state),
    and a commit that used it conflicts.
    """
    first, second = Connection(storages(prefetch=100)), Connection(storages(prefetch=100))
    first.root["hits"] = PersistentCounter()
    commit_items(first, a=0)
    second.abort()
    assert second.root["hits"].value == 0  # read, not changed
    second.root["a"]._p_set_status_ghost()
    first.root["hits"].increment()
    first.root["a"].value = 1
    first.commit()
    assert second.root["a"].value == 0
    second.root["b"] = Item("b", second.root["a"].value)
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.root["a"].value == 1


def test_prefetch_brings_siblings_in_the_same_round_trip(connect, storages) -> None:
    writer = connect()
    assert storages().prefetch == DEFAULT_PREFETCH > 0  # on by default
    writer.root["items"] = [Item(number, number) for number in range(50)]
    writer.commit()
    storage = storages(prefetch=100)
    reader = Connection(storage)
    items = reader.root["items"]
    queries = []
    original = storage._fetch
    storage._fetch = lambda oids: queries.append(len(oids)) or original(oids)
    assert [item.value for item in items] == list(range(50))
    assert queries == [50]  # the first item brought the 49 others


def commit_items(connection: Connection, **items: object) -> None:
    for name, value in items.items():
        connection.root[name] = Item(name, value)
    connection.commit()


# -- the storage interface ----------------------------------------------------


def test_records_round_trip_and_missing_oids_raise_key_error(storages) -> None:
    storage = storages()
    oid = storage.new_oid()
    assert oid == ROOT_OID
    other = storage.new_oid()
    record = pack_record(oid, b"data", other)
    storage.begin()
    storage.store(oid, record)
    storage.store(other, pack_record(other, b"more", b""))
    storage.end()
    assert storage.load(oid) == record
    assert list(storage.bulk_load([other, oid])) == [pack_record(other, b"more", b""), record]
    with pytest.raises(DurusKeyError):
        storage.load(int_to_oid(999))
    with pytest.raises(DurusKeyError):
        list(storage.bulk_load([oid, int_to_oid(999)]))
    assert dict(storage.gen_oid_record()) == {oid: record, other: pack_record(other, b"more", b"")}
    assert oid in storage and int_to_oid(999) not in storage


def test_schema_is_versioned_and_created_once(postgres_dsn, storages) -> None:
    storages()
    storages()  # a second open finds it
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM durus_schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert init_schema(conn) == SCHEMA_VERSION  # nothing to do
        conn.execute("UPDATE durus_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(PostgresStorageError, match="upgrade durus"):
        storages()


def test_a_version_1_database_upgrades_on_open_and_keeps_its_records(postgres_dsn, storages) -> None:
    """A database made by the first release (schema 1, its commit function)
    opens with this one: upgraded in place, its records loaded, commits
    through the new function, the old one gone.
    """
    made = Connection(MemoryStorage())
    made.root["before"] = "made by version 1"
    made.commit()
    record = made.get_storage().load(ROOT_OID)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        with conn.transaction():  # as the first release's init_schema did
            conn.execute("CREATE TABLE durus_schema_version (version int NOT NULL)")
            conn.execute("INSERT INTO durus_schema_version VALUES (1)")
            conn.execute(MIGRATIONS[1])
        status = conn.execute(
            "SELECT status FROM durus_commit(pg_current_snapshot(), '{}', '{0}', '{0}', '{0}', %b, %s::int4[], "
            "'{}', '{}')", (record, f"{{{len(record)}}}")).fetchone()[0]
        assert status == "ok"
    assert Connection(storages()).root["before"] == "made by version 1"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM durus_schema_version").fetchone()[0] == SCHEMA_VERSION == 3
        signatures = conn.execute(
            "SELECT pg_get_function_identity_arguments(oid) FROM pg_proc WHERE proname = 'durus_commit'").fetchall()
        assert len(signatures) == 1 and "lock_modes" in signatures[0][0]
    connection = Connection(storages())
    connection.root["after"] = Item("after", 1)
    connection.commit()
    assert Connection(storages()).root["after"].value == 1


def test_version_3_news_reports_what_version_2_did(postgres_dsn, storages) -> None:
    """Version 3 reads what others committed through the txid index, range
    by range; over generated histories (commits by several clients, packs'
    removals, snapshots taken between them, each client's own commits
    skipped) it reports the same oids as version 2's one statement.
    """
    from durus._postgres_commit import COMMIT_FUNCTIONS

    start = COMMIT_FUNCTIONS.index("CREATE OR REPLACE FUNCTION durus_news(")
    version_2 = COMMIT_FUNCTIONS[start:COMMIT_FUNCTIONS.index("$$;", start) + 3]
    rng = random.Random(3)
    writers = [Connection(storages()) for _ in range(3)]
    root = writers[0].root
    for key in range(60):
        root[key] = Item(str(key), 0)
    writers[0].commit()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(version_2.replace("FUNCTION durus_news(", "FUNCTION durus_news_2(", 1))
        snapshots, txids = [], []
        for step in range(40):
            writer = rng.choice(writers)
            writer.abort()
            for key in rng.sample(range(60), rng.randint(1, 6)):
                writer.root[key].value += 1
            writer.commit()
            txids.append(conn.execute("SELECT max(txid)::text FROM durus_object").fetchone()[0])
            if rng.random() < 0.2:
                conn.execute("INSERT INTO durus_removed (txid, oids) VALUES (pg_current_xact_id(), %s)",
                             ([rng.randrange(1000, 2000) for _ in range(3)],))
            if rng.random() < 0.4:
                snapshots.append(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])
        compared = 0
        for snapshot in snapshots:
            own = "{" + ",".join(rng.sample(txids, rng.randint(0, 8))) + "}"
            answers = [
                sorted(set(conn.execute(f"SELECT oids FROM {name}(%s::pg_snapshot, %s::xid8[])",
                                        (snapshot, own)).fetchone()[0]))
                for name in ("durus_news_2", "durus_news")
            ]
            assert answers[0] == answers[1], (snapshot, own)
            compared += bool(answers[0])
        assert compared >= 5


def test_create_false_on_an_empty_database_says_what_to_do(postgres_dsn, storages) -> None:
    with pytest.raises(PostgresStorageError, match="create=True"):
        storages(create=False)
    assert init_schema(postgres_dsn) == 0  # as an owner would, once
    Connection(storages(create=False)).root["x"] = 1


def test_bad_dsn_is_a_clear_error_without_the_password(postgres_cluster) -> None:
    dsn = f"host=127.0.0.1 port={postgres_cluster.port} user=postgres dbname=no_such_db password=sekrit"
    with pytest.raises(PostgresStorageError, match="cannot connect to PostgreSQL") as raised:
        PostgresStorage(dsn)
    assert "no_such_db" in str(raised.value) and "sekrit" not in str(raised.value)


def test_readonly_reads_and_refuses_changes(connect, storages) -> None:
    commit_items(connect(), a=1)
    reader = storages(readonly=True)
    assert Connection(reader).root["a"].value == 1
    with pytest.raises(ReadOnlyStorageError):
        reader.new_oid()
    with pytest.raises(ReadOnlyStorageError):
        reader.begin()
    with pytest.raises(ReadOnlyStorageError):
        reader.pack()


def test_sync_reports_what_others_committed_once(connect, storages) -> None:
    writer = connect()
    commit_items(writer, a=1, b=2)
    watcher = storages()
    assert watcher.sync() == []
    writer.root["a"].value = 10
    writer.commit()
    assert watcher.sync() == [writer.root["a"]._p_oid]
    assert watcher.sync() == []


def test_load_of_an_object_committed_since_the_last_sync_is_a_read_conflict(connect, storages) -> None:
    writer = connect()
    commit_items(writer, a=1)
    reader = storages()
    oid = writer.root["a"]._p_oid
    reader.load(oid)
    writer.root["a"].value = 2
    writer.commit()
    with pytest.raises(ReadConflictError):
        reader.load(oid)
    assert oid in reader.sync()
    reader.load(oid)


def test_own_commits_are_not_invalidations_or_read_conflicts(connect) -> None:
    connection = connect()
    commit_items(connection, a=1)
    storage = connection.get_storage()
    for value in range(3):
        connection.root["a"].value = value
        connection.commit()
        storage.load(connection.root["a"]._p_oid)
    assert storage.sync() == []


def test_reference_to_an_oid_never_handed_out_is_refused_and_nothing_written(connect, storages) -> None:
    commit_items(connect(), a=1)
    storage = storages()
    root = storage.load(ROOT_OID)
    oid, data, refs = unpack_record(root)
    storage.begin()
    storage.store(ROOT_OID, pack_record(oid, data, refs + int_to_oid(10**9)))
    with pytest.raises(RequestRefusedError, match="never handed out"):
        storage.end()
    assert storage.load(ROOT_OID) == root


def test_record_for_an_oid_never_handed_out_is_refused(connect, storages) -> None:
    commit_items(connect(), a=1)
    storage = storages()
    storage.begin()
    storage.store(int_to_oid(10**9), pack_record(int_to_oid(10**9), b"x", b""))
    with pytest.raises(RequestRefusedError, match="never handed out"):
        storage.end()
    with pytest.raises(DurusKeyError):
        storage.load(int_to_oid(10**9))


def test_damaged_record_raises_damaged_record_error(connect, postgres_dsn) -> None:
    writer = connect()
    commit_items(writer, a=1, b=2)
    oid_a, oid_b = writer.root["a"]._p_oid, writer.root["b"]._p_oid
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # a: the state pickle replaced by garbage; b: the row cut short.
        record = bytes(conn.execute("SELECT record FROM durus_object WHERE oid = %s",
                                    (oid_to_int(oid_a),)).fetchone()[0])
        oid, data, refs = unpack_record(record)
        conn.execute("UPDATE durus_object SET record = %s WHERE oid = %s",
                     (pack_record(oid, data[:len(data) // 2] + b"\xff" * 20, refs), oid_to_int(oid_a)))
        conn.execute("UPDATE durus_object SET record = substr(record, 1, 10) WHERE oid = %s",
                     (oid_to_int(oid_b),))
    reader = connect()
    with pytest.raises(DamagedRecordError) as raised:
        reader.root["a"].value
    assert raised.value.oid == oid_a and "durus_object" in str(raised.value)
    with pytest.raises(DamagedRecordError) as raised:
        reader.get_storage().load(oid_b)
    assert raised.value.oid == oid_b


def test_first_connections_in_parallel_all_get_the_one_root(storages) -> None:
    opened = [storages() for _ in range(6)]
    roots, errors = [], []

    def open_connection(storage) -> None:
        try:
            roots.append(Connection(storage).root._p_oid)
        except Exception as error:  # noqa: BLE001 - reported by the assert
            errors.append(error)

    threads = [threading.Thread(target=open_connection, args=(storage,)) for storage in opened]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == [] and roots == [ROOT_OID] * 6


# -- serializability: SPEC §2's write skew, phantom-ish inserts -------------------


def test_write_skew_doctors_on_call_conflicts(connect) -> None:
    """Both doctors see two on call and each takes themself off: one must fail."""
    first, second = connect(), connect()
    commit_items(first, alice=True, bob=True)
    second.abort()
    for connection, me in ((first, "alice"), (second, "bob")):
        on_call = [name for name in ("alice", "bob") if connection.root[name].value]
        assert len(on_call) == 2
        connection.root[me].value = False
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.root["alice"].value is False and second.root["bob"].value is True


def test_inserts_after_finding_each_others_key_absent_conflict(connect) -> None:
    first, second = connect(), connect()
    first.root["rooms"] = PersistentDict()
    first.commit()
    second.abort()
    assert "b" not in first.root["rooms"] and "a" not in second.root["rooms"]
    first.root["rooms"]["a"] = 1
    second.root["rooms"]["b"] = 1
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()


def test_counter_increments_from_worker_processes_all_count(postgres_dsn, storages) -> None:
    connection = Connection(storages())
    connection.root["hits"] = PersistentCounter()
    connection.commit()
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        done = pool.starmap(_increment_counter, [(postgres_dsn, 15)] * 3)
    assert done == [15] * 3
    connection.abort()
    assert connection.root["hits"].value == 45


def _increment_counter(dsn: str, times: int) -> int:
    connection = Connection(PostgresStorage(dsn))
    for _ in range(times):
        connection.root["hits"].increment()
        connection.commit()
    connection.get_storage().close()
    return times


def test_read_then_write_from_worker_processes_never_loses_an_update(postgres_dsn, storages) -> None:
    """Plain read-modify-write of one Item (no merge): conflicts and retries,
    and every acknowledged increment is in the total.
    """
    connection = Connection(storages())
    commit_items(connection, n=0)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        done = pool.starmap(_retrying_increments, [(postgres_dsn, 10)] * 3)
    connection.abort()
    assert connection.root["n"].value == sum(done) == 30


def _retrying_increments(dsn: str, times: int) -> int:
    connection = Connection(PostgresStorage(dsn))
    done = 0
    while done < times:
        try:
            connection.root["n"].value += 1
            connection.commit()
            done += 1
        except (WriteConflictError, ReadConflictError):
            connection.abort()
    connection.get_storage().close()
    return done


# -- disjoint writers do not wait for each other ------------------------------------


def test_a_merged_conflict_costs_one_more_call_in_autocommit(connect, monkeypatch) -> None:
    """The first retry after a conflict is one more call of durus_commit,
    with no transaction opened around it (one round trip, nothing held).
    """
    import durus.postgres_storage as module

    first, second = connect(), connect()
    first.root["hits"] = PersistentCounter()
    first.commit()
    second.abort()
    first.root["hits"].increment(2)
    second.root["hits"].increment(5)
    first.commit()
    calls = []
    original = module.call_commit

    def counted(conn, *args):
        calls.append(conn.info.transaction_status)
        return original(conn, *args)

    monkeypatch.setattr(module, "call_commit", counted)
    second.commit()
    assert calls == [psycopg.pq.TransactionStatus.IDLE] * 2
    assert not second.get_storage().conn.info.transaction_status  # IDLE: nothing left open
    first.abort()
    assert first.root["hits"].value == 7


def test_disjoint_commits_proceed_while_a_row_of_another_object_is_locked(connect, postgres_dsn) -> None:
    setup = connect()
    commit_items(setup, a=0, b=0, z=0)
    first, second, third = connect(), connect(), connect()
    z_oid = setup.root["z"]._p_oid
    with psycopg.connect(postgres_dsn) as blocker:
        # Holds z's row as a commit of z would, for as long as it likes.
        blocker.execute("SELECT 1 FROM durus_object WHERE oid = %s FOR UPDATE", (oid_to_int(z_oid),))
        started = time.monotonic()
        first.root["a"].value = 1
        first.commit()
        second.root["b"].value = 1
        second.commit()
        assert time.monotonic() - started < 10  # did not wait for the blocker
        # A commit of z itself does wait: the lock is real.
        third.root["z"].value = 1
        finished = threading.Event()
        waiter = threading.Thread(target=lambda: (third.commit(), finished.set()))
        waiter.start()
        assert not finished.wait(0.5)
        blocker.rollback()
    waiter.join(10)
    assert finished.is_set()
    setup.abort()
    assert [setup.root[name].value for name in "abz"] == [1, 1, 1]


def test_commits_that_only_read_a_row_do_not_wait_for_each_other_but_a_writer_does(
    connect, postgres_dsn
) -> None:
    """A row only read is locked FOR SHARE: other commits that read it go
    on, one that writes it waits until the reader's commit is over.
    """
    setup = connect()
    commit_items(setup, a=0)
    reader, writer = connect(), connect()
    with psycopg.connect(postgres_dsn) as blocker:
        # Holds the root's row as a commit that read the root would.
        blocker.execute("SELECT 1 FROM durus_object WHERE oid = 0 FOR SHARE")
        reader.root["a"].value = 1  # reads the root, writes a
        read_done = threading.Event()
        threading.Thread(target=lambda: (reader.commit(), read_done.set()), daemon=True).start()
        assert read_done.wait(5), "a commit that only read the root waited for another reader"
        writer.root["new"] = Item("new", 1)  # writes the root
        write_done = threading.Event()
        waiter = threading.Thread(target=lambda: (writer.commit(), write_done.set()))
        waiter.start()
        assert not write_done.wait(0.5)
        blocker.rollback()
    waiter.join(10)
    assert write_done.is_set()
    setup.abort()
    assert setup.root["a"].value == 1 and setup.root["new"].value == 1


# -- oids ---------------------------------------------------------------------------------


def test_oids_are_unique_across_processes(postgres_dsn, storages) -> None:
    Connection(storages())  # the root: oid 0 is no longer handed out
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        batches = pool.starmap(_take_oids, [(postgres_dsn, 300)] * 3)
    everything = [oid for batch in batches for oid in batch]
    assert len(everything) == len(set(everything)) == 900


def _take_oids(dsn: str, count: int) -> list[bytes]:
    storage = PostgresStorage(dsn)
    oids = [storage.new_oid() for _ in range(count // 2)] + storage.new_oids(count - count // 2)
    storage.close()
    return oids


# -- packing --------------------------------------------------------------------------------


def test_pack_removes_the_unreachable_and_reports_progress(connect) -> None:
    connection = connect()
    connection.root["keep"] = Item("keep", [Item("child", 1)])
    connection.root["junk"] = Item("junk", Item("junk child", 2))
    connection.commit()
    junk = connection.root["junk"]
    junk_oids = {junk._p_oid, junk.value._p_oid}
    del connection.root["junk"]
    connection.commit()
    other = connect()  # opened before the pack: told of the removals
    storage = connection.get_storage()
    steps = sum(1 for _ in storage.get_packer())
    assert steps >= 2 and storage.pack_progress.phase == "done"
    assert storage.pack_progress.removed == storage.pack_progress.doomed == 2
    stored = dict(storage.gen_oid_record())
    assert junk_oids.isdisjoint(stored)
    assert set(stored) == {oid for oid, _ in gen_reachable_records(storage)}
    assert set(other.get_storage().sync()) >= junk_oids


def test_commit_referring_to_a_doomed_object_conflicts_and_loses_nothing(connect) -> None:
    connection = connect()
    commit_items(connection, keep=1, junk=2)
    stale = connect()
    junk_in_stale = stale.root["junk"]
    junk_in_stale.value  # loaded while reachable
    del connection.root["junk"]
    connection.commit()
    packer = connection.get_storage().get_packer()
    next(packer)  # marked
    next(packer)  # doomed: from here no commit may bring it back
    stale.abort()
    stale.root["again"] = junk_in_stale
    with pytest.raises(WriteConflictError) as raised:
        stale.commit()
    assert junk_in_stale._p_oid in raised.value.oids
    for _ in packer:
        pass
    stale.abort()
    assert "again" not in stale.root
    assert set(dict(connection.get_storage().gen_oid_record())) == {
        oid for oid, _ in gen_reachable_records(connection.get_storage())}


def test_doom_step_waits_out_a_held_transaction_without_stalling_commits(connect, postgres_dsn) -> None:
    connection = connect()
    commit_items(connection, keep=1, junk=2, other=3)
    other = oid_to_int(connection.root["other"]._p_oid)
    del connection.root["junk"]
    connection.commit()
    writer = connect()
    packer = connection.get_storage().get_packer()
    next(packer)  # marked
    with psycopg.connect(postgres_dsn) as holder:
        # As a client resolving a conflict does: a row held, in a transaction.
        holder.execute("SELECT 1 FROM durus_object WHERE oid = %s FOR UPDATE", (other,))
        for _ in range(3):
            next(packer)  # the doom step cannot have its lock: it lets go
            assert connection.get_storage().pack_progress.phase == "doom"
            started = time.monotonic()
            writer.root["keep"].value += 1
            writer.commit()  # not queued behind the pack
            assert time.monotonic() - started < 5
    for _ in packer:
        pass
    assert connection.get_storage().pack_progress.removed == 1


def test_commit_between_mark_and_doom_keeps_what_it_brings_back(connect) -> None:
    connection = connect()
    connection.root["junk"] = Item("junk", Item("grandchild", 3))
    connection.commit()
    stale = connect()
    junk_in_stale = stale.root["junk"]
    junk_in_stale.value.value  # loaded while reachable, child too
    del connection.root["junk"]
    connection.commit()
    packer = connection.get_storage().get_packer()
    next(packer)  # marked: junk and its child are candidates
    stale.abort()
    stale.root["again"] = junk_in_stale
    stale.commit()  # before the doom step: fine, and the pack must keep both
    for _ in packer:
        pass
    reader = connect()
    assert reader.root["again"].value.value == 3


def test_pack_under_concurrent_commits_keeps_everything_reachable(connect) -> None:
    connection = connect()
    connection.root["items"] = PersistentDict()
    connection.commit()
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        writer = connect()
        number = 0
        try:
            while not stop.is_set():
                items = writer.root["items"]
                items[number] = Item(number, Item("child", number))
                if number >= 5:
                    del items[number - 5]  # garbage for the pack
                number += 1
                try:
                    writer.commit()
                except WriteConflictError:
                    writer.abort()
        except BaseException as error:  # noqa: BLE001 - reported by the assert
            errors.append(error)

    thread = threading.Thread(target=churn)
    thread.start()
    storage = connection.get_storage()
    try:
        for _ in range(3):
            time.sleep(0.2)
            for _ in storage.get_packer():
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    storage.sync()
    reachable = dict(gen_reachable_records(storage))
    for oid, record in reachable.items():
        for ref in split_oids(record_refs(record)):
            assert ref in reachable, f"oid {oid_to_int(oid)} refers to removed {oid_to_int(ref)}"
    reader = connect()
    for number, item in reader.root["items"].items():
        assert item.value.value == number


@pytest.mark.slow
def test_packs_racing_clients_that_relink_detached_objects_lose_nothing_reachable(connect) -> None:
    """Clients detach objects and link them back (from stale copies they
    still hold) while packs run one after another: whatever a commit links
    must survive, or the commit must fail.
    """
    setup = connect()
    setup.root["slots"] = PersistentDict({slot: Item(slot, Item("leaf", slot)) for slot in range(20)})
    setup.commit()
    stop = threading.Event()
    errors: list[BaseException] = []
    relinked = []

    def relinker(seed: int) -> None:
        import random

        chooser = random.Random(seed)
        client = connect()
        held: list[Item] = []
        try:
            while not stop.is_set():
                slots = client.root["slots"]
                slot = chooser.randrange(20)
                relinking = bool(held) and chooser.random() < 0.5
                if relinking:
                    slots[slot] = held.pop(chooser.randrange(len(held)))
                elif slot in slots:
                    held.append(slots.pop(slot))
                try:
                    client.commit()
                    relinked.append(relinking)
                except (WriteConflictError, ReadConflictError):
                    client.abort()
        except BaseException as error:  # noqa: BLE001 - reported by the assert
            errors.append(error)

    threads = [threading.Thread(target=relinker, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    storage = setup.get_storage()
    removed = 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            for _ in storage.get_packer():
                time.sleep(0.005)
            removed += storage.pack_progress.removed
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert removed > 0 and sum(relinked) > 10  # both sides really raced
    storage.sync()
    reachable = dict(gen_reachable_records(storage))
    for oid, record in reachable.items():
        for ref in split_oids(record_refs(record)):
            assert ref in reachable, f"oid {oid_to_int(oid)} refers to removed {oid_to_int(ref)}"
    reader = connect()
    for slot, item in reader.root["slots"].items():
        assert item.value.value == item.name


# -- kill -9 (slow) ------------------------------------------------------------------------------

_COMMITTER = r"""
import sys
from durus.connection import Connection
from durus.postgres_storage import PostgresStorage
from tests.models import Item
connection = Connection(PostgresStorage(sys.argv[1]))
n = int(sys.argv[2])
while True:
    # Two objects per commit, each with the commit's number: both or neither.
    connection.root[f"a{n}"] = Item("a", n)
    connection.root[f"b{n}"] = Item("b", n)
    connection.commit()
    print(n, flush=True)
    n += 1
"""


def _start_committer(dsn: str, first: int) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen([sys.executable, "-c", _COMMITTER, dsn, str(first)], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _acknowledged(process: subprocess.Popen, wait: float) -> list[int]:
    """Kill -9 ``process`` after ``wait`` seconds; the commits it acknowledged."""
    time.sleep(wait)
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=30)
    return [int(line) for line in output.split()]


def _assert_whole_commits(connection: Connection, acknowledged: set[int]) -> None:
    connection.abort()
    names = set(connection.root)
    numbers = {int(name[1:]) for name in names if name[0] in "ab"}
    for number in numbers:
        assert f"a{number}" in names and f"b{number}" in names, f"commit {number} is partial"
        assert connection.root[f"a{number}"].value == number
    missing = acknowledged - numbers
    assert not missing, f"acknowledged commits lost: {sorted(missing)[:5]}"


@pytest.mark.slow
def test_kill_9_of_clients_mid_commit_loses_nothing_acknowledged(postgres_dsn, storages) -> None:
    connection = Connection(storages())
    acknowledged: set[int] = set()
    first = 0
    for round_ in range(12):
        process = _start_committer(postgres_dsn, first)
        done = _acknowledged(process, 0.8 + 0.13 * round_)
        acknowledged.update(done)
        first = (max(done) + 1 if done else first) + 1000  # no number reused
        _assert_whole_commits(connection, acknowledged)
    assert len(acknowledged) > 20  # the kills did land among commits


@pytest.mark.slow
def test_kill_9_of_the_server_during_commits_loses_nothing_acknowledged() -> None:
    from support.postgres import find_bindir, throwaway_cluster

    if find_bindir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    with throwaway_cluster() as cluster:
        dsn = cluster.new_dsn()
        PostgresStorage(dsn).close()
        acknowledged: set[int] = set()
        first = 0
        for round_ in range(4):
            process = _start_committer(dsn, first)
            time.sleep(1.0 + 0.3 * round_)
            cluster.kill()
            output, _ = process.communicate(timeout=30)
            done = [int(line) for line in output.split()]
            acknowledged.update(done)
            first = (max(done) + 1 if done else first) + 1000
            cluster.start()
            storage = PostgresStorage(dsn)
            _assert_whole_commits(Connection(storage), acknowledged)
            storage.close()
        assert len(acknowledged) > 10


def test_a_storage_whose_server_restarted_asks_to_be_opened_again() -> None:
    """After a crash PostgreSQL may hand out again transaction ids that
    never reached the disk, so a snapshot from before cannot say which rows
    are news: a storage that finds the server restarted refuses to go on
    (its Connection's states could be stale) rather than read past it.
    """
    from support.postgres import find_bindir, throwaway_cluster

    if find_bindir() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    with throwaway_cluster() as cluster:
        dsn = cluster.new_dsn()
        connection = Connection(PostgresStorage(dsn))
        connection.get_root()["kept"] = 1
        connection.commit()
        cluster.kill()
        cluster.start()
        with pytest.raises(PostgresStorageError, match="restarted"):
            connection.abort()
        with pytest.raises(PostgresStorageError, match="restarted"):
            connection.get_root()["x"] = 2
            connection.commit()
        connection.storage.close()
        fresh = Connection(PostgresStorage(dsn))
        assert fresh.get_root()["kept"] == 1
        fresh.get_root()["kept"] = 2
        fresh.commit()
        fresh.storage.close()


# -- generated: concurrent transactions commit only serializable outcomes ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_serializable_property import (  # noqa: E402
    COMMON,
    MAX_TRANSACTIONS,
    Cluster,
    check_serializable,
    initial_states,
    transactions,
)


class PostgresExamples(Cluster):
    """test_serializable_property's examples, each transaction through its
    own PostgresStorage on one database.
    """

    def __init__(self, dsn: str, prefetch: int) -> None:
        self.admin = Connection(PostgresStorage(dsn))
        self.connections = [Connection(PostgresStorage(dsn, prefetch=prefetch)) for _ in range(MAX_TRANSACTIONS)]
        self.names = iter(range(10**9))


@pytest.fixture(scope="module", params=[0, 100], ids=["no-prefetch", "prefetch"])
def pg_examples(postgres_cluster, request):
    examples = PostgresExamples(postgres_cluster.new_dsn(), request.param)
    yield examples
    examples.close()


@settings(max_examples=200, **COMMON)
@given(initial=initial_states, txns=transactions, data=st.data())
def test_concurrent_transactions_commit_only_serializable_outcomes(pg_examples, initial, txns, data) -> None:
    check_serializable(pg_examples, initial, txns, data)


@pytest.mark.slow
@settings(max_examples=1500, **COMMON)
@given(initial=initial_states, txns=transactions, data=st.data())
def test_concurrent_transactions_commit_only_serializable_outcomes_at_length(pg_examples, initial, txns, data) -> None:
    check_serializable(pg_examples, initial, txns, data)

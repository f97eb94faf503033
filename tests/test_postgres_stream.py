"""A large commit's new records written ahead (durus/_postgres_stream.py):
the same rows as a commit sent whole, nothing visible before the commit,
nothing left after one that fails, whatever happens in the middle of the
pickling (generated: an error, a load, another client's conflicting
commit, the session killed), and a client killed mid-stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durus.connection import Connection
from durus.error import ConflictError
from durus.persistent import GHOST
from durus.persistent_dict import PersistentDict
from durus.postgres_storage import CommitInDoubtError, PostgresStorage
from durus._postgres_session import PostgresSession
from durus.record import oid_to_int, pack_record
from tests.models import Hooked, Item

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def copies(monkeypatch) -> list[str]:
    """The COPY statements sessions start (a spy on the real session)."""
    started: list[str] = []
    original = PostgresSession.copy_in

    def spy(self, sql):
        started.append(sql)
        return original(self, sql)

    monkeypatch.setattr(PostgresSession, "copy_in", spy)
    return started


@pytest.fixture
def hook():
    """Set ``Hooked.hook`` for the test; cleared afterwards."""
    yield lambda function: setattr(Hooked, "hook", function)
    Hooked.hook = None


def rows(dsn: str, where: str = "true", params: tuple = ()) -> list[tuple]:
    """``(oid, record, refs)`` of the committed rows, seen from outside."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"SELECT oid, record, refs FROM durus_object WHERE {where} ORDER BY oid", params).fetchall()


def build(connection: Connection, count: int) -> None:
    """A list of ``count`` new objects, some referring to each other and
    to a stored one, in one commit.
    """
    connection.root["anchor"] = anchor = Item("anchor", 0)
    connection.commit()
    items = [Hooked(number) for number in range(count)]
    for number, item in enumerate(items):
        item.next = items[(number * 7) % count]
        item.anchor = anchor
    connection.root["items"] = items
    connection.commit()


def test_streamed_rows_are_the_rows_a_whole_commit_writes(postgres_cluster, copies) -> None:
    dsns = [postgres_cluster.new_dsn(), postgres_cluster.new_dsn()]
    for dsn, after in zip(dsns, (0, 3)):
        storage = PostgresStorage(dsn, stream_after=after)
        connection = Connection(storage)
        build(connection, 500)
        items = connection.root["items"]
        storage.close()
        if after == 0:
            assert copies == []  # sent whole
    assert len(copies) >= 1  # streamed, COPY by COPY
    assert all(item._p_status != GHOST for item in items)  # not taken for others' news: still loaded
    whole, streamed = rows(dsns[0]), rows(dsns[1])
    assert len(whole) == 500 + 2  # the items, the anchor and the root (the list is in its state)
    assert streamed == whole  # same oids, same bytes, same refs column


def test_nothing_is_visible_before_the_commit_returns(postgres_dsn, hook, copies) -> None:
    storage = PostgresStorage(postgres_dsn, stream_after=10)
    connection = Connection(storage)
    seen_midway: list[int] = []

    def look(item: Hooked) -> None:
        if item.value == 5:  # late in the pickling: LIFO, most are written
            seen_midway.append(len(rows(postgres_dsn)))

    before = len(rows(postgres_dsn))  # the root
    hook(look)
    connection.root["items"] = [Hooked(number) for number in range(300)]
    connection.commit()
    assert copies and seen_midway == [before]  # streaming was under way; nothing showed
    assert len(rows(postgres_dsn)) == before + 300
    storage.close()


def test_a_commit_of_few_new_objects_is_not_streamed(postgres_dsn, copies) -> None:
    connection = Connection(PostgresStorage(postgres_dsn))
    connection.root["items"] = [Item(str(number)) for number in range(50)]
    connection.commit()
    assert copies == []
    connection.get_storage().close()


# -- whatever happens in the middle: generated ------------------------------

EVENTS = ("none", "error", "load", "load of news", "merged conflict", "read conflict", "session killed")


class Boom(Exception):
    pass


def _event(kind: str, dsn: str, connection: Connection, key: str, other: Connection):
    """What the hook does when the stream is under way."""
    storage = connection.get_storage()

    def happen(item: Hooked) -> None:
        if kind == "error":
            raise Boom("a state that will not pickle")
        if kind == "load":
            assert connection.root["ghost"].value == "ghost"  # a query in the middle of the COPY
        if kind == "load of news":
            # Another commit of it first: the load syncs (which ends any
            # transaction the session holds) and then loads.
            other.root["ghost"].name += "!"
            other.commit()
            assert connection.root["ghost"].value == "ghost"
        if kind == "merged conflict":
            other.root[key + "-other"] = "theirs"  # the root: a PersistentDict, merged
            other.commit()
        if kind == "read conflict":
            other.root["shared"].value += 1  # read by the transaction, never merged
            other.commit()
        if kind == "session killed":
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (storage.conn.info.backend_pid,))

    return happen


@pytest.fixture(scope="module")
def stream_database(postgres_cluster) -> str:
    dsn = postgres_cluster.new_dsn()
    setup = Connection(PostgresStorage(dsn))
    setup.root["ghost"] = Item("ghost", "ghost")
    setup.root["shared"] = Item("shared", 0)
    setup.commit()
    setup.get_storage().close()
    return dsn


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(EVENTS), count=st.integers(1, 60), after=st.integers(1, 8),
       at=st.integers(0, 59), number=st.integers(0, 10**9))
def test_a_streamed_commit_is_all_or_nothing_whatever_happens_midway(
        stream_database, hook, kind, count, after, at, number) -> None:
    dsn, key = stream_database, f"c{number}-{kind.replace(' ', '-')}-{count}-{after}-{at}"
    storage = PostgresStorage(dsn, stream_after=after, prefetch=0)
    other = Connection(PostgresStorage(dsn))
    connection = Connection(storage)
    try:
        connection.root["shared"].value  # read: a commit of it by another conflicts
        connection.root["ghost"]._p_set_status_ghost()
        items = [Hooked(f"{key}:{position}") for position in range(count)]
        connection.root[key] = PersistentDict({position: item for position, item in enumerate(items)})
        calls = []

        def maybe(item: Hooked) -> None:
            calls.append(item)
            if len(calls) == min(at, count - 1) + 1 and kind != "none":
                happen(item)

        happen = _event(kind, dsn, connection, key, other)
        hook(maybe)
        try:
            connection.commit()
            committed = True
        except (Boom, ConflictError, CommitInDoubtError):
            committed = False
        hook(None)
        assert storage.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if committed:
            assert kind not in ("error", "read conflict")
            fresh = Connection(PostgresStorage(dsn))
            assert [item.value for item in fresh.root[key].values()] == [
                f"{key}:{position}" for position in range(count)]
            if kind == "merged conflict":
                assert fresh.root[key + "-other"] == "theirs"
            assert len(holding(dsn, key + ":")) == count  # each once
            fresh.get_storage().close()
        else:
            assert kind in ("error", "read conflict", "session killed")
            assert holding(dsn, key) == []  # nothing of it (a failed commit takes the oids back: by content)
            connection.abort()
            assert key not in connection.root
        # The storage goes on: the next commit works and is seen.
        connection.root[key + "-after"] = Item("after", 1)
        connection.commit()
        assert len(rows(dsn, "oid = %s", (oid_to_int(connection.root[key + "-after"]._p_oid),))) == 1
    finally:
        hook(None)
        storage.close()
        other.get_storage().close()


def test_a_conflict_then_resolution_writes_each_new_object_once(postgres_dsn, hook, copies) -> None:
    """The streamed try rolls back; the resolved commit is sent whole."""
    storage = PostgresStorage(postgres_dsn, stream_after=5)
    other = Connection(PostgresStorage(postgres_dsn))
    connection = Connection(storage)
    connection.root["bag"] = PersistentDict()
    connection.commit()
    other.abort()
    fired = []

    def interfere(item: Hooked) -> None:
        if not fired:
            fired.append(item)
            other.root["bag"]["theirs"] = 1
            other.commit()

    hook(interfere)
    for number in range(100):
        connection.root["bag"][number] = Hooked(number)
    connection.commit()
    hook(None)
    assert copies  # the first try streamed
    oids = [oid_to_int(item._p_oid) for item in connection.root["bag"].values() if isinstance(item, Hooked)]
    assert len(rows(postgres_dsn, "oid = ANY (%s)", (oids,))) == 100
    fresh = Connection(PostgresStorage(postgres_dsn))
    assert sorted(key for key in fresh.root["bag"] if key != "theirs") == list(range(100))
    assert fresh.root["bag"]["theirs"] == 1
    for storage_ in (storage, other.get_storage(), fresh.get_storage()):
        storage_.close()


def test_a_reference_to_an_object_a_pack_removed_refuses_the_streamed_commit(postgres_dsn, copies) -> None:
    connection = Connection(PostgresStorage(postgres_dsn, stream_after=2))
    connection.root["junk"] = Item("junk", 1)
    connection.commit()
    stale = Connection(PostgresStorage(postgres_dsn, stream_after=2, prefetch=0))
    junk = stale.root["junk"]
    junk.value  # loaded while reachable
    del connection.root["junk"]
    connection.commit()
    connection.pack()
    stale.abort()
    items = [Hooked(f"refers-to-junk-{number}") for number in range(20)]
    for item in items:
        item.junk = junk  # refers to what the pack removed, from new objects only
    stale.root["items"] = items
    with pytest.raises(ConflictError):
        stale.commit()
    assert copies  # the new objects were streamed, then rolled back
    assert holding(postgres_dsn, "refers-to-junk-") == []
    stale.abort()
    assert "items" not in stale.root
    for storage in (connection.get_storage(), stale.get_storage()):
        storage.close()


@pytest.mark.parametrize("after", [0, 1, 2, 3])
@pytest.mark.parametrize("order", ["again while pending", "again after written"])
def test_a_record_stored_twice_commits_the_last_one(postgres_dsn, after, order) -> None:
    """Through the storage interface itself, as every storage does."""
    storage = PostgresStorage(postgres_dsn, stream_after=after)
    Connection(storage).commit()  # the root
    first, second, third = storage.new_oids(3)
    storage.begin()
    storage.store(first, pack_record(first, b"first", b""))
    if order == "again while pending":
        storage.store(first, pack_record(first, b"last", b""))
        storage.store(second, pack_record(second, b"other", b""))
    else:
        storage.store(second, pack_record(second, b"other", b""))
        storage.store(third, pack_record(third, b"third", b""))
        storage.store(first, pack_record(first, b"last", b""))
    storage.end()
    committed = {oid: bytes(record) for oid, record, _ in rows(postgres_dsn, "oid > 0")}
    assert committed[oid_to_int(first)] == pack_record(first, b"last", b"")
    assert committed[oid_to_int(second)] == pack_record(second, b"other", b"")
    storage.close()


@pytest.mark.parametrize("statement", ["BEGIN", "SELECT pg_current_xact_id()"])
def test_an_interruption_as_the_stream_opens_leaves_no_transaction_behind(
        postgres_dsn, monkeypatch, statement) -> None:
    """A KeyboardInterrupt that lands just after a statement of the stream's
    opening: the commit after it is written, not kept in a transaction that
    would never commit.
    """
    storage = PostgresStorage(postgres_dsn, stream_after=1)
    connection = Connection(storage)
    original, fired = PostgresSession.execute, []

    def execute(self, sql, *args, **options):
        cursor = original(self, sql, *args, **options)
        if sql.startswith(statement) and not fired:
            fired.append(sql)
            raise KeyboardInterrupt
        return cursor

    monkeypatch.setattr(PostgresSession, "execute", execute)
    connection.root["items"] = [Item(str(number)) for number in range(5)]
    with pytest.raises(KeyboardInterrupt):
        connection.commit()
    assert fired
    connection.root["items"] = [Item(str(number)) for number in range(5)]
    connection.commit()  # the application tries again
    connection.root["more"] = Item("more")
    connection.commit()
    assert storage.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    fresh = Connection(PostgresStorage(postgres_dsn))
    assert [item.name for item in fresh.root["items"]] == [str(number) for number in range(5)]
    assert fresh.root["more"].name == "more"
    fresh.get_storage().close()
    storage.close()


# -- a client killed mid-stream ---------------------------------------------

_STREAMER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{repo!r}]
    from durus.connection import Connection
    from durus.postgres_storage import PostgresStorage
    from tests.models import Hooked

    def slow(item):
        if item.value == 0:
            print("streaming", flush=True)
        time.sleep(0.002)

    Hooked.hook = slow
    connection = Connection(PostgresStorage({dsn!r}, stream_after=10))
    connection.root["items"] = [Hooked(number) for number in range(1, 2000)] + [Hooked(0)]
    connection.commit()
    print("committed", flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.6, 1.5])
def test_a_client_killed_mid_stream_leaves_nothing(postgres_dsn, delay) -> None:
    """Killed while its rows stream (kill -9 at several points): none of
    them appear, no transaction stays behind, and others commit.
    """
    Connection(PostgresStorage(postgres_dsn)).commit()  # the root
    script = _STREAMER.format(repo=REPO, dsn=postgres_dsn)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "streaming"  # the last object pickled first, then the rest
    deadline = time.monotonic() + 10
    while not copying(postgres_dsn) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    streaming = copying(postgres_dsn)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert streaming  # it was streaming when killed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and rows_in_flight(postgres_dsn):
        time.sleep(0.05)
    assert not rows_in_flight(postgres_dsn)
    assert len(rows(postgres_dsn)) == 1  # the root only
    connection = Connection(PostgresStorage(postgres_dsn))
    connection.root["after"] = [Item(str(number)) for number in range(300)]
    connection.commit()
    assert len(rows(postgres_dsn)) == 1 + 300
    connection.get_storage().close()


def holding(dsn: str, text: str) -> list[tuple]:
    """The committed rows whose record holds ``text`` (small states are
    stored uncompressed: a test's unique values show).
    """
    return rows(dsn, "position(%s::bytea in record) > 0", (text.encode(),))


def copying(dsn: str) -> bool:
    """Whether a session of the database is in a COPY into durus_object."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND query LIKE 'COPY durus_object%%' AND state = 'active'").fetchone()[0] > 0


def rows_in_flight(dsn: str) -> int:
    """Sessions of the database still in a transaction or a COPY."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%%' OR query LIKE 'COPY%%')"
        ).fetchone()[0]

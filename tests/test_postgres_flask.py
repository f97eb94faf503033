"""The extension with ``DURUS_STORAGE = "postgresql://..."``: requests, replays
and 409s, processes seeing each other's commits, forks, the CLI, a database
that is down (503, then recovery), a postmaster killed mid-requests, and the
wiki deployed with gunicorn workers straight on PostgreSQL.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from durus.connection import Connection
from durus.error import DurusKeyError
from durus.file_storage import FileStorage
from durus.postgres_storage import PostgresStorage
from flask_durus import signals
from flask_durus.testing import free_port
from tests.flask_apps.bank import create_app
from tests.support.postgres import Cluster, throwaway_cluster, uri_of
from tests.support.postgres import postgres_cluster  # noqa: F401  (the session's cluster fixture)
from tests.test_flask_extension import recorded, run_in_fork

REPO = Path(__file__).resolve().parent.parent


def new_database(cluster: Cluster, scheme: str = "postgresql") -> str:
    """A fresh database's URI, its schema made by one client first (so that
    the app's concurrent first requests do not race to create it).
    """
    uri = uri_of(cluster.new_dsn(), scheme)
    PostgresStorage(uri).close()
    return uri


@pytest.fixture
def database(postgres_cluster: Cluster) -> str:  # noqa: F811
    """A fresh database's URI."""
    return new_database(postgres_cluster)


def bank(uri: str, **config: object):
    return create_app({"TESTING": True, "DURUS_STORAGE": uri, "DURUS_RETRY_DELAY": 0.002, **config})


@pytest.fixture
def app(database: str):
    app = bank(database)
    yield app
    app.extensions["durus"].close(app)


def read_root(uri: str) -> dict:
    """The root mapping as a new client sees it now (plain values only)."""
    storage = PostgresStorage(uri, readonly=True)
    try:
        root = Connection(storage).get_root()
        return {key: (sorted(value.keys()) if key == "accounts" else value) for key, value in root.items()}
    finally:
        storage.close()


# -- requests -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_requests_commit_to_postgresql(postgres_cluster: Cluster, scheme: str) -> None:  # noqa: F811
    uri = new_database(postgres_cluster, scheme)
    app = bank(uri)
    try:
        client = app.test_client()
        assert [client.post("/counter").json["counter"] for _ in range(3)] == [1, 2, 3]
        assert read_root(uri)["counter"] == 3  # another client sees every commit
        with recorded(signals.connection_checked_out) as checkouts:
            assert client.get("/counter").json == {"counter": 3}
        assert len(checkouts) == 1
    finally:
        app.extensions["durus"].close(app)


def test_first_requests_at_once_on_a_database_without_the_schema_all_succeed(postgres_cluster):  # noqa: F811
    """Workers starting together on a new database all create the schema at
    their first request; none of those requests fails.
    """
    app = bank(uri_of(postgres_cluster.new_dsn()), DURUS_RETRY_ATTEMPTS=10)
    try:
        barrier = threading.Barrier(6)
        statuses: list[int] = []

        def first_request() -> None:
            client = app.test_client()
            barrier.wait()
            statuses.append(client.get("/counter").status_code)  # opens a storage, makes the root

        threads = [threading.Thread(target=first_request) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 6  # an error would have ended its thread with no status
    finally:
        app.extensions["durus"].close(app)


def test_a_vetoed_response_commits_nothing(app, database):
    client = app.test_client()
    assert client.post("/accounts", json={"a": 10, "b": 0}).status_code == 200
    assert client.post("/transfer", json={"from": "a", "to": "b", "amount": 50}).status_code == 422
    assert client.post("/transfer", json={"from": "a", "to": "b", "amount": 4}).status_code == 200
    assert client.get("/total").json == {"total": 10, "count": 2}
    storage = PostgresStorage(database, readonly=True)
    try:
        accounts = Connection(storage).get_root()["accounts"]
        assert (accounts["a"].balance, accounts["b"].balance) == (6, 4)
    finally:
        storage.close()


def overlapping_slow_requests(app, count: int) -> list:
    """``count`` requests at once that each read, wait and write one key."""
    barrier = threading.Barrier(count)
    responses: list = [None] * count

    def run(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/slow?sleep=0.3")
        responses[index] = (response.status_code, response.json if response.status_code == 200 else None)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_a_conflicting_request_is_replayed_and_both_count(app):
    responses = overlapping_slow_requests(app, 2)
    assert [status for status, _ in responses] == [200, 200]
    assert sorted(body["slow"] for _, body in responses) == [1, 2]
    assert max(body["run"] for _, body in responses) >= 2  # one of them ran again
    assert app.test_client().post("/slow?sleep=0").json["slow"] == 3


def test_a_conflict_with_no_replays_left_is_a_409(database):
    app = bank(database, DURUS_RETRY_ATTEMPTS=0)
    try:
        responses = overlapping_slow_requests(app, 2)
        assert sorted(status for status, _ in responses) == [200, 409]
        assert app.test_client().post("/slow?sleep=0").json["slow"] == 2  # the 409 left nothing
    finally:
        app.extensions["durus"].close(app)


def test_threads_hammering_one_counter_lose_no_increment(app):
    statuses: Counter = Counter()
    lock = threading.Lock()

    def hammer() -> None:
        client = app.test_client()
        for _ in range(15):
            status = client.post("/counter").status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 409} and statuses[200] > 0
    assert app.test_client().get("/counter").json["counter"] == statuses[200]


# -- processes --------------------------------------------------------------------


def test_two_apps_see_each_others_commits_at_their_next_request(database):
    first, second = bank(database), bank(database)
    try:
        one, two = first.test_client(), second.test_client()
        assert one.post("/counter").json["counter"] == 1
        assert two.post("/counter").json["counter"] == 2
        assert one.get("/counter").json["counter"] == 2
        assert one.post("/counter").json["counter"] == 3
        assert two.get("/counter").json["counter"] == 3
    finally:
        for app in (first, second):
            app.extensions["durus"].close(app)


def test_another_process_commits_and_the_next_request_sees_it(app, database):
    client = app.test_client()
    assert client.post("/counter").json["counter"] == 1
    script = (
        "from tests.flask_apps.bank import create_app\n"
        f"app = create_app({{'DURUS_STORAGE': {database!r}}})\n"
        "print(app.test_client().post('/counter').json['counter'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "2", result.stderr
    assert client.get("/counter").json["counter"] == 2


def test_a_forked_child_opens_its_own_storage_and_leaves_the_parents_session_alone(app, database):
    client = app.test_client()
    with recorded(signals.connection_checked_out) as checkouts:
        assert client.post("/counter").json["counter"] == 1  # this connection is now idle in the pool
    parents = checkouts[0][1]["connection"]
    backend = parents.get_storage().conn.info.backend_pid

    def child():
        response = app.test_client().post("/counter")
        gc.collect()  # the inherited storages, forgotten by the pool, are garbage now
        return [response.status_code, response.json["counter"]]

    assert run_in_fork(child) == {"value": [200, 2]}
    with recorded(signals.connection_checked_out) as checkouts:
        assert client.post("/counter").json["counter"] == 3
    assert checkouts[0][1]["connection"] is parents  # not dropped as dead and replaced
    with psycopg.connect(database, autocommit=True) as other:
        alive = other.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0]
    assert alive == 1


# -- the CLI ------------------------------------------------------------------------


def test_cli_info_pack_and_backup(app, database, tmp_path):
    client = app.test_client()
    client.post("/accounts", json={f"k{i}": i for i in range(50)})
    client.post("/counter")
    storage = PostgresStorage(database)
    try:
        connection = Connection(storage)
        dropped = connection.get_root()["accounts"]["k7"]
        connection.commit()
        dead_oid = dropped._p_oid
    finally:
        storage.close()
    app.test_client().post("/accounts", json={"k7": 70})  # the old k7 is unreachable now
    runner = app.test_cli_runner()

    result = runner.invoke(args=["durus", "info"])
    assert result.exit_code == 0, result.output
    assert f"Storage: {database}" in result.output
    reachable = int(result.output.split("Objects reachable from the root: ")[1].split()[0])
    assert reachable >= 52  # the root, the tree, 50 accounts
    assert "Database size: " in result.output

    result = runner.invoke(args=["durus", "pack"])
    assert result.exit_code == 0, result.output
    assert "finished" in result.output
    assert int(result.output.split("removed ")[1].split()[0]) >= 1  # the old k7 at least
    result = runner.invoke(args=["durus", "pack", "--progress"])
    assert result.exit_code == 0 and "removed 0 unreachable records; finished" in result.output, result.output
    check = PostgresStorage(database, readonly=True)
    try:
        with pytest.raises(DurusKeyError):
            check.load(dead_oid)
    finally:
        check.close()

    destination = tmp_path / "backup.durus"
    result = runner.invoke(args=["durus", "backup", str(destination)])
    assert result.exit_code == 0, result.output
    copy = FileStorage(str(destination), readonly=True)
    try:
        root = Connection(copy).get_root()
        assert root["counter"] == 1 and root["accounts"]["k7"].balance == 70 and len(root["accounts"]) == 50
    finally:
        copy.close()


@pytest.mark.parametrize("command", ["serve", "stop"])
def test_cli_serve_and_stop_say_there_is_nothing_to_serve(app, command):
    result = app.test_cli_runner().invoke(args=["durus", command])
    assert result.exit_code != 0
    assert "is a PostgreSQL database" in result.output
    assert "there is no Durus storage server to run or stop" in result.output


def test_a_database_that_cannot_be_reached_is_a_503_and_the_cli_says_why():
    app = bank(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        response = app.test_client().post("/counter")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        result = app.test_cli_runner().invoke(args=["durus", "info"])
        assert result.exit_code != 0 and "cannot connect to PostgreSQL" in result.output
    finally:
        app.extensions["durus"].close(app)


def test_a_database_host_that_never_answers_is_a_503_after_the_socket_timeout():
    """A listener that accepts and then says nothing (a hung host): the
    connection attempt gives up after DURUS_SOCKET_TIMEOUT, not never.
    """
    with socket.create_server(("127.0.0.1", 0)) as silent:
        app = bank(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/hung", DURUS_SOCKET_TIMEOUT=2)
        try:
            started = time.monotonic()
            assert app.test_client().post("/counter").status_code == 503
            assert 1.5 < time.monotonic() - started < 30
        finally:
            app.extensions["durus"].close(app)


# -- the database goes away ------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_postmaster_gives_503s_then_recovers_with_every_acknowledged_commit(postgres_cluster):  # noqa: F811
    """Threads add accounts (one per request, each name unique) while the
    postmaster and its children are killed with SIGKILL, twice; while it is
    down the app answers 503 promptly; once it is back every request
    succeeds, and every account a 200 acknowledged is stored.

    On a cluster of its own, so the session's is never killed (the session's
    fixture is asked for only to skip, or fail under CI, without PostgreSQL).
    """
    with throwaway_cluster() as cluster:
        uri = new_database(cluster)
        app = bank(uri, DURUS_RETRY_ATTEMPTS=5)
        acknowledged: list[str] = []
        statuses: Counter = Counter()
        lock = threading.Lock()
        stop = threading.Event()

        def add_accounts(thread: int) -> None:
            client = app.test_client()
            number = 0
            while not stop.is_set():
                name = f"t{thread}-{number}"
                number += 1
                status = client.post("/accounts", json={name: 1}).status_code
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        acknowledged.append(name)
                if status == 503:
                    time.sleep(0.05)

        threads = [threading.Thread(target=add_accounts, args=(index,)) for index in range(3)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(2):
                time.sleep(1.0)
                cluster.kill()
                time.sleep(1.0)
                with lock:
                    down_before = statuses[503]
                time.sleep(0.5)
                with lock:
                    assert statuses[503] > down_before, statuses  # answered, with 503s, while down
                cluster.start()
        finally:
            time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join(60)
        assert set(statuses) <= {200, 409, 503}, statuses
        client = app.test_client()
        after = [client.post("/accounts", json={f"after-{i}": 1}).status_code for i in range(5)]
        assert after == [200] * 5
        stored = set(read_root(uri)["accounts"])
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged commits lost: {sorted(missing)[:10]}"
        assert len(acknowledged) > 10
        app.extensions["durus"].close(app)


# -- the wiki on PostgreSQL, gunicorn workers and no storage server ----------------------


@pytest.mark.slow
def test_the_wiki_with_two_gunicorn_workers_on_postgresql_loses_no_edit(postgres_cluster, tmp_path):  # noqa: F811
    from tests.support.wiki_site import FAST_HASH, Client, run_clients, wait_for_http

    uri = uri_of(postgres_cluster.new_dsn())  # no schema yet: the workers' first requests make it
    port = free_port()
    log = tmp_path / "wiki.log"
    env = {**os.environ, "FLASK_PASSWORD_HASH_METHOD": FAST_HASH, "PYTHONPATH": str(REPO)}
    env.pop("FLASK_DURUS_STORAGE", None)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--postgres", uri, "--port", str(port), "--workers", "2",
             "--instance", str(tmp_path)],
            cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_http(port, process, log, timeout=60)
        count, rounds = 6, 5
        clients = [Client(port) for _ in range(count)]
        password = "long password"
        signed_up = run_clients(count, lambda i: clients[i].post_form_again_after_409(
            "/signup", {"name": f"editor{i}", "password": password, "confirm": password}).status)
        assert signed_up == [302] * count
        assert clients[0].post_form("/new", {"title": "shared", "text": "v0"}).status == 302

        def edit_loop(i: int) -> tuple[list[str], int]:
            saved, reported = [], 0
            for round in range(rounds):
                text = f"by {i} round {round}"
                response = clients[i].edit("shared", "shared", text, clients[i].current_revision("shared"))
                assert response.status in (302, 409), response.text[:300]
                if response.status == 302:
                    saved.append(text)
                else:
                    reported += 1
            return saved, reported

        results = run_clients(count, edit_loop)
        saved = [text for texts, _ in results for text in texts]
        assert len(saved) + sum(reported for _, reported in results) == count * rounds
        reader = Client(port)
        history = reader.get("/wiki/shared/history?page=1").text
        assert f"{1 + len(saved)} revisions" in history  # every saved edit is one revision, no more
        texts = [re.search(r'<div class="text"><p>(.*?)</p>', reader.get(f"/wiki/shared/rev/{number}").text)
                 .group(1) for number in range(1, len(saved) + 2)]
        assert sorted(texts) == sorted(["v0", *saved])
        check = subprocess.run(
            [sys.executable, "-m", "flask", "--app", f"example_app:create_app(instance_path={str(tmp_path)!r})",
             "wiki", "check"],
            cwd=REPO, env={**env, "FLASK_DURUS_STORAGE": uri}, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "The wiki is consistent" in check.stdout
    finally:
        process.send_signal(2)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-2000:]


def test_the_wiki_backs_up_its_postgresql_database(database, tmp_path):
    """The wiki's own `flask backup` reads the live database (read-only)."""
    from example_app import create_app

    app = create_app({"DURUS_STORAGE": database, "SECRET_KEY": "test"},
                     instance_path=str(tmp_path / "instance"))
    try:
        app.test_client().get("/")  # the app makes its wiki
        result = app.test_cli_runner().invoke(args=["backup", str(tmp_path / "wiki.durus")])
    finally:
        app.extensions["durus"].close(app)
    assert result.exit_code == 0, result.output
    assert "Backed up postgresql://" in result.output and "0 wiki pages" in result.output
    copy = FileStorage(str(tmp_path / "wiki.durus"), readonly=True)
    try:
        assert "wiki" in Connection(copy).get_root()
    finally:
        copy.close()

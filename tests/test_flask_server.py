"""The extension against a real storage server process: the Flask test
client (threads included), a server stopped and restarted under a running
app, forks, the pytest plugin's fixtures and the CLI commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from durus.client_storage import ClientStorage

from flask_durus import signals
from flask_durus.testing import StorageServerProcess, app_root, storage_server
from tests.flask_apps.bank import Account, create_app
from tests.server_process import ServerProcess
from tests.test_flask_extension import REPO, recorded, run_in_fork

# The plugin's fixtures, until the package registers the plugin itself.
from flask_durus.testing import durus_app, durus_client, durus_config, durus_root, durus_server  # noqa: F401


@pytest.fixture
def server(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        yield server


@pytest.fixture
def app(server):
    host, port = server.address
    app = create_app({"TESTING": True, "DURUS_STORAGE": f"durus://{host}:{port}",
                      "DURUS_SOCKET_TIMEOUT": 5, "DURUS_RETRY_DELAY": 0.002})
    yield app
    app.extensions["durus"].close(app)


def test_requests_commit_through_the_server(app, server):
    client = app.test_client()
    assert [client.post("/counter").json["counter"] for _ in range(3)] == [1, 2, 3]
    storage = ClientStorage(address=server.address)  # another client sees it
    try:
        assert storage.load(b"\0" * 8)
    finally:
        storage.close()
    assert client.get("/counter").json == {"counter": 3}


def test_threads_hammering_a_counter_through_the_server(app):
    statuses = Counter()
    lock = threading.Lock()

    def hammer():
        client = app.test_client()
        for _ in range(25):
            status = client.post("/counter").status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 409}
    assert app.test_client().get("/counter").json["counter"] == statuses[200]


def test_a_stopped_server_gives_prompt_503s_and_a_restart_recovers(app, server):
    client = app.test_client()
    assert client.post("/counter").status_code == 200
    server.stop()
    started = time.monotonic()
    for _ in range(3):
        response = client.post("/counter")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    assert time.monotonic() - started < 3
    server.start()
    assert client.post("/counter").json["counter"] == 2  # the first commit survived, once
    assert client.get("/counter").json["counter"] == 2


def test_idle_connections_of_a_killed_server_are_replaced(app, server):
    client = app.test_client()
    barrier = threading.Barrier(3)

    def busy():  # three connections into the pool
        barrier.wait()
        app.test_client().post("/slow?sleep=0.1")

    threads = [threading.Thread(target=busy) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool = app.extensions["durus"].get_pool(app)
    assert pool.idle_count() >= 2
    server.kill()
    server.start()
    for _ in range(5):
        assert client.post("/counter").status_code == 200
    assert client.get("/counter").json["counter"] == 5


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(app):
    client = app.test_client()
    assert client.post("/counter").json["counter"] == 1

    def child():
        response = app.test_client().post("/counter")
        return [response.status_code, response.json["pid"] == os.getpid()]

    assert run_in_fork(child) == {"value": [200, True]}
    with recorded(signals.connection_checked_out) as checkouts:
        assert client.post("/counter").json["counter"] == 3
    assert len(checkouts) == 1  # the parent's pooled connection still works


def test_transfers_keep_the_total(app):
    client = app.test_client()
    names = [f"a{i}" for i in range(5)]
    assert client.post("/accounts", json={name: 100 for name in names}).status_code == 200
    statuses = Counter()
    lock = threading.Lock()

    def transfers(seed):
        client = app.test_client()
        for i in range(20):
            source, target = names[(seed + i) % 5], names[(seed * 3 + i + 1) % 5]
            if source == target:
                continue
            status = client.post("/transfer", json={"from": source, "to": target, "amount": 7}).status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=transfers, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 409, 422} and statuses[200] > 0
    assert client.get("/total").json == {"total": 500, "count": 5}


# -- the helpers for applications ----------------------------------------------------


@pytest.fixture
def durus_app_factory():
    return create_app


@pytest.fixture
def durus_config(durus_server):  # noqa: F811 - the plugin's, pointed at a server
    return {"TESTING": True, "DURUS_STORAGE": durus_server.uri}


def test_the_plugin_fixtures_give_an_app_on_a_server_and_its_root(durus_client, durus_root, durus_server):  # noqa: F811
    assert isinstance(durus_server, StorageServerProcess)
    assert durus_client.post("/counter").json["counter"] == 1
    durus_root._p_connection.abort()  # catch up with the request's commit
    assert durus_root["counter"] == 1
    durus_root["counter"] = 10
    durus_root._p_connection.commit()
    assert durus_client.get("/counter").json["counter"] == 10


def test_storage_server_and_app_root_for_scripts(tmp_path):
    with storage_server(tmp_path / "script.durus") as server:
        app = create_app({"DURUS_STORAGE": server.uri})
        with app_root(app) as root:
            root["counter"] = 41
        assert app.test_client().post("/counter").json["counter"] == 42
        app.extensions["durus"].close(app)
    assert server.process is None and (tmp_path / "script.durus").stat().st_size > 0


# -- the CLI against a server ------------------------------------------------------------


def test_cli_info_pack_and_stop(app, server):
    app.test_client().post("/counter")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["durus", "info"])
    assert result.exit_code == 0, result.output
    assert f"durus://{server.address[0]}:{server.address[1]}" in result.output
    assert "Objects reachable from the root: 1" in result.output
    # It cannot know the server's file: it says whose size it shows.
    server_file = app.extensions["durus"].settings(app).server_file
    assert f"not reported by the server; DURUS_SERVER_FILE on this machine, {server_file}, " in result.output
    assert str(server.file) not in result.output
    result = runner.invoke(args=["durus", "pack"])
    assert result.exit_code == 0 and "background" in result.output
    result = runner.invoke(args=["durus", "stop"])
    assert result.exit_code == 0, result.output
    server.process.wait(10)
    assert not server.is_running()
    result = runner.invoke(args=["durus", "info"])
    assert result.exit_code != 0 and "no storage server answers" in result.output


def test_cli_on_the_embedded_file(tmp_path):
    app = create_app({"DURUS_STORAGE": f"file://{tmp_path}/data.durus"})
    app.test_client().post("/counter")
    app.extensions["durus"].close(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["durus", "info"])
    assert "Objects reachable from the root: 1" in result.output and "bytes" in result.output
    result = runner.invoke(args=["durus", "pack"])
    assert result.exit_code == 0 and "finished" in result.output
    result = runner.invoke(args=["durus", "stop"])
    assert result.exit_code != 0 and "no server to stop" in result.output
    assert json.loads(app.test_client().get("/counter").data)["counter"] == 1
    app.extensions["durus"].close(app)


def test_cli_on_memory_works_through_the_apps_own_store():
    app = create_app({"DURUS_STORAGE": "memory://"})
    runner = app.test_cli_runner()
    result = runner.invoke(args=["durus", "info"])  # nothing opened memory:// in this process yet
    assert result.exit_code == 0 and "Objects reachable" not in result.output
    assert runner.invoke(args=["durus", "pack"]).exit_code != 0
    app.test_client().post("/counter")
    with app_root(app) as root:  # an object committed, then left unreachable
        root["junk"] = Account("junk", 1)
    with app_root(app) as root:
        del root["junk"]
    store = app.extensions["durus"].get_pool(app).opener.shared.storage  # the MemoryStorage
    assert len(store.records) == 2
    result = runner.invoke(args=["durus", "info"])
    assert result.exit_code == 0 and "Objects reachable from the root: 1" in result.output
    result = runner.invoke(args=["durus", "pack"])
    assert result.exit_code == 0 and "Packed memory://; finished." in result.output
    assert len(store.records) == 1
    assert app.test_client().get("/counter").json["counter"] == 1
    app.extensions["durus"].close(app)


def test_cli_on_the_embedded_file_this_process_holds_open(tmp_path):
    path = tmp_path / "data.durus"
    app = create_app({"DURUS_STORAGE": f"file://{path}"})
    client = app.test_client()
    for _ in range(3):
        client.post("/counter")  # the app's pool now holds the file (and its lock)
    before = path.stat().st_size
    runner = app.test_cli_runner()
    result = runner.invoke(args=["durus", "pack"])
    assert result.exit_code == 0, result.output
    assert f"{before} -> {path.stat().st_size} bytes; finished." in result.output
    assert path.stat().st_size < before  # the two old roots are gone
    result = runner.invoke(args=["durus", "info"])
    assert result.exit_code == 0 and "Objects reachable from the root: 1" in result.output
    assert f"({path.stat().st_size} bytes)" in result.output
    assert client.post("/counter").json["counter"] == 4  # the app goes on, on the same pool
    app.extensions["durus"].close(app)


def test_cli_pack_of_a_file_another_process_holds_says_so(tmp_path):
    path = tmp_path / "data.durus"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from durus.file_storage import FileStorage\n"
         f"storage = FileStorage({str(path)!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "open\n"
        app = create_app({"DURUS_STORAGE": f"file://{path}"})
        result = app.test_cli_runner().invoke(args=["durus", "pack"])
        assert result.exit_code != 0
        assert "in use by another process" in result.output and "flask durus serve" in result.output
    finally:
        holder.communicate("", timeout=30)


def test_the_shells_have_root_and_connection(tmp_path):
    app = create_app({"DURUS_STORAGE": f"file://{tmp_path}/data.durus"})
    result = app.test_cli_runner().invoke(
        args=["durus", "shell"], input="root['greeting'] = 'hi'\nconnection.commit()\n")
    assert result.exit_code == 0, result.output
    with app.app_context():
        context = app.make_shell_context()
        assert context["durus"] is app.extensions["durus"]
        assert context["root"]["greeting"] == "hi"
        assert context["connection"].get_root() is context["root"]
    app.extensions["durus"].close(app)

"""The Flask extension in one process: request cycle, commit, abort, replay,
pool, signals, settings, forks and the embedded file, on memory:// and
file:// storages (the server is covered in test_flask_server.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from durus.error import ConflictError, ReadConflictError
from durus.persistent import Persistent
from durus.persistent_dict import PersistentDict
from flask import Flask, Response, g, request, stream_with_context

from flask_durus import Durus, signals
from flask_durus.pool import PooledConnection
from flask_durus.replay import ATTEMPT
from flask_durus.settings import CONFIG_DEFAULTS
from flask_durus.storage_uri import parse_storage_uri

REPO = Path(__file__).resolve().parent.parent


def make_app(tmp_path: Path, **config: object) -> tuple[Flask, Durus]:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update({"DURUS_STORAGE": "memory://", "DURUS_RETRY_DELAY": 0.001})
    app.config.update(config)
    durus = Durus(app)
    return app, durus


@pytest.fixture
def app_durus(tmp_path):
    app, durus = make_app(tmp_path)
    yield app, durus
    durus.close(app)


@contextmanager
def recorded(signal):
    calls = []

    def receiver(sender, **kwargs):
        calls.append((sender, kwargs))

    signal.connect(receiver)
    try:
        yield calls
    finally:
        signal.disconnect(receiver)


def committed_value(app, durus, key):
    with app.app_context():
        return durus.root.get(key)


# -- setting up --------------------------------------------------------------------


def test_init_app_registers_the_extension_and_the_defaults(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path))
    durus = Durus()
    durus.init_app(app)
    assert app.extensions["durus"] is durus
    for key, value in CONFIG_DEFAULTS.items():
        assert app.config[key] == value
    assert durus.settings(app).location.file == str(tmp_path / "data.durus")
    assert not (tmp_path / "data.durus").exists(), "init_app must open nothing"
    with pytest.raises(RuntimeError, match="already set up"):
        durus.init_app(app)


def test_bad_settings_fail_at_init_app_naming_the_key(tmp_path):
    for config, key in [
        ({"DURUS_STORAGE": "postgres://x"}, "DURUS_STORAGE"),
        ({"DURUS_RETRY_ATTEMPTS": -1}, "DURUS_RETRY_ATTEMPTS"),
        ({"DURUS_COMMIT_VETO": "no.such.module:veto"}, "DURUS_COMMIT_VETO"),
        ({"DURUS_CACHE_SIZE": "many"}, "DURUS_CACHE_SIZE"),
    ]:
        app = Flask(__name__, instance_path=str(tmp_path))
        app.config.update(config)
        with pytest.raises(ValueError, match=key):
            Durus(app)


def test_storage_uris():
    assert parse_storage_uri("durus://db.local:3000", "/i").server_address == ("db.local", 3000)
    assert parse_storage_uri("durus://", "/i").server_address == ("127.0.0.1", 2972)
    assert parse_storage_uri("unix:///run/durus.sock", "/i").server_address == "/run/durus.sock"
    assert parse_storage_uri("file:///srv/data.durus", "/i").file == "/srv/data.durus"
    assert parse_storage_uri("file:data/x.durus", "/i").file == "/i/data/x.durus"
    assert parse_storage_uri(None, "/i").file == "/i/data.durus"
    assert parse_storage_uri("memory://", "/i").kind == "memory"
    with pytest.raises(ValueError, match="durus://HOST:PORT"):
        parse_storage_uri("redis://x", "/i")


def test_outside_an_app_context_a_clear_runtime_error(app_durus):
    app, durus = app_durus
    with pytest.raises(RuntimeError, match="app_context"):
        durus.connection
    with pytest.raises(RuntimeError, match="app_context"):
        durus.root
    other = Flask("other")
    with other.app_context(), pytest.raises(RuntimeError, match="init_app"):
        durus.connection


def test_one_durus_serves_two_apps_with_separate_data(tmp_path):
    durus = Durus()
    apps = []
    for name in ("a", "b"):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config["DURUS_STORAGE"] = "memory://"
        durus.init_app(app)

        @app.post("/")
        def write(name=name):
            durus.root["name"] = name
            return "ok"

        apps.append(app)
    for app in apps:
        assert app.test_client().post("/").status_code == 200
    assert [committed_value(app, durus, "name") for app in apps] == ["a", "b"]
    assert durus.get_pool(apps[0]) is not durus.get_pool(apps[1])


def test_the_signals_are_importable_from_the_package_too():
    import flask_durus

    for name in ("connection_checked_out", "transaction_committed", "transaction_aborted",
                 "conflict_detected", "request_retried"):
        assert getattr(flask_durus, name) is getattr(signals, name)
        assert name in flask_durus.__all__


# -- the request cycle ------------------------------------------------------------


def test_commit_on_success_abort_on_error_and_on_vetoed_status(app_durus):
    app, durus = app_durus

    @app.post("/set/<int:value>/<int:status>")
    def set_value(value, status):
        durus.root["value"] = value
        return "done", status

    @app.post("/fail")
    def fail():
        durus.root["value"] = 99
        raise ValueError("boom")

    client = app.test_client()
    with recorded(signals.transaction_aborted) as aborts, recorded(signals.transaction_committed) as commits:
        assert client.post("/set/1/200").status_code == 200
        assert client.post("/set/2/404").status_code == 404
        assert client.post("/fail").status_code == 500
        assert client.post("/set/3/302").status_code == 302
    assert committed_value(app, durus, "value") == 3
    assert [kwargs["reason"] for _, kwargs in aborts] == ["vetoed", "error"]
    assert len(commits) == 2
    assert all(sender is app for sender, _ in commits + aborts)


@pytest.mark.parametrize("answer", [("handled", 200), ("moved", 302, {"Location": "/"})])
def test_a_view_that_raises_is_aborted_whatever_its_error_handler_answers(app_durus, answer):
    app, durus = app_durus

    @app.errorhandler(LookupError)
    def handled(error):
        return answer

    @app.post("/write-then-raise")
    def write_then_raise():
        durus.root["value"] = "from a view that raised"
        raise LookupError("handled by the app")

    @app.post("/write")
    def write():
        durus.root["value"] = "kept"
        return "ok"

    client = app.test_client()
    assert client.post("/write").status_code == 200
    with recorded(signals.transaction_aborted) as aborts:
        assert client.post("/write-then-raise").status_code == answer[1]
    assert [kwargs["reason"] for _, kwargs in aborts] == ["error"]
    assert committed_value(app, durus, "value") == "kept"
    assert client.post("/write").status_code == 200  # the next request commits again


def test_a_custom_commit_veto_by_dotted_path(tmp_path):
    app, durus = make_app(tmp_path, DURUS_COMMIT_VETO="tests.test_flask_extension:veto_header")

    @app.post("/")
    def write():
        durus.root["value"] = request.args["v"]
        return "ok", 200, {"X-Veto": request.args.get("veto", "")}

    client = app.test_client()
    client.post("/?v=kept")
    client.post("/?v=dropped&veto=1")
    assert committed_value(app, durus, "value") == "kept"


def veto_header(request, response):
    return response.headers.get("X-Veto") == "1"


def test_the_commit_runs_after_every_after_request_hook(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["DURUS_STORAGE"] = "memory://"

    @app.after_request
    def registered_before(response):
        durus.root["before"] = True
        return response

    durus = Durus(app)

    @app.after_request
    def registered_after(response):
        durus.root["after"] = True
        return response

    @app.get("/")
    def view():
        return "ok"

    app.test_client().get("/")
    assert committed_value(app, durus, "before") and committed_value(app, durus, "after")


def test_a_request_that_never_uses_the_database_checks_out_nothing(app_durus):
    app, durus = app_durus
    app.add_url_rule("/plain", "plain", lambda: "plain")
    with recorded(signals.connection_checked_out) as checkouts:
        assert app.test_client().get("/plain").text == "plain"
    assert checkouts == []


def test_connections_are_pooled_and_stay_warm(app_durus):
    app, durus = app_durus

    @app.get("/")
    def view():
        return str(len(durus.root["items"]))

    with app.app_context():
        durus.root["items"] = PersistentDict((i, Item(i)) for i in range(50))
        durus.connection.commit()
    client = app.test_client()
    with recorded(signals.connection_checked_out) as checkouts:
        for _ in range(3):
            assert client.get("/").text == "50"
    connections = {id(kwargs["connection"]) for _, kwargs in checkouts}
    assert len(connections) == 1
    connection = checkouts[0][1]["connection"]
    loads = connection.get_load_count()
    client.get("/")
    assert connection.get_load_count() == loads, "a warm cache loads nothing again"


def test_the_pool_keeps_at_most_pool_size_idle_connections(tmp_path):
    app, durus = make_app(tmp_path, DURUS_POOL_SIZE=2)
    with app.app_context():
        contexts = [app.app_context() for _ in range(4)]
        for context in contexts:
            context.push()
            durus.root
        for context in reversed(contexts):
            context.pop()
    assert durus.get_pool(app).idle_count() == 2
    durus.close(app)


class Item(Persistent):
    def __init__(self, n):
        self.n = n


def test_outside_a_request_only_explicit_commits_count(app_durus):
    app, durus = app_durus
    with app.app_context():
        durus.root["kept"] = 1
        durus.connection.commit()
        durus.root["dropped"] = 1
    with app.app_context():
        assert durus.root.get("kept") == 1
        assert "dropped" not in durus.root


# -- conflicts and replays --------------------------------------------------------


def commit_elsewhere(app, durus, key):
    """Commit a change through another connection, as another worker would."""
    with app.app_context():
        durus.root[key] = durus.root.get(key, 0) + 1
        durus.connection.commit()


def test_a_write_conflict_at_commit_replays_the_whole_request(app_durus):
    app, durus = app_durus
    runs = Counter()

    @app.before_request
    def count_hooks():
        runs["before"] += 1

    @app.post("/")
    def view():
        runs["view"] += 1
        assert request.get_json() == {"add": 5}  # the body is read anew each run
        durus.root["n"] = durus.root.get("n", 0) + request.get_json()["add"]
        if runs["view"] == 1:
            commit_elsewhere(app, durus, "n")
        return str(request.environ[ATTEMPT])

    with recorded(signals.conflict_detected) as conflicts, recorded(signals.request_retried) as retries:
        response = app.test_client().post("/", json={"add": 5})
    assert response.status_code == 200 and response.text == "2"
    assert runs == {"before": 2, "view": 2}
    assert committed_value(app, durus, "n") == 6  # 1 from elsewhere + 5, once
    assert [(k["attempt"], k["will_retry"]) for _, k in conflicts] == [(1, True)]
    assert [k["attempt"] for _, k in retries] == [2]


def store_a_and_b_as_ghosts_for_requests(app, durus) -> None:
    """Items a (1) and b (2), ghosts in the pooled connection requests get."""
    with app.app_context():
        durus.root  # this connection goes back to the pool last: requests get it
        with app.app_context():  # written through another, so a and b are ghosts in the first
            durus.root["a"] = Item(1)
            durus.root["b"] = Item(2)
            durus.connection.commit()


def change_a_and_b_elsewhere(app, durus) -> None:
    """Another client adds 10 to a and b: whoever read a now meets b stale."""
    with app.app_context():
        durus.root["a"].n += 10
        durus.root["b"].n += 10
        durus.connection.commit()


def read_a_then_see_it_changed_on_the_first_run(app, durus, runs: list) -> Item:
    """A view's work: read a; on the first run another client then changes a and b."""
    runs.append(1)
    a = durus.root["a"]
    a.n
    if len(runs) == 1:
        change_a_and_b_elsewhere(app, durus)
    return a


@pytest.mark.parametrize("testing", [False, True])
def test_a_read_conflict_met_in_an_after_request_hook_replays(tmp_path, caplog, testing):
    app, durus = make_app(tmp_path, TESTING=testing)  # TESTING: Flask would raise hooks' errors
    store_a_and_b_as_ghosts_for_requests(app, durus)
    runs, hook_runs = [], []

    @app.after_request
    def read_b(response):
        hook_runs.append(1)
        response.headers["X-B"] = str(durus.root["b"].n)  # b is stale next to a: ReadConflictError
        return response

    @app.get("/")
    def view():
        a = read_a_then_see_it_changed_on_the_first_run(app, durus, runs)
        return str(a.n)

    with recorded(signals.conflict_detected) as conflicts, caplog.at_level(logging.INFO):
        response = app.test_client().get("/")
    assert (response.status_code, response.text, response.headers["X-B"]) == (200, "11", "12")
    assert len(runs) == len(hook_runs) == 2  # the hook ran once per run
    assert [k["attempt"] for _, k in conflicts] == [1]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    durus.close(app)


def test_a_conflict_raised_by_an_after_request_hook_replays_then_gives_409(tmp_path):
    app, durus = make_app(tmp_path, DURUS_RETRY_ATTEMPTS=2, TESTING=True)
    runs = []

    @app.after_request
    def conflicting_hook(response):
        runs.append(1)
        durus.root["n"] = len(runs)
        if request.args.get("always") or len(runs) == 1:
            raise ConflictError([b"\0" * 8])
        return response

    app.add_url_rule("/", "view", lambda: "ok", methods=["POST"])
    client = app.test_client()
    response = client.post("/")
    assert (response.status_code, response.text, len(runs)) == (200, "ok", 2)
    assert committed_value(app, durus, "n") == 2
    runs.clear()
    assert client.post("/?always=1").status_code == 409
    assert len(runs) == 3
    assert committed_value(app, durus, "n") == 2
    durus.close(app)


def test_a_read_conflict_on_get_replays(app_durus):
    app, durus = app_durus
    store_a_and_b_as_ghosts_for_requests(app, durus)
    runs = []

    @app.get("/")
    def view():
        a = read_a_then_see_it_changed_on_the_first_run(app, durus, runs)
        return str(a.n + durus.root["b"].n)  # b is stale next to a: ReadConflictError

    response = app.test_client().get("/")
    assert response.status_code == 200
    assert response.text == "23" and len(runs) == 2


def test_a_conflict_swallowed_by_an_error_handler_still_replays(app_durus):
    app, durus = app_durus
    runs = []

    @app.errorhandler(ConflictError)
    def swallow(error):
        return "handled", 200

    @app.get("/")
    def view():
        runs.append(1)
        durus.root["x"] = len(runs)
        if len(runs) < 3:
            raise ReadConflictError([b"\0" * 8])
        return "clean"

    response = app.test_client().get("/")
    assert (response.status_code, response.text, len(runs)) == (200, "clean", 3)
    assert committed_value(app, durus, "x") == 3


def test_a_conflict_caught_in_the_view_still_replays(app_durus):
    app, durus = app_durus
    runs = []

    @app.post("/")
    def view():
        runs.append(1)
        durus.root["n"] = durus.root.get("n", 0) + 1
        if len(runs) == 1:
            commit_elsewhere(app, durus, "n")
            try:
                durus.connection.commit()
            except ConflictError:
                return "looks fine"
        return "ok"

    assert app.test_client().post("/").text == "ok"
    assert len(runs) == 2 and committed_value(app, durus, "n") == 2


def test_after_the_retry_attempts_the_client_gets_409_and_a_warning(tmp_path, caplog):
    app, durus = make_app(tmp_path, DURUS_RETRY_ATTEMPTS=2)
    runs = []

    @app.post("/")
    def view():
        runs.append(1)
        durus.root["n"] = len(runs)
        raise ConflictError([b"\0" * 8])

    with caplog.at_level(logging.INFO, logger="flask_durus"):
        response = app.test_client().post("/")
    assert response.status_code == 409
    assert len(runs) == 3
    levels = [record.levelname for record in caplog.records if record.name == "flask_durus"]
    assert levels == ["INFO", "INFO", "WARNING"]
    assert committed_value(app, durus, "n") is None
    durus.close(app)


def test_a_body_over_the_replay_limit_runs_once(tmp_path):
    app, durus = make_app(tmp_path, DURUS_REPLAY_BODY_LIMIT=10)
    runs = []

    @app.post("/")
    def view():
        runs.append(request.get_data())
        raise ConflictError()

    client = app.test_client()
    assert client.post("/", data=b"x" * 11).status_code == 409
    assert runs == [b"x" * 11]
    runs.clear()
    assert client.post("/", data=b"y" * 10).status_code == 409
    assert runs == [b"y" * 10] * 4
    durus.close(app)


def test_a_streamed_response_is_committed_before_its_body(app_durus):
    app, durus = app_durus
    seen = []

    @app.get("/")
    def view():
        durus.root["streamed"] = "yes"

        def body():
            with app.app_context():  # another connection already sees the commit
                seen.append(durus.root.get("streamed"))
            yield "body"

        return Response(stream_with_context(body()))

    response = app.test_client().get("/")
    assert response.text == "body" and seen == ["yes"]


def test_threads_hammering_one_counter_lose_no_update(app_durus):
    app, durus = app_durus

    @app.post("/")
    def increment():
        durus.root["n"] = durus.root.get("n", 0) + 1
        return "ok"

    statuses = Counter()
    lock = threading.Lock()

    def client_thread():
        client = app.test_client()
        for _ in range(40):
            status = client.post("/").status_code
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 409}
    assert committed_value(app, durus, "n") == statuses[200]


def test_concurrent_first_requests_on_an_empty_storage_all_succeed(app_durus):
    app, durus = app_durus
    app.add_url_rule("/", "view", lambda: str(len(durus.root)))
    barrier = threading.Barrier(6)
    statuses = []

    def first_request():
        barrier.wait()
        statuses.append(app.test_client().get("/").status_code)

    threads = [threading.Thread(target=first_request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6


# -- embedded files and forks ------------------------------------------------------


def test_the_embedded_default_is_data_durus_in_the_instance_folder(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    durus = Durus(app)

    @app.post("/")
    def write():
        durus.root["x"] = 1
        return "ok"

    assert app.test_client().post("/").status_code == 200
    assert (tmp_path / "instance" / "data.durus").stat().st_size > 0
    durus.close(app)


def test_a_second_process_on_the_embedded_file_gets_a_clear_error(tmp_path):
    app, durus = make_app(tmp_path, DURUS_STORAGE=f"file://{tmp_path}/data.durus")
    with app.app_context():
        durus.root["x"] = 1
        durus.connection.commit()
    script = (
        "from flask import Flask\nfrom flask_durus import Durus\n"
        f"app = Flask('other', instance_path={str(tmp_path)!r})\n"
        f"app.config['DURUS_STORAGE'] = 'file://{tmp_path}/data.durus'\n"
        "durus = Durus(app)\n"
        "with app.app_context():\n    durus.root\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode != 0
    assert "EmbeddedStorageError" in result.stderr
    assert "flask durus serve" in result.stderr and "DURUS_STORAGE" in result.stderr
    durus.close(app)


def run_in_fork(function) -> dict:
    """Run ``function`` in a forked child; what it returned, or its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            result = {"value": function()}
        except BaseException as error:
            result = {"error": f"{type(error).__name__}: {error}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_forked_child_refuses_the_parents_embedded_file(tmp_path):
    app, durus = make_app(tmp_path, DURUS_STORAGE=f"file://{tmp_path}/data.durus")
    with app.app_context():
        durus.root["x"] = 1
        durus.connection.commit()

    def child():
        with app.app_context():
            return durus.root.get("x")

    result = run_in_fork(child)
    assert "EmbeddedStorageError" in result["error"]
    assert "flask durus serve" in result["error"] and "fork" in result["error"]
    with app.app_context():  # the parent goes on
        durus.root["x"] = 2
        durus.connection.commit()
    durus.close(app)


def test_a_forked_child_starts_its_own_memory_store(app_durus):
    app, durus = app_durus
    with app.app_context():
        durus.root["x"] = "parent"
        durus.connection.commit()

    def child():
        with app.app_context():
            seen = durus.root.get("x")
            durus.root["x"] = "child"
            durus.connection.commit()
            return seen

    assert run_in_fork(child) == {"value": None}
    assert committed_value(app, durus, "x") == "parent"


def test_the_pool_hands_out_pooled_connections(app_durus):
    app, durus = app_durus
    with app.app_context():
        assert isinstance(durus.connection, PooledConnection)
        assert g._durus_transaction.connection is durus.connection


def test_requests_inside_an_app_context_each_commit_their_own_transaction(app_durus):
    app, durus = app_durus

    @app.post("/<int:status>")
    def increment(status):
        durus.root["n"] = durus.root.get("n", 0) + 1
        if status == 500:
            raise RuntimeError("boom")
        return "ok", status

    client = app.test_client()
    with app.app_context():  # the requests share this app context
        assert client.post("/200").status_code == 200
        assert client.post("/200").status_code == 200
        assert client.post("/500").status_code == 500
        assert client.post("/400").status_code == 400
        assert client.post("/200").status_code == 200
    assert committed_value(app, durus, "n") == 3


def test_a_request_inside_a_pushed_app_context_has_a_transaction_of_its_own(app_durus):
    app, durus = app_durus
    seen = []

    @app.get("/noop")
    def noop():
        seen.append((durus.root.get("outer"), durus.root.get("elsewhere")))
        return "ok"

    client = app.test_client()
    with app.app_context():
        root = durus.root
        root["outer"] = "uncommitted"
        commit_elsewhere(app, durus, "elsewhere")
        with recorded(signals.transaction_aborted) as aborts:
            assert client.get("/noop").status_code == 200
        # The request was synchronised at its start, on its own connection:
        assert seen == [(None, 1)]
        assert aborts == []  # and it left the outer transaction alone
        assert durus.root is root and durus.connection.has_changes()
        assert committed_value(app, durus, "outer") is None
        durus.connection.commit()  # the outer transaction is current again
    assert committed_value(app, durus, "outer") == "uncommitted"
    assert durus.get_pool(app).idle_count() == 2  # both connections went back


def test_a_commit_that_fails_answers_500_and_stores_nothing(app_durus):
    app, durus = app_durus

    @app.post("/<kind>")
    def write(kind):
        durus.root["value"] = (lambda: None) if kind == "bad" else kind
        return "ok"

    client = app.test_client()
    assert client.post("/bad").status_code == 500
    assert client.post("/good").status_code == 200
    assert committed_value(app, durus, "value") == "good"


def test_resolution_rounds_reach_every_pooled_connection(tmp_path):
    app, durus = make_app(tmp_path, DURUS_RESOLUTION_ROUNDS=0)
    with app.app_context():
        assert durus.connection.resolution_rounds == 0
    default_app, default_durus = make_app(tmp_path / "default")
    with default_app.app_context():
        assert default_durus.connection.resolution_rounds == 10


def test_a_request_given_up_with_409_leaves_the_session_as_it_came(tmp_path):
    """The run stored nothing: its flashed message and session changes go too."""
    from flask import flash, get_flashed_messages, render_template_string, session

    app, durus = make_app(tmp_path, DURUS_RETRY_ATTEMPTS=1, SECRET_KEY="test")

    @app.errorhandler(409)
    def conflict_page(error):
        return render_template_string("{{ get_flashed_messages() }} conflict"), 409

    @app.post("/sign-up")
    def sign_up():
        session["user"] = "new"
        flash("Welcome")
        raise ConflictError([b"\0" * 8])

    @app.get("/who")
    def who():
        return {"user": session.get("user"), "flashes": get_flashed_messages()}

    client = app.test_client()
    client.get("/who")
    response = client.post("/sign-up")
    assert response.status_code == 409
    assert "Welcome" not in response.text
    assert "Set-Cookie" not in response.headers
    assert client.get("/who").json == {"user": None, "flashes": []}
    durus.close(app)

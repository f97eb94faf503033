"""Deployment as documented, with real processes: gunicorn with 4 workers
(with and without --preload, sync and threaded workers) against
``flask durus serve``, hammered by concurrent HTTP clients; the server
stopped and restarted under it; and the embedded default under
``flask run --with-threads``.  The ``slow`` versions hammer longer.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from flask_durus.testing import free_port
from tests.flask_apps.processes import app_env, durus_serve, flask_run, gunicorn, request


@pytest.fixture
def deployment(tmp_path):
    """Start ``flask durus serve`` and gunicorn; yields (server, gunicorn) starters."""
    with ExitStack() as stack:

        def start(workers=4, threads=1, preload=False):
            port = free_port()
            env = app_env(tmp_path, f"durus://127.0.0.1:{port}", FLASK_DURUS_SOCKET_TIMEOUT="5")
            server = durus_serve(tmp_path, env, port).start()
            stack.callback(server.stop)
            web = gunicorn(tmp_path, env, workers=workers, threads=threads, preload=preload).start()
            stack.callback(web.stop)
            wait_until_served(web.port)
            return server, web

        yield start


def wait_until_served(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/ping")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gunicorn never answered /ping")


def hammer(port: int, clients: int, per_client: int, make_request) -> Counter:
    """``clients`` threads each sending ``per_client`` requests; the statuses."""
    def client(seed: int) -> Counter:
        chooser = random.Random(seed)
        statuses = Counter()
        for _ in range(per_client):
            method, path, body = make_request(chooser)
            statuses[request(port, method, path, body)[0]] += 1
        return statuses

    with ThreadPoolExecutor(clients) as pool:
        return sum(pool.map(client, range(clients)), Counter())


def counter_hammering(port: int, clients: int, per_client: int) -> None:
    statuses = hammer(port, clients, per_client, lambda _: ("POST", "/counter", None))
    assert set(statuses) <= {200, 409}, statuses
    status, _, body = request(port, "GET", "/counter")
    assert status == 200
    assert json.loads(body)["counter"] == statuses[200]
    assert statuses[200] >= clients * per_client // 2


def test_gunicorn_four_workers_count_every_increment(deployment):
    _, web = deployment(workers=4)
    counter_hammering(web.port, clients=6, per_client=20)


def test_gunicorn_preload_with_threads_counts_every_increment(deployment):
    _, web = deployment(workers=4, threads=2, preload=True)
    counter_hammering(web.port, clients=6, per_client=20)


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_long_counter_hammering(deployment, preload):
    _, web = deployment(workers=4, threads=2, preload=preload)
    counter_hammering(web.port, clients=12, per_client=150)


def transfers(port: int, clients: int, per_client: int) -> None:
    names = [f"acct{i}" for i in range(8)]
    assert request(port, "POST", "/accounts", {name: 1000 for name in names})[0] == 200

    def transfer(chooser: random.Random):
        source, target = chooser.sample(names, 2)
        return "POST", "/transfer", {"from": source, "to": target, "amount": chooser.randint(1, 300)}

    statuses = hammer(port, clients, per_client, transfer)
    assert not [status for status in statuses if status >= 500], statuses
    assert statuses[200] > 0
    status, _, body = request(port, "GET", "/total")
    assert (status, json.loads(body)) == (200, {"total": 8000, "count": 8})


def test_gunicorn_random_transfers_keep_the_total(deployment):
    _, web = deployment(workers=4)
    transfers(web.port, clients=6, per_client=20)


@pytest.mark.slow
def test_gunicorn_long_random_transfers_keep_the_total(deployment):
    _, web = deployment(workers=4, threads=2)
    transfers(web.port, clients=12, per_client=150)


def test_stopping_the_server_gives_prompt_503s_and_restarting_recovers(deployment):
    server, web = deployment(workers=4)
    counter_hammering(web.port, clients=4, per_client=5)  # every worker has connections
    before = json.loads(request(web.port, "GET", "/counter")[2])["counter"]
    server.stop()
    started = time.monotonic()
    outcomes = hammer(web.port, 4, 4, lambda _: ("POST", "/counter", None))
    assert outcomes == {503: 16}
    assert time.monotonic() - started < 5, "a stopped server must give prompt 503s"
    status, headers, _ = request(web.port, "GET", "/counter")
    assert status == 503 and headers["Retry-After"] == "1"
    server.start()  # gunicorn keeps running
    statuses = hammer(web.port, 4, 10, lambda _: ("POST", "/counter", None))
    assert set(statuses) <= {200, 409} and statuses[200] > 0, statuses
    after = json.loads(request(web.port, "GET", "/counter")[2])["counter"]
    assert after == before + statuses[200]


def test_the_embedded_default_under_flask_run_with_threads(tmp_path):
    env = app_env(tmp_path, None)
    with flask_run(tmp_path, env).start_context() as web:
        overlap = threading.Barrier(4)
        statuses = Counter()
        runs = []
        lock = threading.Lock()

        def slow_writer():
            overlap.wait()
            status, _, body = request(web.port, "POST", "/slow?sleep=0.2")
            with lock:
                statuses[status] += 1
                if status == 200:
                    runs.append(json.loads(body)["run"])

        threads = [threading.Thread(target=slow_writer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert set(statuses) <= {200, 409} and statuses[200] >= 1, statuses
        assert max(runs) > 1, "overlapping writers conflict, and the losers are replayed"
        counter_hammering(web.port, clients=4, per_client=15)
        status, _, body = request(web.port, "POST", "/slow?sleep=0")
        assert json.loads(body)["slow"] == statuses[200] + 1
    assert (tmp_path / "data.durus").stat().st_size > 0

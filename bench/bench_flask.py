"""Requests per second of flask_durus views under gunicorn, and the
extension's cost per request.

    python bench/bench_flask.py [--seconds 5] [--clients 8] [--workers 4]

Starts ``flask durus serve`` and ``gunicorn -w 4`` (this file's app) on free
ports, drives each view with concurrent keep-alive-less HTTP clients for a
fixed time, and prints requests/s for:

- ``/read``: reads a record of 10 persistent objects (one transaction, a
  commit that only syncs);
- ``/write``: changes one of 100 persistent objects (few conflicts);
- ``/nodb``: the same JSON as ``/read``, no database at all.

The overhead per request is ``1/rps(view) - 1/rps(nodb)``, in wall time of
the whole deployment (its workers, the server and the client share the
machine).  It also times the same views in-process with the Flask test
client, one thread, which isolates the extension's own cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from durus.persistent import Persistent
from flask import Flask, jsonify

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from flask_durus import Durus  # noqa: E402

durus = Durus()


class Entry(Persistent):
    def __init__(self, n: int) -> None:
        self.n = n


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("BENCH_INSTANCE_PATH"))
    app.config.from_prefixed_env()
    durus.init_app(app)

    @app.get("/read")
    def read() -> object:
        entries = durus.root["entries"]
        return jsonify(total=sum(entries[i].n for i in range(10)))

    @app.post("/write")
    def write() -> object:
        entry = durus.root["entries"][random.randrange(100)]
        entry.n += 1
        return jsonify(total=entry.n)

    @app.get("/nodb")
    def nodb() -> object:
        return jsonify(total=sum(range(10)))

    return app


def seed(app: Flask) -> None:
    from durus.persistent_list import PersistentList

    with app.app_context():
        durus.root["entries"] = PersistentList(Entry(i) for i in range(100))
        durus.connection.commit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{process.args} never listened on {port}")


def drive(port: int, method: str, path: str, clients: int, seconds: float) -> tuple[float, dict[int, int]]:
    """Requests/s over ``seconds`` with ``clients`` threads; and the statuses."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        counts: dict[int, int] = {}
        while time.monotonic() < stop_at:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(method, path)
            response = connection.getresponse()
            response.read()
            connection.close()
            counts[response.status] = counts.get(response.status, 0) + 1
        with lock:
            for status, count in counts.items():
                statuses[status] = statuses.get(status, 0) + count

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(statuses.values()) / (time.monotonic() - started), statuses


def in_process_microseconds(app: Flask, method: str, path: str, count: int = 2000) -> float:
    client = app.test_client()
    for _ in range(100):
        client.open(path, method=method)
    started = time.perf_counter()
    for _ in range(count):
        client.open(path, method=method)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    options = parser.parse_args()
    views = [("GET", "/nodb"), ("GET", "/read"), ("POST", "/write")]
    with tempfile.TemporaryDirectory(prefix="bench-flask-") as folder:
        server_port, web_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{HERE}", "BENCH_INSTANCE_PATH": folder,
               "FLASK_DURUS_STORAGE": f"durus://127.0.0.1:{server_port}"}
        os.environ.update({key: env[key] for key in ("BENCH_INSTANCE_PATH", "FLASK_DURUS_STORAGE")})
        log = open(Path(folder) / "processes.log", "ab")
        server = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "bench_flask:create_app", "durus", "serve",
             "--port", str(server_port)], env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
        web = None
        try:
            wait_for(server_port, server)
            # Under its module name, as the workers import it: stored objects
            # name their class by module, and "__main__" means nothing to them.
            import bench_flask

            app = bench_flask.create_app()
            bench_flask.seed(app)
            web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", str(options.workers), "-b", f"127.0.0.1:{web_port}",
                 "bench_flask:create_app()"], env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
            wait_for(web_port, web)
            drive(web_port, "GET", "/read", options.clients, 1.0)  # warm every worker
            results = {}
            for method, path in views:
                results[path] = drive(web_port, method, path, options.clients, options.seconds)
            micro = {path: in_process_microseconds(app, method, path) for method, path in views}
            bench_flask.durus.close(app)
        finally:
            for process in (web, server):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(15)
            log.close()
    base_rps = results["/nodb"][0]
    print(f"gunicorn -w {options.workers}, {options.clients} HTTP clients, {options.seconds:g} s per view, "
          f"{os.cpu_count()} cores shared by clients, workers and server")
    print(f"{'view':8} {'req/s':>8} {'overhead/req':>13} {'in-process µs':>14}  statuses")
    for _, path in views:
        rps, statuses = results[path]
        overhead = "" if path == "/nodb" else f"{(1 / rps - 1 / base_rps) * 1e3:.2f} ms"
        print(f"{path:8} {rps:8.0f} {overhead:>13} {micro[path]:14.0f}  {json.dumps(statuses)}")


if __name__ == "__main__":
    main()

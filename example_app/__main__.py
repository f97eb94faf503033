"""``python -m example_app``: the wiki deployed, a storage server plus gunicorn.

Starts ``flask durus serve`` (the data file in the instance folder, packing
by itself every ``--gcbytes`` committed bytes), waits
until it accepts connections, then starts gunicorn with
``example_app/gunicorn.conf.py`` (4 workers on http://127.0.0.1:8000) whose
workers reach the data through that server.  Ctrl-C or SIGTERM stops
gunicorn first (its workers finish their requests, so their commits reach
the server), then the storage server; if either child dies, the other is
stopped too.  The children run in their own sessions, so a terminal's
Ctrl-C reaches only this process, which stops them in that order; and on
Linux each child is told to stop if this process dies without cleaning up.

With ``--postgres postgresql://USER@HOST:PORT/DB`` (or ``DURUS_STORAGE``
set to such a URI) there is no storage server to start: the gunicorn
workers connect to PostgreSQL directly.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from durus.storage_server import SocketAddress
from flask import Flask

from example_app import create_app
from flask_durus.storage_uri import StorageLocation, parse_storage_uri

# Every edit rewrites a few dozen small records and leaves their old versions
# behind; packing after about this many committed bytes keeps the file
# near the size of the live data without packing often.
DEFAULT_GCBYTES = 100_000_000
GUNICORN_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn.conf.py")
STOP_TIMEOUT = 20.0


class Stop(Exception):
    """A signal asked the deployment to stop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In a child: get SIGTERM when this process (its parent) dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)


def _wait_for_server(address: SocketAddress, process: subprocess.Popen, timeout: float) -> None:
    """Return once the storage server accepts connections; SystemExit if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"The storage server exited (status {process.returncode}); see its error above.")
        try:
            address.connect(timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"The storage server did not listen on {address} within {timeout:.0f} s.")


def _stop(process: subprocess.Popen | None) -> None:
    """Ask ``process`` to stop with SIGTERM (both servers stop cleanly on it), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_TIMEOUT if sig != signal.SIGKILL else None)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="Run the wiki: a Durus storage server and gunicorn, until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address gunicorn listens on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port gunicorn listens on (8000)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (4)")
    parser.add_argument("--storage-port", type=int, default=2972,
                        help="port of the storage server on 127.0.0.1, unless "
                             "FLASK_DURUS_STORAGE names a server (2972)")
    parser.add_argument("--gcbytes", type=int, default=None,
                        help="the storage server packs by itself after this many committed bytes "
                             f"(default: DURUS_SERVER_GCBYTES if set, else {DEFAULT_GCBYTES:,}; 0: never)")
    parser.add_argument("--instance", help="instance folder (data file, secret key); "
                                           "default: Flask's, ./instance in a checkout")
    parser.add_argument("--postgres", metavar="DSN",
                        help="keep the data in this PostgreSQL database (postgresql://USER@HOST:PORT/DB): "
                             "the workers connect to it directly, no storage server")
    args = parser.parse_args(argv)

    if args.postgres:
        if not parse_storage_uri(args.postgres, ".").is_postgres:
            parser.error(f"--postgres takes a postgresql:// URI, not {args.postgres!r}")
        os.environ["FLASK_DURUS_STORAGE"] = args.postgres
    app = create_app(instance_path=os.path.abspath(args.instance) if args.instance else None)
    settings = app.extensions["durus"].settings(app)
    if settings.location.is_postgres:
        return _run_on_postgres(app, settings.location, args)
    if settings.location.is_embedded:
        storage_uri = f"durus://127.0.0.1:{args.storage_port}"
    else:
        storage_uri = app.config["DURUS_STORAGE"]
    server_address = SocketAddress.new(parse_storage_uri(storage_uri, app.instance_path).server_address)

    app_spec = f"example_app:create_app(instance_path={app.instance_path!r})"
    env = {**os.environ, "FLASK_DURUS_STORAGE": storage_uri, "PYTHONUNBUFFERED": "1"}
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    storage_server = web_server = None
    status = 0
    try:
        gcbytes = args.gcbytes if args.gcbytes is not None else (settings.server_gcbytes or DEFAULT_GCBYTES)
        storage_server = _start(
            [sys.executable, "-m", "flask", "--app", app_spec, "durus", "serve", "--gcbytes", str(gcbytes)], env)
        _wait_for_server(server_address, storage_server, 30.0)
        web_server = _start(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "--bind", f"{args.host}:{args.port}",
             "--workers", str(args.workers), app_spec],
            env,
        )
        print(
            f"The wiki is at http://{args.host}:{args.port}/ ({args.workers} gunicorn workers, "
            f"storage server {storage_uri}, data {settings.server_file}). Ctrl-C stops both.",
            flush=True,
        )
        while True:
            for name, process in (("storage server", storage_server), ("gunicorn", web_server)):
                if process.poll() is not None:
                    print(f"The {name} exited (status {process.returncode}); stopping.", file=sys.stderr)
                    status = 1
                    raise Stop(name)
            time.sleep(0.2)
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(web_server)
        _stop(storage_server)
    if status == 0:
        print("Stopped the wiki and its storage server.", flush=True)
    return status


def _run_on_postgres(app: Flask, location: StorageLocation, args: argparse.Namespace) -> int:
    """gunicorn alone, its workers on PostgreSQL, until Ctrl-C or SIGTERM."""
    app_spec = f"example_app:create_app(instance_path={app.instance_path!r})"
    env = {**os.environ, "FLASK_DURUS_STORAGE": location.dsn, "PYTHONUNBUFFERED": "1"}
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    web_server = None
    status = 0
    try:
        web_server = _start(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "--bind", f"{args.host}:{args.port}",
             "--workers", str(args.workers), app_spec],
            env,
        )
        print(f"The wiki is at http://{args.host}:{args.port}/ ({args.workers} gunicorn workers, "
              f"data in PostgreSQL at {location}). Ctrl-C stops it.", flush=True)
        while web_server.poll() is None:
            time.sleep(0.2)
        print(f"gunicorn exited (status {web_server.returncode}); stopping.", file=sys.stderr)
        status = 1
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(web_server)
    if status == 0:
        print("Stopped the wiki.", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

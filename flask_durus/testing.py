"""Helpers for testing applications that use flask_durus.

A pytest plugin, registered by installing flask-durus (the ``pytest11``
entry point ``flask_durus.testing``, named as the module so that naming it
in ``pytest_plugins`` too is harmless).  Your ``conftest.py`` defines
``durus_app_factory``; the plugin offers these fixtures:

- ``durus_config``: the config for a test app: ``memory://``, so each test
  starts empty.  Override it in your conftest to test on something else.
- ``durus_app``: your app, from a ``durus_app_factory`` fixture that you
  define (a callable taking a config mapping, usually your app factory);
  its connections are closed after the test.
- ``durus_client``: ``durus_app.test_client()``.
- ``durus_root``: the root object, on a connection of its own (like another
  worker's): ``durus_root._p_connection.commit()`` shows your changes to
  the app's requests, ``.abort()`` brings in what they committed.
- ``durus_server``: a throwaway storage server process on a free port, with
  its own file; ``durus_server.uri`` is the ``DURUS_STORAGE`` to use.

For scripts (or tests without pytest): :func:`storage_server` runs a
throwaway server, and :func:`app_root` gives the root in an app context,
committing at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from durus.persistent import PersistentObject
from durus.transport import SocketAddress, wait_for_server
from flask import Flask


class StorageServerProcess:
    """A storage server (``python -m durus -s``) in a child process.

    Instance attributes:

    - ``file``: the storage file it serves.
    - ``host``, ``port``: where it listens (a free port by default).
    - ``log_path``: its output.
    - ``process``: the running ``Popen``, or None when stopped.
    """

    def __init__(self, file: str, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.file = file
        self.host = host
        self.port = port or free_port(host)
        self.log_path = f"{file}.server.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        """The ``DURUS_STORAGE`` value that reaches this server."""
        return f"durus://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> StorageServerProcess:
        """Start it (again, on the same port and file) and wait until it answers."""
        command = [sys.executable, "-m", "durus", "-s", "--file", self.file,
                   "--host", self.host, "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_server(SocketAddress.new((self.host, self.port)), timeout, interval=0.02,
                            still_starting=lambda: self.process.poll() is None)
        except RuntimeError:
            raise RuntimeError(f"the storage server exited at start; its log:\n{self.log()}") from None
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the storage server did not answer in {timeout}s:\n{self.log()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL if it lingers)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def storage_server(file: str | os.PathLike | None = None) -> Iterator[StorageServerProcess]:
    """A storage server for the duration of the block (file: a temporary one).

        with storage_server() as server:
            app = create_app({"DURUS_STORAGE": server.uri})
    """
    with tempfile.TemporaryDirectory(prefix="flask-durus-") as folder:
        server = StorageServerProcess(os.fspath(file) if file else os.path.join(folder, "data.durus"))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def app_root(app: Flask, commit: bool = True) -> Iterator[PersistentObject]:
    """The root of ``app``'s database, in an app context.

    At the end of the block the changes are committed (``commit=False``, or
    an exception: aborted).

        with app_root(app) as root:
            root["settings"] = PersistentDict()
    """
    durus = app.extensions["durus"]
    with app.app_context():  # its end aborts whatever was not committed
        yield durus.root
        if commit:
            durus.connection.commit()


# -- the pytest plugin -------------------------------------------------------------


@pytest.fixture
def durus_config() -> dict[str, Any]:
    """Config for the test app; override the fixture to change it."""
    return {"TESTING": True, "DURUS_STORAGE": "memory://"}


@pytest.fixture
def durus_app(durus_app_factory: Callable[[Mapping[str, Any]], Flask], durus_config: dict[str, Any]) -> Iterator[Flask]:
    """The app under test, made by your ``durus_app_factory`` fixture."""
    app = durus_app_factory(durus_config)
    yield app
    app.extensions["durus"].close(app)


@pytest.fixture
def durus_client(durus_app: Flask) -> Any:
    return durus_app.test_client()


@pytest.fixture
def durus_root(durus_app: Flask) -> Iterator[PersistentObject]:
    """The root, on a connection of its own, as another worker would see it.

    Requests in the test use their own connections: call
    ``durus_root._p_connection.abort()`` to see what they committed, and
    ``commit()`` to show them your changes.  No app context is pushed.
    """
    pool = durus_app.extensions["durus"].get_pool(durus_app)
    connection = pool.checkout()
    try:
        yield connection.get_root()
    finally:
        connection.abort()
        pool.checkin(connection)


@pytest.fixture
def durus_server(tmp_path: Any) -> Iterator[StorageServerProcess]:
    """A storage server process for this test; ``.uri`` for DURUS_STORAGE."""
    with storage_server(tmp_path / "data.durus") as server:
        yield server

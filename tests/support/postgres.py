"""A throwaway PostgreSQL cluster for tests: initdb in a temporary folder,
a server on a free loopback port, a fresh database per test.

The cluster runs as an unprivileged user (PostgreSQL refuses root): the
current user if not root, else ``postgres`` (created if missing), through
``runuser``.  It is durable as production would be (``fsync`` and
``synchronous_commit`` on), so crash tests mean something.

Use :func:`throwaway_cluster` outside pytest; in pytest, the fixtures
``postgres_cluster`` (session: the cluster) and ``postgres_dsn`` (a fresh
database per test) from :mod:`tests.support.postgres_fixtures`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql (needs initdb and pg_ctl)"


def find_bindir() -> str | None:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else the
    newest ``/usr/lib/postgresql/*/bin``; None if there is none.
    """
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return os.path.dirname(initdb)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> str:
    """The unprivileged user the server runs as (created if need be)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return "postgres"


@dataclass
class Cluster:
    """A running throwaway cluster; ``new_dsn()`` makes a fresh database."""

    bindir: str
    root: str
    port: int
    user: str
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def socketdir(self) -> str:
        return os.path.join(self.root, "sock")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    def new_dsn(self) -> str:
        """The DSN of a new, empty database (from template0)."""
        import psycopg

        name = f"durus_test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.dsn(name)

    def __call__(self) -> str:
        """The cluster is itself a DSN factory: ``cluster()`` is ``new_dsn()``."""
        return self.new_dsn()

    def _run_as_user(self, *command: str, **options) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            command = ("runuser", "-u", self.user, "--", *command)
        return subprocess.run(command, check=True, capture_output=True, text=True, **options)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socketdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=on -c synchronous_commit=on -c max_connections=200")
        self._run_as_user(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-o", options,
                          "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run_as_user(os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode,
                          "-w", "stop")

    def postmaster_pid(self) -> int:
        with open(os.path.join(self.datadir, "postmaster.pid")) as file:
            return int(file.readline())

    def kill(self) -> None:
        """kill -9 the postmaster and every server process (a power cut, as
        far as the data files are concerned once fsync'd).
        """
        pid = self.postmaster_pid()
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for each in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, 9)
        # Wait until they are gone (the port and the data directory free).
        for each in [pid, *map(int, children)]:
            for _ in range(500):
                try:
                    os.kill(each, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.01)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A cluster for the length of the ``with``: call it (or its
    ``new_dsn``) for the DSN of a fresh database.  RuntimeError carrying
    :data:`INSTALL_HINT` if PostgreSQL is not installed.
    """
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(INSTALL_HINT)
    user = _server_user()
    root = tempfile.mkdtemp(prefix="durus-pg-")
    try:
        os.mkdir(os.path.join(root, "sock"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            for path in (root, os.path.join(root, "sock")):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cluster = Cluster(bindir, root, free_port(), user)
        cluster._run_as_user(os.path.join(bindir, "initdb"), "-D", cluster.datadir, "-U", "postgres",
                             "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        cluster.start()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- pytest fixtures (imported by tests/conftest.py) ------------------------

import pytest  # noqa: E402  (the module works without pytest above this line)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway cluster for the whole run.  Without PostgreSQL the
    tests using it skip with one line saying how to install it; under CI
    (``CI=true``) they fail instead.
    """
    if find_bindir() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(INSTALL_HINT + " (CI=true: not skipping)")
        pytest.skip(INSTALL_HINT)
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: Cluster) -> str:
    """The DSN of a fresh, empty database for this test."""
    return postgres_cluster.new_dsn()


def uri_of(dsn: str, scheme: str = "postgresql") -> str:
    """The ``postgresql://`` URI of a libpq keyword DSN, as DURUS_STORAGE
    and the ``durus`` command take it.
    """
    from psycopg.conninfo import conninfo_to_dict

    words = conninfo_to_dict(dsn)
    return f"{scheme}://{words['user']}@{words['host']}:{words['port']}/{words['dbname']}"

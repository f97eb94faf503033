"""Per-process pools of connections, and the storages they are opened on.

A request checks a connection out, uses it, and gives it back: its object
cache stays warm for the next request.  A pool belongs to one process.  In a
child made by ``fork`` (gunicorn workers, ``--preload``) the inherited
connections are forgotten, never closed: closing would end the parent's
server session, and an embedded file is refused outright, since only the
process that opened it may write it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref

from durus.client_storage import ClientStorage, DisconnectedError
from durus.connection import Connection
from durus.error import ConflictError
from durus.file_storage import FileLockedError, FileStorage
from durus.persistent import PersistentObject
from durus.shared_storage import SharedStorage
from durus.storage import MemoryStorage, Storage

from flask_durus.errors import SERVER_ERRORS, EmbeddedStorageError
from flask_durus.settings import DurusSettings
from flask_durus.storage_uri import FILE, MEMORY, StorageLocation

log = logging.getLogger("flask_durus")


class PooledConnection(Connection):
    """A Connection that remembers the conflicts it raised.

    A view may catch a ConflictError, or an error handler may turn it into a
    response; the request must still be replayed, so the pool's connections
    keep the error until the transaction ends.

    Instance attributes (besides Connection's):

    - ``conflict``: the ConflictError met in this transaction, or None.
    - ``broken``: the storage failed under it; it must not be reused.
    """

    conflict: ConflictError | None = None
    broken: bool = False

    def get(self, oid: bytes | int) -> PersistentObject | None:
        try:
            return super().get(oid)
        except ConflictError as error:
            self.conflict = error
            raise

    __getitem__ = get

    def load_state(self, obj: PersistentObject) -> None:
        try:
            super().load_state(obj)
        except ConflictError as error:
            self.conflict = error
            raise

    def commit(self) -> None:
        try:
            super().commit()
        except ConflictError as error:
            self.conflict = error
            raise

    def abort(self) -> None:
        super().abort()
        self.conflict = None


class StorageOpener:
    """Opens a Storage for each new connection of a pool."""

    def open(self) -> Storage:
        raise NotImplementedError

    def holds_storage(self) -> bool:
        """True if this process has the storage itself open (embedded)."""
        return False

    def forget_after_fork(self) -> None:
        """In a forked child: drop what the parent opened, closing nothing."""

    def close(self) -> None:
        """Release what the opener itself holds."""


class ServerStorageOpener(StorageOpener):
    """A new client socket to the storage server for each connection.

    Instance attributes: ``location``, ``timeout`` (socket seconds) and
    ``auth_key_file``.
    """

    def __init__(self, location: StorageLocation, timeout: float | None, auth_key_file: str | None) -> None:
        self.location = location
        self.timeout = timeout
        self.auth_key_file = auth_key_file

    def open(self) -> Storage:
        return ClientStorage(
            address=self.location.server_address, timeout=self.timeout, keyfile=self.auth_key_file)


class EmbeddedStorageOpener(StorageOpener):
    """One file or memory storage for the process, a session per connection.

    The sessions see each other's commits and conflicts as clients of a
    server do, so threads behave as gunicorn workers would.

    Instance attributes:

    - ``location``: a ``file`` or ``memory`` location.
    - ``shared``: the SharedStorage, once opened.
    - ``opened_by``: the pid of the process that opened the file, if that is
      not this process (a fork inherited it), else None.
    """

    def __init__(self, location: StorageLocation) -> None:
        self.location = location
        self.shared: SharedStorage | None = None
        self.opened_by: int | None = None
        self._lock = threading.Lock()

    def open(self) -> Storage:
        with self._lock:
            if self.shared is None:
                self.shared = SharedStorage(self._open_storage())
            return self.shared.session()

    def _open_storage(self) -> Storage:
        if self.location.kind == MEMORY:
            return MemoryStorage()
        if self.opened_by is not None:
            raise EmbeddedStorageError(
                f"{self.location.file} was opened by process {self.opened_by}, and this process "
                "is a fork of it: an embedded file serves one process. For several processes "
                f"(gunicorn workers), run `flask durus serve` and set DURUS_STORAGE to its "
                "address (durus://127.0.0.1:2972)."
            )
        os.makedirs(os.path.dirname(self.location.file), exist_ok=True)
        try:
            return FileStorage(self.location.file)
        except FileLockedError:
            raise EmbeddedStorageError(
                f"{self.location.file} is in use by another process: an embedded file serves "
                "one process. For several processes (gunicorn workers, a second `flask run`), run "
                "`flask durus serve` and set DURUS_STORAGE to its address "
                "(durus://127.0.0.1:2972)."
            ) from None

    def holds_storage(self) -> bool:
        return self.shared is not None

    def forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        if self.shared is not None and self.location.kind == FILE:
            self.opened_by = os.getppid()
        # memory:// is one store per process: the child starts an empty one.
        self.shared = None

    def close(self) -> None:
        with self._lock:
            if self.shared is not None:
                self.shared.close()
                self.shared = None


class PostgresStorageOpener(StorageOpener):
    """A PostgresStorage, with its own database connection, for each connection.

    The opener holds nothing itself: after a fork the pool forgets its idle
    connections, and psycopg never closes, from a child, a database
    connection its parent opened, so the parent's sessions live on.

    Instance attributes: ``location``, a ``postgresql`` location, and
    ``timeout``: seconds a new connection may take (libpq's
    ``connect_timeout``) and data sent may go unacknowledged
    (``tcp_user_timeout``), unless the URI sets its own, so that a database
    host that does not answer gives a 503 rather than a hung worker.
    """

    def __init__(self, location: StorageLocation, timeout: float | None) -> None:
        self.location = location
        self.timeout = timeout

    def open(self) -> Storage:
        from durus.postgres_storage import PostgresStorage  # psycopg only when used
        from psycopg import errors
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        dsn = self.location.dsn
        given = conninfo_to_dict(dsn)
        if self.timeout is not None and "connect_timeout" not in given:
            # libpq takes whole seconds, and treats less than 2 as 2.
            dsn = make_conninfo(dsn, connect_timeout=max(2, math.ceil(self.timeout)))
        if self.timeout is not None and "tcp_user_timeout" not in given:
            # A link cut while a request waits on the database: the kernel
            # gives up on unacknowledged data after this many milliseconds,
            # so the request gets a 503 instead of hanging its worker.
            dsn = make_conninfo(dsn, tcp_user_timeout=max(1000, math.ceil(self.timeout * 1000)))
        try:
            return PostgresStorage(dsn)
        except (errors.DuplicateTable, errors.DuplicateObject, errors.UniqueViolation):
            # Workers that start together on a new database all create the
            # schema; the losers of that race find it made when they try again.
            log.info("another process created the durus schema at the same time; opening again")
            return PostgresStorage(dsn)


def storage_opener(settings: DurusSettings) -> StorageOpener:
    """The opener for ``settings.location``."""
    if settings.location.is_postgres:
        return PostgresStorageOpener(settings.location, settings.socket_timeout)
    if settings.location.is_embedded:
        return EmbeddedStorageOpener(settings.location)
    return ServerStorageOpener(settings.location, settings.socket_timeout, settings.auth_key_file)


class ConnectionPool:
    """Connections of one app in one process; safe to share between threads.

    The most recently returned connection goes out first, so a few hot
    connections keep warm caches.

    Instance attributes:

    - ``opener``: the StorageOpener for new connections.
    - ``cache_size``: each connection's cache size.
    - ``resolution_rounds``: each connection's ``resolution_rounds``.
    - ``max_idle``: idle connections kept; more are closed when returned.
    - ``closed``: True after :meth:`close`.
    """

    def __init__(self, opener: StorageOpener, cache_size: int, max_idle: int, resolution_rounds: int) -> None:
        self.opener = opener
        self.cache_size = cache_size
        self.resolution_rounds = resolution_rounds
        self.max_idle = max_idle
        self.closed = False
        self._idle: list[PooledConnection] = []
        self._lock = threading.Lock()
        _live_pools.add(self)

    def checkout(self) -> PooledConnection:
        """A connection brought up to date with every commit so far.

        Idle connections whose server went away are dropped (with every
        other idle one: they shared the server) and a new one is opened.
        Raises ServerUnavailableError if the server cannot be reached.
        """
        if self.closed:
            raise RuntimeError("this connection pool is closed")
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._open()
            try:
                connection.abort()
            except (*SERVER_ERRORS, DisconnectedError):
                log.info("dropping idle connections: their storage server went away")
                self._discard(connection)
                with self._lock:
                    stale, self._idle = self._idle, []
                for other in stale:
                    self._discard(other)
                continue
            return connection

    def checkin(self, connection: PooledConnection) -> None:
        """Take back a connection; a broken one is closed instead."""
        if not connection.broken:
            with self._lock:
                if not self.closed and len(self._idle) < self.max_idle:
                    self._idle.append(connection)
                    return
        self._discard(connection)

    def idle_count(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Close the idle connections and the opener's storage."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
        self.opener.close()

    def forget_after_fork(self) -> None:
        """In a forked child: drop every inherited connection unclosed."""
        self._lock = threading.Lock()
        self._idle = []
        self.opener.forget_after_fork()

    def _open(self) -> PooledConnection:
        storage = self.opener.open()
        try:
            connection = PooledConnection(storage, cache_size=self.cache_size)
            connection.resolution_rounds = self.resolution_rounds
            return connection
        except BaseException:
            _close_quietly(storage)
            raise

    def _discard(self, connection: PooledConnection) -> None:
        _close_quietly(connection.get_storage())


def _close_quietly(storage: Storage) -> None:
    try:
        storage.close()
    except Exception as error:  # a dead socket or a closed session: nothing left to release
        log.debug("closing %s: %s", storage, error)


_live_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _forget_pools_after_fork() -> None:
    for pool in list(_live_pools):
        pool.forget_after_fork()


os.register_at_fork(after_in_child=_forget_pools_after_fork)

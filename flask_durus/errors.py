"""Errors the extension raises, and how it tells a lost server from the rest."""

from __future__ import annotations

from durus.client_storage import ServerUnavailableError
from werkzeug.exceptions import ServiceUnavailable


class StorageUnavailable(ServiceUnavailable):
    """The storage server cannot be reached (or stopped answering).

    An HTTP 503 with ``Retry-After``: the client may try again, and the next
    request opens a fresh connection, so the app recovers by itself once the
    server is back.
    """

    description = (
        "The database is not reachable at the moment; nothing was changed "
        "by this request unless the server says otherwise. Please try again shortly."
    )


class EmbeddedStorageError(RuntimeError):
    """An embedded file storage cannot be used by this process.

    A file belongs to one process: a second process (another gunicorn
    worker, a forked child) must reach the data through a storage server.
    """



def _postgres_errors() -> tuple[type[BaseException], ...]:
    """What a PostgreSQL storage raises when the database cannot be reached
    (PostgresStorageError) or the connection to it is lost mid-request
    (psycopg's OperationalError); nothing if psycopg is not installed.
    """
    try:
        import psycopg

        from durus.postgres_storage import PostgresStorageError
    except ImportError:
        return ()
    return (PostgresStorageError, psycopg.OperationalError)


#: What a storage server (or PostgreSQL) that went away, or hangs, raises
#: mid-request: the request gets a 503.  (A connection to a storage server
#: lost before any commit data went out raises DisconnectedError, a
#: ConflictError: the request is replayed.)
SERVER_ERRORS: tuple[type[BaseException], ...] = (ServerUnavailableError, *_postgres_errors())

"""``DURUS_STORAGE`` URIs: where an application's data lives.

==============================  ==============================================
``durus://host:port``           a storage server over TCP (port default 2972)
``unix:///path/to/socket``      a storage server on a unix socket
``file:///path/to/data.durus``  embedded: a file this process opens alone
                                (a relative path, ``file:data.durus``, is
                                relative to the instance folder)
``memory://``                   embedded, in memory: one store per process
``postgresql://user@host/db``   a PostgreSQL database (``postgres://`` too;
                                any libpq URI: port, password, parameters)
unset (None)                    embedded: ``data.durus`` in the instance folder
==============================  ==============================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from durus.protocol import DEFAULT_HOST, DEFAULT_PORT

DEFAULT_FILE_NAME = "data.durus"

SERVER = "server"
FILE = "file"
MEMORY = "memory"
POSTGRES = "postgresql"

_FORMS = (
    "durus://HOST:PORT, unix:///PATH/TO/SOCKET, file:///PATH/TO/FILE.durus, memory:// "
    "or postgresql://USER@HOST:PORT/DATABASE"
)


@dataclass(frozen=True)
class StorageLocation:
    """A parsed ``DURUS_STORAGE``.

    Instance attributes:

    - ``kind``: ``"server"``, ``"file"``, ``"memory"`` or ``"postgresql"``.
    - ``host``, ``port``: a TCP server's address, else None.
    - ``socket_path``: a unix-socket server's path, else None.
    - ``file``: an embedded file's absolute path, else None.
    - ``dsn``: a PostgreSQL database's connection URI, as given, else None.
    - ``uri``: the text it was parsed from (None for the default).
    """

    kind: str
    host: str | None = None
    port: int | None = None
    socket_path: str | None = None
    file: str | None = None
    dsn: str | None = None
    uri: str | None = None

    @property
    def is_embedded(self) -> bool:
        """True when this process holds the data itself (file or memory)."""
        return self.kind in (FILE, MEMORY)

    @property
    def is_postgres(self) -> bool:
        """True for a PostgreSQL database: every process connects to it directly."""
        return self.kind == POSTGRES

    @property
    def server_address(self) -> tuple[str, int] | str:
        """The server's address as ClientStorage and StorageServer take it."""
        if self.kind != SERVER:
            raise ValueError(f"{self} is embedded, not a storage server")
        if self.socket_path is not None:
            return self.socket_path
        return (self.host, self.port)

    def __str__(self) -> str:
        if self.kind == MEMORY:
            return "memory://"
        if self.kind == FILE:
            return f"file://{self.file}"
        if self.kind == POSTGRES:
            return _without_password(self.dsn)
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"durus://{host}:{self.port}"


def parse_storage_uri(uri: str | None, instance_path: str) -> StorageLocation:
    """The location ``uri`` names; ValueError, listing the forms, if none.

    ``instance_path`` (the app's instance folder) anchors the default file
    and relative file paths.
    """
    if uri is None or uri == "":
        return StorageLocation(FILE, file=os.path.join(instance_path, DEFAULT_FILE_NAME), uri=None)
    if not isinstance(uri, str):
        raise ValueError(f"DURUS_STORAGE must be a string such as {_FORMS}, not {uri!r}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path:
            raise ValueError(f"DURUS_STORAGE={uri!r}: memory:// takes no host or path")
        return StorageLocation(MEMORY, uri=uri)
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"DURUS_STORAGE={uri!r} names no file: use file:///PATH/TO/FILE.durus")
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            path = os.path.join(instance_path, path)
        return StorageLocation(FILE, file=os.path.normpath(path), uri=uri)
    if scheme == "unix":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"DURUS_STORAGE={uri!r} names no socket: use unix:///PATH/TO/SOCKET")
        return StorageLocation(SERVER, socket_path=path, uri=uri)
    if scheme == "durus":
        if parts.path not in ("", "/"):
            raise ValueError(f"DURUS_STORAGE={uri!r}: a durus:// URI is only durus://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"DURUS_STORAGE={uri!r} has a bad port: use durus://HOST:PORT") from None
        return StorageLocation(
            SERVER, host=parts.hostname or DEFAULT_HOST, port=port or DEFAULT_PORT, uri=uri)
    if scheme in ("postgresql", "postgres"):
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            raise ValueError(
                f"DURUS_STORAGE={_without_password(uri)!r} names no database: use "
                "postgresql://USER@HOST:PORT/DATABASE")
        return StorageLocation(POSTGRES, dsn=uri, uri=uri)
    raise ValueError(f"DURUS_STORAGE={uri!r} is not a storage URI: use one of {_FORMS}")


def _without_password(uri: str) -> str:
    """``uri`` with any password masked, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()

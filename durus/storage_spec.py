"""Open a storage named by a string: a file path or a URI.

==================================  ============================================
``PATH`` or ``file:///PATH``        a file, its format told by its first bytes
                                    (:func:`storage_class_for_file`)
``sqlite:///PATH``                  a :class:`~durus.sqlite_storage.SqliteStorage`
``durus://HOST:PORT``               a storage server over TCP (a ClientStorage)
``unix:///PATH``                    a storage server on a unix socket
``postgresql://...``                a PostgreSQL database
                                    (:mod:`durus.postgres_storage`)
==================================  ============================================

The ``durus`` command and ``durus --copy`` take these; so may programs that
let their user say where the data is.
"""

from __future__ import annotations

import importlib
import os
from urllib.parse import unquote, urlsplit

from durus.error import DurusError
from durus.protocol import DEFAULT_HOST, DEFAULT_PORT
from durus.storage import Storage

__all__ = ["UnknownFormatError", "storage_class_for_file", "import_storage_class", "open_storage"]

FORMS = "PATH, file:///PATH, sqlite:///PATH, durus://HOST:PORT, unix:///SOCKET or postgresql://..."

# First bytes of each file format, and the module and class that read it.
_SIGNATURES = (
    (b"SHELF-1\n", "durus.file_storage", "FileStorage"),
    (b"DFS20\0", "durus.file_storage2", "FileStorage2"),
    (b"SQLite format 3\0", "durus.sqlite_storage", "SqliteStorage"),
)


class UnknownFormatError(DurusError):
    """A file is not in any storage format this package knows."""


def storage_class_for_file(path: str) -> type[Storage]:
    """The storage class that reads the file at ``path``, by its first bytes:
    FileStorage for ``SHELF-1`` (and for no file, or an empty one, which it
    makes a new database), FileStorage2 for ``DFS20``, SqliteStorage for an
    SQLite database; :class:`UnknownFormatError` for anything else.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except FileNotFoundError:
        head = b""
    except IsADirectoryError:
        raise UnknownFormatError(f"{path} is a folder, not a Durus file; give the path of the file") from None
    if not head:
        return _import_class("durus.file_storage", "FileStorage")
    for signature, module, name in _SIGNATURES:
        if head.startswith(signature):
            return _import_class(module, name)
    raise UnknownFormatError(
        f"{path} is not a Durus file: it starts with {head[:8]!r}, not SHELF-1 (FileStorage), "
        "DFS20 (FileStorage2) or SQLite format 3 (SqliteStorage)")


def import_storage_class(dotted: str) -> type[Storage]:
    """The class ``MODULE.CLASS`` names (``durus.sqlite_storage.SqliteStorage``),
    as ``durus --storage-class`` takes it; ValueError saying why if none.
    """
    module, _, name = dotted.rpartition(".")
    if not module:
        raise ValueError(f"--storage-class {dotted!r}: give MODULE.CLASS, e.g. durus.sqlite_storage.SqliteStorage")
    try:
        return _import_class(module, name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--storage-class {dotted!r}: {error}") from None


def _import_class(module: str, name: str) -> type[Storage]:
    return getattr(importlib.import_module(module), name)


def open_storage(spec: str, readonly: bool = False, repair: bool = False) -> Storage:
    """The storage ``spec`` names (see the module docstring); ValueError,
    listing the forms, if it names none.
    """
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if len(scheme) <= 1:  # a plain path (or a Windows drive letter)
        return _open_file(spec, readonly, repair)
    path = unquote(parts.netloc + parts.path)
    if scheme == "file":
        return _open_file(_need_path(spec, path), readonly, repair)
    if scheme == "sqlite":
        from durus.sqlite_storage import SqliteStorage

        return SqliteStorage(_need_path(spec, path), readonly=readonly, repair=repair)
    if scheme in ("durus", "unix"):
        from durus.client_storage import ClientStorage

        if scheme == "unix":
            return ClientStorage(address=_need_path(spec, path))
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{spec!r} has a bad port: use durus://HOST:PORT") from None
        return ClientStorage(host=parts.hostname or DEFAULT_HOST, port=port or DEFAULT_PORT)
    if scheme in ("postgresql", "postgres"):
        return _open_postgres(spec, readonly)
    raise ValueError(f"{spec!r} names no storage: use {FORMS}")


def _need_path(spec: str, path: str) -> str:
    if not path:
        raise ValueError(f"{spec!r} names no path: use e.g. sqlite:///PATH/TO/FILE")
    return os.path.expanduser(path)


def _open_file(path: str, readonly: bool, repair: bool) -> Storage:
    storage_class = storage_class_for_file(path)
    return storage_class(path, readonly=readonly, repair=repair)


def _open_postgres(spec: str, readonly: bool) -> Storage:
    try:
        module = importlib.import_module("durus.postgres_storage")
    except ImportError as error:
        raise DurusError(f"cannot open {spec}: the PostgreSQL storage is not available ({error})") from None
    if readonly:
        return module.PostgresStorage(spec, readonly=True)
    return module.PostgresStorage(spec)

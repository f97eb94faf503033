"""Kinds of storage that the storage-contract tests run against alike.

A kind is one class here, registered in :data:`KINDS` by its ``name``.
Each instance is one database, made in a test's temporary folder:

- ``make_spec()``: a string :func:`durus.storage_spec.open_storage` takes,
  for worker processes (support.serial_worker, support.contract_worker);
- ``open()``: a new, independent client of the database, as a new process
  would have (close it when done, or leave it to ``close()``);
- ``close()``: stop whatever the kind started and close what it opened.

To add a kind, write a subclass and add it to :data:`KINDS`; a kind that
needs something not installed skips from ``for_test`` (or fails under
``CI=true``), as the PostgreSQL kind does through its fixture.
"""

from __future__ import annotations

from pathlib import Path

from durus.storage import Storage


class StorageKind:
    """One database of one kind; see the module docstring."""

    name = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._opened: list[Storage] = []

    @classmethod
    def for_test(cls, folder: Path, request) -> StorageKind:
        """A database of this kind for the test ``request`` (a pytest
        request, for a kind that needs a session fixture).
        """
        return cls(folder)

    def make_spec(self) -> str:
        raise NotImplementedError

    def open(self) -> Storage:
        storage = self._open()
        self._opened.append(storage)
        return storage

    def _open(self) -> Storage:
        raise NotImplementedError

    def close(self) -> None:
        for storage in self._opened:
            try:
                storage.close()
            except Exception:  # noqa: BLE001 - a client of a killed server, say
                pass
        self._opened.clear()

    def __repr__(self) -> str:
        return f"<{self.name} storage in {self.folder}>"


class ServerKind(StorageKind):
    """A ``durus -s`` process serving a SHELF-1 file; clients are
    ClientStorages.
    """

    name = "server"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        from server_process import ServerProcess

        self.server = ServerProcess(folder / "data.durus").start()

    def make_spec(self) -> str:
        host, port = self.server.address
        return f"durus://{host}:{port}"

    def _open(self) -> Storage:
        from durus.client_storage import ClientStorage

        return ClientStorage(address=self.server.address)

    def close(self) -> None:
        super().close()
        self.server.stop()


class FileKind(StorageKind):
    """A SHELF-1 file, which one process owns: clients in this process are
    sessions of one embedded SharedStorage (as an application's threads
    share a file); once a worker process needs it (``make_spec``), a
    ``durus -s`` process serves it instead, and clients are ClientStorages.
    """

    name = "file"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.path = folder / "data.durus"
        self.shared = None
        self.server = None

    def make_spec(self) -> str:
        if self.shared is not None:
            raise RuntimeError("FileKind: make_spec() must come before open(): the file has one owner")
        if self.server is None:
            from server_process import ServerProcess

            self.server = ServerProcess(self.path).start()
        host, port = self.server.address
        return f"durus://{host}:{port}"

    def _open(self) -> Storage:
        if self.server is not None:
            from durus.client_storage import ClientStorage

            return ClientStorage(address=self.server.address)
        if self.shared is None:
            from durus.file_storage import FileStorage
            from durus.shared_storage import SharedStorage

            self.shared = SharedStorage(FileStorage(str(self.path)))
        return self.shared.session()

    def close(self) -> None:
        super().close()
        if self.shared is not None:
            self.shared.close()
        if self.server is not None:
            self.server.stop()


class SqliteKind(StorageKind):
    """An SQLite file that each client opens itself, no server between."""

    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.path = folder / "data.sqlite"

    def make_spec(self) -> str:
        return f"sqlite://{self.path}"

    def _open(self) -> Storage:
        from durus.sqlite_storage import SqliteStorage

        return SqliteStorage(str(self.path))


class PostgresKind(StorageKind):
    """A fresh database in the run's throwaway PostgreSQL cluster
    (support.postgres); each client is a PostgresStorage of its own.
    """

    name = "postgresql"

    def __init__(self, folder: Path, dsn: str) -> None:
        super().__init__(folder)
        self.dsn = dsn

    @classmethod
    def for_test(cls, folder: Path, request) -> StorageKind:
        # Skips (or fails under CI=true) with one line without PostgreSQL.
        return cls(folder, request.getfixturevalue("postgres_dsn"))

    def make_spec(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"

    def _open(self) -> Storage:
        from durus.postgres_storage import PostgresStorage

        return PostgresStorage(self.dsn)


class PostgresStreamingKind(PostgresKind):
    """PostgreSQL with every commit's new records written ahead as they are
    pickled (``stream_after=1``; see durus/_postgres_stream.py), for the
    clients a test opens itself; worker processes open the default.
    """

    name = "postgresql-streaming"

    def _open(self) -> Storage:
        from durus.postgres_storage import PostgresStorage

        return PostgresStorage(self.dsn, stream_after=1)


#: Every kind by name; the contract tests run once per entry.
KINDS: dict[str, type[StorageKind]] = {
    kind.name: kind for kind in (FileKind, ServerKind, SqliteKind, PostgresKind, PostgresStreamingKind)}

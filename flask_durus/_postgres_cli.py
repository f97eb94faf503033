"""What ``flask durus`` does differently when ``DURUS_STORAGE`` is PostgreSQL.

There is no storage server to run or stop: every app process connects to
PostgreSQL itself.  Packing works step by step, a short transaction at a
time, so the app keeps committing while it runs.  The storage module (and
psycopg with it) is imported only when a command needs it.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click
from durus.__main__ import format_duration, format_size
from durus.error import DurusError

from flask_durus.storage_uri import StorageLocation

if TYPE_CHECKING:
    from durus.postgres_storage import PackProgress
    from durus.storage import Storage

NOTHING_TO_SERVE = (
    "DURUS_STORAGE is a PostgreSQL database ({}): there is no Durus storage server to run or "
    "stop. Every app process (each gunicorn worker) connects to PostgreSQL directly; "
    "run PostgreSQL itself as the server."
)


def _failure(location: StorageLocation, error: Exception) -> click.ClickException:
    return click.ClickException(f"PostgreSQL at {location}: {error}")


def _database_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (DurusError, psycopg.Error, OSError)


def open_storage(location: StorageLocation, readonly: bool) -> Storage:
    """A PostgresStorage on ``location``, or a ClickException saying why not."""
    from durus.postgres_storage import PostgresStorage

    try:
        return PostgresStorage(location.dsn, readonly=readonly)
    except _database_errors() as error:
        raise _failure(location, error) from None


def open_to_read(location: StorageLocation) -> Storage:
    """A read-only storage on ``location`` (for info and backup)."""
    return open_storage(location, readonly=True)


def pack(location: StorageLocation, show_progress: bool) -> str:
    """Pack the database step by step (each step a short transaction, so
    the app keeps committing); the line that says it finished.
    """
    storage = open_storage(location, readonly=False)
    start = time.monotonic()
    shown = False
    idle = storage.pack_progress  # a pack replaces it; another client's pack leaves it
    try:
        for _ in storage.get_packer():
            if show_progress:
                _show(f"\rpacking {location}: {_progress_text(storage.pack_progress)} ")
                shown = True
        if storage.pack_progress is idle:
            raise click.ClickException(
                f"another client is packing {location} now: nothing done; try again when it has finished")
        removed = storage.pack_progress.removed
    except _database_errors() as error:
        raise _failure(location, error) from None
    finally:
        storage.close()
        if shown:
            _show("\r\x1b[K" if sys.stderr.isatty() else "\n")
    took = format_duration(time.monotonic() - start)
    return f"Packed {location}: removed {removed} unreachable records; finished. Took {took}."


def _progress_text(progress: PackProgress) -> str:
    if progress.phase == "sweep":
        return f"removed {progress.removed} of {progress.doomed} unreachable records"
    return {"mark": "finding what the root reaches", "doom": "listing the unreachable records"}.get(
        progress.phase, progress.phase)


def size_line(location: StorageLocation) -> str:
    """How much disk the database takes, as PostgreSQL reports it."""
    import psycopg

    try:
        with psycopg.connect(location.dsn, autocommit=True) as connection:
            size = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    except psycopg.Error as error:
        raise _failure(location, error) from None
    return f"Database size: {format_size(size)} (pg_database_size: all of the database, not only Durus's tables)"


def _show(text: str) -> None:
    click.echo(text, err=True, nl=False)

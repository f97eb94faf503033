"""``flask --app example_app backup DEST``: a consistent copy of the live data.

The work is :func:`durus.backup.backup`'s: it reads through the storage
server when the app uses one (or the data file read-only, beside whatever
process writes it), copies every object as of one commit, writes and checks
``DEST.partial`` and only then renames it to ``DEST``.  So ``DEST`` is
always either the previous backup or a good new one.  Here we only find the
source and count the wiki's pages in the copy.
"""

from __future__ import annotations

import os

import click
from flask import current_app
from flask.cli import with_appcontext

from durus.backup import BackupReport, backup, print_progress
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.storage import Storage
from example_app.models import WIKI_KEY
from flask_durus.settings import DurusSettings
from flask_durus.storage_uri import FILE, MEMORY


def _settings() -> DurusSettings:
    return DurusSettings.from_config(current_app.config, current_app.instance_path)


def data_file() -> str:
    """The file the app's data is in: the embedded file, or the one the server serves."""
    settings = _settings()
    if settings.location.kind == FILE:
        return settings.location.file
    return settings.server_file


def count_pages(path: str) -> int:
    """The wiki pages in the database file at ``path``."""
    storage = FileStorage(path, readonly=True)
    try:
        wiki = Connection(storage).get_root().get(WIKI_KEY)
        return len(wiki.pages) if wiki is not None else 0
    finally:
        storage.close()


def back_up(source: str | Storage, destination: str, progress=None) -> tuple[int, int, int]:
    """Write a checked snapshot of ``source`` (a data file or a storage) to
    ``destination``; ``(bytes, records, pages)`` of the snapshot.  Raises
    :class:`durus.error.DurusError` if it cannot (``destination`` is then
    left as it was).
    """
    report: BackupReport = backup(source, destination, progress)
    return report.file_bytes, report.objects, count_pages(destination)


def _live_storage(settings: DurusSettings) -> Storage:
    """A client of the database the app runs on: its storage server, or
    (read-only) its PostgreSQL database.
    """
    if settings.location.is_postgres:
        from durus.postgres_storage import PostgresStorage

        return PostgresStorage(settings.location.dsn, readonly=True)
    return ClientStorage(address=settings.location.server_address,
                         timeout=settings.socket_timeout, keyfile=settings.auth_key_file)


@click.command("backup")
@click.argument("destination", type=click.Path(dir_okay=False, writable=True))
@click.option("--file", "source", type=click.Path(exists=True, dir_okay=False),
              help="Read this data file directly (default: through the storage server the app "
                   "uses, or the app's own file).")
@with_appcontext
def backup_command(destination: str, source: str | None) -> None:
    """Copy the live database to DESTINATION as a consistent, checked snapshot.

    Safe while the server runs; then copy DESTINATION wherever backups go.
    """
    settings = _settings()
    if source is None and settings.location.kind == MEMORY:
        raise click.ClickException("memory:// keeps nothing to back up")
    if source is None and settings.location.kind != FILE:
        storage = _live_storage(settings)
        try:
            size, records, pages = back_up(storage, destination, print_progress)
        finally:
            storage.close()
        source = str(settings.location) if settings.location.is_postgres else str(storage.address)
    else:
        source = source or data_file()
        if not os.path.exists(source):
            raise click.ClickException(
                f"There is no data file at {source}: start the app once, or give --file."
            )
        size, records, pages = back_up(source, destination, print_progress)
    click.echo(
        f"Backed up {source} to {destination}: {size:,} bytes, {records:,} records, {pages:,} wiki pages."
    )

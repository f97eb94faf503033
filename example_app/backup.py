"""``flask --app example_app backup DEST``: a consistent copy of the live data file.

Safe while the storage server (or the embedded dev server) keeps serving,
because of how a SHELF-1 file changes: commits only ever append a whole
transaction, and packing writes a new file and renames it over the old one.
So reading the file from start to end through one open descriptor sees a
prefix of one file: every complete transaction in it is exactly as
committed, and at most the last one can be cut short (a commit appended
while we read).  Opening the copy with ``repair=True`` drops that partial
tail, which leaves the database as it was after some commit: a clean
snapshot, never a mix.  A pack that swaps files meanwhile does not matter:
the descriptor keeps reading the old file, which stays whole.

The copy is written beside ``DEST`` and renamed into place only after it is
checked, so ``DEST`` is always either the previous backup or a good new one.
"""

from __future__ import annotations

import os

import click
from flask import current_app
from flask.cli import with_appcontext

from durus.connection import Connection
from durus.file_storage import FileStorage
from example_app.models import WIKI_KEY
from flask_durus.settings import DurusSettings
from flask_durus.storage_uri import FILE

_CHUNK = 1 << 20


def data_file() -> str:
    """The file the app's data is in: the embedded file, or the one the server serves."""
    settings = DurusSettings.from_config(current_app.config, current_app.instance_path)
    if settings.location.kind == FILE:
        return settings.location.file
    return settings.server_file


def copy_prefix(source: str, target: str) -> int:
    """Copy ``source`` as it is now into a new file ``target``; the bytes copied."""
    copied = 0
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            copied += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return copied


def back_up(source: str, destination: str) -> tuple[int, int, int]:
    """Write a checked snapshot of ``source`` to ``destination``.

    Returns ``(bytes, records, pages)`` of the snapshot.  Raises
    :class:`durus.error.DurusError` if the copy does not open as a database
    (``destination`` is then left as it was).
    """
    partial = destination + ".partial"
    if os.path.exists(partial):
        os.unlink(partial)  # left by a backup that was interrupted
    try:
        copy_prefix(source, partial)
        storage = FileStorage(partial, repair=True)
        try:
            records = sum(1 for _ in storage.gen_oid_record())
            wiki = Connection(storage).get_root().get(WIKI_KEY) if records else None
            pages = len(wiki.pages) if wiki is not None else 0
        finally:
            storage.close()
        size = os.path.getsize(partial)
        os.replace(partial, destination)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    directory = os.open(os.path.dirname(os.path.abspath(destination)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return size, records, pages


@click.command("backup")
@click.argument("destination", type=click.Path(dir_okay=False, writable=True))
@click.option("--file", "source", type=click.Path(exists=True, dir_okay=False),
              help="The data file to copy (default: the app's, from DURUS_STORAGE/DURUS_SERVER_FILE).")
@with_appcontext
def backup_command(destination: str, source: str | None) -> None:
    """Copy the live data file to DESTINATION as a consistent snapshot.

    Run it on the machine that has the file, while the server runs; then
    copy DESTINATION wherever backups go.
    """
    source = source or data_file()
    if not os.path.exists(source):
        raise click.ClickException(
            f"There is no data file at {source}: start the app once, or give --file."
        )
    size, records, pages = back_up(source, destination)
    click.echo(
        f"Backed up {source} to {destination}: {size:,} bytes, {records:,} records, {pages:,} wiki pages."
    )


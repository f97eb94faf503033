"""``flask durus``: serve, pack, stop, inspect and explore the app's database.

Every command reads the app's ``DURUS_*`` settings, so ``flask durus serve``
listens where ``DURUS_STORAGE`` points and serves ``DURUS_SERVER_FILE``:
moving from the embedded default to a server is setting one key.
"""

from __future__ import annotations

import code
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

import click
from durus.__main__ import (
    CommandError,
    PackProgress,
    format_duration,
    format_size,
    listen_failure,
    pack_file_storage,
    serve_until_stopped,
)
from durus.client_storage import ClientStorage, ServerUnavailableError
from durus.error import DurusKeyError
from durus.file_storage import FileLockedError, FileStorage
from durus.protocol import DEFAULT_HOST, DEFAULT_PORT, read_secret
from durus.record import ROOT_OID
from durus.storage import Storage
from durus.storage_server import SocketAddress, StorageServer
from flask import current_app
from flask.cli import AppGroup

from flask_durus import _postgres_cli as postgres_cli
from flask_durus.settings import DurusSettings
from flask_durus.storage_uri import MEMORY

if TYPE_CHECKING:
    from flask_durus.extension import Durus

durus_group = AppGroup("durus", help="Serve, pack, stop and inspect the app's Durus database.")


def _current_durus() -> Durus:
    return current_app.extensions["durus"]


def _settings() -> DurusSettings:
    return _current_durus().settings()


def _server_address(settings: DurusSettings) -> SocketAddress:
    """Where the server of ``DURUS_STORAGE`` listens (default: 127.0.0.1:2972)."""
    if settings.location.is_embedded:
        return SocketAddress.new(None, DEFAULT_HOST, DEFAULT_PORT)
    return SocketAddress.new(settings.location.server_address)


def _secret(settings: DurusSettings) -> bytes | None:
    return read_secret(settings.auth_key_file) if settings.auth_key_file else None


def _client(settings: DurusSettings) -> ClientStorage:
    try:
        return ClientStorage(address=_server_address(settings), timeout=settings.socket_timeout,
                             keyfile=settings.auth_key_file)
    except ServerUnavailableError as error:
        raise click.ClickException(f"{error}") from None


def _open_file(path: str, readonly: bool = False) -> FileStorage:
    try:
        return FileStorage(path, readonly=readonly)
    except FileLockedError:
        raise click.ClickException(
            f"{path} is in use by another process (a `flask run` on the embedded default, or "
            "a running `flask durus serve`): stop it first, or work through the server") from None
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None


@durus_group.command("serve")
@click.option("--host", default=None, help="Listen on this host (default: from DURUS_STORAGE, else 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen on this port (default: from DURUS_STORAGE, else 2972).")
@click.option("--address", default=None, help="Listen on this unix socket path instead of TCP.")
@click.option("--file", "file_", default=None, help="Serve this file (default: DURUS_SERVER_FILE).")
@click.option("--gcbytes", type=int, default=None,
              help="Pack in the background after this many committed bytes (default: DURUS_SERVER_GCBYTES).")
def serve_command(host: str | None, port: int | None, address: str | None, file_: str | None,
                  gcbytes: int | None) -> None:
    """Run the storage server in the foreground (stop it with Ctrl-C or `flask durus stop`)."""
    settings = _settings()
    if settings.location.is_postgres:
        raise click.ClickException(postgres_cli.NOTHING_TO_SERVE.format(settings.location))
    if address is not None:
        listen = SocketAddress.new(address)
    elif host is not None or port is not None:
        default = _server_address(settings)
        listen = SocketAddress.new((host or default.host or DEFAULT_HOST, port or default.port or DEFAULT_PORT))
    else:
        listen = _server_address(settings)
    path = os.path.abspath(file_ or settings.server_file)
    folder = os.path.dirname(path)
    if folder == os.path.abspath(current_app.instance_path):
        os.makedirs(folder, exist_ok=True)  # the app's instance folder is the app's to create
    elif not os.path.isdir(folder):
        raise click.ClickException(
            f"cannot serve {path}: the folder {folder} does not exist; check --file (or "
            f"DURUS_SERVER_FILE), or create the folder first (mkdir -p {folder})")
    if os.path.isdir(path):
        raise click.ClickException(f"cannot serve {path}: it is a folder; give the path of a Durus file")
    created = not os.path.exists(path)
    storage = _open_file(path)
    server = StorageServer(storage, address=listen,
                           gcbytes=settings.server_gcbytes if gcbytes is None else gcbytes,
                           secret=_secret(settings))
    _log_to_stderr()
    if settings.location.is_embedded:
        click.echo(f"Note: this app's DURUS_STORAGE is embedded ({settings.location}); point it at "
                   f"this server (durus://{listen}) so the app uses it.", err=True)
    click.echo(f"Serving {path} on {listen}", err=True)
    try:
        error = serve_until_stopped(server, storage, path if created else None)
    finally:
        storage.close()
    if error is not None:
        raise click.ClickException(
            listen_failure(listen, error, "").replace("durus -s --stop", "flask durus stop"))


def _log_to_stderr() -> None:
    logger = logging.getLogger("durus")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@durus_group.command("pack")
@click.option("--progress", is_flag=True, help="Show progress on stderr even when it is not a terminal.")
def pack_command(progress: bool) -> None:
    """Drop the objects the root no longer reaches."""
    settings = _settings()
    location = settings.location
    if location.is_postgres:
        click.echo(postgres_cli.pack(location, progress or sys.stderr.isatty()))
        return
    if not location.is_embedded:
        storage = _client(settings)
        try:
            storage.pack()
        finally:
            storage.close()
        click.echo(f"Pack started on the server at {location}; it runs in the background.")
        return
    before = _file_size(location.file)
    start = time.monotonic()
    if _holds_embedded_storage():
        _current_durus().connection.pack()
    elif location.kind == MEMORY:
        raise click.ClickException(
            "DURUS_STORAGE is memory://, and this process has not opened it: there is nothing to pack")
    elif before is None:
        raise click.ClickException(
            f"there is no database file at {location.file} yet: nothing to pack (nothing was created)")
    else:
        storage = _open_file(location.file)
        shown = PackProgress(location.file) if progress or sys.stderr.isatty() else None
        try:
            pack_file_storage(storage, shown)
        except CommandError as error:
            raise click.ClickException(str(error)) from None
    took = format_duration(time.monotonic() - start)
    if before is None:
        click.echo(f"Packed {location}; finished. Took {took}.")
        return
    after = _file_size(location.file) or 0
    took = f"{format_size(before)} -> {format_size(after)} in {took}" if before >= 10**6 else f"Took {took}"
    click.echo(f"Packed {location}: {before} -> {after} bytes; finished. {took}.")


def _holds_embedded_storage() -> bool:
    """This process has the app's embedded storage open (it served requests,
    say, as under ``app.test_cli_runner()``): work through the app's pool,
    since the file's lock refuses a second open even in this process, and a
    memory:// store exists nowhere else.
    """
    return _current_durus().holds_embedded_storage()


def _file_size(path: str | None) -> int | None:
    return os.path.getsize(path) if path and os.path.exists(path) else None


@durus_group.command("stop")
def stop_command() -> None:
    """Stop the storage server that DURUS_STORAGE points at."""
    from durus.__main__ import stop_server

    settings = _settings()
    if settings.location.is_postgres:
        raise click.ClickException(postgres_cli.NOTHING_TO_SERVE.format(settings.location))
    if settings.location.is_embedded:
        raise click.ClickException(
            f"DURUS_STORAGE is embedded ({settings.location}): there is no server to stop")
    if stop_server(_server_address(settings), settings.auth_key_file) != 0:
        raise click.ClickException(f"could not stop a server at {settings.location}")
    click.echo(f"Stopped the storage server at {settings.location}.")


@durus_group.command("info")
@click.option("--progress", is_flag=True, help="Show progress on stderr even when it is not a terminal.")
def info_command(progress: bool) -> None:
    """Show where the data is, how many objects the root reaches, and the file size."""
    settings = _settings()
    location = settings.location
    click.echo(f"Storage: {location}" + ("" if location.uri else " (the embedded default)"))
    counting = CountProgress() if progress or sys.stderr.isatty() else None
    if _holds_embedded_storage():
        count = _count_reachable(_current_durus().connection.get_storage(), counting)
    elif location.kind == MEMORY:
        click.echo("memory:// lives inside each app process, and this one has not opened it: "
                   "nothing to inspect from here.")
        return
    else:
        storage = _open_to_read(settings)
        try:
            count = 0 if storage is None else _count_reachable(storage, counting)
        finally:
            if storage is not None:
                storage.close()
    click.echo(f"Objects reachable from the root: {count}")
    if location.kind == MEMORY:
        return
    if location.is_postgres:
        click.echo(postgres_cli.size_line(location))
        return
    if location.is_embedded:
        size = _file_size(location.file)
        click.echo(f"File: {location.file} ({'not created yet' if size is None else f'{size} bytes'})")
        return
    # The protocol reports no file size, and the server may run elsewhere or
    # serve another file: only the configured file here can be measured.
    size = _file_size(settings.server_file)
    click.echo("File size: not reported by the server; DURUS_SERVER_FILE on this machine, "
               f"{settings.server_file}, " + ("does not exist" if size is None else f"is {size} bytes"))


@durus_group.command("backup")
@click.argument("destination", type=click.Path(dir_okay=False))
def backup_command(destination: str) -> None:
    """Copy the database, as of one commit, to DESTINATION: a checked file, safe while the server runs."""
    from durus.backup import BackupError, backup, print_progress

    settings = _settings()
    if settings.location.kind == MEMORY:
        raise click.ClickException("memory:// lives inside each app process: there is no database to back up from here.")
    # Its own reader (the server's client, or the file read-only), never
    # this process's connections, whose invalidations it would take.
    storage = _open_to_read(settings)
    if storage is None:
        raise click.ClickException("There is no database to back up yet.")
    try:
        click.echo(backup(storage, destination, print_progress).summary())
    except BackupError as error:
        raise click.ClickException(str(error)) from None
    finally:
        storage.close()


def _open_to_read(settings: DurusSettings) -> Storage | None:
    """A client of the server, or the embedded file opened read-only (that
    needs no lock: this works beside a running `flask run`); None if the file
    does not exist yet.
    """
    location = settings.location
    if location.is_postgres:
        return postgres_cli.open_to_read(location)
    if not location.is_embedded:
        return _client(settings)
    return _open_file(location.file, readonly=True) if os.path.exists(location.file) else None


def _count_reachable(storage: Storage, progress: CountProgress | None = None) -> int:
    """How many objects the root reaches (0 before the first commit);
    ``progress``, if given, is shown the count as it grows.
    """
    count = 0
    try:
        for _ in storage.gen_oid_record(ROOT_OID):
            count += 1
            if progress is not None and count % 1000 == 0:
                progress(count)
    except DurusKeyError:
        pass  # no root yet: nothing was ever committed
    finally:
        if progress is not None:
            progress.finish(count)
    return count


class CountProgress:
    """Shows ``counting objects reachable from the root: 12000 so far`` on one
    line of stderr, overwritten in place about once a second.  On a terminal
    the line is wiped at the end (the summary on stdout gives the total);
    elsewhere (``--progress`` into a log) it ends with the total and a
    newline.
    """

    INTERVAL = 1.0

    def __init__(self) -> None:
        self.shown = False
        self.last = 0.0

    def __call__(self, count: int) -> None:
        now = time.monotonic()
        if self.shown and now - self.last < self.INTERVAL:
            return
        self._write(f"\rcounting objects reachable from the root: {count} so far ")
        self.shown = True
        self.last = now

    def finish(self, count: int) -> None:
        if sys.stderr.isatty():
            if self.shown:
                self._write("\r\x1b[K")
            return
        # Into a log: say the total even when it took less than a second.
        self._write(f"\rcounting objects reachable from the root: {count}, done\n")

    @staticmethod
    def _write(text: str) -> None:
        click.echo(text, err=True, nl=False)


@durus_group.command("shell")
def shell_command() -> None:
    """A Python shell with `root` and `connection` (commit with connection.commit())."""
    durus = _current_durus()
    namespace = {"app": current_app, "durus": durus, "connection": durus.connection, "root": durus.root}
    banner = (f"Durus shell on {_settings().location} (app {current_app.name})\n"
              "    root, connection, durus, app\n"
              "Changes are kept only after connection.commit().")
    code.interact(banner=banner, local=namespace, exitmsg="")

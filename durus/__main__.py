"""The ``durus`` command: ``-s`` serve, ``-c`` interactive client, ``-p`` pack,
``--check`` check a file, ``--backup`` copy a live database.

``python -m durus`` does the same.  Each mode has its own options; run
``durus -s -h`` (or ``-c -h``, ``-p -h``, ``--check -h``) to list them.

When a mode cannot do what it was asked (no server at the address, the file
missing or locked by another process, the port taken), it prints one line
to stderr, ``durus -p: what is wrong; what to do``, and exits with status 2
(:data:`EXIT_FAILED`), with no traceback.
"""

from __future__ import annotations

import argparse
import code
import logging
import os
import sys
import time
from collections.abc import Sequence

from durus.error import DurusError
from durus.protocol import DEFAULT_HOST, DEFAULT_PORT, read_secret
from durus.storage import Storage
from durus.server_io import DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from durus.storage_server import (
    DEFAULT_GCBYTES,
    DEFAULT_MAX_TRANSACTION_SIZE,
    serve_file,
    serve_storage,
)
from durus.transport import SocketAddress, wait_for_server

USAGE = """\
usage: durus -s | -c | -p | --check | --backup | --copy [options]
    -s        start (or, with --stop, stop) a storage server
    -c        open an interactive Python console on a storage
              (--file F opens an existing file; add --create for a new one)
    -p        pack a storage
    --check   check every record and reference of a file (exit status 1 if damaged)
    --backup  copy a live database, as of one commit, to a checked file:
              durus --backup DEST [--file F | --host H --port P | --address A]
    --copy    copy every record into a new storage of any kind, and verify:
              durus --copy SRC DEST (each a path, sqlite:///PATH, durus://HOST:PORT, ...)
    --init    create a database, or bring its schema up to date:
              durus --init postgresql://... (or sqlite:///PATH, or PATH)
    durus -s -h (or -c -h, -p -h, --check -h) lists the options of each
"""


#: The exit status of a mode that could not do what it was asked.
EXIT_FAILED = 2


class CommandError(Exception):
    """What stopped the command, in one line for stderr: what is wrong and
    what to do.  :func:`main` prints it and exits with :data:`EXIT_FAILED`.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = {"-s": serve_main, "-c": client_main, "-p": pack_main, "--check": check_main, "--backup": backup_main,
             "--copy": copy_main, "--init": init_main}
    if not argv or argv[0] not in modes:
        sys.stderr.write(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return modes[argv[0]](argv[1:])
    except CommandError as error:
        sys.stderr.write(f"durus {argv[0]}: {error}\n")
        return EXIT_FAILED


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"server host (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--address", default=None,
        help="a unix socket path, or @name for a Linux abstract socket, instead of host and port")
    parser.add_argument("--keyfile", default=None, help="file holding the secret shared with the server")


def _address(options: argparse.Namespace, **unix_options: object) -> SocketAddress:
    if options.address is not None:
        return SocketAddress.new(options.address, **unix_options)
    return SocketAddress.new(None, options.host, options.port)


def _address_args(options: argparse.Namespace) -> str:
    """The address options as given, to repeat in a suggested command."""
    if options.address is not None:
        return f" --address {options.address}"
    host = "" if options.host == DEFAULT_HOST else f" --host {options.host}"
    return host + ("" if options.port == DEFAULT_PORT else f" --port {options.port}")


def _reason(error: BaseException) -> str:
    """``connection refused``: an OSError's reason, in lower case."""
    if isinstance(error, TimeoutError) or (isinstance(error, OSError) and error.strerror is None
                                           and "timed out" in str(error)):
        return "timed out"
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return text[:1].lower() + text[1:]


def format_size(size: int) -> str:
    """``107.3 MB``, ``12.0 kB`` or ``512 bytes``."""
    if size >= 10**6:
        return f"{size / 1e6:.1f} MB"
    if size >= 10**3:
        return f"{size / 1e3:.1f} kB"
    return f"{size} bytes"


def format_duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2f} s"


def open_file_storage(path: str, *, create: bool, in_use_hint: str, readonly: bool = False,
                      repair: bool = False, missing_hint: str | None = None,
                      storage_class: type | None = None):
    """A storage on the file ``path``, or a :class:`CommandError` saying why not.

    ``storage_class`` (``--storage-class``) reads it; by default the class
    is told by the file's first bytes
    (:func:`durus.storage_spec.storage_class_for_file`).

    ``create``: a missing file in an existing folder becomes a new, empty
    database; otherwise a missing file is refused.  A missing folder is
    always refused: a typo must not leave new folders behind.
    ``in_use_hint``: what to do when another process holds the file's lock.
    ``missing_hint``: what else to do when a missing file is refused (say,
    the option that creates it).
    """
    from durus.file_storage import FileLockedError
    from durus.storage_spec import storage_class_for_file

    if os.path.isdir(path):
        raise CommandError(f"{path} is a folder, not a Durus file; give the path of the file")
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CommandError(
                f"cannot use {path}: the folder {folder} does not exist; check the path, "
                f"or create the folder first (mkdir -p {folder})")
        if not create or readonly:
            also = f", {missing_hint}" if missing_hint else ""
            raise CommandError(f"no such file: {path}; check the path{also} (nothing was created)")
    try:
        if storage_class is None:
            storage_class = storage_class_for_file(path)
        return storage_class(path, readonly=readonly, repair=repair)
    except FileLockedError:
        raise CommandError(f"{path} is in use by another process, which holds its lock; {in_use_hint}") from None
    except DurusError as error:
        raise CommandError(f"cannot open {path}: {error}") from None
    except OSError as error:
        raise CommandError(f"cannot open {path}: {_reason(error)}") from None


def _add_storage_class_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-class", type=_storage_class, default=None, metavar="MODULE.CLASS",
        help="with --file: the storage class that opens it, e.g. durus.sqlite_storage.SqliteStorage "
             "(default: told by the file's first bytes)")


def _storage_class(text: str) -> type:
    from durus.storage_spec import import_storage_class

    try:
        return import_storage_class(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _check_storage_class(options: argparse.Namespace) -> None:
    if options.storage_class is not None and options.file is None:
        raise CommandError("--storage-class goes with --file FILE: it says how to open that file")


def _logging_level(text: str) -> int:
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"not a logging level: {text!r} (use a number or e.g. INFO)")
    return level


# -- durus -s ------------------------------------------------------------------


def serve_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="durus -s", description="Run (or stop) a Durus storage server.")
    _add_address_options(parser)
    parser.add_argument("--file", default=None, help="the storage file (default: a new temporary file)")
    parser.add_argument("--owner", default=None, help="owner of the unix socket file")
    parser.add_argument("--group", default=None, help="group of the unix socket file")
    parser.add_argument("--umask", type=lambda text: int(text, 8), default=None,
                        help="umask (octal) while the unix socket file is created")
    parser.add_argument("--gcbytes", type=int, default=DEFAULT_GCBYTES,
                        help="pack in the background after this many committed bytes (0: never)")
    parser.add_argument("--readonly", action="store_true", help="serve the file read-only")
    parser.add_argument("--repair", action="store_true",
                        help="truncate a partial transaction left at the end of the file by a crash")
    parser.add_argument("--max-transaction-size", type=int, default=DEFAULT_MAX_TRANSACTION_SIZE,
                        help="largest commit a client may send, in bytes; clients over it are dropped")
    parser.add_argument("--logfile", default=None, help="log to this file (default: stderr)")
    parser.add_argument("--logginglevel", type=_logging_level, default=logging.INFO,
                        help="lower numbers log more (default 20, INFO)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help=f"most clients served at once (default {DEFAULT_MAX_CONNECTIONS}); "
                             "more wait to be accepted")
    parser.add_argument("--auth-timeout", type=float, default=DEFAULT_AUTH_TIMEOUT,
                        help="with --keyfile: seconds a client has to authenticate "
                             f"(default {DEFAULT_AUTH_TIMEOUT:g})")
    parser.add_argument("--invalidation-log", type=int, default=None, metavar="OIDS",
                        help="how many recently committed oids the server remembers for clients "
                             "that have not synced; one further behind drops its cache")
    parser.add_argument("--stop", action="store_true", help="stop the server running at the address")
    _add_storage_class_option(parser)
    options = parser.parse_args(argv)
    _check_storage_class(options)
    address = _address(options, owner=options.owner, group=options.group, umask=options.umask)
    if options.stop:
        return stop_server(address, options.keyfile)
    _configure_logging(options.logfile, options.logginglevel)
    from durus.file_storage import FileStorage

    secret = _read_keyfile(options.keyfile)

    def open_storage(path: str | None) -> Storage:
        if path is None:
            return FileStorage(None)
        return open_file_storage(
            path, create=True, readonly=options.readonly, repair=options.repair,
            storage_class=options.storage_class,
            in_use_hint="a server (or another program) already has it open: connect to that "
                        "server (durus -c --port PORT), or stop it first")

    limits = {} if options.invalidation_log is None else {"max_logged_oids": options.invalidation_log}
    # readonly None: as the storage says (an old DFS20 file only reads).
    error = serve_file(
        options.file, open_storage, address, gcbytes=options.gcbytes, readonly=options.readonly or None,
        secret=secret, max_transaction_size=options.max_transaction_size,
        max_connections=options.max_connections, auth_timeout=options.auth_timeout, **limits)
    if error is not None:
        raise CommandError(listen_failure(address, error, _address_args(options)))
    return 0


#: The name :func:`durus.storage_server.serve_storage` had here, kept for
#: programs that import it.
serve_until_stopped = serve_storage


def listen_failure(address: SocketAddress, error: OSError, address_args: str) -> str:
    """Why a server cannot listen on ``address``, and what to do."""
    import errno

    if error.errno == errno.EADDRINUSE:
        return (f"cannot listen on {address}: address already in use (another server is listening "
                f"there); stop it (durus -s --stop{address_args}, if it is a Durus server) or "
                "choose another --port or --address")
    return f"cannot listen on {address} ({_reason(error)}); choose another --host, --port or --address"


def _read_keyfile(keyfile: str | None) -> bytes | None:
    if not keyfile:
        return None
    try:
        return read_secret(keyfile)
    except OSError as error:
        raise CommandError(f"cannot read the keyfile {keyfile}: {_reason(error)}") from None


def _configure_logging(logfile: str | None, level: int) -> None:
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("durus")
    logger.addHandler(handler)
    logger.setLevel(level)


def stop_server(address: SocketAddress, keyfile: str | None) -> int:
    """Ask the server at ``address`` to stop and wait until it has; the
    exit status.
    """
    from durus import client_storage

    try:
        stopped = client_storage.stop_server(address, keyfile)
    except (DurusError, TimeoutError) as error:
        sys.stderr.write(f"durus -s: {error}\n")
        return EXIT_FAILED
    if not stopped:
        sys.stderr.write(f"durus -s: no Durus server is running at {address}; there is nothing to stop\n")
        return EXIT_FAILED
    return 0


# -- durus -c and durus -p --------------------------------------------------------


def _connect(options: argparse.Namespace):
    """A ClientStorage on the server at the options' address, waiting a
    second for one that is starting; else a :class:`CommandError`.
    """
    from durus.client_storage import ClientStorage

    address = _address(options)
    _read_keyfile(options.keyfile)  # a missing keyfile is said as such
    try:
        wait_for_server(address, timeout=1.0, interval=0.25)
    except TimeoutError:
        try:
            address.connect(timeout=2).close()
        except OSError as error:
            raise CommandError(
                f"no storage server at {address} ({_reason(error)}); start one with "
                f"`durus -s --file FILE{_address_args(options)}`") from None
    try:
        return ClientStorage(address=address, keyfile=options.keyfile)
    except DurusError as error:
        raise CommandError(f"{error}") from None
    except OSError as error:
        raise CommandError(f"cannot talk to a storage server at {address}: {_reason(error)}") from None


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="durus -c",
        description="An interactive Python console with `connection` and `root` in scope.")
    _add_address_options(parser)
    parser.add_argument("--file", default=None, help="open this file directly instead of a server")
    parser.add_argument("--create", action="store_true",
                        help="with --file: create the file, a new empty database, if it does not exist")
    parser.add_argument("--readonly", action="store_true", help="open the file read-only")
    parser.add_argument("--repair", action="store_true", help="truncate a partial last transaction")
    parser.add_argument("--cache_size", "--cache-size", type=int, default=10000,
                        help="objects kept loaded (default 10000)")
    parser.add_argument("--startup", default=os.environ.get("DURUSSTARTUP", ""),
                        help="a Python file to run first (default: $DURUSSTARTUP)")
    _add_storage_class_option(parser)
    options = parser.parse_args(argv)
    _check_storage_class(options)
    from durus.connection import Connection

    if options.file is None:
        if options.create:
            raise CommandError("--create goes with --file FILE; a server creates its own file (durus -s --file FILE)")
        storage = _connect(options)
    else:
        if options.create and options.readonly:
            raise CommandError("--create and --readonly contradict each other; give one of them")
        storage = open_file_storage(
            options.file, create=options.create, readonly=options.readonly, repair=options.repair,
            storage_class=options.storage_class, missing_hint=None if options.readonly else "or add --create to start a new database there",
            in_use_hint="connect to the server that serves it (durus -c --port PORT), "
                        "open it with --readonly, or stop that process first")
    connection = Connection(storage, cache_size=options.cache_size)
    from pprint import pprint

    from durus.utils import int8_to_str, str_to_int8

    # What Durus 4.3's console has in scope too, so its habits carry over.
    namespace = {"connection": connection, "root": connection.get_root(), "get": connection.get,
                 "pp": pprint, "int8_to_str": int8_to_str, "str_to_int8": str_to_int8, "os": os, "sys": sys}
    console = code.InteractiveConsole(namespace)
    if options.startup:
        with open(os.path.expanduser(options.startup)) as file:
            console.runcode(compile(file.read(), options.startup, "exec"))
    where = options.file or str(_address(options))
    try:
        console.interact(
            f"Durus {where}\n    connection -> the Connection\n    root       -> the root object\n"
            "Changes are kept only after connection.commit().", exitmsg="")
    finally:
        storage.close()
    return 0


def pack_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="durus -p", description="Pack a storage: drop unreachable objects.")
    _add_address_options(parser)
    parser.add_argument("--file", default=None,
                        help="pack this existing file directly instead of through a server")
    parser.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal (with --file)")
    _add_storage_class_option(parser)
    options = parser.parse_args(argv)
    _check_storage_class(options)
    if options.file is None:
        storage = _connect(options)
        try:
            storage.pack()
        except DurusError as error:
            raise CommandError(f"{error}") from None
        finally:
            storage.close()
        print(f"the server at {_address(options)} is packing in the background")
        return 0
    path = options.file
    if os.path.exists(path) and not os.path.isdir(path) and os.path.getsize(path) == 0:
        raise CommandError(f"{path} is empty, not a Durus file: there is nothing to pack")
    storage = open_file_storage(
        path, create=False, storage_class=options.storage_class,
        in_use_hint="pack it through the server that serves it (durus -p --port PORT), "
                    "or stop that process first")
    progress = PackProgress(path) if options.progress or sys.stderr.isatty() else None
    print(pack_file_storage(storage, progress))
    return 0


def pack_file_storage(storage, progress: PackProgress | None = None) -> str:
    """Pack an open FileStorage, close it, and say what it did:
    ``packed F: 107.3 MB -> 12.1 MB in 3.1 s``.  ``progress`` is called at
    each step of the packer.  A pack that cannot be done is a
    :class:`CommandError`.
    """
    path = storage.filename
    before = os.path.getsize(path)
    start = time.monotonic()
    try:
        for _ in storage.get_packer():
            if progress is not None:
                progress(before)
    except DurusError as error:
        raise CommandError(f"cannot pack {path}: {error}") from None
    except OSError as error:
        raise CommandError(f"cannot pack {path}: {_reason(error)}") from None
    finally:
        storage.close()
        if progress is not None:
            progress.clear()
    elapsed = time.monotonic() - start
    return (f"packed {path}: {format_size(before)} -> {format_size(os.path.getsize(path))} "
            f"in {format_duration(elapsed)}")


class PackProgress:
    """Shows ``packing PATH: 12.3 MB copied of 107.3 MB ...`` on one line of
    stderr, overwritten in place at most five times a second: how much of
    the packed file is written so far, against the file's size before.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.shown = False
        self.last = 0.0

    def __call__(self, before: int) -> None:
        now = time.monotonic()
        if self.shown and now - self.last < 0.2:
            return
        try:
            written = os.path.getsize(self.path + ".pack")
        except OSError:
            return  # swapped in already
        sys.stderr.write(f"\rpacking {self.path}: {format_size(written)} copied of {format_size(before)} ")
        sys.stderr.flush()
        self.shown = True
        self.last = now

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K" if sys.stderr.isatty() else "\n")
            sys.stderr.flush()


# -- durus --backup -----------------------------------------------------------------


def backup_main(argv: Sequence[str]) -> int:
    """``durus --backup DEST``: see :func:`durus.backup.run_backup_command`."""
    from durus.backup import run_backup_command

    return run_backup_command(argv)


def copy_main(argv: Sequence[str]) -> int:
    """``durus --copy SRC DEST``: see :func:`durus.copy.run_copy_command`."""
    from durus.copy import run_copy_command

    return run_copy_command(argv)


# -- durus --init -------------------------------------------------------------------


def init_main(argv: Sequence[str]) -> int:
    """``durus --init SPEC``: make the database ready, so that applications
    may open it without the right to create anything (PostgreSQL's
    ``create=False``).
    """
    from durus.storage_spec import FORMS

    parser = argparse.ArgumentParser(
        prog="durus --init",
        description="Create the database SPEC names, or upgrade an existing one's schema to this version "
                    f"of durus (PostgreSQL, SQLite); nothing stored is removed. SPEC is one of {FORMS}; "
                    "a new file is SHELF-1 unless named sqlite:///PATH.")
    parser.add_argument("spec", metavar="SPEC", help="the database")
    spec = parser.parse_args(argv).spec
    if spec.split(":", 1)[0].lower() in ("postgresql", "postgres"):
        return _init_postgres(spec)
    if spec.split(":", 1)[0].lower() in ("durus", "unix"):
        raise CommandError(f"{spec} is a storage server: run durus --init on its file, where it runs")
    from durus.storage_spec import UnknownFormatError, open_storage

    try:
        open_storage(spec).close()
    except (UnknownFormatError, DurusError, OSError, ValueError) as error:
        raise CommandError(str(error)) from None
    sys.stdout.write(f"{spec}: ready\n")
    return 0


def _init_postgres(dsn: str) -> int:
    try:
        import psycopg

        from durus.postgres_storage import SCHEMA_VERSION, describe_dsn, init_schema
    except ImportError as error:
        raise CommandError(f"the PostgreSQL storage is not available ({error})") from None
    try:
        found = init_schema(dsn)
    except (psycopg.Error, DurusError) as error:
        raise CommandError(f"{describe_dsn(dsn)}: {error}".strip()) from None
    if found == SCHEMA_VERSION:
        done = f"the durus schema was already at version {SCHEMA_VERSION}"
    elif found == 0:
        done = f"created the durus schema, version {SCHEMA_VERSION}"
    else:
        done = f"upgraded the durus schema from version {found} to {SCHEMA_VERSION}"
    sys.stdout.write(f"{describe_dsn(dsn)}: {done}\n")
    return 0


# -- durus --check ------------------------------------------------------------------


def check_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="durus --check",
        description="Read a whole database, read-only, and report every damaged record, "
                    "dangling reference or framing problem with its oid (and byte offset, in a file). "
                    "PATH is a FileStorage or SQLite file, sqlite:///PATH or postgresql://... "
                    "Exit status: 0 clean, 1 problems found, 2 the database could not be checked.")
    parser.add_argument("path", nargs="?", default=None,
                        help="the file, sqlite:///PATH or postgresql://... (or give --file)")
    parser.add_argument("--file", default=None, help="the file (or database) to check")
    parser.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing; only the exit status tells")
    options = parser.parse_args(argv)
    if (options.path is None) == (options.file is None):
        parser.error("give the file to check, as PATH or --file PATH (one of them)")
    path = options.file if options.file is not None else options.path
    from durus.check import UncheckableFileError, check_named

    show_progress = not options.quiet and (options.progress or sys.stderr.isatty())
    # A DSN may hold a password: the line names a database by its kind only.
    progress = _ProgressLine(path if "://" not in path else "the database") if show_progress else None
    try:
        report = check_named(path, progress)
    except UncheckableFileError as error:
        sys.stderr.write(f"durus --check: {error}\n")
        return 2
    finally:
        if progress is not None:
            progress.clear()
    if not options.quiet:
        sys.stdout.write(report.format())
    return 0 if report.clean else 1


class _ProgressLine:
    """Shows ``checking PATH: N%`` on one line of stderr, overwritten in
    place; ``shown`` says whether anything was written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        sys.stderr.write(f"\rchecking {self.path}: {percent}% ")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K" if sys.stderr.isatty() else "\n")
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())

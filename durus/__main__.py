"""The ``durus`` command: ``-s`` serve, ``-c`` interactive client, ``-p`` pack,
``--check`` check a file.

``python -m durus`` does the same.  Each mode has its own options; run
``durus -s -h`` (or ``-c -h``, ``-p -h``, ``--check -h``) to list them.
"""

from __future__ import annotations

import argparse
import code
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from durus.protocol import DEFAULT_HOST, DEFAULT_PORT, read_secret
from durus.storage_server import (
    DEFAULT_GCBYTES,
    DEFAULT_MAX_TRANSACTION_SIZE,
    SocketAddress,
    StorageServer,
    wait_for_server,
)

USAGE = """\
usage: durus -s | -c | -p | --check [options]
    -s        start (or, with --stop, stop) a storage server
    -c        open an interactive Python console on a storage
    -p        pack a storage
    --check   check every record and reference of a file (exit status 1 if damaged)
    durus -s -h (or -c -h, -p -h, --check -h) lists the options of each
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    modes = {"-s": serve_main, "-c": client_main, "-p": pack_main, "--check": check_main}
    if not argv or argv[0] not in modes:
        sys.stderr.write(USAGE)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return modes[argv[0]](argv[1:])


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
    parser.add_argument("--stop", action="store_true", help="stop the server running at the address")
    options = parser.parse_args(argv)
    address = _address(options, owner=options.owner, group=options.group, umask=options.umask)
    if options.stop:
        return stop_server(address, options.keyfile)
    _configure_logging(options.logfile, options.logginglevel)
    from durus.file_storage import FileStorage

    secret = read_secret(options.keyfile) if options.keyfile else None
    storage = FileStorage(options.file, readonly=options.readonly, repair=options.repair)
    server = StorageServer(
        storage, address=address, gcbytes=options.gcbytes, readonly=options.readonly,
        secret=secret, max_transaction_size=options.max_transaction_size)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    server.serve()
    return 0


def _configure_logging(logfile: str | None, level: int) -> None:
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("durus")
    logger.addHandler(handler)
    logger.setLevel(level)


def stop_server(address: SocketAddress, keyfile: str | None) -> int:
    """Ask the server at ``address`` to stop and wait until it has."""
    from durus.client_storage import ClientStorage, ServerUnavailableError

    try:
        storage = ClientStorage(address=address, keyfile=keyfile, timeout=10)
    except ServerUnavailableError:
        sys.stderr.write(f"no Durus server is running at {address}\n")
        return 1
    storage.stop_server()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            address.connect(timeout=1).close()
        except OSError:
            return 0
        time.sleep(0.1)
    sys.stderr.write(f"the server at {address} is still accepting connections\n")
    return 1


# -- durus -c and durus -p --------------------------------------------------------


def _open_storage(options: argparse.Namespace):
    if options.file is not None:
        from durus.file_storage import FileStorage

        return FileStorage(options.file, readonly=getattr(options, "readonly", False),
                           repair=getattr(options, "repair", False))
    from durus.client_storage import ClientStorage

    address = _address(options)
    wait_for_server(address=address, maxtries=5, sleeptime=0.5)
    return ClientStorage(address=address, keyfile=options.keyfile)


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="durus -c",
        description="An interactive Python console with `connection` and `root` in scope.")
    _add_address_options(parser)
    parser.add_argument("--file", default=None, help="open this file directly instead of a server")
    parser.add_argument("--readonly", action="store_true", help="open the file read-only")
    parser.add_argument("--repair", action="store_true", help="truncate a partial last transaction")
    parser.add_argument("--cache_size", "--cache-size", type=int, default=10000,
                        help="objects kept loaded (default 10000)")
    parser.add_argument("--startup", default=os.environ.get("DURUSSTARTUP", ""),
                        help="a Python file to run first (default: $DURUSSTARTUP)")
    options = parser.parse_args(argv)
    from durus.connection import Connection

    storage = _open_storage(options)
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
    parser.add_argument("--file", default=None, help="pack this file directly instead of through a server")
    options = parser.parse_args(argv)
    from durus.connection import Connection

    storage = _open_storage(options)
    try:
        Connection(storage).pack()
    finally:
        storage.close()
    if options.file is not None:
        print(f"packed {options.file}")
    else:
        print(f"the server at {_address(options)} is packing in the background")
    return 0


# -- durus --check ------------------------------------------------------------------


def check_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="durus --check",
        description="Read a whole FileStorage file, read-only, and report every damaged record, "
                    "dangling reference or framing problem with its byte offset and oid. "
                    "Exit status: 0 clean, 1 problems found, 2 the file could not be checked.")
    parser.add_argument("path", nargs="?", default=None, help="the file (or give --file)")
    parser.add_argument("--file", default=None, help="the file to check")
    parser.add_argument("--progress", action="store_true",
                        help="show progress on stderr even when it is not a terminal")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing; only the exit status tells")
    options = parser.parse_args(argv)
    if (options.path is None) == (options.file is None):
        parser.error("give the file to check, as PATH or --file PATH (one of them)")
    path = options.file if options.file is not None else options.path
    from durus.check import UncheckableFileError, check_file

    show_progress = not options.quiet and (options.progress or sys.stderr.isatty())
    progress = _ProgressLine(path) if show_progress else None
    try:
        report = check_file(path, progress)
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
    """Shows ``checking PATH: N% of M MB`` on one line of stderr, overwritten
    in place; ``shown`` says whether anything was written.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        sys.stderr.write(f"\rchecking {self.path}: {percent}% of {total / 1e6:.0f} MB ")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K" if sys.stderr.isatty() else "\n")
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())

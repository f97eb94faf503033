"""Build, change and dump databases in any storage class, with whichever
``durus`` is importable (the real Durus 4.3, or ours): the storage-format
counterpart of compat_driver.py, whose dumps it reuses.

    storage_driver.py build KIND FILE [--pack] [--no-btree]
    storage_driver.py mutate KIND FILE STEP [--pack]
    storage_driver.py dump KIND FILE

KIND is ``sqlite`` (SqliteStorage), ``dfs20`` (FileStorage2) or ``shelf``
(FileStorage).  Every command prints the JSON summary of compat_driver.
``--no-btree`` leaves the B-trees out: Durus 4.3 cannot load the B-tree
nodes this package writes (they carry a ``_count``).
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from durus.connection import Connection

import compat_driver
import compat_models

CLASSES = {
    "sqlite": ("durus.sqlite_storage", "SqliteStorage"),
    "dfs20": ("durus.file_storage2", "FileStorage2"),
    "shelf": ("durus.file_storage", "FileStorage"),
}


def open_connection(kind: str, filename: str) -> Connection:
    module, name = CLASSES[kind]
    return Connection(getattr(importlib.import_module(module), name)(filename))


def finish(connection: Connection, pack: bool) -> dict[str, Any]:
    if pack:
        connection.pack()
    result = compat_driver.summary(connection)
    connection.get_storage().close()
    return result


def run_command(command: str, args: list[str]) -> Any:
    pack = "--pack" in args
    btrees = "--no-btree" not in args
    args = [arg for arg in args if not arg.startswith("--")]
    kind, filename = args[0], args[1]
    connection = open_connection(kind, filename)
    if command == "build":
        compat_models.populate(connection.get_root(), connection.commit, btrees)
    elif command == "mutate":
        compat_models.mutate(connection.get_root(), int(args[2]), connection.commit)
    elif command != "dump":
        raise SystemExit(f"unknown command {command!r}")
    return finish(connection, pack)


if __name__ == "__main__":
    json.dump(run_command(sys.argv[1], sys.argv[2:]), sys.stdout)

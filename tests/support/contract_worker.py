"""Worker processes of the storage-contract tests, on any storage spec.

    python tests/support/contract_worker.py SPEC oids COUNT
        print COUNT oids from new_oid(), one line, as integers
    python tests/support/contract_worker.py SPEC commits
        commit forever: each commit sets root["left"].n and root["right"].n
        (two objects) to the next number and appends a new object holding
        it to root["items"]; after each commit prints the number (it is
        acknowledged), until killed
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_TESTS.parent), str(_TESTS)]

from durus.connection import Connection  # noqa: E402
from durus.error import ConflictError  # noqa: E402
from durus.persistent_dict import PersistentDict  # noqa: E402
from durus.persistent_list import PersistentList  # noqa: E402
from durus.storage_spec import open_storage  # noqa: E402


def print_oids(spec: str, count: int) -> None:
    storage = open_storage(spec)
    oids = [int.from_bytes(storage.new_oid(), "big") for _ in range(count)]
    storage.close()
    print(" ".join(map(str, oids)), flush=True)


def commit_forever(spec: str) -> None:
    connection = Connection(open_storage(spec))
    root = connection.get_root()
    if "items" not in root:
        root["left"] = PersistentDict(n=0)
        root["right"] = PersistentDict(n=0)
        root["items"] = PersistentList()
        connection.commit()
    number = root["left"]["n"]
    while True:
        number += 1
        try:
            root["left"]["n"] = number
            root["right"]["n"] = number
            root["items"].append(PersistentDict(n=number, padding="x" * 2000))
            connection.commit()
        except ConflictError:
            connection.abort()
            number = root["left"]["n"]
            continue
        print(number, flush=True)


def main(argv: list[str]) -> None:
    spec, command, *args = argv
    if command == "oids":
        print_oids(spec, int(args[0]))
    elif command == "commits":
        commit_forever(spec)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

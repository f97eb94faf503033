"""A client process for the conflict-resolution tests.

    python resolution_worker.py HOST PORT KIND INDEX ROUNDS

Each round is one transaction against the storage server that changes only
this worker's own keys (or bumps the shared counter), with a short random
pause between reading and committing so that the workers' transactions
overlap.  Prints JSON: the ConflictErrors that reached the application.
"""

from __future__ import annotations

import json
import random
import sys
import time

from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError


def change(root: dict, kind: str, index: int, round_: int) -> None:
    key = f"w{index}-{round_}"
    if kind == "btree":
        tree = root["tree"]
        tree[key] = round_
        if round_ % 2:
            del tree[f"w{index}-{round_ - 1}"]
    elif kind == "dict":
        mapping = root["dict"]
        mapping[key] = round_
        if round_ % 2:
            del mapping[f"w{index}-{round_ - 1}"]
    elif kind == "set":
        members = root["set"]
        members.add(key)
        if round_ % 2:
            members.remove(f"w{index}-{round_ - 1}")
    elif kind == "counter":
        root["counter"].increment()
    else:
        raise SystemExit(f"unknown kind {kind!r}")


def main() -> None:
    host, port, kind, index, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    connection = Connection(ClientStorage(host, port))
    conflicts = []
    random.seed(index)
    for round_ in range(rounds):
        while True:
            connection.abort()
            try:
                change(connection.get_root(), kind, index, round_)
                time.sleep(random.uniform(0, 0.01))
                connection.commit()
                break
            except ConflictError as error:
                conflicts.append(repr(error))
    print(json.dumps({"conflicts": conflicts}))


if __name__ == "__main__":
    main()

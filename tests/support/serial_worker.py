"""A client process that a test drives one step at a time.

    python tests/support/serial_worker.py HOST PORT ID
    python tests/support/serial_worker.py STORAGE_SPEC ID

It opens one Connection to the storage server (or to the storage the spec
names, as :func:`durus.storage_spec.open_storage` takes it) and then reads commands, one
JSON object a line, on stdin; it answers each with one JSON line on stdout.
Commands (``op``):

- ``begin``: abort, which starts a new transaction up to date with others.
- ``run`` (``scenario``, ``params``): run a body of support.scenarios in the
  current transaction.  Answers ``{"status": "ok", "result": ...}``, or
  ``{"status": "conflict", "error": class name}`` if a ConflictError
  reached the body (the transaction is then aborted; a later ``commit``
  answers the same conflict without committing).
- ``commit``: ``{"status": "committed"}`` or ``{"status": "conflict",
  "error": ...}`` (then aborted).
- ``abort``.
- ``retry`` (``scenario``, ``params``, ``limit``): begin, run, commit; after a
  conflict abort and do it all again, up to ``limit`` times.  Answers the
  status, the result of the run that committed and ``retries``.
- ``timestamps`` (``name``, ``count``, ``pause``, ``limit``): ``count``
  transactions, each inserting into the BTree ``root[name]`` one new key made
  from the clock (so keys grow, as timestamps do), retried after conflicts.
  Answers the keys committed and the conflicts met.
- ``quit``.

Anything else that goes wrong answers ``{"status": "error", "traceback": ...}``.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from pathlib import Path

# This checkout's tests/ and package first, whatever is installed.
_TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_TESTS.parent), str(_TESTS)]

from durus.client_storage import ClientStorage  # noqa: E402
from durus.connection import Connection  # noqa: E402
from durus.error import ConflictError  # noqa: E402

from support.scenarios import SCENARIOS  # noqa: E402


class Worker:
    def __init__(self, host: str, port: int | None, ident: int) -> None:
        if port is None:
            from durus.storage_spec import open_storage

            storage = open_storage(host)  # a storage spec
        else:
            storage = ClientStorage(host, port)
        self.connection = Connection(storage)
        self.ident = ident
        self.failed: str | None = None  # the conflict this transaction met

    def begin(self) -> dict:
        self.connection.abort()
        self.failed = None
        return {"status": "ok"}

    def abort(self) -> dict:
        return self.begin()

    def run(self, scenario: str, params: dict) -> dict:
        if self.failed:
            return {"status": "conflict", "error": self.failed}
        try:
            result = SCENARIOS[scenario](self.connection.get_root(), **params)
        except ConflictError as error:
            return self._conflict(error)
        return {"status": "ok", "result": result}

    def commit(self) -> dict:
        if self.failed:
            return {"status": "conflict", "error": self.failed}
        try:
            self.connection.commit()
        except ConflictError as error:
            return self._conflict(error)
        return {"status": "committed"}

    def _conflict(self, error: ConflictError) -> dict:
        self.failed = type(error).__name__
        self.connection.abort()
        return {"status": "conflict", "error": self.failed}

    def retry(self, scenario: str, params: dict, limit: int = 20) -> dict:
        errors = []
        for _ in range(limit + 1):
            self.begin()
            reply = self.run(scenario, params)
            if reply["status"] == "ok":
                result = reply["result"]
                reply = self.commit()
                if reply["status"] == "committed":
                    return {"status": "committed", "result": result, "retries": len(errors), "errors": errors}
            errors.append(reply["error"])
        return {"status": "conflict", "retries": len(errors), "errors": errors}

    def timestamps(self, name: str, count: int, pause: float = 0.0, limit: int = 50) -> dict:
        connection = self.connection
        committed, conflicts = [], 0
        rng = random.Random(self.ident)
        for sequence in range(count):
            for _ in range(limit + 1):
                connection.abort()
                try:
                    key = f"{time.time_ns():020d}-{self.ident}-{sequence:05d}"
                    connection.get_root()[name][key] = self.ident
                    if pause:
                        time.sleep(rng.uniform(0, pause))
                    connection.commit()
                except ConflictError:
                    conflicts += 1
                    continue
                committed.append(key)
                break
            else:
                return {"status": "conflict", "keys": committed, "conflicts": conflicts}
        connection.abort()
        return {"status": "committed", "keys": committed, "conflicts": conflicts}


def main() -> None:
    if len(sys.argv) == 3:
        host, port, ident = sys.argv[1], None, int(sys.argv[2])
    else:
        host, port, ident = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    worker = Worker(host, port, ident)
    print(json.dumps({"status": "ready"}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            reply = getattr(worker, op)(**command)
        except Exception:  # noqa: BLE001 - reported to the test, which fails
            reply = {"status": "error", "traceback": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

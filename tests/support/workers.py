"""The test side of support.serial_worker: start, command and stop workers.

    with WorkerPool(server.address, 2) as pool:
        first, second = pool.workers
        first.begin(); second.begin()
        first.run("insert", name="t", key="k1")
        ...
        assert first.commit() == "committed"

Every call waits for the worker's answer (with a timeout) and fails the test
with the worker's traceback if the worker broke.  ``send`` and ``receive``
split a call in two, to let several workers work at once.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("serial_worker.py")
TIMEOUT = 60.0


class WorkerError(AssertionError):
    pass


class WorkerProcess:
    """A serial_worker process on the server at ``address`` (``(host,
    port)``), or on the storage a spec string names (see
    :func:`durus.storage_spec.open_storage`).
    """

    def __init__(self, address: tuple[str, int] | str, ident: int) -> None:
        where = [address] if isinstance(address, str) else [address[0], str(address[1])]
        self.ident = ident
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *where, str(ident)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self.receive()
        if ready.get("status") != "ready":
            raise WorkerError(f"worker {ident} did not start: {ready!r}")

    # -- raw -------------------------------------------------------------------

    def send(self, op: str, **arguments: Any) -> None:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float = TIMEOUT) -> dict:
        stdout = self.process.stdout
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            _, err = self.process.communicate()
            raise WorkerError(f"worker {self.ident} gave no answer (timeout {timeout}s or exit):\n{err}")
        reply = json.loads(line)
        if reply.get("status") == "error":
            raise WorkerError(f"worker {self.ident} failed:\n{reply['traceback']}")
        return reply

    def call(self, op: str, **arguments: Any) -> dict:
        self.send(op, **arguments)
        return self.receive()

    # -- transactions ------------------------------------------------------------

    def begin(self) -> None:
        self.call("begin")

    def abort(self) -> None:
        self.call("abort")

    def run(self, scenario: str, **params: Any) -> dict:
        """``{"status": "ok", "result": ...}`` or ``{"status": "conflict", ...}``."""
        return self.call("run", scenario=scenario, params=params)

    def result(self, scenario: str, **params: Any) -> Any:
        """Run a body that must not conflict; what it returned."""
        reply = self.run(scenario, **params)
        assert reply["status"] == "ok", f"worker {self.ident}: {scenario} met {reply}"
        return reply["result"]

    def commit(self) -> str:
        """``"committed"`` or ``"conflict"``."""
        return self.call("commit")["status"]

    def retry(self, scenario: str, attempts: int = 20, **params: Any) -> dict:
        """Run the body and commit, again after each conflict (at most
        ``attempts`` more times); the status, result and ``retries``."""
        return self.call("retry", scenario=scenario, params=params, limit=attempts)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()

    def alive(self) -> bool:
        return self.process.poll() is None


class WorkerPool:
    """``count`` worker processes on one server; ``get(n)`` the first n,
    started again if one has died (after a failed test, say)."""

    def __init__(self, address: tuple[str, int] | str, count: int) -> None:
        self.address = address
        self.workers = [WorkerProcess(address, ident) for ident in range(count)]

    def get(self, count: int) -> list[WorkerProcess]:
        for i, worker in enumerate(self.workers[:count]):
            if not worker.alive():
                worker.close()
                self.workers[i] = WorkerProcess(self.address, i)
        chosen = self.workers[:count]
        for worker in chosen:
            worker.abort()
        return chosen

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


"""Real processes for the extension's deployment tests and benchmark:
``flask durus serve``, gunicorn and ``flask run`` on free ports, and a tiny
HTTP client.  Everything started here is stopped by the context managers.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask_durus.testing import free_port

REPO = Path(__file__).resolve().parents[2]
APP = "tests.flask_apps.bank:create_app"


def app_env(instance: Path, storage: str | None, **extra: str) -> dict[str, str]:
    """The environment that points the bank app at ``storage``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "BANK_INSTANCE_PATH": str(instance), **extra}
    env.pop("FLASK_DURUS_STORAGE", None)
    if storage is not None:
        env["FLASK_DURUS_STORAGE"] = json.dumps(storage)
    return env


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    from durus.transport import SocketAddress, wait_for_server

    try:
        wait_for_server(SocketAddress(host="127.0.0.1", port=port), timeout,
                        still_starting=lambda: process.poll() is None)
    except RuntimeError:
        raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{log.read_text()}") from None
    except TimeoutError:
        raise RuntimeError(f"{process.args} did not listen in {timeout}s:\n{log.read_text()}") from None


class Running:
    """A started process: ``port``, ``process``, ``log`` (a file path)."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.command, self.env, self.port, self.log = command, env, port, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Running:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=REPO,
                                            stdout=output, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.process, self.log)
        return self

    @contextmanager
    def start_context(self) -> Iterator[Running]:
        """Started for the block, stopped after it."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def durus_serve(tmp: Path, env: dict[str, str], port: int) -> Running:
    """``flask durus serve`` on ``port`` (not started)."""
    command = [sys.executable, "-m", "flask", "--app", APP, "durus", "serve", "--port", str(port)]
    return Running(command, env, port, tmp / "durus-serve.log")


@functools.cache
def _gunicorn_control_socket_flag() -> list[str]:
    """gunicorn 25+ opens a control socket at one fixed path; tests running
    side by side must not share it.
    """
    help_text = subprocess.run([sys.executable, "-m", "gunicorn", "--help"],
                               capture_output=True, text=True).stdout
    return ["--no-control-socket"] if "--no-control-socket" in help_text else []


def gunicorn(tmp: Path, env: dict[str, str], workers: int = 4, threads: int = 1,
             preload: bool = False) -> Running:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--graceful-timeout", "5", "--timeout", "60", *_gunicorn_control_socket_flag()]
    if threads > 1:
        command += ["-k", "gthread", "--threads", str(threads)]
    if preload:
        command.append("--preload")
    return Running(command + [f"{APP}()"], env, port, tmp / "gunicorn.log")


def flask_run(tmp: Path, env: dict[str, str]) -> Running:
    port = free_port()
    command = [sys.executable, "-m", "flask", "--app", APP, "run", "--port", str(port), "--with-threads"]
    return Running(command, env, port, tmp / "flask-run.log")


def request(port: int, method: str, path: str, body: object = None,
            timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One HTTP request on a new connection: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()

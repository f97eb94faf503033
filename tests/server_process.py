"""Storage server subprocesses for tests: a free port, start, stop, kill -9.

    with ServerProcess(tmp_path / "data.durus") as server:
        storage = ClientStorage(address=server.address)
        ...
        server.kill()      # SIGKILL, as a crash would
        server.start()     # the same file and port again

The server's log goes to ``server.log_path``; a server that fails to come up
raises with the log in the message.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from durus.transport import SocketAddress, wait_for_server
from durus43 import clean_env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``durus -s`` in a subprocess, on a free port or a unix socket.

    Instance attributes: ``file`` (the storage file; None for a temporary
    one); ``address`` (``(host, port)`` or the socket path, what
    ClientStorage's ``address`` takes); ``args`` (more ``durus -s``
    options); ``python`` (the interpreter: ours, or Durus 4.3's for its
    server); ``log_path``; ``popen_options`` (more ``subprocess.Popen``
    arguments: ``preexec_fn``, ``pass_fds``, ``env``); ``wrapper`` (a
    command the server's command line is appended to, e.g. an exec wrapper
    that sets up socket activation); ``process`` (the Popen, while running).
    """

    def __init__(
        self,
        file: str | os.PathLike | None = None,
        *,
        address: tuple[str, int] | str | None = None,
        args: tuple[str, ...] | list[str] = (),
        python: str | None = None,
        log_path: str | os.PathLike | None = None,
        popen_options: dict | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.file = None if file is None else os.fspath(file)
        self.address = address if address is not None else ("127.0.0.1", free_port())
        self.args = list(args)
        self.python = python or sys.executable
        if log_path is None:
            base = self.file if self.file is not None else f"/tmp/durus-test-server-{os.getpid()}"
            log_path = f"{base}.{id(self)}.log"
        self.log_path = Path(log_path)
        self.popen_options = dict(popen_options or {})
        self.wrapper = list(wrapper or [])
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        command = [self.python, "-m", "durus", "-s"]
        if isinstance(self.address, tuple):
            command += ["--host", self.address[0], "--port", str(self.address[1])]
        else:
            command += ["--address", self.address]
        if self.file is not None:
            command += ["--file", self.file]
        return command + self.args

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Start the server and wait until it accepts connections."""
        options: dict = dict(self.popen_options)
        if self.python != sys.executable:
            # Another interpreter (the real Durus 4.3) must not import our
            # package: ``-m`` would put the current directory first.
            options = {"cwd": "/", "env": clean_env()}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.wrapper + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            **options)
        try:
            wait_for_server(SocketAddress.new(self.address), timeout, interval=0.02,
                            still_starting=lambda: self.process.poll() is None)
        except RuntimeError:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}") from None
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log()}") from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop gracefully (SIGTERM); kill if it takes too long.  Exit status."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a power cut would end it."""
        process = self.process
        if process is not None:
            process.kill()
            process.wait()
            self.process = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""A slower network for benchmarks: two Linux network namespaces joined by
a veth pair, and a forwarding proxy that delays every chunk it carries.

This kernel has no netem, so the delay comes from the proxy: it runs in the
server's namespace, listens on the veth address, and passes each chunk on
to the target (the storage server on that namespace's own loopback) after
``delay`` seconds, in each direction; a round trip through it takes at
least ``2 * delay`` more than one over the veth alone.  Each direction of a
connection has a reader thread, which stamps a chunk when it arrives, and
a writer thread, which sends it when its time has come, so chunks in
flight together are delayed together, as on a wire.

    with DelayedLink(delay=0.00025) as link:
        server = subprocess.Popen(link.in_server(["python", "-m", "durus", "-s",
                                                  "--host", "127.0.0.1", "--port", "2972"]))
        link.wait_for_port(link.server_ns, "127.0.0.1", 2972)
        port = link.start_proxy(("127.0.0.1", 2972))
        subprocess.run(link.in_client([...connect to link.server_ip, port...]))

Needs root (``ip netns``, ``ip link``).  Everything is private: addresses in
10.254.0.0/16, inside the two namespaces only; the namespaces (and with
them the veth pair) and the processes started through the link are removed
on exit, also on SIGTERM.

    python bench/netlink_delay.py selftest      # measures round trips through it
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_CHUNK = 1 << 16


class DelayedLink:
    """Two namespaces, a veth pair between them, and delaying proxies.

    Instance attributes: ``delay`` (seconds each way); ``server_ns`` and
    ``client_ns`` (namespace names); ``server_ip`` and ``client_ip`` (their
    veth addresses); ``processes`` (what was started through the link).
    """

    def __init__(self, delay: float = 0.00025, tag: str | None = None) -> None:
        self.delay = delay
        tag = tag or str(os.getpid())
        self.server_ns = f"durusbench-s-{tag}"
        self.client_ns = f"durusbench-c-{tag}"
        subnet = 1 + int(tag) % 250 if tag.isdigit() else 1
        self.server_ip = f"10.254.{subnet}.1"
        self.client_ip = f"10.254.{subnet}.2"
        self._veth = (f"dbs{tag}"[:15], f"dbc{tag}"[:15])
        self.processes: list[subprocess.Popen] = []
        self._made = False

    def __enter__(self) -> DelayedLink:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def create(self) -> None:
        """Make the namespaces and the veth pair, addressed and up."""
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None):
            # An orderly exit on SIGTERM, so the ``with`` block cleans up.
            signal.signal(signal.SIGTERM, _exit_on_signal)
        self._made = True
        server_end, client_end = self._veth
        try:
            _ip("netns", "add", self.server_ns)
            _ip("netns", "add", self.client_ns)
            _ip("link", "add", server_end, "type", "veth", "peer", "name", client_end)
            for end, ns, address in ((server_end, self.server_ns, self.server_ip),
                                     (client_end, self.client_ns, self.client_ip)):
                _ip("link", "set", end, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", end)
                _ip("-n", ns, "link", "set", end, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Stop what was started through the link; remove the namespaces
        (the veth pair goes with them).  Safe to call twice.
        """
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        if not self._made:
            return
        self._made = False
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self._veth[0]], capture_output=True)

    def in_server(self, command: Sequence[str]) -> list[str]:
        """``command`` run in the server's namespace."""
        return ["ip", "netns", "exec", self.server_ns, *command]

    def in_client(self, command: Sequence[str]) -> list[str]:
        """``command`` run in the client's namespace."""
        return ["ip", "netns", "exec", self.client_ns, *command]

    def start(self, command: Sequence[str], **options: object) -> subprocess.Popen:
        """Start a process (a command from :meth:`in_server` or
        :meth:`in_client`) that the link stops when it is destroyed.
        """
        process = subprocess.Popen(list(command), **options)
        self.processes.append(process)
        return process

    def start_proxy(self, target: tuple[str, int], port: int = 0) -> int:
        """A delaying proxy in the server's namespace, on ``server_ip``,
        forwarding to ``target`` (an address in that namespace); its port.
        """
        command = self.in_server([sys.executable, os.path.abspath(__file__), "proxy", self.server_ip,
                                  str(port), target[0], str(target[1]), repr(self.delay)])
        process = self.start(command, stdout=subprocess.PIPE, text=True)
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the proxy did not start: {line!r}")
        return int(line)

    def wait_for_port(self, ns: str, host: str, port: int, timeout: float = 20.0) -> None:
        """Wait until something accepts connections at (host, port), as seen from namespace ``ns``."""
        probe = ("import socket, sys, time\n"
                 f"deadline = time.monotonic() + {timeout}\n"
                 "while True:\n"
                 f"    try: socket.create_connection(({host!r}, {port}), timeout=1).close(); break\n"
                 "    except OSError:\n"
                 "        if time.monotonic() > deadline: sys.exit('nothing listens')\n"
                 "        time.sleep(0.02)\n")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], check=True)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# -- the proxy ---------------------------------------------------------------------


def serve_proxy(listen: tuple[str, int], target: tuple[str, int], delay: float, ready=None) -> None:
    """Accept connections on ``listen`` and forward each to ``target``,
    every chunk ``delay`` seconds late in each direction.  Runs forever;
    ``ready`` is called with the bound port.
    """
    listener = socket.create_server(listen)
    if ready is not None:
        ready(listener.getsockname()[1])
    while True:
        downstream, _ = listener.accept()
        try:
            upstream = socket.create_connection(target)
        except OSError:
            downstream.close()  # the target is down: so is the link to it
            continue
        for sock in (downstream, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Pipe(downstream, upstream, delay).start()
        _Pipe(upstream, downstream, delay).start()


class _Pipe:
    """One direction of a proxied connection: chunks read from ``source``
    are written to ``sink`` ``delay`` seconds after they arrived.  An end of
    input (or an error) is passed on after the data before it, then both
    sockets close, as the peer's would.
    """

    def __init__(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        self.source, self.sink, self.delay = source, sink, delay
        self.chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.source.recv(_CHUNK)
            except OSError:
                data = b""
            self.chunks.put((time.perf_counter() + self.delay, data))
            if not data:
                return

    def _write(self) -> None:
        while True:
            due, data = self.chunks.get()
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            try:
                if data:
                    self.sink.sendall(data)
                    continue
                self.sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            for sock in (self.source, self.sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return


# -- self-test ---------------------------------------------------------------------

_ECHO = r"""
import socket, sys, threading
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
def echo(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := sock.recv(65536):
        sock.sendall(data)
while True:
    threading.Thread(target=echo, args=(listener.accept()[0],), daemon=True).start()
"""

_PING = r"""
import socket, statistics, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    sock.sendall(b"x" * 16)
    got = b""
    while len(got) < 16:
        got += sock.recv(64)
    times.append(time.perf_counter() - start)
big = b"y" * (1 << 20)
start = time.perf_counter()
sock.sendall(big)
got = 0
while got < len(big):
    got += len(sock.recv(1 << 16))
print(statistics.median(times), time.perf_counter() - start)
"""


def self_test(delay: float = 0.00025, pings: int = 300) -> tuple[float, float]:
    """Round trips from the client namespace to an echo server in the
    server namespace, over the veth alone and through the proxy: the
    medians, in seconds.  Checks that the proxy adds about ``2 * delay``
    and carries a megabyte intact.
    """
    with DelayedLink(delay) as link:
        echo_port = 7007
        link.start(link.in_server([sys.executable, "-c", _ECHO, link.server_ip, str(echo_port)]))
        link.wait_for_port(link.client_ns, link.server_ip, echo_port)
        proxy_port = link.start_proxy((link.server_ip, echo_port))
        medians = []
        for port in (echo_port, proxy_port):
            output = subprocess.run(link.in_client([sys.executable, "-c", _PING, link.server_ip, str(port),
                                                    str(pings)]), capture_output=True, text=True, check=True)
            median, megabyte = map(float, output.stdout.split())
            medians.append(median)
            print(f"  {'through the proxy' if port == proxy_port else 'veth alone':18} "
                  f"round trip {median * 1e3:6.3f} ms (median of {pings}); 1 MiB echoed in {megabyte * 1e3:.1f} ms")
        direct, proxied = medians
        assert proxied >= direct + 2 * delay * 0.9, "the proxy does not add its delay"
    assert not _namespace_exists(link.server_ns) and not _namespace_exists(link.client_ns), "namespaces left behind"
    return direct, proxied


def _namespace_exists(name: str) -> bool:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in listing.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    test = commands.add_parser("selftest", help="measure round trips over the link, with and without the proxy")
    test.add_argument("--delay", type=float, default=0.00025, help="seconds added each way")
    proxy = commands.add_parser("proxy", help="run a delaying proxy (prints its port)")
    proxy.add_argument("listen_host")
    proxy.add_argument("listen_port", type=int)
    proxy.add_argument("target_host")
    proxy.add_argument("target_port", type=int)
    proxy.add_argument("delay", type=float)
    options = parser.parse_args(argv)
    if options.command == "selftest":
        self_test(options.delay)
        print("ok")
        return 0
    signal.signal(signal.SIGTERM, _exit_on_signal)

    def ready(port: int) -> None:
        print(port, flush=True)

    serve_proxy((options.listen_host, options.listen_port), (options.target_host, options.target_port),
                options.delay, ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())

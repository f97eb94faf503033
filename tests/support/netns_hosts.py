"""Several "hosts" on one Linux machine: network namespaces on a private
subnet, joined by a bridge that lives in a namespace of its own.

    with PrivateNetwork(["db", "app1", "app2"]) as network:
        db = network.hosts["db"]                 # db.address: "10.253.0.1"
        server = network.start(db, ["python", "-m", "http.server", "--bind", db.address])
        network.wait_for_port(network.hosts["app1"], db.address, 8000)

Each host sees only its own loopback and its one interface (``eth0``) on the
bridge; the machine's own network namespace gets nothing (no address, no
bridge, no route), so nothing sent to the subnet can leave it, and the
machine's firewall rules do not apply to the traffic between the hosts.

Needs root and the ``ip`` command (iproute2).  On exit, also after an
error or a SIGTERM, the processes in the namespaces (whether started here
or by what was started here) are killed and the namespaces deleted; the
veth pairs and the bridge go with them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_SUBNET = "10.253.0.0/24"
NAMESPACE_PREFIX = "durusnet"


class NetworkError(RuntimeError):
    """An ``ip`` command failed while building the network (its stderr says why)."""


def unavailable_reason() -> str | None:
    """Why private networks cannot be built here, in one line; None if they can."""
    if shutil.which("ip") is None:
        return "the ip command is missing (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    return None


@dataclass(frozen=True)
class Host:
    """One namespace on the network: ``name`` (given by the caller),
    ``namespace`` (the ``ip netns`` name) and ``address`` (its IPv4 address
    on the subnet).
    """

    name: str
    namespace: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (through ``ip netns exec``, which
        execs it: the process started is the command itself).
        """
        return ["ip", "netns", "exec", self.namespace, *argv]


class PrivateNetwork:
    """Hosts on one bridge, each in its own network namespace.

    ``hosts`` maps each name given (lower-case letters, digits, dashes) to
    its :class:`Host`, addressed in order from the subnet's first address;
    ``subnet`` is the network they share.  ``tag`` (default: this process's
    id) keeps the namespace names apart from other runs'.
    """

    def __init__(self, names: Iterable[str], subnet: str = DEFAULT_SUBNET, tag: str | None = None) -> None:
        network = ipaddress.ip_network(subnet)
        names = list(names)
        for name in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
                raise ValueError(f"a host name is lower-case letters, digits and dashes, not {name!r}")
        if len(names) != len(set(names)):
            raise ValueError(f"host names must differ: {names}")
        if len(names) > network.num_addresses - 2:
            raise ValueError(f"{subnet} has no room for {len(names)} hosts")
        self.subnet = str(network)
        self.prefix_length = network.prefixlen
        tag = tag or str(os.getpid())
        self.bridge_namespace = f"{NAMESPACE_PREFIX}-{tag}-bridge"
        self.hosts = {name: Host(name, f"{NAMESPACE_PREFIX}-{tag}-{name}", str(address))
                      for name, address in zip(names, network.hosts())}
        self._ports = {name: f"port{index}" for index, name in enumerate(names)}  # on the bridge
        self._made: list[str] = []
        self._processes: list[subprocess.Popen] = []
        self._previous_sigterm: object = None

    def __enter__(self) -> PrivateNetwork:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- building and removing ---------------------------------------------------------

    def create(self) -> None:
        """Make the bridge namespace and every host, addressed and up."""
        self._exit_on_sigterm()
        try:
            self._add_namespace(self.bridge_namespace)
            _ip("-n", self.bridge_namespace, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_namespace, "link", "set", "br0", "up")
            for host in self.hosts.values():
                self._add_host(host, self._ports[host.name])
        except BaseException:
            self.destroy()
            raise

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._made.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def _add_host(self, host: Host, port: str) -> None:
        """The host's namespace, and a veth pair from it (``eth0``) to the bridge (``port``)."""
        self._add_namespace(host.namespace)
        # Made inside the bridge's namespace with the peer put straight into
        # the host's: neither end ever appears in the machine's namespace.
        _ip("-n", self.bridge_namespace, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", host.namespace)
        _ip("-n", self.bridge_namespace, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_namespace, "link", "set", port, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/{self.prefix_length}", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")

    def cut(self, host: Host) -> None:
        """Unplug ``host`` from the bridge: what it sends is lost, and what is
        sent to it, as on a failed link (no refusal comes back).
        """
        _ip("-n", self.bridge_namespace, "link", "set", self._ports[host.name], "down")

    def mend(self, host: Host) -> None:
        """Plug ``host`` back into the bridge after :meth:`cut`."""
        _ip("-n", self.bridge_namespace, "link", "set", self._ports[host.name], "up")

    def stop_started(self) -> None:
        """Stop what :meth:`start` started (SIGTERM, then SIGKILL after a
        grace period), in the order started; the rest keeps running.
        """
        for process in self._processes:
            _terminate(process)
        self._processes.clear()

    def destroy(self) -> None:
        """Kill every process in the namespaces, then delete them.  Safe to call twice."""
        self.stop_started()
        for namespace in self._made:
            _kill_all_in(namespace)
        for namespace in reversed(self._made):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._made.clear()
        self._restore_sigterm()

    def _exit_on_sigterm(self) -> None:
        """Turn a SIGTERM into SystemExit, so a ``with`` block still cleans up
        (only where a handler can be set: the main thread, default handler).
        """
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_signal)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- running things on the hosts -------------------------------------------------

    def run(self, host: Host, argv: Sequence[str], timeout: float = 60.0,
            **options: object) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``host`` to its end (text output captured)."""
        options.setdefault("capture_output", True)
        options.setdefault("text", True)
        return subprocess.run(host.command(argv), timeout=timeout, **options)

    def start(self, host: Host, argv: Sequence[str], **options: object) -> subprocess.Popen:
        """Start ``argv`` inside ``host``; it is stopped (SIGTERM, then SIGKILL)
        when the network is destroyed, if it has not ended by then.
        """
        process = subprocess.Popen(host.command(argv), **options)
        self._processes.append(process)
        return process

    def wait_for_port(self, host: Host, address: str, port: int, timeout: float = 30.0,
                      process: subprocess.Popen | None = None) -> None:
        """Return once something accepts TCP connections at ``address:port``
        as seen from ``host``; RuntimeError after ``timeout`` or when
        ``process`` (the one meant to listen) has exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"exited with status {process.returncode} before listening "
                                   f"on {address}:{port}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"nothing listened on {address}:{port} (seen from {host.name}) "
                                   f"within {timeout:.0f} s")
            probe = self.run(host, [sys.executable, "-c", _PROBE, address, str(port), str(min(remaining, 5.0))],
                             timeout=remaining + 10)
            if probe.returncode == 0:
                return

    def addresses_outside(self) -> set[str]:
        """The subnet's host addresses that the machine's own namespace has
        (there should be none: the subnet exists only inside the hosts).
        """
        shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                               check=True).stdout
        ours = {host.address for host in self.hosts.values()}
        return {word.split("/")[0] for line in shown.splitlines() for word in line.split()
                if word.split("/")[0] in ours}


# A connection attempt every 50 ms until one succeeds (exit 0) or time runs out (exit 1).
_PROBE = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def namespaces() -> set[str]:
    """The names of the machine's ``ip netns`` namespaces now."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def pids_in(namespace: str) -> list[int]:
    """The processes whose network namespace is ``namespace``."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
    return [int(word) for word in listed.split() if word.isdigit()]


def _kill_all_in(namespace: str, grace: float = 5.0) -> None:
    """SIGTERM every process in ``namespace``, then SIGKILL what is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_in(namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = pids_in(namespace)
        if not pids:
            return


def _terminate(process: subprocess.Popen, grace: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)

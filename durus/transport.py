"""Where a storage server listens and how both ends reach it.

The server, the client, the ``durus`` command and ``flask durus`` all name
addresses with :class:`SocketAddress`, wait for a server with
:func:`wait_for_server` (and stop one with
:func:`durus.client_storage.stop_server`), so there is one copy of each.  A server started by systemd socket activation takes its
listening socket from :func:`inherited_listener` instead of binding one.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from durus.protocol import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["SocketAddress", "address_of", "inherited_listener", "wait_for_server"]

# The first file descriptor systemd passes (SD_LISTEN_FDS_START).
_FIRST_INHERITED_FD = 3


@dataclass(frozen=True)
class SocketAddress:
    """Where a server listens: ``(host, port)``, a unix socket path, or a
    Linux abstract socket name (``'\\0name'`` or ``'@name'``).

    Instance attributes: ``host`` and ``port`` for TCP, else ``path`` (with a
    leading NUL for an abstract name); ``owner``, ``group`` and ``umask``
    apply to a unix socket file the server creates.
    """

    host: str | None = None
    port: int | None = None
    path: str | None = None
    owner: str | int | None = None
    group: str | int | None = None
    umask: int | None = None

    @classmethod
    def new(
        cls,
        address: SocketAddress | tuple[str, int] | str | os.PathLike | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        **unix_options: object,
    ) -> SocketAddress:
        """The address for an ``address`` argument, or ``(host, port)`` if None."""
        if isinstance(address, SocketAddress):
            return address
        if address is None:
            return cls(host=host, port=int(port))
        if isinstance(address, tuple):
            host, port = address
            return cls(host=host, port=int(port))
        path = os.fspath(address)
        if path.startswith("@"):
            path = "\0" + path[1:]
        return cls(path=path, **unix_options)  # type: ignore[arg-type]

    @property
    def is_tcp(self) -> bool:
        return self.path is None

    @property
    def is_abstract(self) -> bool:
        return self.path is not None and self.path.startswith("\0")

    def __str__(self) -> str:
        if self.is_tcp:
            return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"
        return "@" + self.path[1:] if self.is_abstract else self.path

    def _tcp_family_and_address(self, passive: bool) -> tuple[int, tuple]:
        flags = socket.AI_PASSIVE if passive else 0
        try:
            infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM, flags=flags)
        except socket.gaierror as error:
            raise OSError(error.errno, f"cannot resolve host {self.host!r}: {error.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr

    def connect(self, timeout: float | None) -> socket.socket:
        """A connected client socket (TCP_NODELAY for TCP); OSError if refused."""
        if self.is_tcp:
            family, sockaddr = self._tcp_family_and_address(passive=False)
            sock = socket.socket(family, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockaddr = self.path
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            if self.is_tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen(self) -> socket.socket:
        """A listening socket bound to this address."""
        if self.is_tcp:
            family, sockaddr = self._tcp_family_and_address(passive=True)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._bind_unix(sock)
            except BaseException:
                sock.close()
                raise
        sock.listen(128)
        return sock

    def _bind_unix(self, sock: socket.socket) -> None:
        if not self.is_abstract and os.path.lexists(self.path):
            self._remove_stale_socket_file()
        old_umask = os.umask(self.umask) if self.umask is not None else None
        try:
            sock.bind(self.path)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if not self.is_abstract and (self.owner is not None or self.group is not None):
            os.chown(self.path, _user_id(self.owner), _group_id(self.group))

    def _remove_stale_socket_file(self) -> None:
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise FileExistsError(
                errno.EEXIST, f"{self.path} exists and is not a socket: choose another --address", self.path)
        try:
            self.connect(timeout=1.0).close()
        except OSError:
            os.unlink(self.path)  # left behind by a server that died
            return
        raise OSError(errno.EADDRINUSE, f"a server is already listening on {self.path}", self.path)

    def remove_socket_file(self) -> None:
        if self.path is not None and not self.is_abstract:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _user_id(owner: str | int | None) -> int:
    if owner is None:
        return -1
    if isinstance(owner, int) or str(owner).isdigit():
        return int(owner)
    import pwd

    return pwd.getpwnam(owner).pw_uid


def _group_id(group: str | int | None) -> int:
    if group is None:
        return -1
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    import grp

    return grp.getgrnam(group).gr_gid


def wait_for_server(
    address: SocketAddress,
    timeout: float = 30.0,
    interval: float = 0.05,
    still_starting: Callable[[], bool] | None = None,
) -> None:
    """Return once a server accepts connections at ``address``.

    TimeoutError after ``timeout`` seconds; RuntimeError at once when
    ``still_starting`` (say, "the server process has not exited") turns
    False, so a server that failed to start is not waited for in vain.
    """
    deadline = time.monotonic() + timeout
    while True:
        if still_starting is not None and not still_starting():
            raise RuntimeError(f"the storage server for {address} exited before it listened")
        try:
            address.connect(timeout=max(0.5, min(interval * 4, 2.0))).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no storage server answered at {address}; start one with: durus -s") from None
            time.sleep(interval)


def inherited_listener() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), or None.

    Taken only when ``LISTEN_PID`` is this process's pid and ``LISTEN_FDS``
    is at least 1; the variables are then removed, so child processes do not
    take the socket for theirs.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    os.set_inheritable(_FIRST_INHERITED_FD, False)
    return socket.socket(fileno=_FIRST_INHERITED_FD)


def address_of(sock: socket.socket, fallback: SocketAddress | None = None) -> SocketAddress:
    """The :class:`SocketAddress` a listening socket is bound to."""
    name = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return SocketAddress(host=name[0], port=name[1])
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    if fallback is not None and fallback.path == name:
        return fallback
    return SocketAddress(path=name)

"""ServerChannel: one client's socket to a storage server, and nothing more.

It connects, agrees on a protocol version, proves the shared key, sends
requests and reads exactly the bytes a reply holds; what the bytes mean is
:mod:`durus.protocol`'s business, and what a broken connection means for a
transaction is :class:`~durus.client_storage.ClientStorage`'s.

Why not ``socket.settimeout`` and ``makefile``: a socket with a Python
timeout polls before every send and receive, and a buffered file adds
layers of calls to each read.  A commit is one send and one reply, so
the socket stays blocking with the timeout in the kernel
(``SO_RCVTIMEO``/``SO_SNDTIMEO``), and replies are read through a small
buffer of our own: a commit costs three system calls on this side.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from durus import protocol
from durus.error import DurusError, ProtocolError
from durus.transport import SocketAddress

_RECV_SIZE = 1 << 16


class ServerUnavailableError(DurusError):
    """No storage server answers at the address, or it stopped answering.

    Nothing is lost on this side; the next transaction tries again.
    """


class AuthenticationError(DurusError):
    """The server and this client do not share the same key."""


class ServerChannel:
    """A connected socket to a storage server, version agreed and key proved.

    ``version`` is the protocol the server speaks with this client: 2, or 1
    for a Durus 4.3 server.  Reads raise TimeoutError after ``timeout``
    seconds without data and ConnectionResetError when the server closed.
    """

    address: SocketAddress
    timeout: float | None
    version: int
    sock: socket.socket | None

    def __init__(self, address: SocketAddress, timeout: float | None, secret: bytes | None,
                 version: int = protocol.LATEST_VERSION) -> None:
        self.address = address
        self.timeout = timeout
        self.sock = None
        self._buffer = b""
        self._position = 0
        self.version = self._agree_on_version(version)
        if secret is not None:
            with self._handshake():
                self._authenticate(secret)

    def _agree_on_version(self, wanted: int) -> int:
        """2 if the server speaks it; a Durus 4.3 server answers 1 and
        closes, and is asked again for 1.
        """
        version = self._open(wanted)
        if version != wanted and version == protocol.PROTOCOL_VERSION:
            self.close()
            version = self._open(protocol.PROTOCOL_VERSION)
        if version not in (protocol.PROTOCOL_VERSION, protocol.PROTOCOL_VERSION_2):
            self.close()
            raise ProtocolError(
                f"the server at {self.address} speaks protocol {version}, this client 1 or 2")
        return version

    def _open(self, version: int) -> int:
        """A new socket, asking for ``version``; the version the server answers."""
        try:
            sock = self.address.connect(self.timeout)
        except OSError as error:
            raise ServerUnavailableError(
                f"no storage server answers at {self.address} ({error.strerror or error}); "
                "start one with: durus -s (or flask durus serve)") from None
        self.sock = sock
        self._buffer, self._position = b"", 0
        with self._handshake():
            _use_kernel_timeouts(sock, self.timeout)
            sock.sendall(protocol.version_request(version))
            return protocol.read_version(self.read)

    @contextmanager
    def _handshake(self) -> Iterator[None]:
        """Close the socket if the handshake fails; a broken connection is
        a ServerUnavailableError.
        """
        try:
            yield
        except BaseException as error:
            self.close()
            if isinstance(error, OSError):
                raise ServerUnavailableError(
                    f"the storage server at {self.address} broke off the handshake ({error})") from None
            raise

    def _authenticate(self, secret: bytes) -> None:
        client_nonce = secrets.token_bytes(protocol.NONCE_SIZE)
        self.send(protocol.AUTHENTICATE + client_nonce)
        if self.read(1) != protocol.STATUS_OKAY:
            raise AuthenticationError(
                f"a key was given, but the server at {self.address} has none configured; "
                "start it with --keyfile, or connect without a key")
        server_nonce = self.read(protocol.NONCE_SIZE)
        self.send(protocol.authentication_proof(secret, False, server_nonce, client_nonce))
        try:
            status = self.read(1)
        except ConnectionError:
            status = b""
        if status != protocol.STATUS_OKAY:
            raise AuthenticationError(
                f"the server at {self.address} rejected this client's key: "
                "both must use the same key file")
        expected = protocol.authentication_proof(secret, True, server_nonce, client_nonce)
        if not protocol.proofs_match(expected, self.read(protocol.PROOF_SIZE)):
            raise AuthenticationError(
                f"the server at {self.address} could not prove it holds the key: "
                "it is not the server you meant to reach")

    # -- bytes ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except BlockingIOError:
            raise TimeoutError(f"sending to the storage server took over {self.timeout}s") from None

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes of the server's replies."""
        position = self._position
        end = position + size
        if end <= len(self._buffer):
            self._position = end
            return self._buffer[position:end]
        return self._read_more(size)

    def _read_more(self, size: int) -> bytes:
        parts = [self._buffer[self._position:]]
        have = len(parts[0])
        while have < size:
            data = self._receive()
            parts.append(data)
            have += len(data)
        buffer = b"".join(parts)
        self._buffer, self._position = buffer, size
        return buffer[:size]

    def _receive(self) -> bytes:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError(f"the storage server did not answer within {self.timeout}s") from None
        if not data:
            raise ConnectionResetError("the storage server closed the connection")
        return data

    def read_final_byte(self) -> bytes:
        """One byte, or b"" if the server closes first (the answer to ``Q``)."""
        try:
            return self.read(1)
        except OSError:
            return b""

    def replies_pending(self) -> bool:
        """Whether reply bytes already wait in this side's buffer."""
        return self._position < len(self._buffer)

    def check_not_closed_by_server(self) -> None:
        """ConnectionResetError if the server has closed this connection (a
        restart), found without waiting: one non-blocking peek.
        """
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise ConnectionResetError("the storage server closed the connection")

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._buffer, self._position = b"", 0
        if sock is not None:
            sock.close()


def _use_kernel_timeouts(sock: socket.socket, timeout: float | None) -> None:
    """Make ``sock`` blocking, with ``timeout`` enforced by the kernel on
    each send and receive (EAGAIN when it expires) rather than by a poll
    before each call.
    """
    sock.settimeout(None)
    if timeout is None:
        return
    timeout = max(timeout, 1e-6)  # zero would mean "never" to the kernel
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def forked_since(pid: int) -> bool:
    """Whether this process is not ``pid`` (a fork happened): without a
    system call each time, the fork noted by a hook.
    """
    return _current_pid[0] != pid


def current_pid() -> int:
    return _current_pid[0]


_current_pid = [os.getpid()]


def _note_fork() -> None:
    _current_pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)

"""StorageServer: many clients share one storage over TCP or unix sockets.

The server speaks wire protocol version 1 (:mod:`durus.protocol`), so Durus
4.3 clients and this package's :class:`~durus.client_storage.ClientStorage`
both work with it.  The rules (invalidations, oids, conflicts) live in
:mod:`durus.shared_storage`; this module moves bytes.

One thread runs an event loop over non-blocking sockets: a client that sends
half a request, or nothing, or stops reading its replies, only waits for
itself.  Input is parsed only when a whole request has arrived, a length
prefix beyond the limit drops the client at once, and a client's replies are
produced no faster than it reads them, so each client costs bounded memory.
Commits take turns (see :mod:`durus.shared_storage`); a client that holds the
turn too long while others wait loses it.  A second thread makes commits
durable: a commit is acknowledged only after the disk sync that covers it,
and the commits written while one sync runs share the next.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import selectors
import socket
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass

from durus import protocol
from durus.error import (
    DurusKeyError,
    ProtocolError,
    ReadConflictError,
    WriteConflictError,
)
from durus.protocol import DEFAULT_HOST, DEFAULT_PORT, Request
from durus.shared_storage import RequestRefusedError, SharedStorage, StorageSession
from durus.storage import Storage

log = logging.getLogger("durus.storage_server")

DEFAULT_GCBYTES = 0
DEFAULT_MAX_TRANSACTION_SIZE = 128 << 20
DEFAULT_COMMIT_TURN_TIMEOUT = 0.5
MAX_BULK_OIDS = 1 << 20
# A client's replies are produced until this many bytes wait to be sent.
_OUTPUT_HIGH_WATER = 1 << 20
_RECV_SIZE = 1 << 18

__all__ = [
    "DEFAULT_GCBYTES", "DEFAULT_HOST", "DEFAULT_PORT", "SocketAddress",
    "StorageServer", "wait_for_server",
]


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


# What a client connection is waiting for.
_READY = "ready"  # the next request
_WAIT_TURN = "wait-turn"  # sent C; waits for the commit turn
_WAIT_DATA = "wait-data"  # has its invalidations; the server waits for tdata
_WAIT_APPLY = "wait-apply"  # lost its turn, sent tdata; waits for the turn again
_WAIT_DURABLE = "wait-durable"  # commit written; waits for the disk sync
_WAIT_PROOF = "wait-proof"  # authentication: the server waits for the proof


class _ClientConnection:
    """One client socket and its session.

    Instance attributes: ``sock``; ``name`` (the peer, for the log);
    ``session``; ``inbuf`` (bytes received, not yet parsed); ``outbuf``
    (bytes not yet sent); ``pending_loads`` (oids of a bulk load whose replies
    are still to be produced); ``state`` (one of the ``_WAIT`` names);
    ``authenticated``; ``nonces`` (server and client nonce during
    authentication); ``records`` (the commit waiting for the turn); ``serial``
    (the commit waiting for the disk); ``turn_start`` (when it got the turn);
    ``closing`` (close once the output is sent); ``closed``; ``busy`` (its
    requests are being handled); ``events`` (the selector events watched).
    """

    def __init__(self, sock: socket.socket, name: str, session: StorageSession, authenticated: bool) -> None:
        self.sock = sock
        self.name = name
        self.session = session
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.pending_loads: deque[bytes] = deque()
        self.state = _READY
        self.authenticated = authenticated
        self.nonces: tuple[bytes, bytes] | None = None
        self.records: dict[bytes, bytes] | None = None
        self.serial = 0
        self.turn_start = 0.0
        self.closing = False
        self.closed = False
        self.busy = False
        self.events = 0


class _DropClient(Exception):
    """The client broke the protocol or the rules; the message says how."""


class StorageServer:
    """Serves one storage to many clients over one listening socket.

    Instance attributes:

    - ``storage``: the underlying storage.
    - ``shared``: the :class:`~durus.shared_storage.SharedStorage` over it.
    - ``address``: the :class:`SocketAddress` to listen on.
    - ``gcbytes``: pack by itself after this many committed bytes (0: never).
    - ``secret``: the shared secret clients must prove they hold, or None.
    - ``max_transaction_size``: the largest commit (bytes) a client may send.
    - ``commit_turn_timeout``: seconds a client may hold the commit turn
      while others wait, before losing it.
    - ``listening_address``: where the socket is bound, once serving (for
      port 0, the port chosen).
    """

    def __init__(
        self,
        storage: Storage,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        address: SocketAddress | tuple[str, int] | str | None = None,
        gcbytes: int = DEFAULT_GCBYTES,
        *,
        readonly: bool | None = None,
        secret: bytes | None = None,
        max_transaction_size: int = DEFAULT_MAX_TRANSACTION_SIZE,
        commit_turn_timeout: float = DEFAULT_COMMIT_TURN_TIMEOUT,
    ) -> None:
        if isinstance(gcbytes, bool) or not isinstance(gcbytes, (int, float)) or not 0 <= gcbytes < float("inf"):
            raise ValueError(f"gcbytes must be a number of bytes >= 0, not {gcbytes!r}")
        gcbytes = int(gcbytes)  # Durus 4.3 takes floats too (1e8)
        self.storage = storage
        self.shared = SharedStorage(storage, readonly=readonly, gcbytes=gcbytes)
        self.address = SocketAddress.new(address, host, port)
        self.gcbytes = gcbytes
        self.secret = secret or None
        self.max_transaction_size = max_transaction_size
        self.commit_turn_timeout = commit_turn_timeout
        self.listening_address: SocketAddress | None = None
        self._selector: selectors.BaseSelector | None = None
        self._clients: set[_ClientConnection] = set()
        self._commit_queue: deque[_ClientConnection] = deque()
        self._turn_holder: _ClientConnection | None = None
        self._awaiting_disk: list[_ClientConnection] = []
        self._stopping = False
        self._failure: BaseException | None = None
        self._wake_read = self._wake_write = -1
        self._sync_wanted = threading.Event()  # written commits await the sync thread

    # -- running -------------------------------------------------------------

    def serve(self) -> None:
        """Listen and serve until a client sends ``Q`` or :meth:`stop` is called."""
        listener = self.address.listen()
        self.listening_address = self._bound_address(listener)
        listener.setblocking(False)
        # stop() may come from another thread or a signal handler: it wakes
        # the loop through this pipe.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        syncer = threading.Thread(target=self._sync_to_disk_loop, name="durus-disk-sync", daemon=True)
        syncer.start()
        log.info("Ready on %s, serving %s", self.listening_address, self.storage)
        try:
            self._loop(listener)
        finally:
            self._shut_down(listener)
            syncer.join(5)
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Ask the serving loop to stop (safe from another thread or a signal handler)."""
        self._stopping = True
        self._sync_wanted.set()  # so the sync thread sees it too
        self._wake()

    def _bound_address(self, listener: socket.socket) -> SocketAddress:
        if self.address.is_tcp:
            host, port = listener.getsockname()[:2]
            return SocketAddress(host=host, port=port)
        return self.address

    def _loop(self, listener: socket.socket) -> None:
        selector = self._selector
        shared = self.shared
        while not self._stopping:
            timeout = 0 if shared.is_packing() else self._turn_timeout_left()
            events = selector.select(timeout)
            for key, mask in events:
                if key.data is None:
                    self._accept(listener)
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    client = key.data
                    if mask & selectors.EVENT_WRITE:
                        self._writable(client)
                    if mask & selectors.EVENT_READ and not client.closed:
                        self._receive(client)
            self._acknowledge_durable()
            self._check_turn_timeout()
            if shared.is_packing():
                shared.pack_step()

    def _shut_down(self, listener: socket.socket) -> None:
        try:
            if not self._failure:
                group = self.shared.group_sync
                group.wait(group.written)
                self._acknowledge_durable()
            for client in list(self._clients):
                self._flush(client)
                self._close(client)
        finally:
            self._selector.close()
            listener.close()
            if self.listening_address is not None:
                self.listening_address.remove_socket_file()
            self.shared.close()
            wake_read, wake_write = self._wake_read, self._wake_write
            self._wake_read = self._wake_write = -1
            os.close(wake_read)
            os.close(wake_write)
            log.info("Stopped")

    def _wake(self) -> None:
        if self._wake_write < 0:
            return  # not serving
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # already awake (the pipe is full), or just shut down

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _sync_to_disk_loop(self) -> None:
        """Make the commits handed over durable, one sync per batch, and wake
        the loop.  Commits written meanwhile share the next sync.
        """
        group = self.shared.group_sync
        if not group.deferred:
            return
        wanted = self._sync_wanted
        while not self._stopping:
            if not wanted.wait(timeout=1.0):
                continue
            wanted.clear()
            if not self._make_durable(group.written):
                return
            self._wake()

    def _make_durable(self, serial: int) -> bool:
        """Wait until commit ``serial`` is on disk; False (and stopping) if it
        cannot be, since acknowledging anything after that would be a lie.
        """
        try:
            self.shared.group_sync.wait(serial)
        except BaseException as error:
            log.critical("cannot make commits durable (%s); stopping the server", error)
            self._failure = error
            self.stop()
            return False
        return True

    # -- sockets -------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("accept failed: %s", error)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                name = f"{peer[0]}:{peer[1]}"
            else:
                name = f"{self.listening_address} #{sock.fileno()}"
            client = _ClientConnection(sock, name, self.shared.session(), authenticated=self.secret is None)
            self._clients.add(client)
            self._selector.register(sock, selectors.EVENT_READ, client)
            client.events = selectors.EVENT_READ
            log.debug("connected: %s", name)

    def _receive(self, client: _ClientConnection) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(client, f"receive failed: {error}", logging.DEBUG)
            return
        if not data:
            self._drop(client, "disconnected", logging.DEBUG)
            return
        client.inbuf += data
        self._process(client)

    def _writable(self, client: _ClientConnection) -> None:
        self._flush(client)
        if not client.closed and self._may_parse(client) and client.inbuf:
            self._process(client)

    def _flush(self, client: _ClientConnection) -> None:
        """Send what is buffered, producing bulk-load replies as room allows."""
        if client.closed:
            return
        self._produce_loads(client)
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self._drop(client, f"send failed: {error}", logging.DEBUG)
                return
            del client.outbuf[:sent]
            self._produce_loads(client)
        if client.closing and not client.outbuf:
            self._close(client)
        else:
            self._update_interest(client)

    def _reply(self, client: _ClientConnection, data: bytes) -> None:
        client.outbuf += data

    def _may_parse(self, client: _ClientConnection) -> bool:
        """Whether the client's next input can be handled now: never while
        its earlier replies are still piling up, so its memory stays bounded.
        """
        return (client.state in (_READY, _WAIT_DATA, _WAIT_PROOF) and not client.closing
                and len(client.outbuf) < _OUTPUT_HIGH_WATER and not client.pending_loads)

    def _update_interest(self, client: _ClientConnection) -> None:
        """Read only what can be handled now; write while output waits."""
        if client.closed:
            return
        events = 0
        if client.outbuf or client.pending_loads:
            events |= selectors.EVENT_WRITE
        if self._may_parse(client):
            events |= selectors.EVENT_READ
        if events != client.events:
            if not events:
                self._selector.unregister(client.sock)
            elif client.events:
                self._selector.modify(client.sock, events, client)
            else:
                self._selector.register(client.sock, events, client)
            client.events = events

    def _drop(self, client: _ClientConnection, reason: str, level: int = logging.WARNING) -> None:
        log.log(level, "dropping client %s: %s", client.name, reason)
        self._close(client)

    def _drop_for_bad_input(self, client: _ClientConnection, reason: str) -> None:
        """Drop a client that broke the rules, after one try at sending the
        replies to its earlier requests, as Durus 4.3 does (it answers each
        request before it reads the next).
        """
        if client.outbuf:
            try:
                client.sock.send(client.outbuf)
            except OSError:
                pass
        self._drop(client, reason)

    def _close(self, client: _ClientConnection) -> None:
        if client.closed:
            return
        client.closed = True
        if client.events:
            self._selector.unregister(client.sock)
            client.events = 0
        client.sock.close()
        client.session.close()
        self._clients.discard(client)
        if client in self._awaiting_disk:
            self._awaiting_disk.remove(client)
        if self._turn_holder is client:
            self._turn_holder = None
            self._run_commit_queue()

    # -- requests --------------------------------------------------------------

    def _process(self, client: _ClientConnection) -> None:
        """Handle the whole requests buffered, as far as the state allows,
        and send the replies.  Re-entered for a client already in here (a
        commit finishing inside its own request), it returns at once: the
        outer call goes on with the new state.
        """
        if client.busy or client.closed:
            return
        client.busy = True
        try:
            while True:
                try:
                    waiting_for_input = self._parse(client)
                except (ProtocolError, _DropClient, RequestRefusedError) as error:
                    self._drop_for_bad_input(client, str(error))
                    return
                except Exception as error:
                    log.exception("error serving %s", client.name)
                    self._drop(client, f"server error: {error}")
                    return
                self._flush(client)
                if waiting_for_input or client.closed or not self._may_parse(client):
                    return
        finally:
            client.busy = False

    def _parse(self, client: _ClientConnection) -> bool:
        """Handle buffered requests; True if stopped for want of input."""
        buffer = client.inbuf
        position = 0
        try:
            while not client.closed and self._may_parse(client):
                state = client.state
                if state == _READY:
                    parsed = protocol.parse_request(buffer, position, MAX_BULK_OIDS)
                    if parsed is None:
                        return True
                    request, position = parsed
                    self._handle(client, request)
                elif state == _WAIT_DATA:
                    parsed = protocol.parse_frame(buffer, position, self.max_transaction_size)
                    if parsed is None:
                        return True
                    tdata, position = parsed
                    self._receive_commit_data(client, tdata)
                else:
                    if len(buffer) - position < protocol.PROOF_SIZE:
                        return True
                    proof = bytes(buffer[position:position + protocol.PROOF_SIZE])
                    position += protocol.PROOF_SIZE
                    self._check_proof(client, proof)
            return False
        finally:
            del buffer[:position]

    def _handle(self, client: _ClientConnection, request: Request) -> None:
        command = request.command
        session = client.session
        if not client.authenticated and command not in (protocol.VERSION, protocol.AUTHENTICATE, protocol.CLOSE):
            raise _DropClient(f"sent {command!r} before authenticating (the server requires a key)")
        if command == protocol.LOAD:
            self._reply(client, self._load_reply(session, request.argument))
        elif command == protocol.BULK_LOAD:
            client.pending_loads.extend(request.argument)
            self._produce_loads(client)
        elif command == protocol.COMMIT:
            client.state = _WAIT_TURN
            self._commit_queue.append(client)
            self._run_commit_queue()
        elif command == protocol.SYNC:
            self._reply(client, protocol.oids_reply(session.sync()))
        elif command == protocol.NEW_OIDS:
            self._reply(client, b"".join(session.new_oids(request.argument)) if request.argument else b"")
        elif command == protocol.NEW_OID:
            self._reply(client, session.new_oid())
        elif command == protocol.VERSION:
            self._reply(client, protocol.version_request()[1:])
            if request.argument != protocol.PROTOCOL_VERSION:
                log.warning("dropping client %s: it speaks protocol %s, this server %s",
                            client.name, request.argument, protocol.PROTOCOL_VERSION)
                client.closing = True
        elif command == protocol.PACK:
            if self.shared.readonly:
                log.info("not packing for %s: the storage is read-only", client.name)
            else:
                self.shared.start_pack()
            self._reply(client, protocol.STATUS_OKAY)
        elif command == protocol.AUTHENTICATE:
            self._start_authentication(client, request.argument)
        elif command == protocol.CLOSE:
            log.debug("client %s closed its connection", client.name)
            client.closing = True
        elif command == protocol.QUIT:
            log.info("stop requested by %s", client.name)
            self.stop()
            client.closing = True

    def _load_reply(self, session: StorageSession, oid: bytes) -> bytes:
        try:
            return protocol.record_reply(session.load(oid))
        except ReadConflictError:
            return protocol.STATUS_INVALID
        except DurusKeyError:
            return protocol.STATUS_KEYERROR

    def _produce_loads(self, client: _ClientConnection) -> None:
        pending = client.pending_loads
        outbuf = client.outbuf
        while pending and len(outbuf) < _OUTPUT_HIGH_WATER:
            outbuf += self._load_reply(client.session, pending.popleft())

    # -- commits ---------------------------------------------------------------

    def _run_commit_queue(self) -> None:
        """Give the commit turn to the next waiting client, if it is free."""
        queue = self._commit_queue
        while self._turn_holder is None and queue:
            client = queue.popleft()
            if client.closed:
                continue
            client.session.claim_commit(wait=False)
            self._turn_holder = client
            client.turn_start = time.monotonic()
            if client.state == _WAIT_TURN:
                client.state = _WAIT_DATA
                self._reply(client, protocol.oids_reply(client.session.take_invalidations()))
                self._process(client)
            else:
                records, client.records = client.records, None
                try:
                    self._apply(client, records)
                except (_DropClient, RequestRefusedError) as error:
                    self._drop(client, str(error))
                else:
                    self._process(client)

    def _receive_commit_data(self, client: _ClientConnection, tdata: bytes) -> None:
        if not tdata:
            # The client saw a conflict among its invalidations: no commit.
            client.state = _READY
            self._release_turn(client)
            return
        records = protocol.split_commit_data(tdata)
        if self._turn_holder is client:
            self._apply(client, records)
        else:
            client.state = _WAIT_APPLY
            client.records = records
            self._commit_queue.append(client)
            self._run_commit_queue()

    def _apply(self, client: _ClientConnection, records: dict[bytes, bytes]) -> None:
        try:
            serial = client.session.apply_commit(records)
        except WriteConflictError:
            log.info("conflict: commit of %s refused", client.name)
            client.state = _READY
            self._reply(client, protocol.STATUS_INVALID)
            self._release_turn(client)
            return
        except RequestRefusedError:
            raise
        except Exception as error:
            log.exception("commit of %s failed", client.name)
            raise _DropClient(f"commit failed: {error}") from error
        log.debug("committed %s records for %s", len(records), client.name)
        client.state = _WAIT_DURABLE
        client.serial = serial
        self._awaiting_disk.append(client)
        self._release_turn(client)
        if self._turn_holder is None and not self._commit_queue:
            # No other commit to overlap the disk sync with: sync here and
            # spare the hand-over to the sync thread.
            self._make_durable(serial)
        else:
            self._sync_wanted.set()
        self._acknowledge_durable()

    def _release_turn(self, client: _ClientConnection) -> None:
        client.session.release_commit()
        if self._turn_holder is client:
            self._turn_holder = None
            self._run_commit_queue()

    def _acknowledge_durable(self) -> None:
        if not self._awaiting_disk:
            return
        synced = self.shared.group_sync.synced
        waiting = []
        for client in self._awaiting_disk:
            if client.serial <= synced:
                client.state = _READY
                self._reply(client, protocol.STATUS_OKAY)
                self._process(client)
            else:
                waiting.append(client)
        self._awaiting_disk = waiting

    def _turn_timeout_left(self) -> float | None:
        holder = self._turn_holder
        if holder is None or not self._commit_queue:
            return None
        return max(0.0, holder.turn_start + self.commit_turn_timeout - time.monotonic())

    def _check_turn_timeout(self) -> None:
        holder = self._turn_holder
        if (holder is None or holder.state != _WAIT_DATA or not self._commit_queue
                or time.monotonic() - holder.turn_start < self.commit_turn_timeout):
            return
        log.info("client %s took over %ss to send its commit; letting others commit first",
                 holder.name, self.commit_turn_timeout)
        self._release_turn(holder)

    # -- authentication --------------------------------------------------------

    def _start_authentication(self, client: _ClientConnection, client_nonce: bytes) -> None:
        if self.secret is None:
            self._reply(client, protocol.STATUS_KEYERROR)
            return
        server_nonce = secrets.token_bytes(protocol.NONCE_SIZE)
        client.nonces = (server_nonce, client_nonce)
        client.state = _WAIT_PROOF
        self._reply(client, protocol.STATUS_OKAY + server_nonce)

    def _check_proof(self, client: _ClientConnection, proof: bytes) -> None:
        server_nonce, client_nonce = client.nonces
        client.nonces = None
        expected = protocol.authentication_proof(self.secret, False, server_nonce, client_nonce)
        if not protocol.proofs_match(expected, proof):
            self._reply(client, protocol.STATUS_INVALID)
            log.warning("dropping client %s: authentication failed (wrong key)", client.name)
            client.closing = True
            return
        client.authenticated = True
        client.state = _READY
        self._reply(client, protocol.STATUS_OKAY
                    + protocol.authentication_proof(self.secret, True, server_nonce, client_nonce))


def wait_for_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    maxtries: int = 300,
    sleeptime: float = 2,
    address: SocketAddress | tuple[str, int] | str | None = None,
) -> None:
    """Return once a server accepts connections at the address; after
    ``maxtries`` failed attempts ``sleeptime`` seconds apart, TimeoutError.
    """
    server_address = SocketAddress.new(address, host, port)
    for attempt in range(maxtries):
        try:
            server_address.connect(timeout=max(sleeptime, 1.0)).close()
            return
        except OSError:
            if attempt + 1 < maxtries:
                time.sleep(sleeptime)
    raise TimeoutError(f"no storage server answered at {server_address}; start one with: durus -s")



# The one-byte status answers, under their Durus 4.3 names, for Durus 4.3 programs.
STATUS_OKAY, STATUS_KEYERROR, STATUS_INVALID = protocol.STATUS_OKAY, protocol.STATUS_KEYERROR, protocol.STATUS_INVALID

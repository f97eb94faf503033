"""The storage server's sockets: accepting, reading, writing, within bounds.

One thread runs an event loop over non-blocking sockets (:class:`Sockets`);
what the bytes mean is :mod:`durus.storage_server`'s business.  The bounds:

- At most ``max_connections`` clients.  At the cap a new connection is
  refused: accepted only to be closed at once with a reset, before any
  state is made for it, so its client sees a broken connection rather than
  a wait with no end.  One log line when refusing starts, one with the
  count when the server is below the cap again.
- Out of file descriptors (EMFILE, ENFILE), accepting pauses for a growing
  while, with one log line per episode, instead of spinning.
- A client that must authenticate holds nothing but its socket, a few
  bytes of input and a deadline until it has; past the deadline it is
  dropped.
- A client's input is read only while its replies are not piling up, and
  its replies are produced (a bulk load, a slice at a time, round-robin
  with others) only while less than ``OUTPUT_HIGH_WATER`` bytes wait to be
  sent, so a client that does not read costs others nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("durus.storage_server")

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_AUTH_TIMEOUT = 5.0
#: A client's replies are produced until this many bytes wait to be sent.
OUTPUT_HIGH_WATER = 256 << 10
_RECV_SIZE = 1 << 18
_ACCEPT_PAUSE_FIRST = 0.05
_ACCEPT_PAUSE_MOST = 2.0
#: SO_LINGER on, zero seconds: close() resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def allow_descriptors(count: int) -> None:
    """Raise this process's soft limit on open files towards ``count`` (as
    far as the hard limit allows), so the connection cap, not the default
    limit of 1024, bounds the clients; past the limit, accepting pauses.
    """
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


class ClientConnection:
    """One client socket and what the server knows of it.

    Instance attributes: ``sock``; ``name`` (the peer, for the log);
    ``inbuf`` (bytes received, not yet parsed); ``outbuf`` (bytes not yet
    sent); ``deadline`` (monotonic time by which it must authenticate, or
    None); ``closing`` (close once the output is sent); ``closed``;
    ``events`` (the selector events watched); ``loads_pending`` (the
    server has bulk-load replies still to produce); ``protocol`` (what the
    server keeps of it: :class:`durus.storage_server.ClientState`).
    """

    def __init__(self, sock: socket.socket, name: str, deadline: float | None) -> None:
        self.sock = sock
        self.name = name
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = deadline
        self.closing = False
        self.closed = False
        self.events = 0
        self.loads_pending = False
        self.protocol: object = None


class Sockets:
    """The listener and the client sockets of one server.

    The server supplies three callbacks: ``on_input(client)`` when input
    arrived or may be parsed again; ``produce(client)``, to add more of a
    pending bulk load to ``client.outbuf`` (True while more is pending);
    ``may_read(client)``, whether the client's next input can be handled
    now; ``on_close(client)``, once a client is gone.

    Instance attributes: ``clients``; ``max_connections``; ``auth_timeout``
    (None: clients need not authenticate).
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        auth_timeout: float | None = None,
        on_input: Callable[[ClientConnection], None],
        produce: Callable[[ClientConnection], bool],
        may_read: Callable[[ClientConnection], bool],
        on_close: Callable[[ClientConnection], None],
    ) -> None:
        self.listener = listener
        self.max_connections = max_connections
        self.auth_timeout = auth_timeout
        self.clients: set[ClientConnection] = set()
        self._on_input, self._produce, self._may_read, self._on_close = on_input, produce, may_read, on_close
        self._selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self._listening = False
        self._at_cap = False
        self._refused = 0
        self._accept_pause = 0.0
        self._accept_resume = 0.0
        self._awaiting_auth: deque[ClientConnection] = deque()
        self._producing: deque[ClientConnection] = deque()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._listen(True)

    # -- the loop ----------------------------------------------------------------

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for events and handle them."""
        now = time.monotonic()
        timeout = self._shorten(timeout, now)
        for key, mask in self._selector.select(timeout):
            data = key.data
            if data is None:
                self._drain_wake()
            elif data is self.listener:
                self._accept()
            else:
                if mask & selectors.EVENT_WRITE:
                    self.flush(data)
                    if not data.closed and data.inbuf and self._may_read(data):
                        self._on_input(data)
                if mask & selectors.EVENT_READ and not data.closed:
                    self._receive(data)
        self._produce_round()
        self._expire(time.monotonic())

    def _shorten(self, timeout: float | None, now: float) -> float | None:
        times = [timeout] if timeout is not None else []
        if self._producing:
            times.append(0.0)
        if self._awaiting_auth:
            times.append(max(0.0, self._awaiting_auth[0].deadline - now))
        if self._accept_resume:
            times.append(max(0.0, self._accept_resume - now))
        return min(times) if times else None

    def wake(self) -> None:
        """Interrupt :meth:`poll` (safe from another thread or a signal handler)."""
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass  # already awake (the pipe is full), or shut down

    def _drain_wake(self) -> None:
        try:
            while len(os.read(self._wake_read, 4096)) == 4096:
                pass  # a short read emptied the pipe: no second call to find out
        except BlockingIOError:
            pass

    def close_all(self) -> None:
        """Send what is buffered (one try) and close every socket."""
        for client in list(self.clients):
            self.flush(client)
            self.close(client)
        self._selector.close()
        self.listener.close()
        wake_read, wake_write = self._wake_read, self._wake_write
        self._wake_read = self._wake_write = -1
        os.close(wake_read)
        os.close(wake_write)

    # -- accepting -----------------------------------------------------------------

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        if on:
            self._selector.register(self.listener, selectors.EVENT_READ, self.listener)
        else:
            self._selector.unregister(self.listener)
        self._listening = on

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._pause_accepting(error)
                return
            if self._accept_pause:
                log.warning("accepting connections again")
                self._accept_pause = 0.0
            if len(self.clients) >= self.max_connections:
                self._refuse(sock)
            else:
                self._add(sock, peer)

    def _refuse(self, sock: socket.socket) -> None:
        """Close a connection over the cap at once, with a reset (no
        lingering, no state kept), saying so once per episode.
        """
        if not self._at_cap:
            self._at_cap = True
            self._refused = 0
            log.warning("%d connections, the most allowed (--max-connections): refusing new ones "
                        "until one closes", len(self.clients))
        self._refused += 1
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # a unix socket: closing it is refusal enough
        sock.close()

    def _pause_accepting(self, error: OSError) -> None:
        """Stop polling the listener for a while that grows while the cause
        lasts, saying so once, rather than spin on an error that persists.
        """
        if error.errno not in _OUT_OF_DESCRIPTORS and error.errno != errno.ECONNABORTED:
            log.warning("accept failed: %s", error)
        if error.errno == errno.ECONNABORTED:
            return
        if not self._accept_pause:
            log.warning("cannot accept connections (%s); pausing, and trying again now and then",
                        os.strerror(error.errno) if error.errno else error)
            self._accept_pause = _ACCEPT_PAUSE_FIRST
        else:
            self._accept_pause = min(self._accept_pause * 2, _ACCEPT_PAUSE_MOST)
        self._accept_resume = time.monotonic() + self._accept_pause
        self._listen(False)

    def _add(self, sock: socket.socket, peer: object) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = f"{peer[0]}:{peer[1]}"
        else:
            name = f"unix #{sock.fileno()}"
        deadline = None if self.auth_timeout is None else time.monotonic() + self.auth_timeout
        client = ClientConnection(sock, name, deadline)
        self.clients.add(client)
        if deadline is not None:
            self._awaiting_auth.append(client)
        self._selector.register(sock, selectors.EVENT_READ, client)
        client.events = selectors.EVENT_READ
        log.debug("connected: %s", name)

    def authenticated(self, client: ClientConnection) -> None:
        """The client proved its key: no deadline any more."""
        client.deadline = None

    def _expire(self, now: float) -> None:
        """Drop clients past their deadline to authenticate; listen again
        after a pause or below the cap.
        """
        waiting = self._awaiting_auth
        while waiting and (waiting[0].closed or waiting[0].deadline is None or waiting[0].deadline <= now):
            client = waiting.popleft()
            if not client.closed and client.deadline is not None:
                self.drop(client, "did not authenticate in time", logging.DEBUG)
        if self._accept_resume and now >= self._accept_resume:
            self._accept_resume = 0.0
            self._resume_listening()

    def _resume_listening(self) -> None:
        if self._accept_resume or len(self.clients) >= self.max_connections:
            return
        if self._at_cap:
            log.warning("below --max-connections again: accepting connections (%d refused meanwhile)",
                        self._refused)
            self._at_cap = False
        self._listen(True)

    # -- reading and writing ---------------------------------------------------------

    def _receive(self, client: ClientConnection) -> None:
        try:
            data = client.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.drop(client, f"receive failed: {error}", logging.DEBUG)
            return
        if not data:
            self.drop(client, "disconnected", logging.DEBUG)
            return
        client.inbuf += data
        self._on_input(client)

    def flush(self, client: ClientConnection) -> None:
        """Send what is buffered; then watch for what the client can do next."""
        if client.closed:
            return
        while client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.drop(client, f"send failed: {error}", logging.DEBUG)
                return
            del client.outbuf[:sent]
        if client.closing and not client.outbuf:
            self.close(client)
        else:
            self.update_interest(client)

    def wants_production(self, client: ClientConnection) -> None:
        """The client has a bulk load to produce: queue it for a slice."""
        if client not in self._producing:
            self._producing.append(client)

    def _produce_round(self) -> None:
        """One slice of every pending bulk load whose client has room, in turn."""
        for _ in range(len(self._producing)):
            client = self._producing.popleft()
            if client.closed or len(client.outbuf) >= OUTPUT_HIGH_WATER:
                continue  # its writability brings it back
            more = self._produce(client)
            self.flush(client)
            if more and not client.closed and len(client.outbuf) < OUTPUT_HIGH_WATER:
                self._producing.append(client)
            elif not more and not client.closed and client.inbuf and self._may_read(client):
                self._on_input(client)

    def update_interest(self, client: ClientConnection) -> None:
        """Read only what can be handled now; write while output waits."""
        if client.closed:
            return
        events = 0
        if client.outbuf:
            events |= selectors.EVENT_WRITE
        elif client.loads_pending:
            self.wants_production(client)
        if self._may_read(client):
            events |= selectors.EVENT_READ
        if events != client.events:
            if not events:
                self._selector.unregister(client.sock)
            elif client.events:
                self._selector.modify(client.sock, events, client)
            else:
                self._selector.register(client.sock, events, client)
            client.events = events

    def drop_after_one_send(self, client: ClientConnection, reason: str) -> None:
        """Drop a client that broke the rules, after one try at sending the
        replies to its earlier requests, as Durus 4.3 does (it answers each
        request before it reads the next).
        """
        if client.outbuf and not client.closed:
            try:
                client.sock.send(client.outbuf)
            except OSError:
                pass
        self.drop(client, reason)

    def drop(self, client: ClientConnection, reason: str, level: int = logging.WARNING) -> None:
        log.log(level, "dropping client %s: %s", client.name, reason)
        self.close(client)

    def close(self, client: ClientConnection) -> None:
        if client.closed:
            return
        client.closed = True
        if client.events:
            self._selector.unregister(client.sock)
            client.events = 0
        client.sock.close()
        self.clients.discard(client)
        self._on_close(client)
        self._resume_listening()

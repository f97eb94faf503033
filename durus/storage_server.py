"""StorageServer: many clients share one storage over TCP or unix sockets.

The server speaks wire protocol version 1 (:mod:`durus.protocol`) to Durus
4.3 clients, exactly as Durus 4.3 does, and version 2 to this package's
:class:`~durus.client_storage.ClientStorage`, which asks for it at connect.
The rules (invalidations, oids, conflicts) live in
:mod:`durus.shared_storage`, when commits land and are acknowledged in
:mod:`durus.commit_schedule`, and the sockets and their bounds in
:mod:`durus.server_io`; this module says what each command means.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable

from durus import protocol
from durus.commit_schedule import DEFAULT_COMMIT_TURN_TIMEOUT, Acknowledgements, CommitTurns
from durus.error import (
    CommitRefusedError,
    DurusKeyError,
    ProtocolError,
    ReadConflictError,
    WriteConflictError,
)
from durus.invalidation_log import DEFAULT_MAX_LOGGED_OIDS
from durus.protocol import (
    DEFAULT_HOST,
    DEFAULT_MAX_TRANSACTION_SIZE,
    DEFAULT_PORT,
    MAX_BULK_OIDS,
    Request,
)
from durus.record import split_oids
from durus.server_io import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    OUTPUT_HIGH_WATER,
    ClientConnection,
    Sockets,
    allow_descriptors,
)
from durus.shared_storage import RequestRefusedError, SharedStorage, StorageSession
from durus.storage import Storage
from durus.transport import SocketAddress, address_of, inherited_listener
from durus.transport import wait_for_server as _wait_for_address

log = logging.getLogger("durus.storage_server")

DEFAULT_GCBYTES = 0
# Bulk-load replies produced per client per turn of the loop.
_LOAD_SLICE = 16
# Input read from a client while its commit waits for the disk sync.
_INPUT_WHILE_SYNCING = 64 << 10

__all__ = [
    "ClientState", "DEFAULT_GCBYTES", "DEFAULT_HOST", "DEFAULT_PORT", "SocketAddress",
    "StorageServer", "serve_file", "serve_storage", "wait_for_server",
]

# What a client is waiting for.
_READY = "ready"  # the next request
_WAIT_TURN = "wait-turn"  # sent C; waits for the commit turn
_WAIT_DATA = "wait-data"  # has its invalidations; the server waits for tdata
_WAIT_DURABLE = "wait-durable"  # commit written; waits for the disk sync
_WAIT_PROOF = "wait-proof"  # authentication: the server waits for the proof


class ClientState:
    """What the server keeps of one client beyond its socket.

    Instance attributes: ``version`` (the protocol it speaks); ``state``
    (one of the ``_WAIT`` names); ``session`` (None until it may use the
    storage: after authenticating, where a key is required);
    ``nonces`` (during authentication); ``loads`` and ``load_position``
    (the oids of a bulk load, and how far its replies are produced);
    ``acknowledgement`` (what to send once the commit is durable);
    ``busy`` (its requests are being handled: a commit finishing inside its
    own request does not re-enter the parser).
    """

    def __init__(self, session: StorageSession | None) -> None:
        self.version = protocol.PROTOCOL_VERSION
        self.state = _READY
        self.session = session
        self.nonces: tuple[bytes, bytes] | None = None
        self.loads = b""
        self.load_position = 0
        self.acknowledgement = b""
        self.busy = False  # its requests are being handled

    def load_reply(self, oid: bytes) -> bytes:
        """The reply to a load of ``oid``: the record, ``I`` or ``K``."""
        try:
            return protocol.record_reply(self.session.load(oid))
        except ReadConflictError:
            return protocol.STATUS_INVALID
        except DurusKeyError:
            return protocol.STATUS_KEYERROR

    def changes(self) -> list[bytes] | None:
        """The session's invalidations; None ("everything") only for
        protocol 2: a protocol-1 client that fell behind is dropped.
        """
        changes = self.session.take_changes()
        if changes is None and self.version < protocol.PROTOCOL_VERSION_2:
            raise _DropClient("fell too far behind other clients' commits (the invalidation log "
                              "forgot what it has not seen); it must reconnect")
        return changes

    def produce_loads(self, outbuf: bytearray) -> bool:
        """Add one slice of the bulk load's replies to ``outbuf``, as room
        allows; True while more is pending.
        """
        loads, position = self.loads, self.load_position
        end = min(len(loads), position + 8 * _LOAD_SLICE)
        while position < end and len(outbuf) < OUTPUT_HIGH_WATER:
            outbuf += self.load_reply(loads[position:position + 8])
            position += 8
        self.load_position = position
        if position >= len(loads):
            self.loads, self.load_position = b"", 0
            return False
        return True


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
    - ``commit_turn_timeout``: seconds a protocol-1 client may hold the
      commit turn while others wait; then it is dropped.
    - ``max_connections``: clients served at once.
    - ``auth_timeout``: seconds a client has to authenticate (with a key).
    - ``listener``: a listening socket to serve instead of binding
      ``address`` (as systemd passes); by default the one
      :func:`~durus.transport.inherited_listener` finds, if any.
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        max_logged_oids: int = DEFAULT_MAX_LOGGED_OIDS,
        listener: socket.socket | None = None,
    ) -> None:
        if isinstance(gcbytes, bool) or not isinstance(gcbytes, (int, float)) or not 0 <= gcbytes < float("inf"):
            raise ValueError(f"gcbytes must be a number of bytes >= 0, not {gcbytes!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        gcbytes = int(gcbytes)  # Durus 4.3 takes floats too (1e8)
        self.storage = storage
        self.shared = SharedStorage(storage, readonly=readonly, gcbytes=gcbytes, max_logged_oids=max_logged_oids)
        self.address = SocketAddress.new(address, host, port)
        self.gcbytes = gcbytes
        self.secret = secret or None
        self.max_transaction_size = max_transaction_size
        self.commit_turn_timeout = commit_turn_timeout
        self.max_connections = max_connections
        self.auth_timeout = auth_timeout
        self.listener = listener
        self.listening_address: SocketAddress | None = None
        self._sockets: Sockets | None = None
        self._turns: CommitTurns[ClientConnection] = CommitTurns(commit_turn_timeout)
        self._acks: Acknowledgements[ClientConnection] | None = None
        self._stopping = False
        self._owns_socket_file = False
        self._failure: BaseException | None = None
        self._commands: dict[bytes, Callable[[ClientConnection, ClientState, Request], None]] = {
            protocol.LOAD: self._load,
            protocol.BULK_LOAD: self._bulk_load,
            protocol.COMMIT: self._commit,
            protocol.COMMIT_WATCHED: self._commit_watched,
            protocol.SYNC: self._sync,
            protocol.NEW_OIDS: self._new_oids,
            protocol.NEW_OID: self._new_oid,
            protocol.VERSION: self._version,
            protocol.PACK: self._pack,
            protocol.AUTHENTICATE: self._authenticate,
            protocol.CLOSE: self._close_request,
            protocol.QUIT: self._quit,
        }

    # -- running -------------------------------------------------------------

    def serve(self) -> None:
        """Listen and serve until a client sends ``Q`` or :meth:`stop` is called."""
        listener = self.listener or inherited_listener()
        self._owns_socket_file = listener is None
        if listener is None:
            listener = self.address.listen()
        self.listening_address = address_of(listener, self.address)
        allow_descriptors(self.max_connections + 64)  # the storage's files, the log, the loop's own
        self._sockets = Sockets(
            listener, max_connections=self.max_connections,
            auth_timeout=self.auth_timeout if self.secret is not None else None,
            on_input=self._process, produce=self._produce_loads, may_read=self._may_receive,
            on_close=self._closed)
        self._acks = Acknowledgements(self.shared.group_sync, self._sockets.wake, self._disk_failed)
        self._acks.start()
        log.info("Ready on %s, serving %s", self.listening_address, self.storage)
        try:
            self._loop()
        finally:
            self._shut_down()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Ask the serving loop to stop (safe from another thread or a signal handler)."""
        self._stopping = True
        if self._sockets is not None:
            self._sockets.wake()

    def _disk_failed(self, error: BaseException) -> None:
        self._failure = error
        self.stop()

    def _loop(self) -> None:
        shared, sockets, turns = self.shared, self._sockets, self._turns
        while not self._stopping:
            sockets.poll(0 if shared.is_packing() else turns.seconds_left())
            self._acknowledge_durable()
            overdue = turns.overdue()
            if overdue is not None:
                sockets.drop(overdue, f"held the commit turn over {turns.timeout}s while others waited")
            if shared.is_packing():
                shared.pack_step()

    def _shut_down(self) -> None:
        try:
            if not self._failure:
                group = self.shared.group_sync
                group.wait(group.written)
                self._acknowledge_durable()
            self._sockets.close_all()
        finally:
            self._acks.stop()
            if self._owns_socket_file:
                self.listening_address.remove_socket_file()
            self.shared.close()
            log.info("Stopped")

    def _closed(self, client: ClientConnection) -> None:
        state: ClientState = client.protocol
        if state is None:
            return
        if state.session is not None:
            state.session.close()
        self._acks.discard(client)
        if self._turns.release(client):
            self._run_turns()

    # -- parsing -----------------------------------------------------------------

    def _may_parse(self, client: ClientConnection) -> bool:
        """Whether the client's next input can be handled now: never while
        its earlier replies are still piling up, so its memory stays bounded.
        """
        state: ClientState = client.protocol
        return (state is None or state.state in (_READY, _WAIT_DATA, _WAIT_PROOF)) and not client.closing \
            and len(client.outbuf) < OUTPUT_HIGH_WATER and not client.loads_pending

    def _may_receive(self, client: ClientConnection) -> bool:
        """Whether to read the client's socket: as :meth:`_may_parse`, and
        also while its commit waits for the disk sync, up to a little input,
        so that its registration need not change twice a commit.
        """
        state: ClientState = client.protocol
        if state is not None and state.state == _WAIT_DURABLE:
            return not client.closing and len(client.inbuf) < _INPUT_WHILE_SYNCING
        return self._may_parse(client)

    def _process(self, client: ClientConnection) -> None:
        """Handle the whole requests buffered, as far as the state allows,
        and send the replies.
        """
        if client.protocol is None:
            client.protocol = ClientState(None if self.secret else self.shared.session(track_loaded=False))
        state: ClientState = client.protocol
        if state.busy or client.closed:
            return
        state.busy = True
        buffer = client.inbuf
        position = 0
        try:
            while not client.closed and self._may_parse(client):
                parsed = self._parse_one(client, buffer, position)
                if parsed is None:
                    break
                position = parsed
        except (ProtocolError, _DropClient, RequestRefusedError) as error:
            self._sockets.drop_after_one_send(client, str(error))
            return
        except Exception as error:
            log.exception("error serving %s", client.name)
            self._sockets.drop(client, f"server error: {error}")
            return
        finally:
            del buffer[:position]
            state.busy = False
        self._sockets.flush(client)

    def _parse_one(self, client: ClientConnection, buffer: bytearray, position: int) -> int | None:
        """Handle the request at ``position``; its end, or None if incomplete."""
        state: ClientState = client.protocol
        if state.state == _WAIT_DATA:
            parsed = protocol.parse_frame(buffer, position, self.max_transaction_size)
            if parsed is None:
                return None
            self._receive_commit_data(client, state, parsed[0])
            return parsed[1]
        if state.state == _WAIT_PROOF:
            end = position + protocol.PROOF_SIZE
            if len(buffer) < end:
                return None
            self._check_proof(client, state, bytes(buffer[position:end]))
            return end
        if position >= len(buffer):
            return None
        self._check_allowed(state, bytes(buffer[position:position + 1]))
        parsed = protocol.parse_request(buffer, position, MAX_BULK_OIDS, self.max_transaction_size)
        if parsed is None:
            return None
        request, end = parsed
        self._commands[request.command](client, state, request)
        return end

    def _check_allowed(self, state: ClientState, command: bytes) -> None:
        """Refuse a command this client may not send, from its first byte,
        before any more of it is buffered.
        """
        if state.session is None and command not in _BEFORE_AUTHENTICATION:
            raise _DropClient(f"sent {command!r} before authenticating (the server requires a key)")
        if command == protocol.COMMIT_WATCHED and state.version < protocol.PROTOCOL_VERSION_2:
            raise _DropClient("sent W without asking for protocol 2")

    # -- commands ----------------------------------------------------------------

    def _load(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        client.outbuf += state.load_reply(request.argument)

    def _bulk_load(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        state.loads, state.load_position = request.argument, 0
        client.loads_pending = bool(state.loads)
        if client.loads_pending:
            self._sockets.wants_production(client)

    def _produce_loads(self, client: ClientConnection) -> bool:
        client.loads_pending = client.protocol.produce_loads(client.outbuf)
        return client.loads_pending

    def _sync(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        client.outbuf += protocol.oids_reply(state.changes())

    def _new_oids(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        client.outbuf += b"".join(state.session.new_oids(request.argument)) if request.argument else b""

    def _new_oid(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        client.outbuf += state.session.new_oid()

    def _version(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        reply, keep = protocol.version_reply(request.argument)
        client.outbuf += reply
        if keep:
            state.version = request.argument
        else:
            log.warning("dropping client %s: it speaks protocol %s, this server 1 and 2",
                        client.name, request.argument)
            client.closing = True

    def _pack(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        if self.shared.readonly:
            log.info("not packing for %s: the storage is read-only", client.name)
        else:
            self.shared.start_pack()
        client.outbuf += protocol.STATUS_OKAY

    def _close_request(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        log.debug("client %s closed its connection", client.name)
        client.closing = True

    def _quit(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        if state.session is None:
            log.warning("refusing to stop for %s: it has not authenticated", client.name)
            client.outbuf += protocol.STATUS_INVALID
        else:
            log.info("stop requested by %s", client.name)
            client.outbuf += protocol.STATUS_OKAY
            self.stop()
        client.closing = True

    # -- commits: protocol 1, in turns ---------------------------------------------

    def _commit(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        state.state = _WAIT_TURN
        self._turns.join(client)
        self._run_turns()

    def _run_turns(self) -> None:
        """Give the free commit turn to the next waiting client."""
        while True:
            client = self._turns.next_holder(lambda waiter: not waiter.closed)
            if client is None:
                return
            state: ClientState = client.protocol
            state.session.claim_commit(wait=False)
            try:
                changes = state.changes()
            except _DropClient as error:
                self._sockets.drop(client, str(error))
                continue
            state.state = _WAIT_DATA
            client.outbuf += protocol.oids_reply(changes)
            self._sockets.flush(client)
            if client.inbuf and not client.closed:
                self._process(client)

    def _receive_commit_data(self, client: ClientConnection, state: ClientState, tdata: bytes) -> None:
        if not tdata:
            # The client saw a conflict among its invalidations: no commit.
            state.state = _READY
            self._release_turn(client)
            return
        records = protocol.split_commit_data(tdata)
        try:
            serial = state.session.apply_commit(records)
        except WriteConflictError:
            log.info("conflict: commit of %s refused", client.name)
            state.state = _READY
            client.outbuf += protocol.STATUS_INVALID
            self._release_turn(client)
            return
        except CommitRefusedError as error:
            raise _DropClient(f"its commit was refused, nothing written ({error}); a protocol-1 "
                              "client can only be told by closing its connection") from None
        log.debug("committed %s records for %s", len(records), client.name)
        self._release_turn(client)
        self._await_disk(client, state, serial, protocol.STATUS_OKAY)

    def _release_turn(self, client: ClientConnection) -> None:
        client.protocol.session.release_commit()
        if self._turns.release(client):
            self._run_turns()

    # -- commits: protocol 2, in one round trip ----------------------------------------

    def _commit_watched(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        tdata, watched = request.argument
        records = protocol.split_commit_data(tdata)
        try:
            serial, invalid = state.session.commit_watched(records, set(split_oids(watched)))
        except CommitRefusedError as error:
            log.warning("commit of %s refused: %s", client.name, error)
            client.outbuf += protocol.refused_reply(str(error))
            return
        if serial is None:
            log.debug("conflict: commit of %s not written", client.name)
            client.outbuf += protocol.commit_watched_reply(protocol.STATUS_INVALID, invalid)
            return
        log.debug("committed %s records for %s", len(records), client.name)
        self._await_disk(client, state, serial, protocol.commit_watched_reply(protocol.STATUS_OKAY, invalid))

    def _await_disk(self, client: ClientConnection, state: ClientState, serial: int, reply: bytes) -> None:
        """Send ``reply`` once commit ``serial`` is durable."""
        state.state = _WAIT_DURABLE
        state.acknowledgement = reply
        # Alone, sync here and spare the hand-over; else let the sync thread
        # do it, so commits arriving meanwhile are written and share the next.
        alone = len(self._sockets.clients) == 1
        self._acks.add(serial, client, sync_here=alone)
        self._acknowledge_durable()

    def _acknowledge_durable(self) -> None:
        for client in self._acks.durable():
            state: ClientState = client.protocol
            state.state = _READY
            client.outbuf += state.acknowledgement
            state.acknowledgement = b""
            self._sockets.flush(client)
            if client.inbuf and not client.closed:
                self._process(client)

    # -- authentication --------------------------------------------------------

    def _authenticate(self, client: ClientConnection, state: ClientState, request: Request) -> None:
        if self.secret is None:
            client.outbuf += protocol.STATUS_KEYERROR
            return
        server_nonce = secrets.token_bytes(protocol.NONCE_SIZE)
        state.nonces = (server_nonce, request.argument)
        state.state = _WAIT_PROOF
        client.outbuf += protocol.STATUS_OKAY + server_nonce

    def _check_proof(self, client: ClientConnection, state: ClientState, proof: bytes) -> None:
        reply = _proof_reply(self.secret, state.nonces, proof)
        state.nonces = None
        if reply is None:
            client.outbuf += protocol.STATUS_INVALID
            log.warning("dropping client %s: authentication failed (wrong key)", client.name)
            client.closing = True
            return
        state.session = self.shared.session(track_loaded=False)
        state.state = _READY
        self._sockets.authenticated(client)
        client.outbuf += reply


def _proof_reply(secret: bytes, nonces: tuple[bytes, bytes], proof: bytes) -> bytes | None:
    """The server's answer to a client's proof of the key, None if wrong."""
    server_nonce, client_nonce = nonces
    expected = protocol.authentication_proof(secret, False, server_nonce, client_nonce)
    if not protocol.proofs_match(expected, proof):
        return None
    return protocol.STATUS_OKAY + protocol.authentication_proof(secret, True, server_nonce, client_nonce)


_BEFORE_AUTHENTICATION = (protocol.VERSION, protocol.AUTHENTICATE, protocol.CLOSE, protocol.QUIT)


def serve_file(
    path: str | None,
    open_storage: Callable[[str | None], Storage],
    address: SocketAddress,
    **server_options: object,
) -> OSError | None:
    """Serve the storage file at ``path`` until SIGTERM or SIGINT: the one
    way ``durus -s`` and ``flask durus serve`` run a server.

    ``open_storage(path)`` opens (or creates) it, raising what the caller
    reports; ``server_options`` go to :class:`StorageServer`.  If the server
    cannot start listening, the storage is closed, a file this call created
    is removed (so nothing is left behind) and the error is returned.
    """
    created = path is not None and not os.path.exists(path)
    storage = open_storage(path)
    try:
        server = StorageServer(storage, address=address, **server_options)
        return serve_storage(server, storage, path if created else None)
    finally:
        storage.close()


def serve_storage(server: StorageServer, storage: Storage, created: str | None) -> OSError | None:
    """Serve until SIGTERM or SIGINT stops ``server``.  If it cannot start
    listening, close ``storage``, remove ``created`` (the empty file this
    run made) and return the error.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    try:
        server.serve()
    except OSError as error:
        if server.listening_address is not None:
            raise  # it failed while serving, not while starting to listen
        storage.close()
        if created and os.path.exists(created):
            os.unlink(created)
        return error
    return None


def wait_for_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    maxtries: int = 300,
    sleeptime: float = 2,
    address: SocketAddress | tuple[str, int] | str | None = None,
) -> None:
    """Return once a server accepts connections at the address; after
    ``maxtries`` attempts ``sleeptime`` seconds apart, TimeoutError.  (Durus
    4.3's signature; :func:`durus.transport.wait_for_server` does the work.)
    """
    _wait_for_address(SocketAddress.new(address, host, port),
                      timeout=max(0.0, (maxtries - 1) * sleeptime), interval=sleeptime)


# The one-byte status answers, under their Durus 4.3 names, for Durus 4.3 programs.
STATUS_OKAY, STATUS_KEYERROR, STATUS_INVALID = protocol.STATUS_OKAY, protocol.STATUS_KEYERROR, protocol.STATUS_INVALID
DEFAULT_MAX_TRANSACTION_SIZE = DEFAULT_MAX_TRANSACTION_SIZE

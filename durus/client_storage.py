"""ClientStorage: the Storage interface over a socket to a storage server.

It asks for wire protocol version 2 (:mod:`durus.protocol`) at connect and
falls back to version 1 when the server is a Durus 4.3 server, so it works
with both.  Over version 2 a commit takes one round trip: the records go
with the oids the transaction used (``watches_reads``), and the server
checks them against others' commits and writes in one step.

Loading many objects one by one would cost one network round trip each, as
in Durus 4.3.  So by default (``prefetch=True``) the client, when a record
arrives, asks for the records it refers to that this client has not loaded
yet, in one bulk request sent ahead and read only when needed: a B-tree
node brings its children and values, a list its items.  A cold lookup by
key then finds most nodes and values already here.  The answers wait in a
bounded buffer (:data:`PREFETCH_RECORDS` records, :data:`PREFETCH_BYTES`
bytes; the oldest go first).

Reads stay serializable.  The server answers a load with the state
committed as of this client's last sync (``I`` for a record another client
committed since: this client is not told of it yet), and every sync reports
the oids committed since, which leave the buffer before the Connection sees
them; so a buffered record is never older than the transaction's view, and
the objects a transaction reads form a consistent snapshot.  What changes
is when a conflict shows: a record another client commits after the
transaction's view was taken is found stale at commit time
(WriteConflictError, since the Connection watches every object it used)
rather than when it is loaded (ReadConflictError).  ``prefetch=False``
loads exactly as Durus 4.3 does.

When the connection breaks (the server restarted), the transaction underway
fails with :class:`DisconnectedError`, a ConflictError: abort and retry.
The next transaction boundary (``sync``, called by ``abort()``) reconnects
and reports every oid this client has loaded as invalid, so the Connection
drops every cached state.  If the commit data had already gone out, nobody
knows whether the commit happened: :class:`CommitInDoubtError` says so.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from durus import protocol
from durus.error import (
    CommitRefusedError,
    ConflictError,
    DurusError,
    DurusKeyError,
    ProtocolError,
    WriteConflictError,
)
from durus.protocol import DEFAULT_HOST, DEFAULT_MAX_TRANSACTION_SIZE, DEFAULT_PORT
from durus.record import int4, record_refs, split_oids
from durus.storage import InvalidationHandler, Storage
from durus.transport import SocketAddress

log = logging.getLogger("durus.client_storage")

DEFAULT_TIMEOUT = 30.0
_OID_BATCH = 32
#: At most this many records fetched ahead wait in a client's buffer.
PREFETCH_RECORDS = 16384
#: At most this many bytes of records fetched ahead wait in a client's buffer.
PREFETCH_BYTES = 4 << 20
# Records asked for in one bulk load sent ahead.
_PREFETCH_BATCH = 250
# Beyond this many, loaded oids are forgotten (see _note_known).
_MAX_KNOWN_OIDS = 4_000_000


class ServerUnavailableError(DurusError):
    """No storage server answers at the address, or it stopped answering.

    Nothing is lost on this side; the next transaction tries again.
    """


class CommitInDoubtError(ServerUnavailableError):
    """The connection broke after the commit data was sent: the commit may or
    may not be stored.  Do not replay it blindly; check, then retry.
    """


class DisconnectedError(ConflictError):
    """The connection to the server broke before this transaction sent any
    commit data, so nothing of it was stored.  Call ``abort()``, which
    reconnects, and retry the transaction, as after any conflict.
    """

    def __init__(self, message: str) -> None:
        super().__init__(None)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AuthenticationError(DurusError):
    """The server and this client do not share the same key."""


class TransactionTooLargeError(DurusError):
    """A commit is larger than the server accepts; nothing was sent."""


def _note_after_commit(invalid: list[bytes], handle_invalidations: InvalidationHandler | None) -> None:
    """Pass on what others committed, after the server stored this commit.

    The server has already checked that none of it touches what the
    transaction used, so the handler finds no conflict; should it find one
    anyway (a server that checked less), the commit still stands: it is on
    disk, and raising a conflict would make the application do its work a
    second time.  That is logged, not raised.
    """
    if not invalid or handle_invalidations is None:
        return
    try:
        handle_invalidations(invalid)
    except ConflictError as error:
        log.error("the storage server stored a commit although objects it used had changed (%s); "
                  "the commit stands", error)


class ClientStorage(Storage):
    """A Storage served by a storage server.  Not thread-safe: give each
    thread its own Connection and ClientStorage.

    Instance attributes:

    - ``address``: the server's :class:`~durus.transport.SocketAddress`.
    - ``timeout``: seconds any socket operation may take.
    - ``prefetch``: whether records referred to by loaded ones are fetched
      ahead (see the module docstring).
    - ``max_transaction_size``: the largest commit, in bytes, this client sends
      (the server's limit; by default the server's default).
    - ``records``: the commit being collected by ``store``.
    - ``version``: the protocol version the server speaks with this client
      (2, or 1 for a Durus 4.3 server); ``watches_reads`` is True with 2.
    """

    batched_bulk_load = True
    watches_reads = False

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        address: SocketAddress | tuple[str, int] | str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        secret: bytes | None = None,
        keyfile: str | None = None,
        prefetch: bool = True,
        max_transaction_size: int = DEFAULT_MAX_TRANSACTION_SIZE,
    ) -> None:
        self.address = SocketAddress.new(address, host, port)
        self.timeout = timeout
        self._secret = protocol.read_secret(keyfile) if keyfile is not None else secret
        self.prefetch = prefetch
        self.max_transaction_size = max_transaction_size
        self.records: dict[bytes, bytes] = {}
        self._pid = os.getpid()
        self._sock = None
        self._reader = None
        self._oid_pool: list[bytes] = []
        self._unused_oids: set[bytes] = set()
        # Oids whose state the application may hold: reported invalid after
        # a reconnect.  Also what prefetching skips.
        self._known: set[bytes] = set()
        self._known_overflowed = False
        self._lost = False
        # Records fetched ahead, oldest first; their total size.
        self._prefetched: dict[bytes, bytes] = {}
        self._prefetched_bytes = 0
        self._inflight: list[bytes] = []
        self._inflight_set: set[bytes] = set()
        self._wanted: deque[bytes] = deque()
        # Records fetched ahead, and of them used, lately.
        self._fetched_ahead = 0
        self._used_ahead = 0
        self.version = protocol.LATEST_VERSION
        self._connect()

    def __str__(self) -> str:
        return f"ClientStorage({self.address})"

    # -- the connection --------------------------------------------------------

    def _connect(self) -> None:
        """Connect and agree on a version: 2 if the server speaks it; a
        Durus 4.3 server answers 1 and closes, and is asked again for 1.
        """
        version = self._open(self.version)
        if version != self.version and version == protocol.PROTOCOL_VERSION:
            self._disconnect()
            version = self._open(protocol.PROTOCOL_VERSION)
        if version not in (protocol.PROTOCOL_VERSION, protocol.PROTOCOL_VERSION_2):
            self._disconnect()
            raise ProtocolError(
                f"the server at {self.address} speaks protocol {version}, this client 1 or 2")
        self.version = version
        self.watches_reads = version >= protocol.PROTOCOL_VERSION_2
        if self._secret is not None:
            with self._handshake():
                self._authenticate()

    def _open(self, version: int) -> int:
        """A new socket, asking for ``version``; the version the server answers."""
        try:
            sock = self.address.connect(self.timeout)
        except OSError as error:
            raise ServerUnavailableError(
                f"no storage server answers at {self.address} ({error.strerror or error}); "
                "start one with: durus -s (or flask durus serve)") from None
        self._sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        with self._handshake():
            sock.sendall(protocol.version_request(version))
            return protocol.read_version(self._read)

    @contextmanager
    def _handshake(self) -> Iterator[None]:
        """Close the socket if the handshake fails; a broken connection is
        a ServerUnavailableError.
        """
        try:
            yield
        except BaseException as error:
            self._disconnect()
            if isinstance(error, OSError):
                raise ServerUnavailableError(
                    f"the storage server at {self.address} broke off the handshake ({error})") from None
            raise

    def _authenticate(self) -> None:
        client_nonce = secrets.token_bytes(protocol.NONCE_SIZE)
        self._sock.sendall(protocol.AUTHENTICATE + client_nonce)
        if self._read(1) != protocol.STATUS_OKAY:
            raise AuthenticationError(
                f"a key was given, but the server at {self.address} has none configured; "
                "start it with --keyfile, or connect without a key")
        server_nonce = self._read(protocol.NONCE_SIZE)
        self._sock.sendall(protocol.authentication_proof(self._secret, False, server_nonce, client_nonce))
        try:
            status = self._read(1)
        except ConnectionError:
            status = b""
        if status != protocol.STATUS_OKAY:
            raise AuthenticationError(
                f"the server at {self.address} rejected this client's key: "
                "both must use the same key file")
        expected = protocol.authentication_proof(self._secret, True, server_nonce, client_nonce)
        if not protocol.proofs_match(expected, self._read(protocol.PROOF_SIZE)):
            raise AuthenticationError(
                f"the server at {self.address} could not prove it holds the key: "
                "it is not the server you meant to reach")

    def _disconnect(self) -> None:
        reader, sock = self._reader, self._sock
        self._reader = self._sock = None
        if reader is not None:
            reader.close()
        if sock is not None:
            sock.close()

    def _read(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise ConnectionResetError("the storage server closed the connection")
        return data

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise DurusError(
                "this ClientStorage was opened before a fork: open a new one in "
                "each process (a shared socket would mix their sessions)")
        if self._lost:
            raise DisconnectedError(
                f"the connection to the storage server at {self.address} was lost "
                "during this transaction: call abort() and retry")
        if self._sock is None:
            raise DurusError(f"{self} is closed")

    def _lose(self, error: Exception, commit_sent: bool = False) -> DurusError:
        """Forget the broken connection; the error to raise for ``error``."""
        self._disconnect()
        self._lost = True
        self._oid_pool.clear()
        self._unused_oids.clear()
        self._clear_prefetch()
        self.records = {}
        if commit_sent:
            return CommitInDoubtError(
                f"the connection to the storage server at {self.address} broke ({error}) "
                "after the commit was sent: it may or may not be stored")
        if isinstance(error, TimeoutError):
            return ServerUnavailableError(
                f"the storage server at {self.address} did not answer within {self.timeout}s")
        return DisconnectedError(
            f"the connection to the storage server at {self.address} was lost ({error}): "
            "nothing of this transaction was stored; call abort() and retry")

    def _reconnect(self) -> list[bytes]:
        """Connect anew; every oid whose state the application may hold."""
        self._connect()
        self._lost = False
        return self._everything("reconnected to the storage server")

    def _everything(self, what_happened: str) -> list[bytes]:
        """Every oid whose state the application may hold, to be dropped:
        after a reconnect, or when the server says this client fell too far
        behind to be told what changed.
        """
        invalid = list(self._known)
        self._known.clear()
        self._clear_prefetch()
        if self._known_overflowed:
            self._known_overflowed = False
            raise DisconnectedError(
                f"{what_happened}, but this client loaded too many "
                "objects to say which are stale: open a new Connection")
        return invalid

    def _invalidations(self, oids: list[bytes] | None) -> list[bytes]:
        if oids is None:
            return self._everything("the server could not say what others committed")
        self._forget(oids)
        return oids

    # -- loading -----------------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        self._check_usable()
        record = self._use_prefetched(oid)
        try:
            if record is None and oid in self._inflight_set:
                self._receive_prefetched()
                record = self._use_prefetched(oid)
            if record is None:
                self._sock.sendall(protocol.load_request(oid))
                self._receive_prefetched()
                record = protocol.read_load_reply(self._read, oid)
            self._note_loaded(oid, record)
            self._send_prefetch()
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        return record

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        """The records of ``oids``, in order: a generator, as in every
        storage, so a missing or invalid oid raises while it is iterated.
        """
        self._check_usable()
        oids = list(oids)
        records: dict[bytes, bytes] = {}
        missing = []
        try:
            self._receive_prefetched()
            for oid in oids:
                record = self._use_prefetched(oid)
                if record is None:
                    missing.append(oid)
                else:
                    records[oid] = record
            if missing:
                self._sock.sendall(protocol.bulk_load_request(missing))
                error = None
                for oid in missing:
                    try:
                        records[oid] = protocol.read_load_reply(self._read, oid)
                    except (ConflictError, DurusKeyError) as problem:
                        error = error or problem  # read every reply first
                if error is not None:
                    raise error
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        for oid in oids:
            self._note_known(oid)
        for oid in oids:
            yield records[oid]

    def _note_known(self, oid: bytes) -> None:
        known = self._known
        if len(known) >= _MAX_KNOWN_OIDS and oid not in known:
            # Memory stays bounded; a reconnect then cannot say what is stale.
            known.clear()
            self._known_overflowed = True
        known.add(oid)

    def _note_loaded(self, oid: bytes, record: bytes) -> None:
        self._note_known(oid)
        if self.prefetch:
            self._want(record_refs(record), urgent=True)

    def _want(self, refs: bytes, urgent: bool) -> None:
        """Queue the records ``refs`` names that are not here yet: those of a
        record just used go first, in order (the next step of a lookup is
        among them); those of a record fetched ahead go last.
        """
        if not refs:
            return
        known, prefetched, inflight = self._known, self._prefetched, self._inflight_set
        new = [ref for ref in split_oids(refs) if ref not in known and ref not in prefetched and ref not in inflight]
        wanted = self._wanted
        if urgent:
            wanted.extendleft(reversed(new))
        else:
            wanted.extend(new)
        while len(wanted) > 4 * PREFETCH_RECORDS:
            wanted.pop()

    def _reading_ahead_pays(self) -> bool:
        """Whether most records fetched ahead lately were used: a scan, or
        many lookups, is under way, and it is worth fetching the records that
        records fetched ahead refer to as well.  A few lookups in a large
        tree use one record in dozens, and go one level ahead only.
        """
        return self._fetched_ahead >= _PREFETCH_BATCH and 2 * self._used_ahead >= self._fetched_ahead

    def _send_prefetch(self) -> None:
        """Ask ahead for wanted records, one bulk load at a time."""
        if self._inflight or not self._wanted:
            return
        batch = []
        chosen = set()
        wanted = self._wanted
        while wanted and len(batch) < _PREFETCH_BATCH:
            oid = wanted.popleft()
            if oid not in self._known and oid not in self._prefetched and oid not in chosen:
                chosen.add(oid)
                batch.append(oid)
        if batch:
            self._sock.sendall(protocol.bulk_load_request(batch))
            self._inflight = batch
            self._inflight_set = chosen

    def _receive_prefetched(self) -> None:
        """Read the replies to the bulk load sent ahead, if any."""
        if not self._inflight:
            return
        inflight, self._inflight, self._inflight_set = self._inflight, [], set()
        deeper = self._reading_ahead_pays()
        for oid in inflight:
            try:
                record = protocol.read_load_reply(self._read, oid)
            except (ConflictError, DurusKeyError):
                continue  # a load of it will get the same answer, then
            self._keep_prefetched(oid, record)
            if deeper:
                self._want(record_refs(record), urgent=False)
        self._fetched_ahead += len(inflight)
        if self._fetched_ahead > 8 * PREFETCH_RECORDS:
            # The recent past counts most.
            self._fetched_ahead //= 2
            self._used_ahead //= 2

    def _keep_prefetched(self, oid: bytes, record: bytes) -> None:
        """Buffer a record fetched ahead, dropping the oldest ones beyond
        the bounds: records nobody asked for must not pile up in a
        long-lived connection.
        """
        prefetched = self._prefetched
        self._take_prefetched(oid)
        prefetched[oid] = record
        self._prefetched_bytes += len(record)
        while len(prefetched) > PREFETCH_RECORDS or self._prefetched_bytes > PREFETCH_BYTES:
            self._take_prefetched(next(iter(prefetched)))

    def _take_prefetched(self, oid: bytes) -> bytes | None:
        """The buffered record of ``oid`` (taken out of the buffer), or None."""
        record = self._prefetched.pop(oid, None)
        if record is not None:
            self._prefetched_bytes -= len(record)
        return record

    def _use_prefetched(self, oid: bytes) -> bytes | None:
        """The buffered record of ``oid``, for the Connection, or None."""
        record = self._take_prefetched(oid)
        if record is not None:
            self._used_ahead += 1
        return record

    def _forget(self, oids: Iterable[bytes]) -> None:
        """Drop buffered records of oids that changed (others' or our commits):
        what the Connection is handed is never older than its last sync.
        """
        known = self._known
        for oid in oids:
            self._take_prefetched(oid)
            known.discard(oid)

    def _clear_prefetch(self) -> None:
        self._prefetched.clear()
        self._prefetched_bytes = 0
        self._inflight = []
        self._inflight_set = set()
        self._wanted.clear()

    # -- oids --------------------------------------------------------------------

    def new_oid(self) -> bytes:
        self._check_usable()
        if not self._oid_pool:
            try:
                self._sock.sendall(protocol.new_oids_request(_OID_BATCH))
                self._receive_prefetched()
                oids = protocol.split_oids(self._read(8 * _OID_BATCH))
            except (OSError, ProtocolError) as error:
                raise self._lose(error) from None
            self._unused_oids.update(oids)
            oids.reverse()
            self._oid_pool = oids
        return self._oid_pool.pop()

    # -- committing --------------------------------------------------------------

    def begin(self) -> None:
        self.records = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if len(oid) != 8 or record[:8] != oid:
            raise ValueError(f"a record for oid {oid!r} must start with that 8-byte oid")
        self.records[oid] = record

    def end(self, handle_invalidations: InvalidationHandler | None = None,
            watched: Iterable[bytes] | None = None) -> None:
        """Commit and wait until the server has it on disk.

        Over protocol 2 with ``watched`` (the oids the transaction used; see
        :meth:`Storage.end`) it takes one round trip; otherwise it learns
        what others committed first (``handle_invalidations`` may raise
        ConflictError to abandon), then sends the records.  Raises
        CommitRefusedError when the server stored nothing (a full disk).
        """
        self._check_usable()
        records, self.records = self.records, {}
        frame = protocol.commit_data(records.items())
        if len(frame) - 4 > self.max_transaction_size:
            raise TransactionTooLargeError(
                f"this commit is {len(frame) - 4} bytes, over the limit of "
                f"{self.max_transaction_size} bytes (the server's --max-transaction-size): "
                "commit in smaller steps, or raise the limit on both sides")
        if watched is not None and self.watches_reads:
            self._commit_watched(records, set(watched), handle_invalidations)
        else:
            self._commit_in_turn(records, frame, handle_invalidations)
        self._unused_oids.difference_update(records)
        self._forget(records)
        for oid in records:
            self._note_known(oid)

    def _commit_watched(self, records: dict[bytes, bytes], watched: set[bytes],
                        handle_invalidations: InvalidationHandler | None) -> None:
        """Protocol 2: records and watched oids in one request; on a
        conflict the handler decides (it raises, or finds every read
        unchanged and the commit is tried again against newer commits).
        """
        request = protocol.commit_watched_request(records.items(), watched)
        try:
            self._check_not_closed_by_server()
        except OSError as error:
            raise self._lose(error) from None
        while True:
            try:
                self._sock.sendall(request)
                self._receive_prefetched()
                status, invalid, refusal = protocol.read_commit_watched_reply(self._read)
            except (OSError, ProtocolError) as error:
                raise self._lose(error, commit_sent=bool(records)) from None
            if refusal is not None:
                self._recycle_oids(records)
                raise CommitRefusedError(refusal)
            invalid = self._invalidations(invalid)
            if status == protocol.STATUS_OKAY:
                _note_after_commit(invalid, handle_invalidations)
                return
            try:
                if invalid and handle_invalidations is not None:
                    handle_invalidations(invalid)
                else:
                    raise WriteConflictError(list(records))
            except BaseException:
                self._recycle_oids(records)
                raise

    def _check_not_closed_by_server(self) -> None:
        """ConnectionResetError if the server has closed this connection (a
        restart): found before the records go out, the commit is then known
        not to have happened, rather than in doubt.
        """
        sock = self._sock
        if self._inflight:
            return  # replies are on their way: the socket is readable anyway
        sock.setblocking(False)
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        finally:
            sock.settimeout(self.timeout)
        if not data:
            raise ConnectionResetError("the storage server closed the connection")

    def _commit_in_turn(self, records: dict[bytes, bytes], frame: bytes,
                        handle_invalidations: InvalidationHandler | None) -> None:
        """Protocol 1: ``C``, the invalidations, then the records."""
        try:
            self._sock.sendall(protocol.COMMIT)
            self._receive_prefetched()
            invalid = self._invalidations(protocol.read_oids(self._read))
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        try:
            if invalid and handle_invalidations is not None:
                handle_invalidations(invalid)
        except BaseException:
            self._recycle_oids(records)
            try:
                self._sock.sendall(int4(0))  # abandon the commit
            except (OSError, ProtocolError) as error:
                raise self._lose(error) from None
            raise
        try:
            self._sock.sendall(frame)
        except (OSError, ProtocolError) as error:
            raise self._lose(error, commit_sent=bool(records)) from None
        if not records:
            return
        try:
            status = protocol.read_status(self._read, protocol.COMMIT)
        except (OSError, ProtocolError) as error:
            raise self._lose(error, commit_sent=True) from None
        if status != protocol.STATUS_OKAY:
            self._recycle_oids(records)
            raise WriteConflictError(list(records))

    def _recycle_oids(self, records: dict[bytes, bytes]) -> None:
        """Offer again the oids of new objects whose commit failed."""
        self._oid_pool.extend(oid for oid in records if oid in self._unused_oids)

    def sync(self) -> list[bytes]:
        """Oids others committed since the last sync; after a lost
        connection, reconnect and report every oid loaded before.
        """
        if self._lost and os.getpid() == self._pid:
            return self._reconnect()
        self._check_usable()
        try:
            self._sock.sendall(protocol.SYNC)
            self._receive_prefetched()
            invalid = protocol.read_oids(self._read)
        except (OSError, ProtocolError) as error:
            # A sync is a transaction boundary: reconnect right away.
            self._lose(error)
            return self._reconnect()
        return self._invalidations(invalid)

    def pack(self) -> None:
        """Ask the server to pack; it answers at once and packs in the background."""
        self._check_usable()
        try:
            self._sock.sendall(protocol.PACK)
            self._receive_prefetched()
            status = protocol.read_status(self._read, protocol.PACK)
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        if status != protocol.STATUS_OKAY:
            raise ProtocolError(f"the server answered a pack request with {status!r}")

    def stop_server(self) -> None:
        """Ask the server to stop gracefully; this connection ends with it.

        A server of ours answers at once (``O``; ``I`` when it refuses a
        client that has not authenticated: DurusError); a Durus 4.3 server
        just closes the connection.
        """
        self._check_usable()
        try:
            self._sock.sendall(protocol.QUIT)
            answer = self._reader.read(1)
        except OSError:
            answer = b""
        self._disconnect()
        if answer == protocol.STATUS_INVALID:
            raise DurusError(f"the server at {self.address} refused to stop: it needs this client's key")

    def close(self) -> None:
        """Say goodbye and close the socket (in a forked child, close only
        this process's copy: the parent's session goes on).
        """
        if self._sock is not None and os.getpid() == self._pid:
            try:
                self._sock.sendall(protocol.CLOSE)
            except OSError:
                pass
        self._disconnect()


def stop_server(address: SocketAddress, keyfile: str | None = None, timeout: float = 10.0) -> bool:
    """Ask the server at ``address`` to stop; True once it has answered and
    stopped listening, False if no server answers there.

    Raises :class:`~durus.error.DurusError` if it refuses (a key is needed).
    """
    try:
        storage = ClientStorage(address=address, keyfile=keyfile, timeout=timeout)
    except ServerUnavailableError:
        return False
    storage.stop_server()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            address.connect(timeout=1.0).close()
        except OSError:
            return True
        time.sleep(0.01)
    raise TimeoutError(f"the server at {address} is still accepting connections after {timeout} s")

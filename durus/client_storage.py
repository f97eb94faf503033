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
rather than when it is loaded (ReadConflictError).  At every transaction
boundary the Connection also names the objects it had loaded that others
just changed (``fetch_ahead``); they are asked for the same way.
``prefetch=False`` loads exactly as Durus 4.3 does.

When the connection breaks (the server restarted), the transaction underway
fails with :class:`DisconnectedError`, a ConflictError: abort and retry.
The next transaction boundary (``sync``, called by ``abort()``) reconnects
and reports every oid this client has loaded as invalid, so the Connection
drops every cached state.  If the commit data had already gone out, nobody
knows whether the commit happened: :class:`CommitInDoubtError` says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from durus import protocol
from durus.error import (
    CommitRefusedError,
    ConflictError,
    DurusError,
    DurusKeyError,
    ProtocolError,
    WriteConflictError,
)
from durus.prefetch_buffer import PREFETCH_BYTES, PREFETCH_RECORDS, PrefetchBuffer
from durus.protocol import DEFAULT_HOST, DEFAULT_MAX_TRANSACTION_SIZE, DEFAULT_PORT
from durus.record import int4, record_refs
from durus.server_channel import (  # the errors, where they always were for callers
    AuthenticationError,  # noqa: F401
    ServerChannel,
    ServerUnavailableError,
    current_pid,
    forked_since,
)
from durus.storage import InvalidationHandler, Storage, deliver_after_commit
from durus.transport import SocketAddress


DEFAULT_TIMEOUT = 30.0
_OID_BATCH = 32
# Beyond this many, loaded oids are forgotten (see _note_known).
_MAX_KNOWN_OIDS = 4_000_000


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


class TransactionTooLargeError(DurusError):
    """A commit is larger than the server accepts; nothing was sent."""


class ClientStorage(Storage):
    """A Storage served by a storage server.  Not thread-safe: give each
    thread its own Connection and ClientStorage.

    Its socket is a :class:`~durus.server_channel.ServerChannel`, the
    records fetched ahead a :class:`~durus.prefetch_buffer.PrefetchBuffer`;
    this class says what a load, a commit and a broken connection mean.
    """

    batched_bulk_load = True
    watches_reads = False
    #: The server's address.
    address: SocketAddress
    #: Seconds any socket operation may take (None: no limit).
    timeout: float | None
    #: Whether records referred to by loaded ones are fetched ahead.
    prefetch: bool
    #: The largest commit, in bytes, this client sends (the server's limit).
    max_transaction_size: int
    #: The commit being collected by ``store``.
    records: dict[bytes, bytes]
    #: The protocol the server speaks with this client: 2, or 1 for Durus 4.3.
    version: int
    #: The records fetched ahead.
    prefetched: PrefetchBuffer

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
        self.records = {}
        self._pid = current_pid()
        self._channel: ServerChannel | None = None
        self._oid_pool: list[bytes] = []
        self._unused_oids: set[bytes] = set()
        # Oids whose state the application may hold: reported invalid after
        # a reconnect.  Also what prefetching skips.
        self._known: set[bytes] = set()
        self._known_overflowed = False
        self._lost = False
        self.prefetched = PrefetchBuffer(PREFETCH_RECORDS, PREFETCH_BYTES)
        self.version = protocol.LATEST_VERSION
        self._connect()

    def __str__(self) -> str:
        return f"ClientStorage({self.address})"

    # -- the connection --------------------------------------------------------

    def _connect(self) -> None:
        self._channel = ServerChannel(self.address, self.timeout, self._secret, self.version)
        self.version = self._channel.version
        self.watches_reads = self.version >= protocol.PROTOCOL_VERSION_2

    def _disconnect(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _check_usable(self) -> ServerChannel:
        """The channel, if this storage may use it now."""
        if forked_since(self._pid):
            raise DurusError(
                "this ClientStorage was opened before a fork: open a new one in "
                "each process (a shared socket would mix their sessions)")
        if self._lost:
            raise DisconnectedError(
                f"the connection to the storage server at {self.address} was lost "
                "during this transaction: call abort() and retry")
        if self._channel is None:
            raise DurusError(f"{self} is closed")
        return self._channel

    def _lose(self, error: Exception, commit_sent: bool = False) -> DurusError:
        """Forget the broken connection; the error to raise for ``error``."""
        self._disconnect()
        self._lost = True
        self._oid_pool.clear()
        self._unused_oids.clear()
        self.prefetched.clear()
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
        self.prefetched.clear()
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

    def _request(self, channel: ServerChannel, request: bytes) -> None:
        """Send ``request``, then read the replies to the bulk load sent
        ahead, which come first.
        """
        channel.send(request)
        self._receive_prefetched()

    # -- loading -----------------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        channel = self._check_usable()
        prefetched = self.prefetched
        record = prefetched.use(oid)
        try:
            if record is None and prefetched.is_inflight(oid):
                self._receive_prefetched()
                record = prefetched.use(oid)
            if record is None:
                self._request(channel, protocol.load_request(oid))
                record = protocol.read_load_reply(channel.read, oid)
            self._note_loaded(oid, record)
            self._send_prefetch(channel)
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        return record

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        """The records of ``oids``, in order: a generator, as in every
        storage, so a missing or invalid oid raises while it is iterated.
        """
        channel = self._check_usable()
        oids = list(oids)
        records: dict[bytes, bytes] = {}
        missing = []
        try:
            self._receive_prefetched()
            for oid in oids:
                record = self.prefetched.use(oid)
                if record is None:
                    missing.append(oid)
                else:
                    records[oid] = record
            if missing:
                channel.send(protocol.bulk_load_request(missing))
                error = None
                for oid in missing:
                    try:
                        records[oid] = protocol.read_load_reply(channel.read, oid)
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

    def fetch_ahead(self, oids: list[bytes]) -> None:
        """Ask for the records of ``oids`` in one bulk load sent ahead, read
        only when a load needs it.  The Connection names the objects it
        had loaded that others just changed: the next transaction likely
        wants them again, and finding them here as of its view rather than
        loading each in its turn means fewer round trips and no
        ReadConflictError when someone commits one of them meanwhile.
        """
        if not self.prefetch or self._lost or self._channel is None or forked_since(self._pid):
            return
        self.prefetched.want(b"".join(oids), self._known, urgent=True)
        try:
            self._send_prefetch(self._channel)
        except (OSError, ProtocolError) as error:
            self._lose(error)  # the next request reports it

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
            self.prefetched.want(record_refs(record), self._known, urgent=True)

    def _send_prefetch(self, channel: ServerChannel) -> None:
        """Ask ahead for wanted records, one bulk load at a time."""
        batch = self.prefetched.next_batch(self._known)
        if batch:
            channel.send(protocol.bulk_load_request(batch))

    def _receive_prefetched(self) -> None:
        """Read the replies to the bulk load sent ahead, if any."""
        self.prefetched.receive(self._channel.read, self._known)

    def _forget(self, oids: Iterable[bytes]) -> None:
        """Drop buffered records of oids that changed (others' or our commits):
        what the Connection is handed is never older than its last sync.
        """
        self.prefetched.forget(oids)
        self._known.difference_update(oids)

    # -- oids --------------------------------------------------------------------

    def new_oid(self) -> bytes:
        channel = self._check_usable()
        if not self._oid_pool:
            try:
                self._request(channel, protocol.new_oids_request(_OID_BATCH))
                oids = protocol.split_oids(channel.read(8 * _OID_BATCH))
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
        channel = self._check_usable()
        records, self.records = self.records, {}
        frame = protocol.commit_data(records.items())
        if len(frame) - 4 > self.max_transaction_size:
            raise TransactionTooLargeError(
                f"this commit is {len(frame) - 4} bytes, over the limit of "
                f"{self.max_transaction_size} bytes (the server's --max-transaction-size): "
                "commit in smaller steps, or raise the limit on both sides")
        if watched is not None and self.watches_reads:
            self._commit_watched(channel, records, protocol.commit_watched_frame(frame, watched),
                                 handle_invalidations)
        else:
            self._commit_in_turn(channel, records, frame, handle_invalidations)
        self._unused_oids.difference_update(records)
        self._forget(records)
        for oid in records:
            self._note_known(oid)

    def _commit_watched(self, channel: ServerChannel, records: dict[bytes, bytes], request: bytes,
                        handle_invalidations: InvalidationHandler | None) -> None:
        """Protocol 2: records and watched oids in one request; on a
        conflict the handler decides (it raises, or finds every read
        unchanged and the commit is tried again against newer commits).
        """
        while True:
            try:
                # The replies to a bulk load sent ahead first: a large commit
                # sent before them could wait on the server while the server
                # waits for them to be read.  Then a connection found closed
                # now (a restart) means the commit is known not to have
                # happened, rather than in doubt.
                self._receive_prefetched()
                channel.check_not_closed_by_server()
            except (OSError, ProtocolError) as error:
                raise self._lose(error) from None
            try:
                channel.send(request)
                status, invalid, refusal = protocol.read_commit_watched_reply(channel.read)
            except (OSError, ProtocolError) as error:
                raise self._lose(error, commit_sent=bool(records)) from None
            if refusal is not None:
                self._recycle_oids(records)
                raise CommitRefusedError(refusal)
            invalid = self._invalidations(invalid)
            if status == protocol.STATUS_OKAY:
                deliver_after_commit(invalid, handle_invalidations)
                return
            try:
                if invalid and handle_invalidations is not None:
                    handle_invalidations(invalid)
                else:
                    raise WriteConflictError(list(records))
            except BaseException:
                self._recycle_oids(records)
                raise

    def _commit_in_turn(self, channel: ServerChannel, records: dict[bytes, bytes], frame: bytes,
                        handle_invalidations: InvalidationHandler | None) -> None:
        """Protocol 1: ``C``, the invalidations, then the records."""
        try:
            self._request(channel, protocol.COMMIT)
            invalid = self._invalidations(protocol.read_oids(channel.read))
        except (OSError, ProtocolError) as error:
            raise self._lose(error) from None
        try:
            if invalid and handle_invalidations is not None:
                handle_invalidations(invalid)
        except BaseException:
            self._recycle_oids(records)
            try:
                channel.send(int4(0))  # abandon the commit
            except (OSError, ProtocolError) as error:
                raise self._lose(error) from None
            raise
        try:
            channel.send(frame)
        except (OSError, ProtocolError) as error:
            raise self._lose(error, commit_sent=bool(records)) from None
        if not records:
            return
        try:
            status = protocol.read_status(channel.read, protocol.COMMIT)
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
        if self._lost and not forked_since(self._pid):
            return self._reconnect()
        channel = self._check_usable()
        try:
            self._request(channel, protocol.SYNC)
            invalid = protocol.read_oids(channel.read)
        except (OSError, ProtocolError) as error:
            # A sync is a transaction boundary: reconnect right away.
            self._lose(error)
            return self._reconnect()
        return self._invalidations(invalid)

    def pack(self) -> None:
        """Ask the server to pack; it answers at once and packs in the background."""
        channel = self._check_usable()
        try:
            self._request(channel, protocol.PACK)
            status = protocol.read_status(channel.read, protocol.PACK)
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
        channel = self._check_usable()
        try:
            channel.send(protocol.QUIT)
            answer = channel.read_final_byte()
        except OSError:
            answer = b""
        self._disconnect()
        if answer == protocol.STATUS_INVALID:
            raise DurusError(f"the server at {self.address} refused to stop: it needs this client's key")

    def close(self) -> None:
        """Say goodbye and close the socket (in a forked child, close only
        this process's copy: the parent's session goes on).
        """
        if self._channel is not None and not forked_since(self._pid):
            try:
                self._channel.send(protocol.CLOSE)
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

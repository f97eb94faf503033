"""The storage server's wire protocol, versions 1 and 2: one codec for both ends.

Every byte that crosses the socket is built or parsed here, so the server
(:mod:`durus.storage_server`) and the client (:mod:`durus.client_storage`)
cannot drift apart.  ``docs/protocol.md`` lays out each command as bytes.

The server parses without blocking: :func:`parse_request` and
:func:`parse_frame` look at what has arrived so far and either return a
whole request or ``None`` (wait for more), so a slow client never holds the
server.  The client reads with blocking calls: the ``read_*`` functions take
a ``read(n)`` callable that returns exactly ``n`` bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import NamedTuple

from durus.error import DurusKeyError, ProtocolError, ReadConflictError
from durus.record import int4, oid_to_int, read_int4, split_oids

PROTOCOL_VERSION = 1  # Durus 4.3's
PROTOCOL_VERSION_2 = 2
LATEST_VERSION = PROTOCOL_VERSION_2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2972
#: The largest commit (bytes of tdata) a server accepts by default.
DEFAULT_MAX_TRANSACTION_SIZE = 128 << 20
#: The most oids one bulk load (``B``) may ask for.
MAX_BULK_OIDS = 1 << 20
#: In version 2, an oid count that means "every oid": the server can no
#: longer say what changed, so the client must drop every cached state.
EVERYTHING_COUNT = 0xFFFFFFFF

# Command bytes, sent by the client.
VERSION = b"V"
NEW_OID = b"N"
NEW_OIDS = b"M"
LOAD = b"L"
BULK_LOAD = b"B"
COMMIT = b"C"
SYNC = b"S"
PACK = b"P"
QUIT = b"Q"
CLOSE = b"."
# Not in Durus 4.3: its clients never send it, so it cannot confuse them.
AUTHENTICATE = b"A"
# Version 2 only: a commit with the oids the transaction watched.
COMMIT_WATCHED = b"W"

# Status bytes, sent by the server.
STATUS_OKAY = b"O"
STATUS_KEYERROR = b"K"
STATUS_INVALID = b"I"
# Version 2 only: the commit was refused and nothing of it written (a full
# disk); followed by ``int4(len) + UTF-8 message``.
STATUS_REFUSED = b"F"

NONCE_SIZE = 32
PROOF_SIZE = 32  # an HMAC-SHA256 digest
_CLIENT_ROLE = b"durus-client-proof-v1"
_SERVER_ROLE = b"durus-server-proof-v1"

# The fixed number of argument bytes after each command byte; the bulk
# load's argument is an int4 count followed by that many oids.
_ARGUMENT_SIZES = {
    VERSION: 4,
    NEW_OID: 0,
    NEW_OIDS: 1,
    LOAD: 8,
    BULK_LOAD: 4,
    COMMIT: 0,
    SYNC: 0,
    PACK: 0,
    QUIT: 0,
    CLOSE: 0,
    AUTHENTICATE: NONCE_SIZE,
    COMMIT_WATCHED: 0,
}


class Request(NamedTuple):
    """One parsed client command.

    Attributes: ``command`` (the command byte) and ``argument``: the version
    (int) for ``V``, the count (int) for ``M``, the oid for ``L``, the oids
    for ``B`` (``8 * n`` bytes, split as they are answered, so a large bulk
    load costs no more than its bytes), the client's nonce for ``A``,
    ``(tdata, watched)`` for ``W`` (``watched`` as ``8 * n`` bytes), else
    None.  (A named tuple: one is made per request, so it must be cheap.)
    """

    command: bytes
    argument: object = None


def parse_request(
    buffer: bytes | bytearray,
    start: int,
    max_bulk_oids: int,
    max_commit_size: int = DEFAULT_MAX_TRANSACTION_SIZE,
) -> tuple[Request, int] | None:
    """Parse the request at ``buffer[start:]``: ``(request, end)``, or None
    when the request has not arrived whole yet.

    Raises ProtocolError for an unknown command byte, a bulk load of more
    than ``max_bulk_oids`` oids, or a ``W`` whose tdata exceeds
    ``max_commit_size`` or that watches more than ``max_commit_size // 8``
    oids, before waiting for its bytes.
    """
    if start >= len(buffer):
        return None
    command = bytes(buffer[start:start + 1])
    size = _ARGUMENT_SIZES.get(command)
    if size is None:
        raise ProtocolError(f"unknown command byte {command!r}")
    end = start + 1 + size
    if end > len(buffer):
        return None
    argument: object = None
    if command == VERSION:
        argument = read_int4(buffer, start + 1)
    elif command == NEW_OIDS:
        argument = buffer[start + 1]
    elif command == LOAD or command == AUTHENTICATE:
        argument = bytes(buffer[start + 1:end])
    elif command == BULK_LOAD:
        count = read_int4(buffer, start + 1)
        if count > max_bulk_oids:
            raise ProtocolError(f"bulk load of {count} oids; the limit is {max_bulk_oids}")
        oids_end = end + 8 * count
        if oids_end > len(buffer):
            return None
        argument = bytes(buffer[end:oids_end])
        end = oids_end
    elif command == COMMIT_WATCHED:
        return _parse_commit_watched(buffer, end, max_commit_size)
    return Request(command, argument), end


def _parse_commit_watched(buffer: bytes | bytearray, start: int, max_size: int) -> tuple[Request, int] | None:
    frame = parse_frame(buffer, start, max_size)
    if frame is None:
        return None
    tdata, end = frame
    if end + 4 > len(buffer):
        return None
    count = read_int4(buffer, end)
    if count > max_size // 8:
        raise ProtocolError(f"commit watching {count} oids; the limit is {max_size // 8}")
    watched_end = end + 4 + 8 * count
    if watched_end > len(buffer):
        return None
    return Request(COMMIT_WATCHED, (tdata, bytes(buffer[end + 4:watched_end]))), watched_end


def parse_frame(buffer: bytes | bytearray, start: int, max_size: int) -> tuple[bytes, int] | None:
    """Parse an ``int4(len) + bytes`` frame: ``(payload, end)`` or None if
    incomplete; ProtocolError when the length exceeds ``max_size``, raised as
    soon as the prefix arrives so a huge claim costs no memory.
    """
    if start + 4 > len(buffer):
        return None
    size = read_int4(buffer, start)
    if size > max_size:
        raise ProtocolError(
            f"frame of {size} bytes exceeds the limit of {max_size} bytes"
            " (the server's --max-transaction-size)"
        )
    end = start + 4 + size
    if end > len(buffer):
        return None
    return bytes(buffer[start + 4:end]), end


# -- requests (client to server) ---------------------------------------------


def version_request(version: int = PROTOCOL_VERSION) -> bytes:
    return VERSION + int4(version)


def version_reply(asked: int) -> tuple[bytes, bool]:
    """The server's answer to ``V int4(asked)``, and whether to keep the
    connection: a client gets the version it asks for if this server speaks
    it (so a Durus 4.3 client gets exactly version 1); any other version
    gets ``int4(1)``, as Durus 4.3's server answers (SPEC §3: the version
    every client speaks), and the connection then closes.
    """
    if asked in (PROTOCOL_VERSION, PROTOCOL_VERSION_2):
        return int4(asked), True
    return int4(PROTOCOL_VERSION), False


def new_oids_request(count: int) -> bytes:
    if not 0 < count < 256:
        raise ValueError(f"can ask for 1 to 255 oids at a time, not {count}")
    return NEW_OIDS + bytes((count,))


def load_request(oid: bytes) -> bytes:
    return LOAD + oid


def bulk_load_request(oids: list[bytes]) -> bytes:
    return BULK_LOAD + int4(len(oids)) + b"".join(oids)


def commit_data(records: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The ``int4(len) + tdata`` frame a client sends after ``C``'s reply;
    ``int4(0)`` (no records) abandons the commit.
    """
    parts = []
    for oid, record in records:
        parts.append(int4(8 + len(record)))
        parts.append(oid)
        parts.append(record)
    tdata = b"".join(parts)
    return int4(len(tdata)) + tdata


def commit_watched_request(records: Iterable[tuple[bytes, bytes]], watched: Iterable[bytes]) -> bytes:
    """``W`` (version 2): the commit data and the oids the transaction used,
    in one request.
    """
    return commit_watched_frame(commit_data(records), watched)


def commit_watched_frame(commit_frame: bytes, watched: Iterable[bytes]) -> bytes:
    """``W`` around a :func:`commit_data` frame already built (to measure it)."""
    watched = list(watched)
    return COMMIT_WATCHED + commit_frame + int4(len(watched)) + b"".join(watched)


def split_commit_data(tdata: bytes) -> dict[bytes, bytes]:
    """The records of a commit's ``tdata``, by oid.

    Raises ProtocolError when the entries do not tile the data exactly, an
    entry's oid differs from its record's, a record's data length runs past
    its end or its refs are not whole oids, or an oid appears twice: all of
    these mean a broken client, and nothing of such a commit is written.
    """
    records: dict[bytes, bytes] = {}
    position = 0
    size = len(tdata)
    while position < size:
        if position + 4 > size:
            raise ProtocolError("commit data ends inside an entry's length")
        length = read_int4(tdata, position)
        end = position + 4 + length
        if length < 8 + 12 or end > size:
            raise ProtocolError(f"commit data has an entry of impossible length {length}")
        oid = tdata[position + 4:position + 12]
        record = tdata[position + 12:end]
        if record[:8] != oid:
            raise ProtocolError(f"commit entry for oid {oid_to_int(oid)} holds another oid's record")
        refs_length = len(record) - 12 - read_int4(record, 8)
        if refs_length < 0 or refs_length % 8:
            raise ProtocolError(f"record of oid {oid_to_int(oid)} is inconsistent with its data length")
        if oid in records:
            raise ProtocolError(f"commit data holds oid {oid_to_int(oid)} twice")
        records[oid] = record
        position = end
    return records


# -- replies (server to client) ----------------------------------------------


def oids_reply(oids: Iterable[bytes] | None) -> bytes:
    """``int4(n) + n*oid``: the reply to ``S`` and the first reply to ``C``;
    for None (version 2 only), the count that means "everything".
    """
    if oids is None:
        return int4(EVERYTHING_COUNT)
    oids = list(oids)
    return int4(len(oids)) + b"".join(oids)


def commit_watched_reply(status: bytes, invalid: Iterable[bytes] | None) -> bytes:
    """``O`` (stored, durable) or ``I`` (conflict, nothing written), then
    the invalidations since the client's last sync or commit.
    """
    return status + oids_reply(invalid)


def refused_reply(message: str) -> bytes:
    """``F int4(len) message``: nothing of the commit was written."""
    data = message.encode("utf-8")
    return STATUS_REFUSED + int4(len(data)) + data


def record_reply(record: bytes) -> bytes:
    return STATUS_OKAY + int4(len(record)) + record


# -- reading replies (client side, blocking) ------------------------------------

Reader = Callable[[int], bytes]


def read_version(read: Reader) -> int:
    return read_int4(read(4))


def read_oids(read: Reader) -> list[bytes] | None:
    """An oid list; None for the count meaning "everything" (version 2)."""
    count = read_int4(read(4))
    if count == EVERYTHING_COUNT:
        return None
    return split_oids(read(8 * count)) if count else []


def read_commit_watched_reply(read: Reader) -> tuple[bytes, list[bytes] | None, str | None]:
    """``(status, invalidations, refusal message)`` answering ``W``."""
    status = read(1)
    if status == STATUS_REFUSED:
        return status, [], read(read_int4(read(4))).decode("utf-8", "replace")
    if status not in (STATUS_OKAY, STATUS_INVALID):
        raise ProtocolError(f"server answered a commit with status {status!r}")
    return status, read_oids(read), None


def read_load_reply(read: Reader, oid: bytes) -> bytes:
    """The record answering a load of ``oid``.

    Raises ReadConflictError for ``I`` (another client committed ``oid``
    since this one last synced) and DurusKeyError for ``K``.
    """
    status = read(1)
    if status == STATUS_OKAY:
        return read(read_int4(read(4)))
    if status == STATUS_INVALID:
        raise ReadConflictError([oid])
    if status == STATUS_KEYERROR:
        raise DurusKeyError(oid)
    raise ProtocolError(f"server answered a load with status {status!r}")


def read_status(read: Reader, command: bytes) -> bytes:
    """One status byte; ProtocolError if it is not a known status."""
    status = read(1)
    if status not in (STATUS_OKAY, STATUS_INVALID, STATUS_KEYERROR):
        raise ProtocolError(f"server answered {command!r} with status {status!r}")
    return status


# -- authentication ------------------------------------------------------------


def authentication_proof(secret: bytes, server_side: bool, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """The HMAC by which one side shows it holds ``secret`` without sending it.

    Each side signs both nonces with its own role label, so a proof can be
    neither replayed in another session nor reflected back to its sender.
    """
    role = _SERVER_ROLE if server_side else _CLIENT_ROLE
    return hmac.new(secret, role + server_nonce + client_nonce, hashlib.sha256).digest()


def proofs_match(expected: bytes, received: bytes) -> bool:
    return hmac.compare_digest(expected, received)


def read_secret(keyfile: str) -> bytes:
    """The shared secret in ``keyfile`` (surrounding whitespace ignored)."""
    with open(keyfile, "rb") as file:
        secret = file.read().strip()
    if not secret:
        raise ValueError(f"key file {keyfile} is empty: put a long random secret in it")
    return secret

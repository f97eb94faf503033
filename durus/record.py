"""The object record: how one stored object is laid out as bytes.

A record is ``oid(8) + int4(len(data)) + data + refs``: ``data`` is the pickled
class followed by the pickled state, ``refs`` the sorted 8-byte oids the state
refers to.  Storages, the server and the packer handle records without ever
unpickling them; only the refs are read, to find what is reachable.
"""

from __future__ import annotations

from struct import Struct

ROOT_OID = b"\0" * 8
OID_LENGTH = 8

_int4 = Struct(">I")
_int8 = Struct(">Q")


def int4(n: int) -> bytes:
    """The 4-byte big-endian encoding of ``n``."""
    return _int4.pack(n)


def int8(n: int) -> bytes:
    """The 8-byte big-endian encoding of ``n`` (the form of an oid)."""
    return _int8.pack(n)


def read_int4(data: bytes, offset: int = 0) -> int:
    return _int4.unpack_from(data, offset)[0]


def read_int8(data: bytes, offset: int = 0) -> int:
    return _int8.unpack_from(data, offset)[0]


def oid_to_int(oid: bytes) -> int:
    return _int8.unpack(oid)[0]


def int_to_oid(n: int) -> bytes:
    return _int8.pack(n)


def pack_record(oid: bytes, data: bytes, refs: bytes) -> bytes:
    """Join the parts of a record; ``refs`` is already the concatenated oids."""
    return b"".join((oid, _int4.pack(len(data)), data, refs))


def unpack_record(record: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a record into ``(oid, data, refs)``."""
    end = 12 + _int4.unpack_from(record, 8)[0]
    if end > len(record) or len(record) < 12:
        raise ValueError("record is shorter than its data length says")
    return record[:8], record[12:end], record[end:]


def record_data(record: bytes) -> bytes:
    """The data of a record (class and state pickles), without its oid and refs."""
    return record_data_and_refers(record)[0]


def record_data_and_refers(record: bytes) -> tuple[bytes, bool]:
    """The data of a record, and whether the record refers to other objects."""
    end = 12 + _int4.unpack_from(record, 8)[0]
    if end > len(record):
        raise ValueError("record is shorter than its data length says")
    return record[12:end], end < len(record)


def record_refs(record: bytes) -> bytes:
    """The concatenated oids a record refers to, without copying its data."""
    return record[12 + _int4.unpack_from(record, 8)[0]:]


def split_oids(refs: bytes) -> list[bytes]:
    """Split concatenated 8-byte oids into a list."""
    if len(refs) % OID_LENGTH:
        raise ValueError(f"oid list of {len(refs)} bytes is not a multiple of 8")
    return [refs[i:i + 8] for i in range(0, len(refs), 8)]

"""Exceptions raised by the database; the names and hierarchy are Durus 4.3's."""

from __future__ import annotations

from collections.abc import Sequence


def _format_oids(oids: Sequence[bytes] | None) -> str:
    if not oids:
        return "conflicting oids not available"
    first = int.from_bytes(oids[0], "big")
    more = " ..." if len(oids) > 1 else ""
    return f"oids=[{first}{more}]"


class DurusError(Exception):
    """Base class of every error this package raises on purpose."""


class DurusKeyError(KeyError, DurusError):
    """No record is stored under this oid."""

    def __init__(self, oid: bytes | None = None) -> None:
        super().__init__(oid)
        self.oids = [oid] if oid is not None else []

    def __str__(self) -> str:
        if not self.oids:
            return "no such oid"
        return str(int.from_bytes(self.oids[0], "big"))


class ConflictError(DurusError):
    """Another transaction changed objects this one used; abort and retry.

    ``oids`` lists the conflicting oids (8-byte strings) when known.
    """

    def __init__(self, oids: Sequence[bytes] | None = None) -> None:
        super().__init__(oids)
        self.oids = list(oids) if oids is not None else None

    def __str__(self) -> str:
        return _format_oids(self.oids)


class WriteConflictError(ConflictError):
    """At commit: an object this transaction read or wrote was committed by another."""


class ReadConflictError(ConflictError):
    """While loading: the object was committed by another since this transaction began."""


class ProtocolError(DurusError):
    """The peer broke the storage server's wire protocol."""

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


class DamagedRecordError(DurusError):
    """A stored record cannot be read back: its class pickle, its compressed
    state or its state pickle is damaged.

    Attributes: ``problem``, what failed, as a phrase; ``oid``, the record's
    8-byte oid, or None where the reader did not know it; ``location``,
    where the record is stored (as a storage describes it, e.g. a byte
    offset in a file), or None.  The reader that finds the damage often
    knows neither; whoever asked for the record adds them with
    :meth:`for_record`.  ``durus --check`` lists every damaged record of a
    file.
    """

    def __init__(self, problem: str, oid: bytes | None = None, location: str | None = None) -> None:
        super().__init__(problem, oid, location)
        self.problem = problem
        self.oid = oid
        self.location = location

    def for_record(self, oid: bytes | None, location: str | None = None) -> DamagedRecordError:
        """A copy naming the record's ``oid`` and ``location``, with the same
        cause, to raise in place of this one; this error itself if it names
        an oid already (another record's, met by a nested load).
        """
        if self.oid is not None:
            return self
        copy = type(self)(self.problem, oid, location)
        copy.__cause__ = self.__cause__
        return copy

    def __str__(self) -> str:
        if self.oid is None:
            record = "a record"
        else:
            record = f"the record of oid {int.from_bytes(self.oid, 'big')}"
        where = f" ({self.location})" if self.location else ""
        return f"{record}{where} is damaged: {self.problem}"


class CommitRefusedError(DurusError):
    """A commit was refused and nothing of it stored, for a reason that is
    not a conflict: the disk is full, say.  Reads go on; retry once the
    cause is gone.
    """

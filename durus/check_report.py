"""What a check of a database finds, and the rules every kind of database
shares: :class:`CheckReport` and its :class:`Problem` items, and the checks of
one record (:func:`record_problem`) and of the references between records
(:func:`dangling_references`, :func:`count_reachable`).

:mod:`durus.check` checks a SHELF-1 file with them, :mod:`durus.sql_check`
an SQLite or PostgreSQL database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterator
from dataclasses import dataclass, field

from durus.error import DamagedRecordError, DurusError
from durus.record import ROOT_OID, oid_to_int
from durus.serialize import inspect_data

__all__ = ["CheckReport", "Problem", "UncheckableFileError", "FRAMING", "TORN", "DAMAGED", "DANGLING",
           "PROGRESS_INTERVAL", "record_problem", "dangling_references", "count_reachable", "describe_oids"]

#: A problem's kind: lengths that do not add up (a file only).
FRAMING = "framing"
#: A problem's kind: the last transaction cut short by a crash (a file only).
TORN = "torn"
#: A problem's kind: a record that cannot be read, or whose refs are wrong.
DAMAGED = "damaged"
#: A problem's kind: a reference to an oid that has no record.
DANGLING = "dangling"

#: How often (seconds) a check calls its ``progress``.
PROGRESS_INTERVAL = 1.0


class UncheckableFileError(DurusError):
    """The file cannot be checked at all: it is missing, unreadable, or not
    a SHELF-1 file.
    """


@dataclass
class Problem:
    """One thing wrong with the file.

    ``kind`` is FRAMING, TORN, DAMAGED or DANGLING; ``offset`` the byte
    offset of the entry (or transaction, or map word) concerned, None in a
    database kept in SQL (:mod:`durus.sql_check`), whose rows have none; ``oid``
    the record's oid where there is one; ``message`` what is wrong;
    ``superseded`` True for a damaged record that a later record of the same
    oid replaces (no load reads it; a pack drops it).
    """

    kind: str
    offset: int | None
    oid: bytes | None
    message: str
    superseded: bool = False

    def __str__(self) -> str:
        oid = "" if self.oid is None else f", oid {oid_to_int(self.oid)}"
        old = " (an old version of the object, superseded by a later record)" if self.superseded else ""
        where = "" if self.offset is None else f" at byte {self.offset}"
        return f"{self.kind}{where}{oid}: {self.message}{old}"


@dataclass
class CheckReport:
    """What :func:`~durus.check.check_file` (or :mod:`durus.sql_check`) found.

    Attributes: ``path``; ``size`` (bytes, or rows in SQL); ``transactions``
    (read, the initial one included; 0 in SQL, which keeps none); ``records`` (every record read, old versions
    included); ``objects`` (oids with a current record); ``references``
    (refs of the current records); ``unreachable`` (objects the root does
    not reach: garbage, not damage); ``problems`` (a list of
    :class:`Problem`).
    """

    path: str
    size: int = 0
    transactions: int = 0
    records: int = 0
    objects: int = 0
    references: int = 0
    unreachable: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line of counts."""
        garbage = (f"; {self.unreachable} unreachable from the root (garbage a pack removes)"
                   if self.unreachable else "")
        transactions = f"{self.transactions} transactions, " if self.transactions else ""
        return (f"{transactions}{self.records} records, {self.objects} objects, "
                f"{self.references} references{garbage}")

    def format(self) -> str:
        """The report as text: a verdict, each problem, the counts."""
        if self.clean:
            return f"{self.path}: clean: {self.summary()}\n"
        counts = Counter(problem.kind for problem in self.problems)
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
        lines = [f"{self.path}: PROBLEMS FOUND ({kinds})"]
        lines.extend(f"  {problem}" for problem in self.problems)
        lines.append(f"{self.path}: {self.summary()}")
        return "\n".join(lines) + "\n"




def record_problem(oid: bytes, data: bytes, refs: bytes, stand_ins: dict[tuple[str, str], type]) -> str | None:
    """What is wrong with the record of ``oid`` (its ``data``, class and state
    pickles, and its ``refs``), or None: the data cannot be read as
    ObjectReader reads it, the refs are not sorted, or they differ from the
    persistent ids in the state.  Shared by the file and SQL checks.
    """
    try:
        _, referred = inspect_data(data, stand_ins)
    except DamagedRecordError as error:
        return error.problem
    oids = [refs[start:start + 8] for start in range(0, len(refs), 8)]
    parts = []
    if any(first >= second for first, second in zip(oids, oids[1:])):
        parts.append("its refs are not sorted, or list an oid twice")
    referred.discard(oid)  # a state may refer to its own object; refs never list it
    listed = set(oids)
    if referred - listed:
        parts.append(f"the state refers to {describe_oids(referred - listed)}, which its refs omit")
    if listed - referred:
        parts.append(f"its refs list {describe_oids(listed - referred)}, which the state does not refer to")
    return "; ".join(parts) or None


def dangling_references(current: Container[bytes], refs: dict[bytes, bytes]) -> Iterator[tuple[bytes, bytes]]:
    """``(oid, ref)`` for each ref of a current record to an oid with no record."""
    for oid, listed in refs.items():
        for start in range(0, len(listed), 8):
            ref = listed[start:start + 8]
            if ref not in current:
                yield oid, ref


def count_reachable(current: Container[bytes], refs: dict[bytes, bytes]) -> int:
    """How many of the ``current`` oids the root reaches through ``refs``."""
    if ROOT_OID not in current:
        return 0
    seen = {ROOT_OID}
    todo = [ROOT_OID]
    while todo:
        listed = refs.get(todo.pop(), b"")
        for start in range(0, len(listed), 8):
            ref = listed[start:start + 8]
            if ref not in seen and ref in current:
                seen.add(ref)
                todo.append(ref)
    return len(seen)


def describe_oids(oids: set[bytes]) -> str:
    """``oids 3, 7, 9`` (the first five, then how many more), for messages."""
    numbers = sorted(oid_to_int(oid) for oid in oids)
    shown = ", ".join(str(number) for number in numbers[:5])
    more = f" and {len(numbers) - 5} more" if len(numbers) > 5 else ""
    return f"oid{'s' if len(numbers) > 1 else ''} {shown}{more}"

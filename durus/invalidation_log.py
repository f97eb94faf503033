"""The recent commits, kept once for every client: who must forget what.

Each commit (and each pack that removed objects) is one entry with a serial
number.  A client's whole view of what changed is one number, its *cursor*:
the last entry it has been told about.  What it must forget is what the
entries after its cursor name, so a client costs the same whether it syncs
every millisecond or never, and the log costs the same however many clients
there are.

The log is bounded: beyond ``max_oids`` oids the oldest entries are
forgotten (the latest entry is always kept, however large, so the bound is
``max_oids`` plus one commit).  A client whose cursor is older than what the
log remembers is *behind*: nobody can say any more what it must forget, so
it must forget everything.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

#: How many oids the log keeps by default: about 15 MB of memory.
DEFAULT_MAX_LOGGED_OIDS = 100_000


class LogEntry(NamedTuple):
    """One commit, or one pack's removals (``removed`` True).

    Attributes: ``serial``; ``author`` (an id of the session that committed,
    0 for a pack); ``oids``; ``removed``.
    """

    serial: int
    author: int
    oids: tuple[bytes, ...]
    removed: bool


class InvalidationLog:
    """The recent commits; see the module docstring.

    Instance attributes: ``latest`` (the serial of the newest entry, 0 when
    none); ``forgotten`` (the newest serial no longer remembered: a cursor
    below it is behind); ``max_oids``; ``size`` (oids held).
    """

    def __init__(self, max_oids: int = DEFAULT_MAX_LOGGED_OIDS) -> None:
        if max_oids < 1:
            raise ValueError(f"the invalidation log must hold at least one oid, not {max_oids}")
        self.max_oids = max_oids
        self.latest = 0
        self.forgotten = 0
        self.size = 0
        self._entries: deque[LogEntry] = deque()
        # oid -> (serial, author) of its newest entry, for load checks.
        self._last_change: dict[bytes, tuple[int, int]] = {}

    def append(self, oids: list[bytes] | tuple[bytes, ...], author: int, removed: bool = False) -> int:
        """Add an entry; its serial."""
        self.latest += 1
        entry = LogEntry(self.latest, author, tuple(oids), removed)
        self._entries.append(entry)
        last_change = self._last_change
        for oid in entry.oids:
            last_change[oid] = (entry.serial, author)
        self.size += len(entry.oids)
        self._trim()
        return entry.serial

    def is_behind(self, cursor: int) -> bool:
        return cursor < self.forgotten

    def changed_after(self, oid: bytes, cursor: int, reader: int) -> bool:
        """Whether an entry after ``cursor`` by another than ``reader`` names
        ``oid`` (always True for a cursor that is behind).
        """
        if cursor < self.forgotten:
            return True
        change = self._last_change.get(oid)
        return change is not None and change[0] > cursor and change[1] != reader

    def last_change(self, oid: bytes) -> int:
        """The serial of the newest entry naming ``oid``; 0 if none is kept."""
        change = self._last_change.get(oid)
        return 0 if change is None else change[0]

    def changes_after(self, cursor: int, reader: int) -> tuple[set[bytes], set[bytes]] | None:
        """``(committed, removed)``: the oids others' commits and packs named
        after ``cursor``; None when the cursor is behind.
        """
        if cursor < self.forgotten:
            return None
        committed: set[bytes] = set()
        removed: set[bytes] = set()
        for entry in reversed(self._entries):
            if entry.serial <= cursor:
                break
            if entry.author == reader and not entry.removed:
                continue
            (removed if entry.removed else committed).update(entry.oids)
        return committed, removed

    def _trim(self) -> None:
        entries, last_change = self._entries, self._last_change
        while self.size > self.max_oids and len(entries) > 1:
            entry = entries.popleft()
            self.size -= len(entry.oids)
            self.forgotten = entry.serial
            for oid in entry.oids:
                if last_change.get(oid, (0, 0))[0] == entry.serial:
                    del last_change[oid]

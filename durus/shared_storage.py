"""One storage shared by many sessions: the rules of a multi-client database.

A :class:`SharedStorage` wraps one underlying storage (memory or file) and
hands out :class:`StorageSession` objects, each the view of one client.  The
storage server gives every socket a session; an application with several
threads on one embedded file gives every Connection a session, and the
connections then see each other's commits and conflicts exactly as over a
server.  There is one implementation of the rules, here:

- Invalidations: the recent commits are kept once, in an
  :class:`~durus.invalidation_log.InvalidationLog`; each session holds only
  a cursor into it.  A session's pending invalidations are the oids others
  committed after its cursor.  A load of one of them is refused
  (ReadConflictError), so a transaction never mixes states from before and
  after another's commit.  A session whose cursor the bounded log has
  forgotten is *behind*: its loads are refused until it syncs, and its sync
  reports every oid it loaded (in process) or "everything" (the server).
- A commit in two steps (the Durus 4.3 way) first delivers the pending
  invalidations (the Connection raises ConflictError if it used any of
  them), then writes; a record for a delivered oid is a conflict.  Such
  commits take turns.  Anything committed between the delivery and the
  write (by a one-step commit, or while a turn was revoked) makes it a
  conflict.
- A commit in one step (:meth:`SharedStorage.commit_watched`) comes with the
  oids the transaction used; it is a conflict if others committed one of
  them since the session's cursor, and otherwise it is written at once,
  without waiting for any turn.
- A commit that fails to write (a full disk), when the storage says nothing
  of it was written, is refused with :class:`~durus.error.CommitRefusedError`
  and the storage goes on.
- Oids: no oid is handed to two sessions; each session's unused oids are
  remembered, and a commit with a record for a new oid the session was not
  given is refused.  The one exception: while no root is stored, oid 0 goes
  back to be handed out again when the session holding it closes, since a
  Connection creates the root with the first oid it receives.
- References: a commit whose records refer to an oid that has no record,
  is not stored by the same commit and was never handed out is refused, so
  no client can write a reference that dangles from the start.
- Durability: a commit returns once it is on disk.  With a storage that can
  defer its disk sync, commits written while a sync is underway share the
  next one (group commit).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count

from durus.commit_schedule import GroupSync
from durus.error import (
    CommitRefusedError,
    ConflictError,
    DurusError,
    DurusKeyError,
    ReadConflictError,
    WriteConflictError,
)
from durus.invalidation_log import DEFAULT_MAX_LOGGED_OIDS, InvalidationLog
from durus.record import ROOT_OID, oid_to_int, record_refs, split_oids
from durus.storage import InvalidationHandler, Storage

log = logging.getLogger("durus.storage_server")

DEFAULT_MAX_GIVEN_OIDS = 1_000_000
# Beyond this many, the oids an in-process session loaded are forgotten.
_MAX_LOADED_OIDS = 4_000_000


def _record_test(storage: Storage) -> Callable[[bytes], bool]:
    """A test of whether ``storage`` holds a record for an oid, as cheap as
    the storage allows: ``oid in storage`` where it supports that, a look at
    a FileStorage's index, else a load.
    """
    if hasattr(type(storage), "__contains__"):
        return storage.__contains__  # type: ignore[attr-defined]
    if hasattr(storage, "shelf"):
        # A FileStorage: its shelf is the index (replaced by a pack, so
        # looked up each time).
        return lambda oid: oid in storage.shelf  # type: ignore[attr-defined]

    def has_record(oid: bytes) -> bool:
        try:
            storage.load(oid)
        except DurusKeyError:
            return False
        return True

    return has_record


class RequestRefusedError(DurusError):
    """A session asked for something the rules forbid: a record for an oid it
    was never given, a reference to an oid never handed out, a commit to a
    read-only storage, too many unused oids.

    Nothing of a refused commit is written; the server drops such a client.
    """


class OidLedger:
    """Which oids were handed out and to whom, so that no oid goes to two
    sessions and a commit refers only to oids that exist or were handed out.

    Instance attributes: ``max_remembered`` (how many oids that closed
    sessions left unused are remembered: a commit may refer to those).
    """

    def __init__(self, max_remembered: int) -> None:
        self.max_remembered = max_remembered
        self._given_to: dict[bytes, StorageSession] = {}
        # Oids sessions that closed were given and did not use, oldest first:
        # handed out, so a commit may refer to them.  (Their records are
        # refused, so they are never stored.)
        self._left_unused: set[bytes] = set()
        self._left_unused_order: deque[bytes] = deque()
        self._root_returned = False  # oid 0 given, then returned unused
        self._freed: set[bytes] = set()  # packed away; reuse once all know

    def allocate(self, session: StorageSession, new_oid: Callable[[], bytes],
                 may_reuse: Callable[[bytes], bool]) -> bytes:
        """An oid for ``session`` from ``new_oid`` (the root's first, if it
        came back); a freed oid only where ``may_reuse`` allows.
        """
        while True:
            if self._root_returned:
                self._root_returned = False
                oid = ROOT_OID
            else:
                oid = new_oid()
            if oid in self._given_to:
                continue
            if oid in self._freed:
                if not may_reuse(oid):
                    continue
                self._freed.discard(oid)
            self._given_to[oid] = session
            session.given.add(oid)
            return oid

    def owner(self, oid: bytes) -> StorageSession | None:
        return self._given_to.get(oid)

    def handed_out(self, oid: bytes) -> bool:
        return oid in self._given_to or oid in self._left_unused

    def is_freed(self, oid: bytes) -> bool:
        return oid in self._freed

    def note_freed(self, oids: list[bytes]) -> None:
        self._freed.update(oids)

    def note_committed(self, session: StorageSession, oids: list[bytes]) -> None:
        for oid in oids:
            if self._given_to.pop(oid, None) is not None:
                session.given.discard(oid)

    def note_closed(self, session: StorageSession) -> None:
        """The session's unused oids: the root's goes back, the others are
        remembered (up to ``max_remembered``) as handed out.
        """
        for oid in session.given:
            if self._given_to.get(oid) is session:
                del self._given_to[oid]
                if oid == ROOT_OID:
                    self._root_returned = True
                else:
                    self._left_unused.add(oid)
                    self._left_unused_order.append(oid)
        while len(self._left_unused_order) > self.max_remembered:
            self._left_unused.discard(self._left_unused_order.popleft())
        session.given.clear()


class SharedStorage:
    """One storage, many sessions; see the module docstring for the rules.

    Every rule is a method here, run under one lock; a session is a handle
    that names itself to these methods and holds no rule of its own.

    Instance attributes:

    - ``storage``: the underlying Storage; use it only through sessions.
    - ``readonly``: commits are refused.
    - ``gcbytes``: start a pack after this many committed bytes (0: never).
    - ``bytes_since_pack``: bytes committed since the last pack finished.
    - ``max_given_oids``: how many unused oids one session may hold, and
      how many oids that closed sessions left unused are remembered (a
      commit may refer to those).
    - ``log``: the :class:`~durus.invalidation_log.InvalidationLog`.
    - ``group_sync``: the :class:`~durus.commit_schedule.GroupSync` that
      makes commits durable.
    """

    def __init__(
        self,
        storage: Storage,
        readonly: bool | None = None,
        gcbytes: int = 0,
        max_given_oids: int = DEFAULT_MAX_GIVEN_OIDS,
        max_logged_oids: int = DEFAULT_MAX_LOGGED_OIDS,
    ) -> None:
        self.storage = storage
        self.readonly = bool(getattr(storage, "readonly", False)) if readonly is None else readonly
        self.gcbytes = gcbytes
        self.bytes_since_pack = 0
        self.max_given_oids = max_given_oids
        self.log = InvalidationLog(max_logged_oids)
        self._lock = threading.RLock()
        self._turn_free = threading.Condition(self._lock)
        self._committer: StorageSession | None = None
        self._sessions: set[StorageSession] = set()
        self._session_ids = count(1)
        self._oids = OidLedger(max_given_oids)
        self._has_record = _record_test(storage)
        self._packer: Iterator[object] | None = None
        # A storage that can defer its disk sync says so with sync_to_disk().
        sync_to_disk = getattr(storage, "sync_to_disk", None)
        self._defer_sync = callable(sync_to_disk)
        self.group_sync = GroupSync(sync_to_disk if self._defer_sync else None)

    def session(self, track_loaded: bool = True) -> StorageSession:
        """A new session: a Storage for one Connection or one client socket.

        With ``track_loaded`` the session remembers the oids it loaded, so
        that when it falls behind the log its sync can name them all; a
        server's sessions leave that to their clients.
        """
        with self._lock:
            session = StorageSession(self, next(self._session_ids), self.log.latest, track_loaded)
            self._sessions.add(session)
        return session

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Close every session and the underlying storage."""
        with self._lock:
            for session in list(self._sessions):
                session.close()
            self.storage.close()

    # -- reading -------------------------------------------------------------

    def load(self, session: StorageSession, oid: bytes) -> bytes:
        """``oid``'s record for ``session``: ReadConflictError if others
        committed it after the session's cursor (or the session is behind).
        """
        with self._lock:
            session.check_open()
            if self.log.changed_after(oid, session.cursor, session.id):
                raise ReadConflictError([oid])
            return self.storage.load(oid)

    def describe_record(self, oid: bytes) -> str | None:
        """Where the underlying storage keeps ``oid``'s record, if it can say."""
        describe = getattr(self.storage, "describe_record", None)
        if describe is None:
            return None
        with self._lock:
            return describe(oid)

    def is_behind(self, session: StorageSession) -> bool:
        """Whether the log forgot commits ``session`` was not told about."""
        with self._lock:
            return self.log.is_behind(session.cursor)

    def take_invalidations(self, session: StorageSession) -> list[bytes] | None:
        """The oids others committed or a pack removed since the session's
        cursor, which moves to the newest commit; None when it is behind.
        """
        with self._lock:
            changes = self._catch_up(session)
            if changes is None:
                return None
            committed, removed = changes
            return list(committed | removed)

    def _catch_up(self, session: StorageSession) -> tuple[set[bytes], set[bytes]] | None:
        """``(committed, removed)`` since the session's cursor, which moves
        to the newest commit; None when the session was behind.
        """
        session.check_open()
        self._gather_storage_invalidations()
        changes = self.log.changes_after(session.cursor, session.id)
        session.cursor = self.log.latest
        return changes

    # -- oids ----------------------------------------------------------------

    def new_oids(self, session: StorageSession, count: int) -> list[bytes]:
        """``count`` oids that no other session has or will be given."""
        with self._lock:
            session.check_open()
            if self.readonly:
                raise RequestRefusedError("no new oids: the storage is read-only")
            if len(session.given) + count > self.max_given_oids:
                raise RequestRefusedError(
                    f"a client may hold at most {self.max_given_oids} unused oids; "
                    "commit the new objects before asking for more")
            return [self._allocate_oid(session) for _ in range(count)]

    # -- committing ------------------------------------------------------------

    def claim_turn(self, session: StorageSession, wait: bool) -> bool:
        """Take the two-step commit turn; with ``wait`` False, False if busy."""
        with self._lock:
            session.check_open()
            while self._committer is not None and self._committer is not session:
                if not wait:
                    return False
                self._turn_free.wait()
            self._committer = session
            return True

    def holds_turn(self, session: StorageSession) -> bool:
        with self._lock:
            return self._committer is session

    def release_turn(self, session: StorageSession) -> None:
        """Give up the commit turn (if held), letting the next commit in."""
        with self._lock:
            if self._committer is session:
                self._committer = None
                self._turn_free.notify_all()

    def apply_commit(self, session: StorageSession, records: dict[bytes, bytes],
                     delivered: set[bytes]) -> int:
        """The second step: write ``records`` after the session was told
        ``delivered``; the commit's serial for ``group_sync.wait``.

        Raises RequestRefusedError (nothing written) for a broken commit, and
        WriteConflictError for a record of a delivered oid, for a reference
        to an object a pack removed, if anything was committed since the
        delivery, or if a pack removed an object the commit stores.
        """
        with self._lock:
            session.check_open()
            if self._committer is not session:
                raise RuntimeError("apply_commit() without the commit turn: claim_commit() first")
            conflicts = set(self._check_records(session, records))
            conflicts.update(oid for oid in records if oid in delivered)
            changes = self.log.changes_after(session.cursor, session.id)
            if changes is None:
                conflicts.update(records)
            else:
                # Oids a pack removed meanwhile stay pending (the cursor
                # does not pass them) and matter now only if this commit
                # would bring one back.  (Protocol 1 does not say what the
                # transaction read, so oids that another process writing
                # the storage directly changed in this window, between the
                # delivery and the records, go unchecked: serve such a
                # storage to protocol-2 clients, which say what they read.)
                committed, removed = changes
                conflicts.update(committed)
                conflicts.update(removed & records.keys())
            if conflicts:
                raise WriteConflictError(list(conflicts))
            caught_up = session.cursor == self.log.latest
            serial = self._write(session, records)
            if caught_up:
                session.cursor = self.log.latest
            return serial

    def commit_watched(self, session: StorageSession, records: dict[bytes, bytes],
                       watched: set[bytes]) -> tuple[int | None, list[bytes] | None]:
        """A commit in one step: ``(serial, invalidations)`` if written,
        ``(None, invalidations)`` if others committed a watched oid (or a
        pack removed one the records need) since the session's cursor.

        Either way the session's cursor moves to the newest commit, and
        ``invalidations`` are the oids others changed since it was last
        told (None: the session was behind, and the commit is not written).
        Raises RequestRefusedError or CommitRefusedError, nothing written.
        """
        with self._lock:
            changes = self._catch_up(session)
            if changes is None:
                return None, None
            committed, removed = changes
            # A removed oid the transaction used is as much a conflict as a
            # committed one: a pack removed an object it still held, or
            # another process writing the storage directly (an SQLite file)
            # changed it.
            changed = committed | removed
            invalid = list(changed)
            if not records:
                return (0, invalid) if changed.isdisjoint(watched) else (None, invalid)
            removed_refs = self._check_records(session, records)
            if removed_refs or not changed.isdisjoint(watched) or not changed.isdisjoint(records):
                return None, invalid
            serial = self._write(session, records)
            session.cursor = self.log.latest
            return serial, invalid

    def wait_durable(self, serial: int) -> None:
        """Return once commit ``serial`` is on disk (syncing if need be), and
        let a pack underway take one step.
        """
        self.group_sync.wait(serial)
        self.pack_step()

    # -- sessions ending ---------------------------------------------------------

    def close_session(self, session: StorageSession) -> None:
        """End ``session``; an unused root oid goes back to be handed out again."""
        with self._lock:
            if self._committer is session:
                self._committer = None
                self._turn_free.notify_all()
            self._sessions.discard(session)
            self._oids.note_closed(session)

    # -- packing -----------------------------------------------------------

    def start_pack(self) -> bool:
        """Start a pack unless one is underway; False if one already was.

        A storage without an incremental packer packs at once.
        """
        with self._lock:
            if self._packer is not None:
                return False
            log.info("pack started")
            packer = self.storage.get_packer()
            if packer is None:
                self.storage.pack()
                self._pack_finished()
            else:
                self._packer = iter(packer)
            return True

    def pack_step(self) -> bool:
        """Do one step of the pack underway; False when there is none left."""
        with self._lock:
            if self._packer is None:
                return False
            try:
                next(self._packer)
            except StopIteration:
                self._pack_finished()
                return False
            except Exception:
                log.exception("pack failed; the storage is unchanged and keeps serving")
                self._packer = None
                return False
            return True

    def is_packing(self) -> bool:
        return self._packer is not None

    def pack(self) -> None:
        """Pack to the end, letting commits in between steps."""
        self.start_pack()
        while self.pack_step():
            pass

    def _pack_finished(self) -> None:
        self._packer = None
        self.bytes_since_pack = 0
        self._gather_storage_invalidations()
        log.info("pack finished")

    # -- internals, called with self._lock held --------------------------------

    def _gather_storage_invalidations(self) -> None:
        """Pass on what the storage itself reports: oids a pack removed, or,
        for a storage other processes write directly (SQLite), oids they
        changed.  Either kind conflicts with a transaction that used them.
        """
        oids = self.storage.sync()
        if oids:
            self._oids.note_freed(oids)
            self.log.append(oids, author=0, removed=True)

    def _allocate_oid(self, session: StorageSession) -> bytes:
        return self._oids.allocate(session, self.storage.new_oid, self._may_reuse)

    def _may_reuse(self, oid: bytes) -> bool:
        """A reused oid must not meet a stale copy some session holds."""
        removed_at = self.log.last_change(oid)
        return not removed_at or all(other.cursor >= removed_at for other in self._sessions)

    def _check_records(self, session: StorageSession, records: dict[bytes, bytes]) -> set[bytes]:
        """Refuse (RequestRefusedError) a commit the rules forbid; the oids
        its records refer to that a pack removed, which make it a conflict.
        """
        if self.readonly:
            raise RequestRefusedError("commit refused: the storage is read-only")
        for oid in records:
            owner = self._oids.owner(oid)
            if owner is session:
                continue
            if owner is not None:
                raise RequestRefusedError(
                    f"commit refused: oid {oid_to_int(oid)} was given to another client")
            if not self._has_record(oid):
                raise RequestRefusedError(
                    f"commit refused: record for oid {oid_to_int(oid)}, which is not stored "
                    "and which this client was never given")
        return self._check_refs(records)

    def _check_refs(self, records: dict[bytes, bytes]) -> set[bytes]:
        """Refuse a commit whose records refer to an oid that has no record,
        is not stored by this commit and was never handed out (a broken or
        hostile client: the reference would dangle from the start).

        The oids referred to that a pack removed are returned instead: a
        client may still hold such an object, stale, not knowing it is gone,
        so that is a conflict.
        """
        oids, has_record = self._oids, self._has_record
        removed = set()
        for oid, record in records.items():
            try:
                refs = split_oids(record_refs(record))
            except ValueError:
                raise RequestRefusedError(
                    f"commit refused: the refs of the record of oid {oid_to_int(oid)} are not whole oids") from None
            for ref in refs:
                if ref in records or oids.handed_out(ref) or has_record(ref):
                    continue
                if oids.is_freed(ref):
                    removed.add(ref)
                    continue
                raise RequestRefusedError(
                    f"commit refused: the record of oid {oid_to_int(oid)} refers to oid {oid_to_int(ref)}, "
                    "which has no record, is not in the commit and was never handed out")
        return removed

    def _write(self, session: StorageSession, records: dict[bytes, bytes]) -> int:
        storage = self.storage
        storage.begin()
        for oid, record in records.items():
            storage.store(oid, record)
        try:
            if self._defer_sync:
                storage.end(None, sync=False)
            else:
                storage.end(None)
        except OSError as error:
            if getattr(storage, "sync_error", None) is not None:
                raise  # the file may hold part of it: not for us to gloss over
            reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (
                os.strerror(error.errno) if error.errno else str(error))
            raise CommitRefusedError(f"not stored: {reason}") from error
        oids = list(records)
        self.log.append(oids, author=session.id)
        self._oids.note_committed(session, oids)
        # As Durus 4.3 counts: the commit data (tdata) and 8 for its length.
        self.bytes_since_pack += sum(len(record) for record in records.values()) + 12 * len(records) + 8
        serial = self.group_sync.note_write()
        if self._packer is None and 0 < self.gcbytes <= self.bytes_since_pack:
            self.start_pack()
        return serial


class StorageSession(Storage):
    """One client's view of a :class:`SharedStorage`; a Storage itself.

    The storage server drives it through the split commit methods
    (:meth:`claim_commit`, :meth:`take_invalidations`, :meth:`apply_commit`,
    :meth:`release_commit`) for protocol-1 clients, whose commit spans two
    network round trips, and :meth:`commit_watched` for protocol-2 clients;
    a Connection in the same process just calls :meth:`end`.

    Instance attributes:

    - ``shared``: the SharedStorage.
    - ``id``: a number no other session of it has (the author of its
      commits in the log).
    - ``cursor``: the newest commit in the log this session was told about.
    - ``given``: oids handed to this session and not yet committed.
    - ``records``: the commit being collected by :meth:`store`, or None.
    - ``closed``: True after :meth:`close`.
    """

    def __init__(self, shared: SharedStorage, session_id: int, cursor: int, track_loaded: bool = True) -> None:
        self.shared = shared
        self.id = session_id
        self.cursor = cursor
        self.given: set[bytes] = set()
        self.records: dict[bytes, bytes] | None = None
        self.closed = False
        # Oids of new objects whose commit failed: offered again first.
        self._spare_oids: list[bytes] = []
        self._delivered: set[bytes] = set()
        self._loaded: set[bytes] | None = set() if track_loaded else None
        self._loaded_overflowed = False

    def __repr__(self) -> str:
        return f"<StorageSession of {self.shared.storage}>"

    def check_open(self) -> None:
        if self.closed:
            raise DurusError("this storage session is closed; open a new one")

    # -- reading -----------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        record = self.shared.load(self, oid)
        loaded = self._loaded
        if loaded is not None:
            if len(loaded) >= _MAX_LOADED_OIDS and oid not in loaded:
                # Memory stays bounded; falling behind then cannot say what is stale.
                loaded.clear()
                self._loaded_overflowed = True
            loaded.add(oid)
        return record

    def describe_record(self, oid: bytes) -> str | None:
        """Where the underlying storage keeps ``oid``'s record, if it can say
        (for error messages; see :func:`durus.serialize.record_location`).
        """
        return self.shared.describe_record(oid)

    def sync(self) -> list[bytes]:
        """What others changed since the last sync or commit; after falling
        behind the log, every oid this session loaded (see
        :meth:`Storage.sync`).
        """
        return self._everything_if_behind(self.shared.take_invalidations(self))

    def changes(self) -> list[bytes] | None:
        """As :meth:`sync`, but None (rather than every loaded oid) when the
        session fell behind: what a server tells its client as "everything".
        """
        return self.shared.take_invalidations(self)

    def _everything_if_behind(self, oids: list[bytes] | None) -> list[bytes]:
        if oids is not None:
            return oids
        if self._loaded is None or self._loaded_overflowed:
            self._loaded_overflowed = False
            raise DurusError(
                "this session fell behind other sessions' commits further than the invalidation log "
                "remembers and loaded too many objects to say which are stale: open a new Connection")
        loaded = list(self._loaded)
        self._loaded.clear()
        return loaded

    def is_behind(self) -> bool:
        return self.shared.is_behind(self)

    # -- oids ----------------------------------------------------------------

    def new_oid(self) -> bytes:
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` oids that no other session has or will be given."""
        oids = []
        while self._spare_oids and len(oids) < count:
            oids.append(self._spare_oids.pop())
        if len(oids) < count:
            oids.extend(self.shared.new_oids(self, count - len(oids)))
        return oids

    # -- committing, in one call (in-process use) ---------------------------

    def begin(self) -> None:
        self.check_open()
        self.records = {}

    def store(self, oid: bytes, record: bytes) -> None:
        if self.records is None:
            raise RuntimeError("store() outside a commit: call begin() first")
        self.records[oid] = record

    def end(self, handle_invalidations: InvalidationHandler | None = None) -> None:
        """Deliver pending invalidations, then write the records durably.

        ``handle_invalidations`` may raise ConflictError to abandon the
        commit; a record for a delivered oid raises WriteConflictError.
        """
        records, self.records = self.records, None
        if records is None:
            raise RuntimeError("end() outside a commit: call begin() first")
        serial = None
        self.claim_commit(wait=True)
        try:
            invalid = self.take_invalidations()
            if invalid and handle_invalidations is not None:
                handle_invalidations(invalid)
            if records:
                serial = self.apply_commit(records)
        except (ConflictError, CommitRefusedError):
            self._spare_oids.extend(oid for oid in records if oid in self.given)
            raise
        finally:
            self.release_commit()
        if serial is not None:
            self.shared.wait_durable(serial)

    # -- committing, step by step (the server) --------------------------------

    def claim_commit(self, wait: bool) -> bool:
        """Take the commit turn; with ``wait`` False, return False if busy."""
        return self.shared.claim_turn(self, wait)

    def holds_commit(self) -> bool:
        return self.shared.holds_turn(self)

    def take_invalidations(self) -> list[bytes]:
        """Pop the pending invalidations: the first step of a commit."""
        oids = self._everything_if_behind(self.shared.take_invalidations(self))
        self._delivered = set(oids)
        return oids

    def take_changes(self) -> list[bytes] | None:
        """As :meth:`take_invalidations`, None when behind (for the server)."""
        oids = self.shared.take_invalidations(self)
        self._delivered = set(oids or ())
        return oids

    def apply_commit(self, records: dict[bytes, bytes]) -> int:
        """Write ``records`` after :meth:`take_invalidations`; the commit's
        serial number for ``shared.group_sync.wait``.  See
        :meth:`SharedStorage.apply_commit` for what it refuses.
        """
        return self.shared.apply_commit(self, records, self._delivered)

    def commit_watched(self, records: dict[bytes, bytes],
                       watched: set[bytes]) -> tuple[int | None, list[bytes] | None]:
        """A commit in one step; see :meth:`SharedStorage.commit_watched`."""
        return self.shared.commit_watched(self, records, watched)

    def release_commit(self) -> None:
        """Give up the commit turn (if held), letting the next commit in."""
        self.shared.release_turn(self)

    # -- the rest of the Storage interface ----------------------------------

    def pack(self) -> None:
        self.check_open()
        self.shared.pack()

    def get_packer(self) -> Iterator[None]:
        self.check_open()
        if self.shared.start_pack():
            while self.shared.pack_step():
                yield None

    def close(self) -> None:
        """End the session; an unused root oid goes back to be handed out again."""
        if self.closed:
            return
        self.closed = True
        self.shared.close_session(self)
        self._spare_oids.clear()
        self._loaded = None if self._loaded is None else set()

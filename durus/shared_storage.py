"""One storage shared by many sessions: the rules of a multi-client database.

A :class:`SharedStorage` wraps one underlying storage (memory or file) and
hands out :class:`StorageSession` objects, each the view of one client.  The
storage server gives every socket a session; an application with several
threads on one embedded file gives every Connection a session, and the
connections then see each other's commits and conflicts exactly as over a
server.  There is one implementation of the rules, here:

- Each session has its own set of pending invalidations: the oids other
  sessions committed since it last synced or committed.  A load of one of
  them is refused (ReadConflictError), so a transaction never mixes states
  from before and after another's commit.
- A commit first delivers the session's pending invalidations (the Connection
  raises ConflictError if it used any of them), then writes.  A record for an
  oid in that set is a conflict.  Commits take turns: between the delivery
  and the write no other commit may land, or the delivered set would be
  stale.  A turn can be revoked from a session that is slow to send its
  records; its commit then succeeds only if nothing was committed meanwhile.
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

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator

from durus.error import (
    ConflictError,
    DurusError,
    DurusKeyError,
    ReadConflictError,
    WriteConflictError,
)
from durus.record import ROOT_OID, oid_to_int, record_refs, split_oids
from durus.storage import InvalidationHandler, Storage

log = logging.getLogger("durus.storage_server")

DEFAULT_MAX_GIVEN_OIDS = 1_000_000


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


class GroupSync:
    """Counts commits written and commits on disk, so that one disk sync can
    serve every commit written before it started.

    Any thread that needs its commit durable calls :meth:`wait`; the first
    one in does the sync, the others wait for it or for the next one.

    Instance attributes: ``written`` and ``synced``, serial numbers of the
    last commit written and the last known to be on disk; ``deferred``: False
    when the storage syncs inside each write (then written is synced).
    """

    def __init__(self, sync_to_disk: Callable[[], None] | None) -> None:
        self._sync_to_disk = sync_to_disk
        self.deferred = sync_to_disk is not None
        self._condition = threading.Condition(threading.Lock())
        self._syncing = False
        self.written = 0
        self.synced = 0

    def note_write(self) -> int:
        """Count one written commit; its serial number, for :meth:`wait`."""
        with self._condition:
            self.written += 1
            if not self.deferred:
                self.synced = self.written
            return self.written

    def wait(self, serial: int) -> None:
        """Return once commit ``serial`` is on disk, syncing if no one is."""
        condition = self._condition
        with condition:
            while self.synced < serial:
                if self._syncing:
                    condition.wait()
                    continue
                self._syncing = True
                target = self.written
                condition.release()
                try:
                    self._sync_to_disk()
                finally:
                    condition.acquire()
                    self._syncing = False
                    condition.notify_all()
                self.synced = max(self.synced, target)


class SharedStorage:
    """One storage, many sessions; see the module docstring for the rules.

    Instance attributes:

    - ``storage``: the underlying Storage; use it only through sessions.
    - ``readonly``: commits are refused.
    - ``gcbytes``: start a pack after this many committed bytes (0: never).
    - ``bytes_since_pack``: bytes committed since the last pack finished.
    - ``max_given_oids``: how many unused oids one session may hold, and
      how many oids that closed sessions left unused are remembered (a
      commit may refer to those).
    - ``group_sync``: the :class:`GroupSync` that makes commits durable.
    """

    def __init__(
        self,
        storage: Storage,
        readonly: bool | None = None,
        gcbytes: int = 0,
        max_given_oids: int = DEFAULT_MAX_GIVEN_OIDS,
    ) -> None:
        self.storage = storage
        self.readonly = bool(getattr(storage, "readonly", False)) if readonly is None else readonly
        self.gcbytes = gcbytes
        self.bytes_since_pack = 0
        self.max_given_oids = max_given_oids
        self._lock = threading.RLock()
        self._turn_free = threading.Condition(self._lock)
        self._committer: StorageSession | None = None
        self._sessions: set[StorageSession] = set()
        self._given_to: dict[bytes, StorageSession] = {}
        # Oids sessions that closed were given and did not use, oldest first:
        # handed out, so a commit may refer to them.  (Their records are
        # refused, so they are never stored.)
        self._left_unused: set[bytes] = set()
        self._left_unused_order: deque[bytes] = deque()
        self._has_record = _record_test(storage)
        self._root_returned = False  # oid 0 given, then returned unused
        self._freed_oids: set[bytes] = set()  # packed away; reuse once all know
        self._packer: Iterator[object] | None = None
        # A storage that can defer its disk sync says so with sync_to_disk().
        sync_to_disk = getattr(storage, "sync_to_disk", None)
        self._defer_sync = callable(sync_to_disk)
        self.group_sync = GroupSync(sync_to_disk if self._defer_sync else None)

    def session(self) -> StorageSession:
        """A new session: a Storage for one Connection or one client socket."""
        session = StorageSession(self)
        with self._lock:
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
        """Pass on what the storage itself reports (oids a pack removed)."""
        oids = self.storage.sync()
        if oids:
            self._freed_oids.update(oids)
            for session in self._sessions:
                session.invalid.update(oids)

    def _allocate_oid(self, session: StorageSession) -> bytes:
        while True:
            if self._root_returned:
                self._root_returned = False
                oid = ROOT_OID
            else:
                oid = self.storage.new_oid()
            if oid in self._given_to:
                continue
            if oid in self._freed_oids:
                # A reused oid must not meet a stale copy some session holds.
                if any(oid in other.invalid for other in self._sessions):
                    continue
                self._freed_oids.discard(oid)
            self._given_to[oid] = session
            session.given.add(oid)
            return oid

    def _check_records(self, session: StorageSession, records: dict[bytes, bytes]) -> set[bytes]:
        """Refuse (RequestRefusedError) a commit the rules forbid; the oids
        its records refer to that a pack removed, which make it a conflict.
        """
        if self.readonly:
            raise RequestRefusedError("commit refused: the storage is read-only")
        for oid in records:
            owner = self._given_to.get(oid)
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
        given, left_unused, freed, has_record = self._given_to, self._left_unused, self._freed_oids, self._has_record
        removed = set()
        for oid, record in records.items():
            try:
                refs = split_oids(record_refs(record))
            except ValueError:
                raise RequestRefusedError(
                    f"commit refused: the refs of the record of oid {oid_to_int(oid)} are not whole oids") from None
            for ref in refs:
                if ref in records or ref in given or has_record(ref) or ref in left_unused:
                    continue
                if ref in freed:
                    removed.add(ref)
                    continue
                raise RequestRefusedError(
                    f"commit refused: the record of oid {oid_to_int(oid)} refers to oid {oid_to_int(ref)}, "
                    "which has no record, is not in the commit and was never handed out")
        return removed

    def _remember_left_unused(self, oid: bytes) -> None:
        """Remember an oid a closing session did not use, forgetting the
        oldest beyond ``max_given_oids``.
        """
        self._left_unused.add(oid)
        self._left_unused_order.append(oid)
        while len(self._left_unused_order) > self.max_given_oids:
            self._left_unused.discard(self._left_unused_order.popleft())

    def _write(self, session: StorageSession, records: dict[bytes, bytes]) -> int:
        storage = self.storage
        storage.begin()
        for oid, record in records.items():
            storage.store(oid, record)
        if self._defer_sync:
            storage.end(None, sync=False)
        else:
            storage.end(None)
        oids = list(records)
        for other in self._sessions:
            if other is not session:
                other.invalid.update(oids)
        for oid in oids:
            if self._given_to.pop(oid, None) is not None:
                session.given.discard(oid)
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
    :meth:`release_commit`) because a commit spans two network round trips;
    a Connection in the same process just calls :meth:`end`.

    Instance attributes:

    - ``shared``: the SharedStorage.
    - ``invalid``: pending invalidations, the oids others committed since this
      session last synced or committed.
    - ``given``: oids handed to this session and not yet committed.
    - ``records``: the commit being collected by :meth:`store`, or None.
    - ``closed``: True after :meth:`close`.
    """

    def __init__(self, shared: SharedStorage) -> None:
        self.shared = shared
        self.invalid: set[bytes] = set()
        self.given: set[bytes] = set()
        self.records: dict[bytes, bytes] | None = None
        self.closed = False
        # Oids of new objects whose commit failed: offered again first.
        self._spare_oids: list[bytes] = []
        self._delivered: set[bytes] = set()

    def __repr__(self) -> str:
        return f"<StorageSession of {self.shared.storage}>"

    def _check_open(self) -> None:
        if self.closed:
            raise DurusError("this storage session is closed; open a new one")

    # -- reading -----------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        with self.shared._lock:
            self._check_open()
            if oid in self.invalid:
                raise ReadConflictError([oid])
            return self.shared.storage.load(oid)

    def describe_record(self, oid: bytes) -> str | None:
        """Where the underlying storage keeps ``oid``'s record, if it can say
        (for error messages; see :func:`durus.serialize.record_location`).
        """
        describe = getattr(self.shared.storage, "describe_record", None)
        if describe is None:
            return None
        with self.shared._lock:
            return describe(oid)

    def sync(self) -> list[bytes]:
        with self.shared._lock:
            self._check_open()
            self.shared._gather_storage_invalidations()
            oids = list(self.invalid)
            self.invalid.clear()
            return oids

    # -- oids ----------------------------------------------------------------

    def new_oid(self) -> bytes:
        return self.new_oids(1)[0]

    def new_oids(self, count: int) -> list[bytes]:
        """``count`` oids that no other session has or will be given."""
        shared = self.shared
        with shared._lock:
            self._check_open()
            if shared.readonly:
                raise RequestRefusedError("no new oids: the storage is read-only")
            oids = []
            while self._spare_oids and len(oids) < count:
                oids.append(self._spare_oids.pop())
            if len(self.given) + count - len(oids) > shared.max_given_oids:
                raise RequestRefusedError(
                    f"a client may hold at most {shared.max_given_oids} unused oids; "
                    "commit the new objects before asking for more")
            while len(oids) < count:
                oids.append(shared._allocate_oid(self))
            return oids

    # -- committing, in one call (in-process use) ---------------------------

    def begin(self) -> None:
        self._check_open()
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
        except ConflictError:
            self._spare_oids.extend(oid for oid in records if oid in self.given)
            raise
        finally:
            self.release_commit()
        if serial is not None:
            self.shared.group_sync.wait(serial)
            self.shared.pack_step()

    # -- committing, step by step (the server) --------------------------------

    def claim_commit(self, wait: bool) -> bool:
        """Take the commit turn; with ``wait`` False, return False if busy."""
        shared = self.shared
        with shared._lock:
            self._check_open()
            while shared._committer is not None and shared._committer is not self:
                if not wait:
                    return False
                shared._turn_free.wait()
            shared._committer = self
            return True

    def holds_commit(self) -> bool:
        return self.shared._committer is self

    def take_invalidations(self) -> list[bytes]:
        """Pop the pending invalidations: the first step of a commit."""
        with self.shared._lock:
            self.shared._gather_storage_invalidations()
            oids = list(self.invalid)
            self.invalid.clear()
            self._delivered = set(oids)
            return oids

    def apply_commit(self, records: dict[bytes, bytes]) -> int:
        """Write ``records`` after :meth:`take_invalidations`; the commit's
        serial number for ``shared.group_sync.wait``.

        Raises RequestRefusedError (nothing written) for a broken commit, and
        WriteConflictError for a record of a delivered oid, for a reference
        to an object a pack removed, or, when this session lost its turn, if
        anything was committed meanwhile, or if a pack finished meanwhile
        and removed an object the commit stores.
        """
        shared = self.shared
        with shared._lock:
            self._check_open()
            if shared._committer is not self:
                raise RuntimeError("apply_commit() without the commit turn: claim_commit() first")
            # A reference to a removed object would dangle: the client holds
            # it stale (a Connection checks only what it used), so conflict.
            conflicts = list(shared._check_records(self, records))
            conflicts.extend(oid for oid in records if oid in self._delivered)
            if self.invalid:
                # Others committed after the delivery: what this client read
                # may be stale, and only it knows what it read.  Oids a pack
                # removed meanwhile stay pending (the next delivery brings
                # them) and matter now only if this commit would bring one
                # back.
                removed = self.invalid & shared._freed_oids
                conflicts.extend(self.invalid - removed)
                conflicts.extend(removed & records.keys())
            if conflicts:
                raise WriteConflictError(conflicts)
            return shared._write(self, records)

    def release_commit(self) -> None:
        """Give up the commit turn (if held), letting the next commit in."""
        shared = self.shared
        with shared._lock:
            if shared._committer is self:
                shared._committer = None
                shared._turn_free.notify_all()

    # -- the rest of the Storage interface ----------------------------------

    def pack(self) -> None:
        self._check_open()
        self.shared.pack()

    def get_packer(self) -> Iterator[None]:
        self._check_open()
        if self.shared.start_pack():
            while self.shared.pack_step():
                yield None

    def close(self) -> None:
        """End the session; an unused root oid goes back to be handed out again."""
        shared = self.shared
        with shared._lock:
            if self.closed:
                return
            self.release_commit()
            self.closed = True
            shared._sessions.discard(self)
            for oid in self.given:
                if shared._given_to.get(oid) is self:
                    del shared._given_to[oid]
                    if oid == ROOT_OID:
                        shared._root_returned = True
                    else:
                        shared._remember_left_unused(oid)
            self.given.clear()
            self._spare_oids.clear()
            self.invalid.clear()

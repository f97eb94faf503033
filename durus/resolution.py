"""Conflict resolution: bringing a transaction onto other clients' commits.

When a commit meets other clients' commits of objects this transaction
used, a :class:`ConflictResolver` tries to bring the transaction's changes
onto theirs without weakening serializability: by merging states (classes
with ``_p_resolve_conflict``), by checking what was read (classes with
``_p_check_reads``) or by replaying B-tree operation logs on the committed
trees.  What cannot be brought over conflicts, as in Durus 4.3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from durus.error import ConflictError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.record import unpack_record

if TYPE_CHECKING:
    from durus.connection import Connection
    from durus.persistent import PersistentObject

# How many times one commit merges fresh conflicts before giving up; the
# default of Connection.resolution_rounds (0 turns resolution off).
MAX_RESOLUTION_ROUNDS = 10


class ConflictResolver:
    """The conflict resolution of one Connection.

    It works on the connection only through its public members
    (``storage``, ``resolution_rounds``, ``stale_oids``, ``stale_objects``,
    ``changed_objects``, ``base_data``, ``read_records``, ``read_state``,
    ``rebase``, ``note_resolved``, ``put_back``, ``preload``,
    ``pickle_changes``, ``forget_new_objects``, ``note_invalidations``).

    Instance attributes:

    - ``connection``: the Connection whose commits this resolves.
    - ``replay_unfinished``: a replay of B-tree logs was cut short by newer
      commits; the connection clears it when the transaction ends.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.replay_unfinished = False

    def resolve_round(self, rounds: int, conflict: WriteConflictError, records: dict) -> int:
        """Resolve what the commit met, as round ``rounds + 1``; the rounds
        used, or the conflict raised when that cannot be done.  Loads that
        meet newer commits while resolving start another round.
        """
        connection = self.connection
        while True:
            rounds += 1
            if rounds > connection.resolution_rounds or not connection.stale_oids:
                raise conflict
            try:
                self._resolve_conflicts(records)
                return rounds
            except ReadConflictError:
                conflict = WriteConflictError(connection.stale_oids)
            except ConflictError:
                raise WriteConflictError(connection.stale_oids) from None

    def refresh_trees(self, attempts: int) -> bool:
        """In the middle of a transaction, after a load met other clients'
        commits: if every object this transaction used that they changed is
        a B-tree or one of its nodes, bring the trees it used up to date by
        replaying their logs on the committed nodes, and say True; the
        B-tree operation under way then starts again (it held the old
        nodes).  False, changing nothing, where that cannot be done (or
        newer commits keep coming for ``attempts`` tries); a replay that
        finds the trees read differently now raises ReadConflictError.

        What this transaction saw through the trees stays what it saw (the
        replay checks each lookup and scan), so it keeps one consistent
        state of everything it used.
        """
        connection = self.connection
        for _ in range(attempts):
            stale = connection.stale_objects()
            if not stale or any(obj is None or not obj._p_changes_replayed for obj in stale):
                return False
            try:
                self._replay(stale, {})
                return True
            except ReadConflictError:
                continue  # newer commits met while replaying: again
            except ConflictError:
                raise ReadConflictError(connection.stale_oids) from None
        return False

    def _resolve_conflicts(self, records: dict[bytes, tuple[PersistentObject, bytes, bytes]]) -> None:
        """Bring this transaction onto the committed states of the stale
        objects (used here, changed since by other clients), and pickle
        again what that changed; raise ConflictError if that cannot be done
        without weakening serializability.

        Each conflicting object is handled by what its class can do:

        - changed here, and its class resolves: merged by
          ``_p_resolve_conflict`` (which refuses if anything this
          transaction read from it changed);
        - only read here, and its class records its reads: checked by
          ``_p_check_reads``, and left conflicting-but-consistent until the
          commit ends (then it becomes a ghost);
        - a BTree or one of its nodes: every tree this transaction used is
          replayed on the committed nodes (:meth:`_replay`).

        Anything else conflicts, as in Durus 4.3.  A load that meets newer
        commits raises ReadConflictError (the caller starts another round).
        """
        connection = self.connection
        changed, base_data = connection.changed_objects, connection.base_data
        conflicting = connection.stale_objects()
        if any(obj is None for obj in conflicting):
            raise ConflictError()
        by_state = [obj for obj in conflicting if not obj._p_changes_replayed]
        for obj in by_state:
            cls = obj.__class__
            oid = obj._p_oid
            able = cls._p_resolve_conflict if oid in changed else cls._p_check_reads
            if able is None or oid not in base_data:
                raise ConflictError()
        committed = self._load_committed([obj._p_oid for obj in by_state])
        merges = self._merge_states(by_state, committed)
        # What is to be pickled again loses its record at once: a round cut
        # short by newer commits must not leave a stale one behind.
        for obj in connection.forget_new_objects(records):
            records.pop(obj._p_oid, None)
        for obj, merged in merges:
            self._adopt_merge(obj, merged)
            records.pop(obj._p_oid, None)
        for obj in by_state:
            connection.rebase(obj, committed[obj._p_oid])
        if len(by_state) < len(conflicting) or self.replay_unfinished:
            self._replay(conflicting, records)
        connection.pickle_changes(records)

    def _load_committed(self, oids: list[bytes]) -> dict[bytes, bytes]:
        """The newest committed data of ``oids``, with one bulk load (one
        round trip to a server, however many objects merge).
        """
        if not oids:
            return {}
        storage = self.connection.storage
        try:
            records = list(storage.bulk_load(oids))
        except ReadConflictError:
            # Newer commits: take them in, and resolve again with them.
            self.connection.note_invalidations(storage.sync())
            raise
        except DurusKeyError:
            raise ConflictError(oids) from None
        return {oid: unpack_record(record)[1] for oid, record in zip(oids, records)}

    def _merge_states(
        self, objects: list[PersistentObject], committed: dict[bytes, bytes]
    ) -> list[tuple[PersistentObject, Any]]:
        """The merged states of the changed ones among ``objects``, after
        checking what was read from the others; raises ConflictError.
        """
        connection = self.connection
        read_state = connection.read_state
        changed, base_data = connection.changed_objects, connection.base_data
        merges = []
        for obj in objects:
            oid = obj._p_oid
            old_state = read_state(base_data[oid])
            committed_state = read_state(committed[oid])
            if oid not in changed:
                obj._p_check_reads(old_state, committed_state)
                continue
            mine = obj.__class__.__getstate__(obj)
            if isinstance(mine, dict):
                mine = dict(mine)  # Persistent's state is its live __dict__
            merges.append((obj, obj._p_resolve_conflict(old_state, committed_state, mine)))
        return merges

    def _adopt_merge(self, obj: PersistentObject, merged: Any) -> None:
        """Give ``obj`` its merged state (its record of reads stays: a later
        round checks them again against a newer commit).
        """
        obj.__class__.__setstate__(obj, merged)
        self.connection.note_resolved(obj)

    def _replay(self, conflicting: list[PersistentObject], records: dict) -> None:
        """Redo this transaction's B-tree operations on the committed trees.

        Every node and tree this transaction changed is put back to its
        committed state (made a ghost, so it loads again), as is every
        conflicting one; then each tree it used replays its log, which
        raises ConflictError where the committed tree reads differently from
        what this transaction saw.  The objects the replay changes are the
        ones stored.
        """
        connection = self.connection
        put_back = {oid: obj for oid, obj in connection.changed_objects.items() if obj._p_changes_replayed}
        replayers = [obj for obj in connection.read_records if getattr(obj, "_p_replay", None) is not None]
        if put_back and not replayers:
            raise ConflictError()  # changes no log can repeat
        put_back.update((obj._p_oid, obj) for obj in conflicting if obj._p_changes_replayed)
        for oid, obj in put_back.items():
            records.pop(oid, None)
            connection.put_back(obj)
        connection.preload(put_back.values())
        # A replay cut short by newer commits leaves trees half done: the
        # next round must replay again even if only other objects conflict.
        self.replay_unfinished = True
        for obj in replayers:
            obj._p_replay()
        self.replay_unfinished = False

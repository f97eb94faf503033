"""The connection: one view of a storage, with its object cache and transaction.

A Connection hands out the persistent objects of one storage, each at most
once, loads ghosts on first use, stores changes on ``commit()`` and drops
them on ``abort()``.  Conflicts are found optimistically: when another client
has committed an object this transaction used (read or wrote), the commit, or
the load that meets it, raises a ConflictError, and the application aborts
and retries; first, where the classes involved allow it, the commit brings
its changes onto the other client's (:mod:`durus.resolution`).

Which objects a transaction used is known without a hook on every attribute
read: see :mod:`durus.persistent`.  An object attached to this connection is
of its real class exactly when the current transaction has used it; at the
transaction boundary :meth:`Connection._end_transaction` moves the used ones
back to their tracking class, refreshes their place in the LRU order and
turns the least recently used into ghosts.

The Connection is a facade over pieces that each have a module: the
transaction's read and write sets (:mod:`durus.transaction`), loading and
ghosting objects (:mod:`durus.ghost_loading`), other clients' commits
(:mod:`durus.invalidations`) and the commit itself
(:mod:`durus.commit_exchange`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from durus.commit_exchange import CommitExchange
from durus.error import ConflictError, DurusKeyError, ReadConflictError, WriteConflictError
from durus.ghost_loading import GhostLoader, keeps_base_state  # noqa: F401  (importable from here, as before)
from durus.invalidations import MAX_LOAD_ATTEMPTS, Invalidations
from durus.object_cache import ObjectCache
from durus.persistent import GHOST, PersistentObject, new_ghost, real_class, settle_instance_dict
from durus.record import ROOT_OID, int_to_oid, record_data, unpack_record
from durus.resolution import MAX_RESOLUTION_ROUNDS, ConflictResolver
from durus.serialize import ObjectReader, ObjectWriter
from durus.storage import Storage
from durus.transaction import Transaction

_setattribute = object.__setattr__

# How long a connection waits for another client to finish creating the root.
ROOT_CREATION_TIMEOUT = 10.0


class Connection:
    """A view of one storage, with an object cache and a current transaction.

    Instance attributes:

    - ``storage``: the Storage this connection reads and commits through.
    - ``root``: the root object (oid 0).
    - ``transaction_serial``: counts transaction boundaries; stamped on used
      objects as ``_p_serial``.
    - ``resolution_rounds``: how many times a commit may merge conflicting
      changes (classes with ``_p_resolve_conflict``) and try again; 0 turns
      conflict resolution off, as in Durus 4.3.
    - ``preloads``: whether iterating a container loads its objects in
      batches (:meth:`preload`): where the storage's bulk loads save round
      trips.
    """

    def __init__(
        self,
        storage: Storage | str | os.PathLike,
        cache_size: int = 100000,
        root_class: type | None = None,
    ) -> None:
        if isinstance(storage, (str, os.PathLike)):
            from durus.file_storage import FileStorage

            storage = FileStorage(os.fspath(storage))
        self.storage = storage
        self.preloads = getattr(storage, "batched_bulk_load", False)
        self.transaction_serial = 1
        self.resolution_rounds = MAX_RESOLUTION_ROUNDS
        self._cache_size = 0
        self.set_cache_size(cache_size)
        self._cache = ObjectCache()
        self._transaction = Transaction()
        self._reader = ObjectReader(self)
        self._loader = GhostLoader(storage, self._reader)
        self._invalidations = Invalidations(storage, self._cache, self._transaction, self._loader)
        self._resolver = ConflictResolver(self)
        self._commit = CommitExchange(
            storage, self._cache, self._transaction, self._loader, self._invalidations,
            ObjectWriter(self), self._resolver,
        )
        self.root = self._open_root(root_class)

    # -- public API --------------------------------------------------------

    def get_storage(self) -> Storage:
        return self.storage

    def get_root(self) -> PersistentObject:
        return self.root

    def get_cache_count(self) -> int:
        """How many objects (loaded or ghosts) the cache holds now."""
        return len(self._cache)

    def get_cache_size(self) -> int:
        """The target number of loaded objects kept between transactions."""
        return self._cache_size

    def set_cache_size(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"cache size must be positive, not {size!r}")
        self._cache_size = size

    def get_load_count(self) -> int:
        """How many object states this connection has loaded from storage."""
        return self._reader.load_count

    def get_transaction_serial(self) -> int:
        return self.transaction_serial

    def new_oid(self) -> bytes:
        return self.storage.new_oid()

    def has_changes(self) -> bool:
        """Whether this transaction changed anything that commit() would store."""
        return bool(self._transaction.changed)

    def get(self, oid: bytes | int) -> PersistentObject | None:
        """The object with this oid (int or 8 bytes), or None if none is stored."""
        if isinstance(oid, int):
            oid = int_to_oid(oid)
        obj = self._cache.get(oid)
        if obj is not None:
            return obj
        try:
            record = self._invalidations.load_record(oid)
        except DurusKeyError:
            return None
        return self._object_from_record(oid, record)

    __getitem__ = get

    def get_instance(self, oid: bytes, cls: type) -> PersistentObject:
        """The cached object for ``oid``, or a new ghost of class ``cls``."""
        obj = self._cache.objects.get(oid)
        if obj is not None and real_class(type(obj)) is cls:
            return obj
        obj = new_ghost(cls, oid, self)
        self._cache.add(obj)
        return obj

    def preload(self, objects: Iterable[Any]) -> None:
        """Load the ghosts of this connection among ``objects`` with one bulk
        load (one round trip to a server), as an iteration over a container
        is about to use them all.

        Each state is the one committed now, as if the object were used now.
        A batch that meets another client's newer commit (or a missing
        record) is left alone: each object then loads, and raises, by itself
        when it is used, as it would have.
        """
        self._loader.preload(self, objects, self._transaction.invalid_oids)

    def get_crawler(self, start_oid: bytes = ROOT_OID, batch_size: int = 100) -> Iterator[PersistentObject]:
        """Every object reachable from ``start_oid``, loaded in batches."""
        for oid, record in self.storage.gen_oid_record(start_oid, batch_size):
            yield self._object_from_record(oid, record)

    def commit(self) -> None:
        """Store every changed object and every new object reachable from one.

        Raises WriteConflictError, storing nothing, if another client has
        committed an object this transaction used; call ``abort()`` then.
        """
        if self._transaction.invalid_oids:
            raise WriteConflictError(sorted(self._transaction.invalid_oids))
        if self._transaction.changed:
            self._commit.store_changes()
        else:
            self._invalidations.sync()
        self._end_transaction()

    def abort(self) -> None:
        """Drop this transaction's changes and catch up with other clients."""
        changed = self._transaction.changed
        for obj in changed.values():
            self._loader.ghost(obj)
        changed.clear()
        self._invalidations.sync()
        self._end_transaction()

    def pack(self) -> None:
        """Abort, then remove from the storage what the root cannot reach."""
        self.abort()
        self.storage.pack()

    def shrink_cache(self) -> None:
        """Ghost the least recently used saved objects beyond the cache size."""
        self._loader.shrink(self._cache_size)

    # -- called by persistent objects --------------------------------------

    def note_access(self, obj: PersistentObject) -> None:
        """``obj`` is used for the first time in this transaction."""
        self._transaction.used.append(obj)

    def note_change(self, obj: PersistentObject) -> None:
        """``obj`` changed: store it at the next commit."""
        self._transaction.changed[obj._p_oid] = obj

    def note_reads(self, obj: PersistentObject) -> None:
        """``obj`` started a record of this transaction's reads in ``_p_reads``."""
        self._transaction.read_records.append(obj)

    def load_state(self, obj: PersistentObject) -> None:
        """Load the stored state of the ghost ``obj``."""
        oid = obj._p_oid
        try:
            record = self._invalidations.load_record(oid)
        except DurusKeyError:
            # A ghost whose record is gone: a pack removed it after another
            # client made it unreachable, so this transaction is stale.
            raise ReadConflictError([oid]) from None
        self._loader.set_state(obj, record)

    # -- used by the conflict resolver (durus.resolution) -------------------

    @property
    def stale_oids(self) -> list[bytes]:
        """Sorted oids this transaction used that other clients changed since."""
        return sorted(self._transaction.invalid_oids)

    def stale_objects(self) -> list[PersistentObject | None]:
        """The cached objects of the stale oids (None for one not cached)."""
        cache = self._cache
        return [cache.get(oid) for oid in self._transaction.invalid_oids]

    @property
    def changed_objects(self) -> Mapping[bytes, PersistentObject]:
        """The objects this transaction changed, by oid (do not modify)."""
        return self._transaction.changed

    @property
    def base_data(self) -> Mapping[bytes, bytes]:
        """The record data each merging or read-checking object's transaction
        started from, by oid (do not modify).
        """
        return self._loader.base_data

    @property
    def read_records(self) -> Sequence[PersistentObject]:
        """The objects keeping a record of this transaction's reads."""
        return self._transaction.read_records

    def read_state(self, data: bytes) -> Any:
        """The state in record data ``data``, its references through this cache."""
        return self._reader.get_state(data)

    def rebase(self, obj: PersistentObject, data: bytes) -> None:
        """``obj``'s transaction now starts from the committed record data ``data``."""
        self._loader.base_data[obj._p_oid] = data

    def note_resolved(self, obj: PersistentObject) -> None:
        """``obj`` holds a state merged onto the committed one: no longer stale."""
        self._transaction.invalid_oids.discard(obj._p_oid)

    def put_back(self, obj: PersistentObject) -> None:
        """Drop ``obj``'s changes and make it a ghost that loads its committed state."""
        oid = obj._p_oid
        self._transaction.changed.pop(oid, None)
        self._loader.ghost(obj)
        self._transaction.invalid_oids.discard(oid)

    def pickle_changes(self, records: dict) -> None:
        """Put into ``records`` those of the changed objects it lacks, and of
        the new objects they reach.
        """
        self._commit.pickle_changes(records)

    def forget_new_objects(self, records: dict) -> list[PersistentObject]:
        """Take the records of new objects out of ``records`` and their oids
        from them; the changed objects whose records refer to one.
        """
        return self._commit.forget_new_objects(records)

    def note_invalidations(self, oids: list[bytes], read_oid: bytes | None = None) -> list[bytes]:
        """Ghost what others changed that this transaction has not used; the
        ones it used (except ``read_oid``, being loaded) are returned and kept
        as stale (``stale_oids``).
        """
        return self._invalidations.note(oids, read_oid)

    def refresh_trees(self) -> bool:
        """Bring the B-trees this transaction used up to date after a load
        met other clients' commits; see :meth:`ConflictResolver.refresh_trees`.
        """
        return self._resolver.refresh_trees(MAX_LOAD_ATTEMPTS)

    # -- internals ------------------------------------------------------------

    def _open_root(self, root_class: type | None) -> PersistentObject:
        root = self.get(ROOT_OID)
        if root is None:
            if root_class is None:
                from durus.persistent_dict import PersistentDict as root_class
            root = self._create_root(root_class)
        if root_class is not None and root.__class__ is not root_class:
            raise TypeError(
                f"the root is a {root.__class__.__name__}, not the requested "
                f"{root_class.__name__}; open it without root_class"
            )
        return root

    def _create_root(self, root_class: type) -> PersistentObject:
        oid = self.storage.new_oid()
        if oid != ROOT_OID:
            # Another client was handed oid 0 first and is creating the root.
            return self._wait_for_root()
        root = root_class()
        settle_instance_dict(root)
        _setattribute(root, "_p_oid", ROOT_OID)
        _setattribute(root, "_p_connection", self)
        self._cache.add(root)
        self._transaction.changed[ROOT_OID] = root
        self.commit()
        return root

    def _wait_for_root(self) -> PersistentObject:
        deadline = time.monotonic() + ROOT_CREATION_TIMEOUT
        while time.monotonic() < deadline:
            self._invalidations.sync()
            root = self.get(ROOT_OID)
            if root is not None:
                return root
            time.sleep(0.01)
        raise ConflictError([ROOT_OID])

    def _object_from_record(self, oid: bytes, record: bytes) -> PersistentObject:
        obj = self._cache.get(oid)
        if obj is None:
            obj = self.get_instance(oid, self._reader.get_class(record_data(record)))
        if obj._p_status == GHOST:
            self._loader.set_state(obj, record)
        return obj

    def _end_transaction(self) -> None:
        serial = self.transaction_serial
        loaded = self._loader.loaded
        self._transaction.finish(serial, loaded)
        self._resolver.replay_unfinished = False
        self.transaction_serial = serial + 1
        if len(loaded) > self._cache_size:
            self.shrink_cache()
        self._invalidations.fetch_ahead()


def gen_matching_oids(
    connection: Connection, classes: tuple[type, ...] = (), words: Iterable[str | bytes] = ()
) -> Iterator[bytes]:
    """The oid of every stored record whose object is an instance of one of
    ``classes`` or whose class or state pickle contains one of ``words``
    (nothing is loaded but the records' class pickles).
    """
    needles = [word.encode() if isinstance(word, str) else word for word in words]
    reader = ObjectReader(connection)
    for oid, record in connection.get_storage().gen_oid_record():
        data = unpack_record(record)[1]
        if classes and issubclass(reader.get_class(data), classes):
            yield oid
        elif needles:
            state = reader.get_state_pickle(data)
            if any(needle in data or needle in state for needle in needles):
                yield oid


def touch_every_reference(connection: Connection, *words: str | bytes) -> None:
    """Mark changed every object whose class or state pickle contains a word.

    After moving or renaming a class, this makes every record that names it
    be written again (with the class's new location) at the next commit.
    :func:`durus.schema.rewrite_instances` does so in batches of commits.
    """
    for oid in list(gen_matching_oids(connection, words=words)):
        obj = connection.get(oid)
        if obj is not None:
            obj._p_note_change()


def gen_every_instance(connection: Connection, *classes: type) -> Iterator[PersistentObject]:
    """Every stored object that is an instance of one of ``classes``."""
    for oid in gen_matching_oids(connection, classes):
        obj = connection.get(oid)
        if obj is not None:
            yield obj


class ObjectDictionary:
    """Weak values whose dead keys are dropped when an iteration starts, for Durus 4.3 programs."""

    def __init__(self) -> None:
        import weakref

        self.mapping: dict[Any, weakref.KeyedRef] = {}
        self.dead: set[Any] = set()
        owner = weakref.ref(self)

        def callback(reference: Any) -> None:
            dictionary = owner()
            if dictionary is not None:
                dictionary.dead.add(reference.key)

        self.callback = callback

    def get(self, key: Any, default: Any = None) -> Any:
        reference = self.mapping.get(key)
        value = None if reference is None or key in self.dead else reference()
        return default if value is None else value

    def __setitem__(self, key: Any, value: Any) -> None:
        import weakref

        self.dead.discard(key)
        self.mapping[key] = weakref.KeyedRef(value, self.callback, key)

    def __delitem__(self, key: Any) -> None:
        self.dead.add(key)

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self.mapping) - len(self.dead & self.mapping.keys())

    def clear_dead(self) -> None:
        for key in self.dead:
            self.mapping.pop(key, None)
        self.dead.clear()

    def __iter__(self) -> Iterator[Any]:
        self.clear_dead()
        return (key for key in list(self.mapping) if key not in self.dead)

"""Ghosts and loaded objects: a connection's objects between the two states.

A :class:`GhostLoader` fills ghosts with their stored states and turns
loaded objects back into ghosts, keeping the loaded ones in least recently
used order so that the connection can keep about ``cache_size`` of them.
It also keeps, for the classes that resolve conflicts or check their reads,
the record data each object's transaction started from: the "old" state of
a merge (:mod:`durus.resolution`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from durus.error import DamagedRecordError, DurusKeyError, ReadConflictError
from durus.persistent import GHOST, SAVED, UNSAVED, PersistentObject, real_class
from durus.record import record_data_and_refers
from durus.serialize import ObjectReader, record_location
from durus.storage import Storage

_setattribute = object.__setattr__
_getattribute = object.__getattribute__


def keeps_base_state(cls: type) -> bool:
    """Whether resolution needs the state a transaction started from for
    instances of ``cls`` (to merge, or to check what was read).
    """
    return cls._p_resolve_conflict is not None or cls._p_check_reads is not None


class GhostLoader:
    """Loads the states of one connection's ghosts and ghosts its objects."""

    def __init__(self, storage: Storage, reader: ObjectReader) -> None:
        self.storage = storage
        self.reader = reader
        #: Loaded objects, least recently used first; strong references.
        self.loaded: OrderedDict[bytes, PersistentObject] = OrderedDict()
        #: For objects whose class keeps its base state: the record data
        #: their current transaction started from, by oid.
        self.base_data: dict[bytes, bytes] = {}

    def set_state(self, obj: PersistentObject, record: bytes) -> None:
        """Give the ghost ``obj`` the state stored in ``record``."""
        cls = real_class(type(obj))
        data, refers = record_data_and_refers(record)
        try:
            state = self.reader.get_state(data, cls, refers)
        except DamagedRecordError as error:
            raise error.for_record(obj._p_oid, record_location(self.storage, obj._p_oid))
        # UNSAVED while __setstate__ runs, so attribute writes in a custom
        # __setstate__ (filling in defaults, say) don't mark the object changed.
        _setattribute(obj, "_p_status", UNSAVED)
        try:
            cls.__setstate__(obj, state)
        except BaseException:
            obj._p_clear_state()
            _setattribute(obj, "_p_status", GHOST)
            raise
        _setattribute(obj, "_p_status", SAVED)
        oid = obj._p_oid
        self.loaded[oid] = obj
        if keeps_base_state(cls):
            self.base_data[oid] = data

    def ghost(self, obj: PersistentObject) -> None:
        """Drop ``obj``'s state: it loads again when next used."""
        obj._p_set_status_ghost()
        oid = obj._p_oid
        self.loaded.pop(oid, None)
        self.base_data.pop(oid, None)

    def preload(self, owner: Any, objects: Iterable[Any], invalid: set[bytes]) -> None:
        """Load the ghosts of connection ``owner`` among ``objects``, except
        those whose oids are ``invalid``, with one bulk load; a batch that
        meets a newer commit or a missing record is left alone.
        """
        ghosts = [
            obj for obj in objects
            if isinstance(obj, PersistentObject) and _getattribute(obj, "_p_status") == GHOST
            and _getattribute(obj, "_p_connection") is owner and _getattribute(obj, "_p_oid") not in invalid
        ]
        if len(ghosts) < 2:
            return
        try:
            records = list(self.storage.bulk_load([obj._p_oid for obj in ghosts]))
        except (ReadConflictError, DurusKeyError):
            return
        for obj, record in zip(ghosts, records):
            if obj._p_status == GHOST:
                self.set_state(obj, record)

    def shrink(self, size: int) -> None:
        """Ghost the least recently used saved objects beyond ``size``;
        changed objects stay loaded.
        """
        loaded = self.loaded
        excess = len(loaded) - size
        while excess > 0 and loaded:
            oid, obj = loaded.popitem(last=False)
            excess -= 1
            if obj._p_status == SAVED:
                self.ghost(obj)
            elif obj._p_status == UNSAVED:
                loaded[oid] = obj  # changed objects stay

"""The identity map of a connection: at most one object per oid.

The map holds its objects strongly.  Weak references would let an object go
the moment nothing else holds it, but each one is an extra object that the
garbage collector traverses at every full collection: for a cold load of a
large tree, whose every ghost lands here, that was a tenth of the time.

So an entry that nothing but the map holds is dropped by a sweep instead,
run when the map has doubled since the last one and before the objects are
counted.  Such an object is unreachable from the program, so
dropping it later rather than at once is not observable, beyond the memory
it keeps until then: at most as much again as the map held after the last
sweep.  (Loaded objects are held by the connection's LRU order anyway, until
they are ghosted; what a sweep frees is mostly ghosts that nothing refers to
any more.)
"""

from __future__ import annotations

from sys import getrefcount

from durus.persistent import PersistentObject


def _count_of_an_object_only_a_dict_holds() -> int:
    """What getrefcount() says of an object that only a dict holds, passed
    to it straight from the dict, as sweep() does: 2 (the dict's reference
    and the argument's) in CPython 3.11, measured so that an interpreter
    that counts the argument otherwise cannot make a sweep drop a held object.
    """
    probe = {0: object()}
    return getrefcount(probe[0])


_HELD_BY_MAP_ONLY = _count_of_an_object_only_a_dict_holds()
_FIRST_SWEEP = 1024


class ObjectCache:
    """The objects of one connection by oid.

    Instance attributes: ``objects``, the map (oid -> object; read it
    directly on hot paths, change it only through the methods).
    """

    def __init__(self) -> None:
        self.objects: dict[bytes, PersistentObject] = {}
        self._sweep_at = _FIRST_SWEEP

    def get(self, oid: bytes) -> PersistentObject | None:
        return self.objects.get(oid)

    def add(self, obj: PersistentObject) -> None:
        objects = self.objects
        objects[obj._p_oid] = obj
        if len(objects) > self._sweep_at:
            self.sweep()

    def discard(self, oid: bytes) -> None:
        self.objects.pop(oid, None)

    def sweep(self) -> None:
        """Drop the objects that only the map holds."""
        objects = self.objects
        for oid in list(objects):
            if getrefcount(objects[oid]) <= _HELD_BY_MAP_ONLY:
                del objects[oid]
        self._sweep_at = max(_FIRST_SWEEP, 2 * len(objects))

    def __len__(self) -> int:
        self.sweep()
        return len(self.objects)


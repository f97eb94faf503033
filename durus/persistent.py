"""Persistent objects: the status machine, ghosts, and access tracking.

A persistent object is SAVED (its state matches the stored record), UNSAVED
(changed, or new and never stored) or a GHOST (an oid and a class, state not
loaded).  Reading or writing an ordinary attribute of a ghost loads it;
writing marks the object changed so the next ``commit()`` stores it.

How reads stay as fast as on a plain object
--------------------------------------------
The connection must know which objects a transaction has touched (for LRU
eviction and for read-set conflict detection), yet a ``__getattribute__``
hook on every read costs about 25 times a plain read.  So the hook lives on a
*tracking class*: a layout-identical subclass made once per persistent class.
An object attached to a connection sits in its tracking class until it is
first used in a transaction; that first use (a read, a write or a method
call) moves it to its real class, loads it if it is a ghost, and tells the
connection.  From then on reads cost what they cost on any object, since the
real class overrides only ``__setattr__``.  At each transaction boundary the
connection moves the objects touched in that transaction back.

So, for an object that has a connection: its type is its real class exactly
when it has been touched in the current transaction.  ``obj.__class__``
always answers the real class; ``type(obj)`` may answer the tracking class,
which has the same name, module and behaviour.
"""

from __future__ import annotations

import reprlib
from sys import intern
from collections.abc import Iterator
from typing import Any, Callable

from durus.speedups import speedups

UNSAVED = 1
SAVED = 0
GHOST = -1

_setattribute = object.__setattr__
_getattribute = object.__getattribute__
_delattribute = object.__delattr__

# tracking class -> the real class it stands in for, and the reverse.
_real_classes: dict[type, type] = {}
_tracking_classes: dict[type, type] = {}
# classes whose __new__ is PersistentObject's (ghosts skip calling it)
_plain_new_classes: set[type] = set()
_new_object = object.__new__
# class -> names of the slots that hold its state
_data_slot_names: dict[type, tuple[str, ...]] = {}


def real_class(cls: type) -> type:
    """The class an object of type ``cls`` really is (undoing tracking)."""
    return _real_classes.get(cls, cls)


def is_tracking_class(cls: type) -> bool:
    return cls in _real_classes


def tracking_class(cls: type) -> type:
    """The tracking subclass that stands in for ``cls`` until first use."""
    try:
        return _tracking_classes[cls]
    except KeyError:
        pass
    namespace = {
        "__slots__": (),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__getattribute__": _first_use_getattribute,
        "__setattr__": _first_use_setattr,
        "__delattr__": _first_use_delattr,
    }
    tracker = _subclass_unannounced(cls, namespace)
    _real_classes[tracker] = cls
    if speedups is not None:
        speedups.install_hooks(tracker)
    if cls.__new__ is PersistentObject.__new__:
        _plain_new_classes.add(cls)
    return _tracking_classes.setdefault(cls, tracker)


@classmethod
def _no_init_subclass(cls: type, **kwargs: Any) -> None:
    pass


def _subclass_unannounced(cls: type, namespace: dict[str, Any]) -> type:
    """A subclass of ``cls`` made without running ``cls.__init_subclass__``:
    an application's registry of its model classes must not see trackers.
    """
    own = cls.__dict__.get("__init_subclass__")
    type.__setattr__(cls, "__init_subclass__", _no_init_subclass)
    try:
        return type(cls)(cls.__name__, (cls,), namespace)
    finally:
        if own is None:
            type.__delattr__(cls, "__init_subclass__")
        else:
            type.__setattr__(cls, "__init_subclass__", own)


def new_ghost(cls: type, oid: bytes, connection: Any) -> PersistentObject:
    """A ghost of class ``cls`` for ``oid``: state unloaded, first use pending.

    Like Durus 4.3 this calls ``cls.__new__`` with no arguments, never
    ``__init__``; for the usual ``__new__`` it skips the call (this is on
    the path of every object a cold load meets).
    """
    tracker = _tracking_classes.get(cls) or tracking_class(cls)
    if cls in _plain_new_classes:
        ghost = _new_object(tracker)
        _setattribute(ghost, "_p_serial", 0)
    else:
        ghost = cls.__new__(tracker)
    _setattribute(ghost, "_p_oid", oid)
    _setattribute(ghost, "_p_connection", connection)
    _setattribute(ghost, "_p_status", GHOST)
    return ghost


def _first_use(obj: PersistentObject) -> None:
    """Move ``obj`` to its real class, tell its connection, load a ghost."""
    tracker = type(obj)
    _setattribute(obj, "__class__", _real_classes[tracker])
    connection = _getattribute(obj, "_p_connection")
    if connection is not None:
        connection.note_access(obj)
    if _getattribute(obj, "_p_status") == GHOST:
        try:
            obj._p_load_state()
        except BaseException:
            _setattribute(obj, "__class__", tracker)
            raise


def _first_use_getattribute(self: Any, name: str) -> Any:
    if name[:3] == "_p_":
        return _getattribute(self, name)
    if name == "__class__":
        return _real_classes[type(self)]
    _first_use(self)
    return getattr(self, name)


def _first_use_setattr(self: Any, name: str, value: Any) -> None:
    if name[:3] == "_p_":
        _setattribute(self, name, value)
    else:
        _first_use(self)
        setattr(self, name, value)


def _first_use_delattr(self: Any, name: str) -> None:
    if name[:3] == "_p_":
        _delattribute(self, name)
    else:
        _first_use(self)
        delattr(self, name)


PRELOAD_BATCH = 100


def iterate_preloading(owner: PersistentObject, values: list) -> Iterator[Any]:
    """An iterator over ``values`` (held by ``owner``) that loads the ghosts
    among them a batch at a time with one bulk load, rather than one round
    trip to the server each, where the connection does that (see
    ``Connection.preload``); else a plain one.
    """
    connection = _getattribute(owner, "_p_connection")
    if connection is None or not connection.preloads:
        return iter(values)
    return _iterate_preloading(connection, values)


def _iterate_preloading(connection: Any, values: list) -> Iterator[Any]:
    for start in range(0, len(values), PRELOAD_BATCH):
        batch = values[start:start + PRELOAD_BATCH]
        connection.preload(batch)
        yield from batch


def _refill_dict(instance_dict: dict, state: dict) -> None:
    """Replace the contents of an instance ``__dict__`` with ``state``.

    CPython 3.11 only specialises an attribute read on an object with a
    ``__dict__`` when that dict is a combined table whose key is the very
    (interned) string the code names.  Unpickled keys are not interned, and
    the dict of an object created with inline values and then given another
    ``__class__`` is a split table; either makes every read take the slow
    path, three times the cost.  Clearing and refilling with interned keys
    gives the fast kind.
    """
    instance_dict.clear()
    for name, value in state.items():
        instance_dict[intern(name) if type(name) is str else name] = value


def settle_instance_dict(obj: Any) -> None:
    """Make the ``__dict__`` of a new object the fast kind (see _refill_dict)."""
    try:
        instance_dict = _getattribute(obj, "__dict__")
    except AttributeError:
        return
    _refill_dict(instance_dict, dict(instance_dict))


if speedups is not None:
    # The same functions in C (see durus.speedups), on the path of every
    # object a load meets; tracking_class() installs the C read hook.
    speedups.configure(_real_classes, _tracking_classes, _plain_new_classes, tracking_class, GHOST)
    new_ghost = speedups.new_ghost  # noqa: F811
    _first_use = speedups.first_use  # noqa: F811
    _refill_dict = speedups.refill_dict  # noqa: F811


def _mangle(cls: type, name: str) -> str:
    if name.startswith("__") and not name.endswith("__"):
        return f"_{cls.__name__.lstrip('_')}{name}"
    return name


def data_slots(cls: type) -> tuple[str, ...]:
    """The slot names of ``cls`` (and its bases) that hold persistent state."""
    try:
        return _data_slot_names[cls]
    except KeyError:
        pass
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            name = _mangle(klass, name)
            if name[:3] != "_p_" and name not in ("__weakref__", "__dict__") and name not in names:
                names.append(name)
    _data_slot_names[cls] = result = tuple(names)
    return result


def _identifier(obj: PersistentObject) -> str:
    """The oid as a number, or ``@`` and the id for an object never stored."""
    return f"@{id(obj):x}" if obj._p_oid is None else obj._p_format_oid()


def container_repr(obj: PersistentObject, contents: Any) -> str:
    """``<Class oid contents>``, the contents shortened as reprlib does."""
    return f"<{real_class(type(obj)).__name__} {_identifier(obj)} {reprlib.repr(contents)}>"


class PersistentObject:
    """Base of every persistent class; subclasses may use ``__slots__``.

    Instance attributes (all kept in slots, never part of the state):

    - ``_p_oid``: the 8-byte oid, or None until first stored.
    - ``_p_connection``: the Connection that loaded or stored it, or None.
    - ``_p_status``: UNSAVED, SAVED or GHOST.
    - ``_p_serial``: the connection's transaction serial when last used.
    """

    __slots__ = ("_p_status", "_p_serial", "_p_connection", "_p_oid", "__weakref__")

    # A class that can merge concurrent changes defines
    # ``_p_resolve_conflict(self, old_state, committed_state, my_state)``
    # (see durus.connection); None here says this one cannot, and asking
    # costs no failed attribute lookup on every load.
    _p_resolve_conflict = None
    # A class whose instances record what a transaction read from them
    # (see durus.reads) defines ``_p_check_reads(self, old_state,
    # committed_state)``, raising ConflictError unless those reads find the
    # same in both: then an object this transaction only read need not
    # conflict when another client changed other parts of it.
    _p_check_reads = None
    # True where changes to an object are repeated by replaying the
    # operation log of the object that owns it (a BTree and its nodes):
    # see Connection._replay.
    _p_changes_replayed = False

    def __new__(cls, *args: Any, **kwargs: Any) -> PersistentObject:
        obj = object.__new__(cls)
        _setattribute(obj, "_p_status", UNSAVED)
        _setattribute(obj, "_p_serial", 0)
        _setattribute(obj, "_p_connection", None)
        _setattribute(obj, "_p_oid", None)
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if self._p_status != UNSAVED and name[:3] != "_p_":
            self._p_note_change()
        _setattribute(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._p_status != UNSAVED and name[:3] != "_p_":
            self._p_note_change()
        _delattribute(self, name)

    def __getstate__(self) -> Any:
        if self._p_status == GHOST:
            self._p_load_state()
        state = {}
        try:
            state.update(_getattribute(self, "__dict__"))
        except AttributeError:
            pass
        for name in data_slots(real_class(type(self))):
            try:
                state[name] = _getattribute(self, name)
            except AttributeError:
                pass
        return state

    def __setstate__(self, state: Any) -> None:
        self._p_clear_state()
        if state:
            for name, value in state.items():
                _setattribute(self, name, value)

    def _p_clear_state(self) -> None:
        """Drop all state, leaving the object as empty as a fresh ghost."""
        try:
            _getattribute(self, "__dict__").clear()
        except AttributeError:
            pass
        for name in data_slots(real_class(type(self))):
            try:
                _delattribute(self, name)
            except AttributeError:
                pass

    def __repr__(self) -> str:
        return f"<{real_class(type(self)).__name__} {_identifier(self)}>"

    def _p_load_state(self) -> None:
        """Load the stored state of this ghost through its connection."""
        if self._p_status == GHOST:
            self._p_connection.load_state(self)

    def _p_note_change(self) -> None:
        """Mark this object changed so that the next commit stores it."""
        if self._p_status != UNSAVED:
            if self._p_status == GHOST:
                self._p_load_state()
            _setattribute(self, "_p_status", UNSAVED)
            self._p_connection.note_change(self)

    def _p_format_oid(self) -> str:
        oid = self._p_oid
        return str(oid and int.from_bytes(oid, "big"))

    def _p_set_status_ghost(self) -> None:
        """Drop the state; the next use loads it again."""
        self._p_clear_state()
        _setattribute(self, "_p_status", GHOST)
        if self._p_connection is not None:
            _setattribute(self, "__class__", tracking_class(real_class(type(self))))

    def _p_set_status_saved(self) -> None:
        _setattribute(self, "_p_status", SAVED)

    def _p_set_status_unsaved(self) -> None:
        if self._p_status == GHOST:
            self._p_load_state()
        _setattribute(self, "_p_status", UNSAVED)

    def _p_is_ghost(self) -> bool:
        return self._p_status == GHOST

    def _p_is_unsaved(self) -> bool:
        return self._p_status == UNSAVED

    def _p_is_saved(self) -> bool:
        return self._p_status == SAVED


class Persistent(PersistentObject):
    """The usual persistent class: its state is its ``__dict__``."""

    def __getstate__(self) -> dict[str, Any]:
        if self._p_status == GHOST:
            self._p_load_state()
        return _getattribute(self, "__dict__")

    def __setstate__(self, state: dict[str, Any]) -> None:
        _refill_dict(_getattribute(self, "__dict__"), state or {})


class ComputedAttribute(PersistentObject):
    """A cached value computed from other objects, with no stored state.

    It has an oid so that ``invalidate()`` in one connection (which marks it
    changed) makes every other connection forget its cached value too.
    """

    __slots__ = ("value",)

    def __getstate__(self) -> None:
        return None

    def _p_load_state(self) -> None:
        # Nothing is stored: loading only means the value must be recomputed.
        if self._p_status == GHOST:
            self._p_clear_state()
            _setattribute(self, "_p_status", SAVED)

    def invalidate(self) -> None:
        """Forget the value here and, after commit, in every other connection."""
        self._p_clear_state()
        self._p_note_change()

    def get(self, compute: Callable[[], Any]) -> Any:
        """The cached value, computing it with ``compute()`` if there is none."""
        try:
            return _getattribute(self, "value")
        except AttributeError:
            value = compute()
            # Caching the value is not a change to store.
            _setattribute(self, "value", value)
            return value


class ConnectionBase:
    """A bare connection whose ``transaction_serial`` starts at 1, for Durus 4.3 programs."""

    __slots__ = ("transaction_serial",)

    def __new__(cls, *args: Any, **kwargs: Any) -> ConnectionBase:
        instance = super().__new__(cls)
        instance.transaction_serial = 1
        return instance


PersistentBase = PersistentObject  # 4.3's name for the base of persistent classes, for Durus 4.3 programs

"""Schema evolution: classes renamed or moved, attributes added.

Every record names its object's class (``module.Name``, in its class pickle
and in each persistent id ``(oid, class)`` that refers to the object), so a
class that is renamed or moved must still be found under its old name::

    from durus.schema import rename_class, renamed_from, rewrite_instances

    rename_class("shop.models.Item", "shop.catalog.Product")

    @renamed_from("shop.models.Basket")
    class Cart(Persistent): ...

The registry is consulted only where an old name fails to import (its module
is gone, or has no such attribute), so loading classes that import costs
nothing more.  Loading does not rewrite a record: until it is written again
it names the old class, as Durus 4.3 would write it, and a program without
the mapping (Durus 4.3 included) cannot load it.  :func:`rewrite_instances`
writes again every record that names the old classes, in batches, after
which a pack leaves no record naming them.

An attribute added to a class needs no migration: give it a default as a
class attribute, or fill it in ``__setstate__``; an old record loads with
the default and is not marked changed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from durus.error import ConflictError

if TYPE_CHECKING:
    from durus.connection import Connection

__all__ = ["old_names", "rename_class", "renamed_class", "renamed_from", "rewrite_instances"]

ClassT = TypeVar("ClassT", bound=type)

# (old module, old qualified name) -> the new class, or its "module.Name"
# until it is first needed.
_renames: dict[tuple[str, str], type | str] = {}


def _split_name(name: str) -> tuple[str, str]:
    """``("module", "Name")`` from ``"module.Name"`` or ``"module:Qual.Name"``."""
    module, colon, qualname = name.partition(":")
    if not colon:
        module, _, qualname = name.rpartition(".")
    if not module or not qualname:
        raise ValueError(f"{name!r} is not a class name: write 'module.Name' (or 'module:Outer.Name')")
    return module, qualname


def _import_class(name: str) -> type:
    module, qualname = _split_name(name)
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not isinstance(found, type):
        raise TypeError(f"{name} is not a class")
    return found


def rename_class(old_name: str, new_class: type | str) -> None:
    """Load records that name the class ``old_name`` (``"module.Name"``)
    as instances of ``new_class`` (a class, or its ``"module.Name"``, imported
    when first needed), wherever ``old_name`` no longer imports.
    """
    key = _split_name(old_name)
    if isinstance(new_class, str):
        _split_name(new_class)
    elif not isinstance(new_class, type):
        raise TypeError(f"new_class must be a class or 'module.Name', not {new_class!r}")
    _renames[key] = new_class
    from durus import serialize

    serialize.forget_classes()


def renamed_from(*old_names: str) -> Callable[[ClassT], ClassT]:
    """A class decorator: :func:`rename_class` each of ``old_names`` to the class."""

    def register(cls: ClassT) -> ClassT:
        for old_name in old_names:
            rename_class(old_name, cls)
        return cls

    return register


def renamed_class(module: str, name: str) -> type | None:
    """The class registered for the old name ``module``, ``name``, or None."""
    new_class = _renames.get((module, name))
    if isinstance(new_class, str):
        new_class = _renames[module, name] = _import_class(new_class)
    return new_class


def has_renames() -> bool:
    """True if any class is registered under an old name."""
    return bool(_renames)


def old_names(cls: type | None = None) -> list[str]:
    """The old names (``"module.Name"``) registered for ``cls``, or every
    registered old name.  Records may still name them (see :func:`rewrite_instances`).
    """
    return sorted(
        f"{module}.{name}" for (module, name), new_class in _renames.items()
        if cls is None or new_class is cls or new_class == f"{cls.__module__}.{cls.__qualname__}"
    )


def unregister(old_name: str) -> None:
    """Forget the mapping of ``old_name`` (for tests)."""
    _renames.pop(_split_name(old_name), None)
    from durus import serialize

    serialize.forget_classes()


def _old_name_needle(old_name: str) -> bytes:
    """How a protocol-2 pickle names the class: the GLOBAL opcode's argument."""
    module, qualname = _split_name(old_name)
    return f"c{module}\n{qualname}\n".encode()


def rewrite_instances(
    connection: Connection,
    *classes_or_old_names: type | str,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    attempts: int = 10,
) -> int:
    """Write again every record of the given classes and every record that
    names one of the old names (given as ``"module.Name"``, or registered
    for a given class), committing every ``batch_size`` objects; the number
    of objects written.

    A batch that meets other clients' commits is aborted and tried again
    (up to ``attempts`` times).  ``progress(done, total)`` is called after
    each batch.  The connection must have no uncommitted changes.
    """
    from durus.connection import gen_matching_oids

    if connection.changed_objects:
        raise ValueError("rewrite_instances commits: commit or abort the connection's changes first")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    classes = tuple(item for item in classes_or_old_names if isinstance(item, type))
    names = [item for item in classes_or_old_names if isinstance(item, str)]
    for cls in classes:
        names.extend(old_names(cls))
    needles = [_old_name_needle(name) for name in names]
    oids = list(gen_matching_oids(connection, classes, needles))
    done = 0
    for start in range(0, len(oids), batch_size):
        batch = oids[start:start + batch_size]
        for attempt in range(attempts):
            try:
                for oid in batch:
                    obj = connection.get(oid)
                    if obj is not None:
                        obj._p_note_change()
                connection.commit()
                break
            except ConflictError:
                connection.abort()
                if attempt == attempts - 1:
                    raise
        done += len(batch)
        if progress is not None:
            progress(done, len(oids))
    return done

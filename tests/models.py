"""Persistent classes the tests store; importable by subprocesses too."""

from __future__ import annotations

from durus.persistent import ComputedAttribute, Persistent, PersistentObject


class Item(Persistent):
    def __init__(self, name: str = "", value: object = None) -> None:
        self.name = name
        self.value = value


class Hooked(Persistent):
    """An Item that calls ``Hooked.hook(self)``, when set, each time its
    state is taken for pickling: a test's way into the middle of a commit.
    """

    hook = None

    def __init__(self, value: object = None) -> None:
        self.value = value

    def __getstate__(self) -> dict:
        if Hooked.hook is not None:
            Hooked.hook(self)
        return super().__getstate__()


class Slotted(PersistentObject):
    __slots__ = ("a", "b", "__hidden")

    def __init__(self, a: object = None, b: object = None) -> None:
        self.a = a
        self.b = b


class WithDefaults(Persistent):
    """Fills in an attribute added after some records were written."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "added_later" not in self.__dict__:
            self.added_later = "default"


class Cached(ComputedAttribute):
    pass


class Root(Persistent):
    """A root class other than the default PersistentDict."""

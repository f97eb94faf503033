"""A persistent counter that many clients can bump at once without conflict."""

from __future__ import annotations

from typing import Any

from durus.error import ConflictError
from durus.persistent import GHOST, PersistentObject
from durus.reads import reads_of, settle_reads

_setattribute = object.__setattr__


class PersistentCounter(PersistentObject):
    """An integer whose concurrent increments merge instead of conflicting.

    Two transactions that each add to the counter both commit: the second
    one's commit finds the first's value and adds its own difference to it.
    That is serializable only while the transaction did not look at the
    value, so reading ``value`` (or ``int()``, ``==``) counts as a read, and
    a transaction that read the value conflicts like any other.
    ``increment()`` itself reads nothing; the number it returns is this
    transaction's view and may differ from the one finally stored after a
    merge, so use ``value`` (and conflict) where the number must be unique.

    Instance attributes:

    - ``value``: the current count (stored as ``{'value': n}``).
    - ``_p_reads``: whether this transaction read the value (see
      :mod:`durus.reads`); not part of the state.
    """

    __slots__ = ("_value", "_p_reads")

    def __init__(self, value: int = 0) -> None:
        self._p_reads = None
        self._value = value

    @property
    def value(self) -> int:
        value = self._value
        reads_of(self).read_whole()
        return value

    @value.setter
    def value(self, value: int) -> None:
        self._value = value

    def increment(self, amount: int = 1) -> int:
        """Add ``amount`` and return the new value (see the class docstring)."""
        self._value += amount
        return self._value

    def decrement(self, amount: int = 1) -> int:
        """Subtract ``amount`` and return the new value."""
        return self.increment(-amount)

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentCounter):
            return self.value == other.value
        return self.value == other

    __hash__ = None  # mutable: not usable as a dict key

    def __repr__(self) -> str:
        return f"<PersistentCounter {self._p_format_oid()} value={self._value}>"

    def __getstate__(self) -> dict[str, Any]:
        if self._p_status == GHOST:
            self._p_load_state()
        return {"value": self._value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _setattribute(self, "_value", state["value"])
        settle_reads(self)

    def _p_clear_state(self) -> None:
        try:
            object.__delattr__(self, "_value")
        except AttributeError:
            pass

    def _p_resolve_conflict(
        self, old_state: dict[str, Any], committed_state: dict[str, Any], my_state: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply this transaction's difference to the committed value,
        unless this transaction read the value and the committed one differs.
        """
        self._p_check_reads(old_state, committed_state)
        return {"value": committed_state["value"] + my_state["value"] - old_state["value"]}

    def _p_check_reads(self, old_state: dict[str, Any], committed_state: dict[str, Any]) -> None:
        reads = self._p_reads
        if reads is not None and reads.whole and committed_state["value"] != old_state["value"]:
            raise ConflictError()

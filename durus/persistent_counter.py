"""A persistent counter that many clients can bump at once without conflict."""

from __future__ import annotations

from typing import Any

from durus.persistent import PersistentObject


class PersistentCounter(PersistentObject):
    """An integer whose concurrent increments merge instead of conflicting.

    Two transactions that each add to the counter both commit: the second
    one's commit finds the first's value and adds its own difference to it.

    Instance attributes:

    - ``value``: the current count.
    """

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def increment(self, amount: int = 1) -> int:
        """Add ``amount`` and return the new value."""
        self.value += amount
        return self.value

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
        return f"<PersistentCounter {self._p_format_oid()} value={self.value}>"

    def _p_resolve_conflict(
        self, old_state: dict[str, Any], committed_state: dict[str, Any], my_state: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply this transaction's difference to the committed value."""
        return {"value": committed_state["value"] + my_state["value"] - old_state["value"]}

"""Transaction bodies run by the worker processes (support.serial_worker).

Each body takes the connection's root and keyword parameters (one of them,
``name``, the root key of the shared container; see support.layouts),
reads and changes the container as an application would, and returns what
it observed (JSON data), so a test can tell which branch it took.  Bodies
neither commit nor abort: the worker does, when the test says so.
"""

from __future__ import annotations

from typing import Any, Callable

from durus.error import ConflictError

from support.layouts import get, put, remove, scan

Body = Callable[..., Any]
SCENARIOS: dict[str, Body] = {}


def scenario(function: Body) -> Body:
    SCENARIOS[function.__name__] = function
    return function


# -- write skew: doctors on call ------------------------------------------------


@scenario
def take_off_call(root: Any, name: str, me: str, other: str, style: str) -> bool:
    """Go off call if the other doctor is on call.  Whether this one went off.

    ``style`` "value": a doctor is on call when its value is "on" and goes
    off by setting "off"; "member": on call when present, off by removal.
    """
    doctors = root[name]
    if style == "value":
        if doctors[other] == "on" and doctors[me] == "on":
            doctors[me] = "off"
            return True
    elif get(doctors, other) is not None and get(doctors, me) is not None:
        remove(doctors, me)
        return True
    return False


# -- an index entry deleted while another transaction adds to it -----------------


@scenario
def delete_if_childless(root: Any, name: str, entry: str, child: str) -> bool:
    """Remove ``entry`` unless ``child`` (an entry under it) is present."""
    index = root[name]
    if get(index, child) is None and get(index, entry) is not None:
        remove(index, entry)
        return True
    return False


@scenario
def add_child_if_entry(root: Any, name: str, entry: str, child: str) -> bool:
    """Add ``child`` under ``entry`` if ``entry`` is present."""
    index = root[name]
    if get(index, entry) is not None:
        put(index, child)
        return True
    return False


@scenario
def delete_if_empty(root: Any, name: str, entry: str) -> bool:
    """Remove ``entry``, whose value is a PersistentSet, if that set is empty."""
    index = root[name]
    members = index.get(entry)
    if members is not None and len(members) == 0:
        del index[entry]
        return True
    return False


@scenario
def add_to_entry(root: Any, name: str, entry: str, member: str) -> bool:
    """Add ``member`` to the PersistentSet at ``entry``, if the entry is there."""
    members = root[name].get(entry)
    if members is not None:
        members.add(member)
        return True
    return False


# -- inserts that depend on a key being absent ---------------------------------------


@scenario
def insert_if_absent(root: Any, name: str, check: str, key: str, value: str = "on") -> bool:
    """Put ``key`` if ``check`` is absent (``check`` may be ``key`` itself)."""
    container = root[name]
    if get(container, check) is None:
        put(container, key, value)
        return True
    return False


@scenario
def setdefault(root: Any, name: str, key: str, value: str) -> Any:
    return root[name].setdefault(key, value)


@scenario
def book_if_free(root: Any, name: str, low: str, high: str, limit: int, key: str) -> int:
    """Put ``key`` if fewer than ``limit`` keys lie in [low, high); that count."""
    container = root[name]
    found = len(scan(container, low, high))
    if found < limit:
        put(container, key)
    return found


@scenario
def add_if_len_below(root: Any, name: str, limit: int, key: str) -> int:
    """Put ``key`` if the container holds fewer than ``limit`` keys; its len."""
    container = root[name]
    size = len(container)
    if size < limit:
        put(container, key)
    return size


# -- blind changes (they read nothing) ---------------------------------------------


@scenario
def insert(root: Any, name: str, key: str, value: str = "on") -> None:
    put(root[name], key, value)


@scenario
def insert_many(root: Any, name: str, keys: list[str], value: str = "on") -> None:
    container = root[name]
    for k in keys:
        put(container, k, value)


@scenario
def insert_and_mark(root: Any, name: str, key: str, side: str) -> None:
    """Put ``key`` and set ``root[side]["v"] = 1``: one commit, two objects."""
    put(root[name], key)
    root[side]["v"] = 1


@scenario
def increment(root: Any, name: str, amount: int = 1) -> None:
    root[name].increment(amount)


@scenario
def increment_if_below(root: Any, name: str, limit: int) -> int:
    """Increment the counter if its value is below ``limit``; the value seen."""
    counter = root[name]
    seen = counter.value
    if seen < limit:
        counter.increment()
    return seen


# -- a load in the middle of a transaction -------------------------------------------


@scenario
def read_side(root: Any, name: str, side: str, other_key: str) -> dict[str, Any]:
    """Read ``root[side]`` (first use in this transaction).

    Reports whether that load raised ReadConflictError (class name of any
    ConflictError), and whether ``other_key``, committed by another client
    after this transaction started using ``root[name]``, shows in this
    transaction's copy of that container (a merge mid-transaction).
    """
    report: dict[str, Any] = {"error": None}
    try:
        report["side"] = root[side].get("v")
    except ConflictError as error:
        report["error"] = type(error).__name__
    try:
        report["merged"] = get(root[name], other_key) is not None
    except ConflictError as error:
        report["merged"] = False
        report["merged_error"] = type(error).__name__
    return report

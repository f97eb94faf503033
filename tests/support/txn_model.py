"""Random transactions over shared containers, and a serial model of them.

A transaction is a list of operations, each a tuple ``(name, *arguments)``
(see OPERATIONS).  ``apply(operation, env)`` runs one against an ``env``
with attributes ``d`` (a mapping), ``s`` (a set), ``t`` (an ordered
mapping: a BTree) and ``c`` (a counter), and returns what it observed (None
for a blind write).  The same function runs against the real persistent
containers and against plain-Python models (:func:`model_env`), and every
operation is deterministic given what it reads, so running the committed
transactions one after another on the models says what a serial execution
would have stored and observed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

D_KEYS = range(5)
S_MEMBERS = range(5)
T_KEYS = range(12)
VALUES = range(4)


class ModelTree:
    """The part of the BTree API the operations use, over a plain dict."""

    def __init__(self, items: dict[int, Any]) -> None:
        self.data = dict(items)

    def get(self, key: int, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: int) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.data))

    def items(self) -> list[tuple[int, Any]]:
        return sorted(self.data.items())

    def items_range(self, low: int, high: int) -> list[tuple[int, Any]]:
        return [(k, v) for k, v in self.items() if low <= k < high]

    def get_min_item(self) -> tuple[int, Any]:
        return self.items()[0]

    def get_max_item(self) -> tuple[int, Any]:
        return self.items()[-1]

    def __setitem__(self, key: int, value: Any) -> None:
        self.data[key] = value

    def pop(self, key: int, default: Any = None) -> Any:
        return self.data.pop(key, default)


class ModelCounter:
    def __init__(self, value: int) -> None:
        self.value = value

    def increment(self, amount: int = 1) -> int:
        self.value += amount
        return self.value


@dataclass
class Env:
    d: Any
    s: Any
    t: Any
    c: Any


@dataclass(frozen=True)
class Initial:
    d: dict[int, int]
    s: frozenset[int]
    t: dict[int, int]
    c: int


def model_env(initial: Initial) -> Env:
    return Env(dict(initial.d), set(initial.s), ModelTree(initial.t), ModelCounter(initial.c))


def snapshot(env: Env) -> tuple:
    """What a final state is compared by: (dict, set, sorted items, value)."""
    return (dict(env.d.items()), set(env.s), list(env.t.items()), env.c.value)


# -- the operations ----------------------------------------------------------------

Operation = tuple
OPERATIONS: dict[str, Callable[..., Any]] = {}


def operation(function: Callable[..., Any]) -> Callable[..., Any]:
    OPERATIONS[function.__name__] = function
    return function


def apply(op: Operation, env: Env) -> Any:
    name, *arguments = op
    return OPERATIONS[name](env, *arguments)


# reads of the dict
@operation
def d_get(env: Env, k: int) -> Any:
    return env.d.get(k)


@operation
def d_has(env: Env, k: int) -> bool:
    return k in env.d


@operation
def d_len(env: Env) -> int:
    return len(env.d)


@operation
def d_items(env: Env) -> list:
    return sorted(env.d.items())


@operation
def d_equals(env: Env, other: tuple) -> bool:
    return env.d == dict(other)


# reads of the set
@operation
def s_has(env: Env, m: int) -> bool:
    return m in env.s


@operation
def s_len(env: Env) -> int:
    return len(env.s)


@operation
def s_members(env: Env) -> list:
    return sorted(env.s)


@operation
def s_bool(env: Env) -> bool:
    return bool(env.s)


# reads of the tree
@operation
def t_get(env: Env, k: int) -> Any:
    return env.t.get(k)


@operation
def t_has(env: Env, k: int) -> bool:
    return k in env.t


@operation
def t_len(env: Env) -> int:
    return len(env.t)


@operation
def t_keys(env: Env) -> list:
    return list(env.t)


@operation
def t_range(env: Env, low: int, high: int) -> list:
    return list(env.t.items_range(low, high))


@operation
def t_min(env: Env) -> Any:
    return env.t.get_min_item() if env.t else None


@operation
def t_max(env: Env) -> Any:
    return env.t.get_max_item() if env.t else None


# reads of the counter
@operation
def c_value(env: Env) -> int:
    return env.c.value


# blind writes
@operation
def d_set(env: Env, k: int, v: int) -> None:
    env.d[k] = v


@operation
def d_del(env: Env, k: int) -> None:
    env.d.pop(k, None)


@operation
def s_add(env: Env, m: int) -> None:
    env.s.add(m)


@operation
def s_discard(env: Env, m: int) -> None:
    env.s.discard(m)


@operation
def t_set(env: Env, k: int, v: int) -> None:
    env.t[k] = v


@operation
def t_del(env: Env, k: int) -> None:
    env.t.pop(k, None)


@operation
def c_inc(env: Env, amount: int) -> None:
    env.c.increment(amount)


# writes that depend on what they read (they return what they read)
@operation
def d_set_if_absent(env: Env, check: int, k: int) -> Any:
    """if d.get(check) is None: d[k] = 1"""
    seen = env.d.get(check)
    if seen is None:
        env.d[k] = 1
    return seen


@operation
def d_setdefault(env: Env, k: int, v: int) -> Any:
    return env.d.setdefault(k, v)


@operation
def s_discard_if_member(env: Env, check: int, m: int) -> bool:
    """Doctors on call: if check in s: s.discard(m)."""
    seen = check in env.s
    if seen:
        env.s.discard(m)
    return seen


@operation
def s_add_if_absent(env: Env, check: int, m: int) -> bool:
    seen = check in env.s
    if not seen:
        env.s.add(m)
    return seen


@operation
def t_increment_from(env: Env, k: int, j: int) -> Any:
    """t[k] = t.get(j, 0) + 1"""
    seen = env.t.get(j, 0)
    env.t[k] = seen + 1
    return seen


@operation
def t_book_if_free(env: Env, low: int, high: int, k: int) -> int:
    """Put k if fewer than two keys lie in [low, high)."""
    found = len(list(env.t.items_range(low, high)))
    if found < 2:
        env.t[k] = 0
    return found


@operation
def t_len_into_d(env: Env, k: int) -> int:
    size = len(env.t)
    env.d[k] = size
    return size


@operation
def d_into_t(env: Env, k: int, j: int) -> Any:
    seen = env.d.get(j, 0)
    env.t[k] = seen
    return seen


@operation
def c_into_d(env: Env, k: int) -> int:
    seen = env.c.value
    env.d[k] = seen
    return seen


@operation
def c_inc_if_below(env: Env, limit: int) -> int:
    seen = env.c.value
    if seen < limit:
        env.c.increment(1)
    return seen


@operation
def s_min_into_t(env: Env, k: int) -> Any:
    """t[k] = the smallest member of s (or -1), read by iterating s."""
    seen = min(env.s, default=-1)
    env.t[k] = seen
    return seen

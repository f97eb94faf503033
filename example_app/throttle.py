"""Login throttling: how many failed logins an account, and a client address,
may have per window of time.

The counts live in the Durus database, so every worker process of a
deployment shares them.  Each count is a
:class:`~durus.persistent_counter.PersistentCounter`: increments made at
the same moment by different workers merge at commit instead of
conflicting, so concurrent failures all count.  That holds only for a
transaction that adds to a count without reading it, so a login runs two:
the check (:func:`login_wait`) reads the counts and is then aborted, and
a failure is recorded afterwards (:func:`record_failed_login`) by one that
only adds, and commits at once (the app's commit veto would drop the
changes of the 400 answer that follows).

Windows are fixed spans of ``WIKI_LOGIN_WINDOW`` seconds; a failure counts
in the window it happened in, and the first failure of a new window drops
the windows that have ended, so the stored state stays bounded by the
failures of one window.  Configuration (app config, or ``FLASK_``-prefixed
environment variables):

- ``WIKI_LOGIN_WINDOW``: the window length in seconds (default 900);
- ``WIKI_LOGIN_ACCOUNT_LIMIT``: failures per account name per window
  (default 10; 0 turns the limit off);
- ``WIKI_LOGIN_ADDRESS_LIMIT``: failures per client address per window,
  whatever names they tried (default 50; 0 turns it off);
- ``WIKI_LOGIN_CLOCK``: a callable giving the time in seconds (default
  :func:`time.time`; tests give their own).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app

from durus.btree import BTree
from durus.persistent import Persistent
from durus.persistent_counter import PersistentCounter
from example_app.database import durus

ROOT_KEY = "login_throttle"
EXTENSION_KEY = "wiki_login_throttle"
CONFIG_DEFAULTS: dict[str, Any] = {
    "WIKI_LOGIN_WINDOW": 900,
    "WIKI_LOGIN_ACCOUNT_LIMIT": 10,
    "WIKI_LOGIN_ADDRESS_LIMIT": 50,
    "WIKI_LOGIN_CLOCK": time.time,
}
# Real names have at most 30 characters; a longer key only groups names
# that cannot exist, so a megabyte-long "name" costs a short key.
MAX_KEY = 64
# Clients with one IPv6 address usually have the whole /64 around it.
IPV6_PREFIX = 64


@dataclass(frozen=True)
class ThrottleSettings:
    """The ``WIKI_LOGIN_*`` settings, checked once when the app is made."""

    window: float
    account_limit: int
    address_limit: int
    clock: Callable[[], float]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ThrottleSettings:
        """Read the settings; ValueError naming the key if one is unusable."""
        window = _number(config, "WIKI_LOGIN_WINDOW", float)
        if window <= 0:
            raise ValueError(f"WIKI_LOGIN_WINDOW must be a positive number of seconds (got {window!r})")
        limits = []
        for key in ("WIKI_LOGIN_ACCOUNT_LIMIT", "WIKI_LOGIN_ADDRESS_LIMIT"):
            limit = _number(config, key, int)
            if limit < 0:
                raise ValueError(f"{key} must be a number of failures, 0 for no limit (got {limit!r})")
            limits.append(limit)
        clock = config["WIKI_LOGIN_CLOCK"]
        if not callable(clock):
            raise ValueError(f"WIKI_LOGIN_CLOCK must be a callable giving seconds (got {clock!r})")
        return cls(window, limits[0], limits[1], clock)

    def window_start(self, now: float) -> float:
        return math.floor(now / self.window) * self.window


def _number(config: Mapping[str, Any], key: str, kind: type) -> Any:
    value = config[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number (got {value!r})") from None


class FailureWindow(Persistent):
    """The failed logins of one window of time.

    Instance attributes:

    - ``end``: when the window ends (seconds since the epoch).
    - ``accounts``, ``addresses``: BTrees, account or address key ->
      PersistentCounter of failures.
    """

    def __init__(self, end: float) -> None:
        self.end = end
        self.accounts = BTree()
        self.addresses = BTree()

    def failures(self, account: str, address: str) -> tuple[int, int]:
        """(failures of ``account``, failures from ``address``) in this window."""
        return _count(self.accounts, account), _count(self.addresses, address)

    def add_failure(self, account: str, address: str) -> None:
        """Count one failure for both, without reading the counts (so it merges)."""
        for tree, key in ((self.accounts, account), (self.addresses, address)):
            counter = tree.get(key)
            if counter is None:
                counter = tree[key] = PersistentCounter()
            counter.increment()


def _count(tree: BTree, key: str) -> int:
    counter = tree.get(key)
    return 0 if counter is None else counter.value


class LoginThrottle(Persistent):
    """Every window's failed logins: a BTree, window start -> FailureWindow.

    Instance attributes:

    - ``windows``: the BTree; only the current window (and, until the next
      one's first failure, the one before) is kept.
    """

    def __init__(self) -> None:
        self.windows = BTree()

    def wait(self, account: str, address: str, now: float, settings: ThrottleSettings) -> float | None:
        """Seconds until ``account`` from ``address`` may try again, or None if now."""
        window = self.windows.get(settings.window_start(now))
        if window is None:
            return None
        account_failures, address_failures = window.failures(account, address)
        if _reached(account_failures, settings.account_limit) or _reached(address_failures, settings.address_limit):
            return max(window.end - now, 0.0)
        return None

    def add_failure(self, account: str, address: str, now: float, settings: ThrottleSettings) -> None:
        """Count a failed login; the first of a window drops the windows that ended."""
        start = settings.window_start(now)
        window = self.windows.get(start)
        if window is None:
            for old_start, old in list(self.windows.items()):
                if old.end <= now:
                    del self.windows[old_start]
            window = self.windows[start] = FailureWindow(start + settings.window)
        window.add_failure(account, address)


def _reached(count: int, limit: int) -> bool:
    return limit > 0 and count >= limit


def account_key(name: str) -> str:
    """The key an attempt on ``name`` counts under (names are unique regardless of case)."""
    return name.lower()[:MAX_KEY]


def address_key(address: str | None) -> str:
    """The key a client address counts under: an IPv6 address's /64 network,
    an IPv4 one (mapped into IPv6 or not) as it is.
    """
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:MAX_KEY]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return str(parsed)


def init_throttle(app: Flask) -> None:
    """Check the ``WIKI_LOGIN_*`` settings (defaults for those not given)."""
    for key, value in CONFIG_DEFAULTS.items():
        app.config.setdefault(key, value)
    app.extensions[EXTENSION_KEY] = ThrottleSettings.from_config(app.config)


def _settings() -> ThrottleSettings:
    return current_app.extensions[EXTENSION_KEY]


def login_wait(name: str, address: str | None) -> tuple[float | None, float]:
    """(seconds the attempt must wait, or None; the time of the attempt).

    Ends the request's transaction (call it before changing anything): the
    counts it read must not make the failure recorded next conflict with
    other workers' failures.
    """
    settings = _settings()
    now = settings.clock()
    throttle = durus.root.get(ROOT_KEY)
    wait = None if throttle is None else throttle.wait(account_key(name), address_key(address), now, settings)
    durus.connection.abort()
    return wait, now


def record_failed_login(name: str, address: str | None, now: float) -> None:
    """Count a failed login (made at ``now``) and commit it.

    A conflict (two workers making the same new window or counter at once)
    raises ConflictError, and the Flask extension replays the request.
    """
    root = durus.root
    throttle = root.get(ROOT_KEY)
    if throttle is None:
        throttle = root[ROOT_KEY] = LoginThrottle()
    throttle.add_failure(account_key(name), address_key(address), now, _settings())
    durus.connection.commit()

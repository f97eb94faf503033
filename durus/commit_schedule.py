"""When commits may land and when they may be acknowledged.

Three rules, each one class:

- :class:`CommitTurns`: protocol-1 (Durus 4.3) commits take turns, since
  such a client learns its invalidations in one round trip and sends its
  records in the next.  The turn is only a queue of waiting clients: a
  protocol-2 commit, which checks and writes in one step, never waits for
  it.  A client that holds the turn longer than the timeout while others
  wait loses it (the server then drops that client).
- :class:`GroupSync`: a commit is acknowledged only once the disk sync that
  covers it has returned, and commits written while one sync runs share the
  next (group commit).
- :class:`Acknowledgements`: the written commits whose clients wait for
  their disk sync, and a thread that runs the syncs so the server's loop
  never blocks on the disk while others wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("durus.storage_server")

DEFAULT_COMMIT_TURN_TIMEOUT = 0.5

Waiter = TypeVar("Waiter")


class GroupSync:
    """Counts commits written and commits on disk, so that one disk sync can
    serve every commit written before it started.

    Any thread that needs its commit durable calls :meth:`wait`; the first
    one in does the sync, the others wait for it or for the next one.

    Instance attributes: ``written`` and ``synced``, serial numbers of the
    last commit written and the last known to be on disk; ``deferred``: False
    when the storage syncs inside each write (then written is synced).
    """

    def __init__(self, sync_to_disk: Callable[[], None] | None) -> None:
        self._sync_to_disk = sync_to_disk
        self.deferred = sync_to_disk is not None
        self._condition = threading.Condition(threading.Lock())
        self._syncing = False
        self._waiters = 0  # threads waiting for another's sync
        self.written = 0
        self.synced = 0

    def note_write(self) -> int:
        """Count one written commit; its serial number, for :meth:`wait`."""
        with self._condition:
            self.written += 1
            if not self.deferred:
                self.synced = self.written
            return self.written

    def wait(self, serial: int) -> None:
        """Return once commit ``serial`` is on disk, syncing if no one is."""
        if self.synced >= serial:
            return  # read without the lock: it only grows
        condition = self._condition
        with condition:
            while self.synced < serial:
                if self._syncing:
                    self._waiters += 1
                    try:
                        condition.wait()
                    finally:
                        self._waiters -= 1
                    continue
                self._syncing = True
                target = self.written
                condition.release()
                try:
                    self._sync_to_disk()
                finally:
                    condition.acquire()
                    self._syncing = False
                    if self._waiters:
                        condition.notify_all()
                self.synced = max(self.synced, target)


class CommitTurns(Generic[Waiter]):
    """The queue of protocol-1 commits; see the module docstring.

    Instance attributes: ``holder`` (who has the turn, or None); ``since``
    (when it got it); ``timeout``.
    """

    def __init__(self, timeout: float = DEFAULT_COMMIT_TURN_TIMEOUT) -> None:
        self.timeout = timeout
        self.holder: Waiter | None = None
        self.since = 0.0
        self._queue: deque[Waiter] = deque()

    def join(self, waiter: Waiter) -> None:
        self._queue.append(waiter)

    def next_holder(self, usable: Callable[[Waiter], bool]) -> Waiter | None:
        """Give the free turn to the first usable waiter; who got it."""
        if self.holder is not None:
            return None
        while self._queue:
            waiter = self._queue.popleft()
            if usable(waiter):
                self.holder = waiter
                self.since = time.monotonic()
                return waiter
        return None

    def release(self, waiter: Waiter) -> bool:
        """End ``waiter``'s turn; False if it did not hold it."""
        if self.holder is not waiter:
            return False
        self.holder = None
        return True

    def seconds_left(self) -> float | None:
        """Until the holder's turn times out; None while nobody waits."""
        if self.holder is None or not self._queue:
            return None
        return max(0.0, self.since + self.timeout - time.monotonic())

    def overdue(self) -> Waiter | None:
        """The holder, if it held the turn too long while others wait."""
        left = self.seconds_left()
        return self.holder if left == 0.0 else None


class Acknowledgements(Generic[Waiter]):
    """Written commits waiting for their disk sync; see the module docstring.

    ``on_failure`` is called (from the sync thread) when the disk cannot
    sync: nothing may be acknowledged after that.  ``wake`` tells the
    server's loop that commits became durable.
    """

    def __init__(self, group: GroupSync, wake: Callable[[], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        self.group = group
        self._wake = wake
        self._on_failure = on_failure
        self._waiting: list[tuple[int, Waiter]] = []
        self._wanted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.group.deferred:
            self._thread = threading.Thread(target=self._run, name="durus-disk-sync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(5)

    def add(self, serial: int, waiter: Waiter, sync_here: bool) -> None:
        """Wait for ``serial`` to be durable; with ``sync_here`` (no other
        commit to overlap the sync with) sync in this thread at once.
        """
        self._waiting.append((serial, waiter))
        if sync_here:
            self.make_durable(serial)
        elif not self._wanted.is_set():  # set() takes a lock and notifies
            self._wanted.set()

    def discard(self, waiter: Waiter) -> None:
        self._waiting = [item for item in self._waiting if item[1] is not waiter]

    def durable(self) -> list[Waiter]:
        """Remove and return the waiters whose commits are on disk now."""
        if not self._waiting:
            return []
        synced = self.group.synced
        done = [waiter for serial, waiter in self._waiting if serial <= synced]
        if done:
            self._waiting = [item for item in self._waiting if item[0] > synced]
        return done

    def make_durable(self, serial: int) -> bool:
        """Wait until commit ``serial`` is on disk; False (and the failure
        reported) if it cannot be, since acknowledging anything after that
        would be a lie.
        """
        try:
            self.group.wait(serial)
        except BaseException as error:
            log.critical("cannot make commits durable (%s); stopping the server", error)
            self._on_failure(error)
            return False
        return True

    def _run(self) -> None:
        """One sync per batch of handed-over commits, then wake the loop."""
        wanted = self._wanted
        while not self._stopping:
            if not wanted.wait(timeout=1.0):
                continue
            wanted.clear()
            if self._stopping or not self.make_durable(self.group.written):
                return
            self._wake()

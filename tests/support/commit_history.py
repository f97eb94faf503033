"""Committing clients that log exactly what they commit, so a test can
rebuild the database as of any commit and compare a copy object by object.

Every transaction a :class:`CountingWriter` commits sets ``root["txn"]`` to
``(n, writer)``, one more than the ``n`` it read: any two commits conflict
on the root, so the committed transactions are totally ordered by ``n``,
1, 2, 3, ...  Each writer's storage (:class:`RecordingClientStorage`) keeps
the records the server accepted in each commit, exactly as sent.  Writers
never drop a reference, so every stored object stays reachable, and the
reachable state after commit ``n`` is the seed state updated with the
records of commits 1 to ``n`` in order (:func:`state_after`).
"""

from __future__ import annotations

import random
import threading
import time

from durus.btree import BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList

ROOT_OID = b"\0" * 8


class RecordingClientStorage(ClientStorage):
    """A ClientStorage that appends the records of each commit the server
    accepted to ``committed``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.committed: list[dict[bytes, bytes]] = []

    def end(self, handle_invalidations=None, **options) -> None:
        records = dict(self.records)
        super().end(handle_invalidations, **options)  # raises unless the server has them
        if records:
            self.committed.append(records)


def seed(storage, items: int, writers: int) -> dict[bytes, bytes]:
    """The starting database (``root["txn"] == (0, "seed")``); its records."""
    connection = Connection(storage)
    root = connection.get_root()
    root["txn"] = (0, "seed")
    root["items"] = tree = BTree()
    for i in range(items):
        tree[i] = PersistentDict(value=0)
    for w in range(writers):
        root[f"added{w}"] = PersistentList()
    connection.commit()
    return dict(storage.gen_oid_record(start_oid=ROOT_OID))


class CountingWriter(threading.Thread):
    """Commits until stopped: bumps ``root["txn"]``, a few items, and adds
    a new object to its own list every third commit.

    ``numbers`` are the ``n`` of its commits, in step with
    ``storage.committed``; ``error`` is whatever stopped it otherwise.
    """

    def __init__(self, address, index: int, items: int) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.index = index
        self.items = items
        self.stopped = threading.Event()
        self.numbers: list[int] = []
        self.conflicts = 0
        self.error: BaseException | None = None
        self.storage: RecordingClientStorage | None = None

    def run(self) -> None:
        rng = random.Random(self.index)
        try:
            self.storage = RecordingClientStorage(address=self.address)
            connection = Connection(self.storage)
            while not self.stopped.is_set():
                try:
                    # A read may meet a conflict too (ReadConflictError).
                    root = connection.get_root()
                    n = root["txn"][0] + 1
                    root["txn"] = (n, f"writer{self.index}")
                    for i in rng.sample(range(self.items), 5):
                        root["items"][i]["value"] += 1
                    if n % 3 == 0:
                        root[f"added{self.index}"].append(PersistentDict(n=n))
                    connection.commit()
                except ConflictError:
                    connection.abort()
                    self.conflicts += 1
                    time.sleep(rng.uniform(0, 0.004))  # back off, or one writer starves the rest
                    continue
                self.numbers.append(n)
                assert len(self.numbers) == len(self.storage.committed)
                time.sleep(rng.uniform(0, 0.002))  # give the others a turn
        except BaseException as error:  # reported by stop()
            self.error = error
        finally:
            if self.storage is not None:
                self.storage.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(60)
        assert not self.is_alive(), f"writer {self.index} did not stop"
        assert self.error is None, repr(self.error)


def history(writers: list[CountingWriter]) -> list[dict[bytes, bytes]]:
    """The records of every commit, in commit order: ``history[n - 1]``
    is commit ``n``.  Checks that the numbers are exactly 1, 2, ...
    """
    by_number: dict[int, dict[bytes, bytes]] = {}
    for writer in writers:
        for n, records in zip(writer.numbers, writer.storage.committed, strict=True):
            assert n not in by_number, f"two commits numbered {n}: the root did not conflict"
            assert records[ROOT_OID], n
            by_number[n] = records
    assert sorted(by_number) == list(range(1, len(by_number) + 1)), "a commit number is missing"
    return [by_number[n] for n in range(1, len(by_number) + 1)]


def state_after(start: dict[bytes, bytes], commits: list[dict[bytes, bytes]], n: int) -> dict[bytes, bytes]:
    """The records as of commit ``n`` (0: the seed)."""
    state = dict(start)
    for records in commits[:n]:
        state.update(records)
    return state


def differences(expected: dict[bytes, bytes], actual: dict[bytes, bytes], limit: int = 10) -> list[str]:
    """What differs between two oid -> record maps, object by object."""
    problems = []
    for oid in sorted(expected.keys() | actual.keys()):
        if oid not in actual:
            problems.append(f"{oid.hex()}: missing from the copy")
        elif oid not in expected:
            problems.append(f"{oid.hex()}: in the copy only")
        elif expected[oid] != actual[oid]:
            problems.append(f"{oid.hex()}: record differs")
    if len(problems) > limit:
        problems[limit:] = [f"... {len(problems) - limit} more"]
    return problems

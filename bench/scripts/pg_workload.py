"""One PostgreSQL benchmark workload, run in a fresh process; prints JSON.

    pg_workload.py IMPLEMENTATION WORKLOAD SIZE DSN [CLIENT]

IMPLEMENTATION is ``ours`` (``durus.postgres_storage.PostgresStorage`` under
a Durus ``Connection``) or ``relstorage`` (ZODB on a history-free
RelStorage, psycopg2).  The caller picks the interpreter and import path,
and gives each implementation a database of its own on the same cluster.
Setup (building what a workload loads or packs) runs untimed, first; the
concurrent workloads are run by several processes at once, each told its
client number; each prints ``ready`` once connected, then reads from stdin
the wall-clock time to start at and how long to run.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

BATCH = 1000  # build commits every this many inserts
CLIENTS_ROOT_KEY = "client"  # root[f"client{n}"]: client n's own object
SHARED_KEY = "shared"  # root["shared"]: the BTree every client writes
SHARED_KEYS = 2000  # the shared tree's key space (inserts and updates)
NEGOTIATION_CODES = (80877103 .to_bytes(4, "big"), 80877104 .to_bytes(4, "big"))


class Database:
    """What a workload needs of a database, the same for both implementations.

    Instance attributes: ``root`` (the root mapping), ``conflicts`` (the
    exception classes the application sees as conflicts).
    """

    conflicts: tuple[type[BaseException], ...] = ()
    root: Any

    def begin(self) -> None:
        """Start a transaction that sees every commit so far."""

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def new_tree(self) -> Any:
        raise NotImplementedError

    def new_item(self, key: int) -> Any:
        raise NotImplementedError

    def pack(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Ours(Database):
    """A Durus Connection on this package's PostgresStorage."""

    def __init__(self, dsn: str) -> None:
        from durus.btree import BTree
        from durus.connection import Connection
        from durus.error import ConflictError
        from durus.postgres_storage import PostgresStorage

        from bench_models import Item

        self._tree, self._item = BTree, Item
        self.conflicts = (ConflictError,)
        self.connection = Connection(PostgresStorage(dsn))
        self.root = self.connection.get_root()

    def begin(self) -> None:
        """Nothing: a Durus commit or abort already brought the connection
        up to date, so the next transaction has begun.
        """

    def commit(self) -> None:
        self.connection.commit()

    def abort(self) -> None:
        self.connection.abort()

    def new_tree(self) -> Any:
        return self._tree()

    def new_item(self, key: int) -> Any:
        return self._item(key)

    def pack(self) -> None:
        self.connection.pack()

    def close(self) -> None:
        self.connection.get_storage().close()


class RelStorageZodb(Database):
    """ZODB on RelStorage, history-free, through psycopg2."""

    def __init__(self, dsn: str) -> None:
        import transaction
        import ZODB
        from BTrees.OOBTree import OOBTree
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage
        from ZODB.POSException import ConflictError

        from zodb_models import Item

        self._tree, self._item = OOBTree, Item
        self.conflicts = (ConflictError,)
        options = Options(keep_history=False, driver="psycopg2")
        storage = RelStorage(PostgreSQLAdapter(dsn=libpq_dsn(dsn), options=options), options=options)
        self.db = ZODB.DB(storage)
        self.manager = transaction.TransactionManager()
        self.connection = self.db.open(self.manager)
        self.root = self.connection.root()

    def begin(self) -> None:
        self.manager.begin()

    def commit(self) -> None:
        self.manager.commit()

    def abort(self) -> None:
        self.manager.abort()

    def new_tree(self) -> Any:
        return self._tree()

    def new_item(self, key: int) -> Any:
        return self._item(key)

    def pack(self) -> None:
        self.db.pack()

    def close(self) -> None:
        self.connection.close()
        self.db.close()


def libpq_dsn(uri: str) -> str:
    """``postgresql://user@host:port/db`` as libpq keywords (RelStorage wants those)."""
    parts = urlsplit(uri)
    words = {"host": parts.hostname, "port": parts.port, "user": parts.username,
             "password": parts.password, "dbname": parts.path.lstrip("/"), **dict(parse_qsl(parts.query))}
    return " ".join(f"{key}={value}" for key, value in words.items() if value)


IMPLEMENTATIONS: dict[str, Callable[[str], Database]] = {"ours": Ours, "relstorage": RelStorageZodb}


# --- setup (untimed) ----------------------------------------------------------


def build_tree(db: Database, size: int, name: str) -> None:
    tree = db.root[name] = db.new_tree()
    for key in range(size):
        tree[key] = db.new_item(key)
        if key % BATCH == BATCH - 1:
            db.commit()
    db.commit()


def setup_clients(db: Database, size: int) -> dict[str, Any]:
    """Each client's own object, and the shared tree, before the clients start."""
    for client in range(size):
        db.root[f"{CLIENTS_ROOT_KEY}{client}"] = db.new_item(client)
    tree = db.root[SHARED_KEY] = db.new_tree()
    for key in range(0, SHARED_KEYS, 2):
        tree[key] = 0
    db.commit()
    return {"clients": size}


def setup_tree(db: Database, size: int) -> dict[str, Any]:
    build_tree(db, size, "tree")
    return {"objects": size}


def setup_pack(db: Database, size: int) -> dict[str, Any]:
    """``size`` live objects and ``size`` dead ones (a tree dropped from the root)."""
    build_tree(db, size, "live")
    build_tree(db, size, "dead")
    del db.root["dead"]
    db.commit()
    return {"live": size, "dead": size}


# --- timed workloads ---------------------------------------------------------


def small_commits(db: Database, size: int) -> dict[str, Any]:
    item = db.root["item"] = db.new_item(0)
    db.commit()
    start = time.perf_counter()
    for key in range(size):
        db.begin()
        item.key = key
        db.commit()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "commits": size, "commits_per_s": size / seconds}


def cold_load(db: Database, size: int) -> dict[str, Any]:
    """Load ``size`` objects by key, in a shuffled order, in a fresh process."""
    keys = list(range(size))
    random.Random(7).shuffle(keys)
    start = time.perf_counter()
    tree = db.root["tree"]
    for key in keys:
        tree[key].name  # loads the item (and the tree nodes on the way)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "objects": size, "objects_per_s": size / seconds}


def build(db: Database, size: int) -> dict[str, Any]:
    start = time.perf_counter()
    build_tree(db, size, "built")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "objects": size, "objects_per_s": size / seconds}


def pack(db: Database, size: int) -> dict[str, Any]:
    start = time.perf_counter()
    db.pack()
    return {"seconds": time.perf_counter() - start}


def disjoint_client(db: Database, client: int, stop_at: float) -> dict[str, Any]:
    """Commit changes to this client's own object until ``stop_at``."""
    commits = attempts = conflicts = 0
    while time.time() < stop_at:
        attempts += 1
        try:
            db.begin()
            db.root[f"{CLIENTS_ROOT_KEY}{client}"].key += 1
            db.commit()
            commits += 1
        except db.conflicts:
            conflicts += 1
            db.abort()
    return {"commits": commits, "attempts": attempts, "conflicts": conflicts}


def shared_client(db: Database, client: int, stop_at: float) -> dict[str, Any]:
    """Insert or update random keys of the one shared tree until ``stop_at``,
    replaying each conflicting transaction as an application would.
    """
    chooser = random.Random(client)
    commits = attempts = conflicts = 0
    while time.time() < stop_at:
        key = chooser.randrange(SHARED_KEYS)
        while time.time() < stop_at:
            attempts += 1
            try:
                db.begin()
                tree = db.root[SHARED_KEY]
                tree[key] = tree.get(key, 0) + 1
                db.commit()
                commits += 1
                break
            except db.conflicts:
                conflicts += 1
                db.abort()
    return {"commits": commits, "attempts": attempts, "conflicts": conflicts}


# --- round trips, counted by a proxy between this process and the server ----


class TurnCounter:
    """A TCP proxy to the server that counts round trips and statements.

    A round trip is a turn of the conversation: the client sending after
    the server last spoke.  Statements are the client's Query ('Q') and
    Execute ('E') protocol messages (the stream is parsed; TLS is off).
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.turns = 0
        self.statements = 0
        self._client_spoke_last = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.turns, self.statements

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(server, client), daemon=True).start()

    def _client_to_server(self, source: socket.socket, sink: socket.socket) -> None:
        buffer = b""
        started = False  # the first message (startup) has no type byte
        while data := source.recv(65536):
            with self._lock:
                if not self._client_spoke_last:
                    self.turns += 1
                    self._client_spoke_last = True
            buffer += data
            while True:
                header = 4 if not started else 5
                if len(buffer) < header:
                    break
                length = int.from_bytes(buffer[header - 4:header], "big")
                if len(buffer) < header - 4 + length:
                    break
                if started and buffer[:1] in (b"Q", b"E"):
                    with self._lock:
                        self.statements += 1
                # An SSL or GSS encryption request (refused: no TLS here)
                # comes before the startup message, untyped like it.
                negotiation = not started and length == 8 and buffer[4:8] in NEGOTIATION_CODES
                buffer = buffer[header - 4 + length:]
                started = started or not negotiation
            sink.sendall(data)
        sink.close()

    def _server_to_client(self, source: socket.socket, sink: socket.socket) -> None:
        while data := source.recv(65536):
            with self._lock:
                self._client_spoke_last = False
            sink.sendall(data)
        sink.close()


def round_trips(implementation: str, dsn: str, size: int) -> dict[str, Any]:
    """Round trips and statements per small commit, through a counting proxy."""
    parts = urlsplit(dsn)
    proxy = TurnCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    query = "sslmode=disable&gssencmode=disable" + (f"&{parts.query}" if parts.query else "")
    db = IMPLEMENTATIONS[implementation](urlunsplit((parts.scheme, netloc, parts.path, query, "")))
    item = db.root["item"] = db.new_item(0)
    db.commit()
    for key in range(20):  # warm: connection set up, statements prepared
        db.begin()
        item.key = key
        db.commit()
    turns, statements = proxy.counts()
    for key in range(size):
        db.begin()
        item.key = key
        db.commit()
    after_turns, after_statements = proxy.counts()
    db.close()
    return {"commits": size, "round_trips_per_commit": (after_turns - turns) / size,
            "statements_per_commit": (after_statements - statements) / size}


SETUPS = {"setup_clients": setup_clients, "setup_tree": setup_tree, "setup_pack": setup_pack}
WORKLOADS = {"small_commits": small_commits, "cold_load": cold_load, "build": build, "pack": pack}
CLIENTS = {"disjoint": disjoint_client, "shared": shared_client}


def main(argv: list[str]) -> None:
    implementation, workload, size, dsn = argv[0], argv[1], int(argv[2]), argv[3]
    if workload == "round_trips":
        result = round_trips(implementation, dsn, size)
    else:
        db = IMPLEMENTATIONS[implementation](dsn)
        if workload in CLIENTS:
            # Connected and up to date: say so, and wait for the go (the
            # wall-clock start and how long to run) on stdin.
            db.begin()
            print("ready", flush=True)
            start_at, seconds = map(float, sys.stdin.readline().split())
            time.sleep(max(0.0, start_at - time.time()))
            result = CLIENTS[workload](db, int(argv[4]), start_at + seconds)
        else:
            result = {**SETUPS, **WORKLOADS}[workload](db, size)
        db.close()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Property: whatever concurrent transactions commit is serializable.

Pairs and triples of random transactions (support/txn_model.py) run at once
over four shared containers, each transaction through its own Connection to
one real storage server (a ``durus -s`` process started once for the
module): a PersistentDict, a PersistentSet, a BTree of BNode2 nodes (so
inserts and deletes split and merge nodes) and a PersistentCounter.  A
transaction is a few operations: reads (get, ``in``, ``len``, iteration,
equality, ``items_range``, min, max, a counter's value), blind writes (set,
delete, add, discard, increment) and writes that depend on what was read
(``if d.get(a) is None: d[b] = 1``, ``t[k] = t.get(j, 0) + 1``, ...).

The operations of all transactions run in a random interleaving, each
transaction's commit somewhere after its own last operation.  A
ConflictError, from an operation or from the commit, aborts that
transaction (no retry).  Then the stored state must be what running the
committed transactions one after another, in some order, from the initial
state gives, and every committed transaction must have observed exactly
what it observes in that serial run.  Resolution may merge whatever it
likes, as long as that holds (SPEC §2, "Resolution never weakens
serializability").

Each example stores its containers under a root key of its own.  The slow
variant (``--run-slow``) runs many more examples.
"""

from __future__ import annotations

import itertools
from itertools import permutations
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durus.btree import BNode2, BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.error import ConflictError
from durus.persistent_counter import PersistentCounter
from durus.persistent_dict import PersistentDict
from durus.persistent_set import PersistentSet
from server_process import ServerProcess
from support.btree_check import check_btree
from support.txn_model import (
    D_KEYS,
    S_MEMBERS,
    T_KEYS,
    VALUES,
    Env,
    Initial,
    apply,
    model_env,
    snapshot,
)

MAX_TRANSACTIONS = 3
EXAMPLES = 1000
SLOW_EXAMPLES = 4000

# -- strategies ----------------------------------------------------------------------

d_key = st.sampled_from(D_KEYS)
s_member = st.sampled_from(S_MEMBERS)
t_key = st.sampled_from(T_KEYS)
value = st.sampled_from(VALUES)
bounds = st.tuples(t_key, t_key).map(sorted)


def op(name: str, *arguments: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.just(name), *arguments)


reads = st.one_of(
    op("d_get", d_key),
    op("d_has", d_key),
    op("d_len"),
    op("d_items"),
    op("d_equals", st.dictionaries(d_key, value, max_size=3).map(lambda d: tuple(sorted(d.items())))),
    op("s_has", s_member),
    op("s_len"),
    op("s_members"),
    op("s_bool"),
    op("t_get", t_key),
    op("t_has", t_key),
    op("t_len"),
    op("t_keys"),
    bounds.map(lambda b: ("t_range", b[0], b[1])),
    op("t_min"),
    op("t_max"),
    op("c_value"),
)
blind_writes = st.one_of(
    op("d_set", d_key, value),
    op("d_del", d_key),
    op("s_add", s_member),
    op("s_discard", s_member),
    op("t_set", t_key, value),
    op("t_del", t_key),
    op("c_inc", st.integers(1, 3)),
)
dependent_writes = st.one_of(
    op("d_set_if_absent", d_key, d_key),
    op("d_setdefault", d_key, value),
    op("s_discard_if_member", s_member, s_member),
    op("s_add_if_absent", s_member, s_member),
    op("t_increment_from", t_key, t_key),
    st.tuples(bounds, t_key).map(lambda b: ("t_book_if_free", b[0][0], b[0][1], b[1])),
    op("t_len_into_d", d_key),
    op("d_into_t", t_key, d_key),
    op("c_into_d", d_key),
    op("c_inc_if_below", st.integers(0, 4)),
    op("s_min_into_t", t_key),
)
operations = st.one_of(reads, blind_writes, dependent_writes)
transactions = st.lists(st.lists(operations, min_size=1, max_size=5), min_size=2, max_size=MAX_TRANSACTIONS)
initial_states = st.builds(
    Initial,
    d=st.dictionaries(d_key, value, max_size=len(D_KEYS)),
    s=st.frozensets(s_member, max_size=len(S_MEMBERS)),
    t=st.dictionaries(t_key, value, max_size=len(T_KEYS)),
    c=st.integers(0, 3),
)


# -- the database --------------------------------------------------------------------


class Cluster:
    """One admin connection (set-up, final state) and one per transaction."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.admin = Connection(ClientStorage(address=address))
        self.connections = [Connection(ClientStorage(address=address)) for _ in range(MAX_TRANSACTIONS)]
        self.names = itertools.count()

    def store(self, initial: Initial) -> str:
        name = f"example-{next(self.names)}"
        tree = BTree(BNode2)
        for key in sorted(initial.t):
            tree[key] = initial.t[key]
        admin = self.admin
        admin.abort()
        admin.get_root()[name] = PersistentDict(
            d=PersistentDict(initial.d), s=PersistentSet(initial.s), t=tree, c=PersistentCounter(initial.c)
        )
        admin.commit()
        return name

    def stored(self, name: str) -> tuple[tuple, str | None]:
        """The committed state as a snapshot, and what is wrong with its
        B-tree (None if it is a valid one)."""
        self.admin.abort()
        env = self.env(self.admin, name)
        try:
            check_btree(env.t)
            fault = None
        except AssertionError as error:
            fault = str(error)
        return snapshot(env), fault

    @staticmethod
    def env(connection: Connection, name: str) -> Env:
        holder = connection.get_root()[name]
        return Env(holder["d"], holder["s"], holder["t"], holder["c"])

    def close(self) -> None:
        for connection in [self.admin, *self.connections]:
            connection.get_storage().close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("serializable-property") / "data.durus") as server:
        cluster = Cluster(server.address)
        yield cluster
        cluster.close()


# -- one example ---------------------------------------------------------------------


def run_concurrently(cluster: Cluster, name: str, txns: list[list[tuple]], schedule: list[int]) -> tuple:
    """Run ``txns`` interleaved by ``schedule`` (transaction indexes; the
    n-th occurrence of i is i's n-th step, its last step the commit).
    Returns (status per transaction, observations per transaction)."""
    connections = cluster.connections[: len(txns)]
    for connection in connections:
        connection.abort()  # start up to date: after the set-up commit
    steps = [0] * len(txns)
    status: list[str | None] = [None] * len(txns)
    observed: list[list[Any]] = [[] for _ in txns]
    for i in schedule:
        step = steps[i]
        steps[i] += 1
        if status[i] is not None:
            continue  # met a conflict already
        connection = connections[i]
        try:
            if step < len(txns[i]):
                observed[i].append(apply(txns[i][step], cluster.env(connection, name)))
            else:
                connection.commit()
                status[i] = "committed"
        except ConflictError as error:
            connection.abort()
            status[i] = f"{type(error).__name__} at step {step}"
    assert all(s is not None for s in status)
    return status, observed


def serial_explanation(initial: Initial, txns: list[list[tuple]], committed: list[int], observed: list, final: tuple):
    """A serial order of the committed transactions that gives ``final`` and
    the observations, or None; and what each order gave instead."""
    tried = []
    for order in permutations(committed):
        env = model_env(initial)
        seen = {i: [apply(operation, env) for operation in txns[i]] for i in order}
        result = snapshot(env)
        if result == final and all(seen[i] == observed[i] for i in order):
            return order, tried
        tried.append((order, result, seen))
    return None, tried


def check_serializable(cluster: Cluster, initial: Initial, txns: list[list[tuple]], data: st.DataObject) -> None:
    tags = [i for i, ops in enumerate(txns) for _ in range(len(ops) + 1)]
    schedule = data.draw(st.permutations(tags), label="schedule")
    name = cluster.store(initial)
    status, observed = run_concurrently(cluster, name, txns, schedule)
    final, fault = cluster.stored(name)
    committed = [i for i, s in enumerate(status) if s == "committed"]
    story = [
        f"initial: {initial}",
        *(f"T{i}: {ops}  -> {status[i]}, observed {observed[i]}" for i, ops in enumerate(txns)),
        f"schedule: {schedule}",
        f"stored: {final}",
    ]
    if fault is not None:
        raise AssertionError("\n".join(["the stored BTree is broken: " + fault, *story]))
    order, tried = serial_explanation(initial, txns, committed, observed, final)
    if order is None:
        raise AssertionError(
            "\n".join(
                [
                    "the committed transactions are not serializable",
                    *story,
                    *(f"serial order {list(o)} gives {result}, observes {seen}" for o, result, seen in tried),
                ]
            )
        )


COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=EXAMPLES, **COMMON)
@given(initial=initial_states, txns=transactions, data=st.data())
def test_concurrent_transactions_commit_only_serializable_outcomes(cluster, initial, txns, data) -> None:
    check_serializable(cluster, initial, txns, data)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 4,000 examples: minutes on a busy machine
@settings(max_examples=SLOW_EXAMPLES, **COMMON)
@given(initial=initial_states, txns=transactions, data=st.data())
def test_concurrent_transactions_commit_only_serializable_outcomes_at_length(cluster, initial, txns, data) -> None:
    check_serializable(cluster, initial, txns, data)

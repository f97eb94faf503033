"""A commit whose pickling fails stores nothing and names nothing.

New objects are given oids while their referrers are pickled.  If a state
fails to pickle part-way, the new objects named so far must be new again:
otherwise the next commit (after the application removes what would not
pickle) takes them for stored objects, refers to them and never stores
them, leaving references to records that do not exist.
"""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from durus.check import check_file
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent import Persistent
from durus.storage import MemoryStorage


class Node(Persistent):
    """A new object with links to others."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.links: list[Node] = []


def unpicklable() -> object:
    return lambda: None


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(2, 12),
    links=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=30),
    spoiled=st.integers(0, 11),
)
def test_a_commit_that_fails_to_pickle_leaves_no_object_named(size, links, spoiled):
    nodes = [Node(number) for number in range(size)]
    for source, target in links:
        nodes[source % size].links.append(nodes[target % size])
    for node in nodes[1:]:
        nodes[0].links.append(node)  # every node reachable
    spoiled_node = nodes[spoiled % size]
    spoiled_node.bad = unpicklable()
    storage = MemoryStorage()
    connection = Connection(storage)
    connection.get_root()["graph"] = nodes[0]
    stored_before = dict(storage.records)
    try:
        connection.commit()
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    else:
        raise AssertionError("a commit with an unpicklable value succeeded")
    assert storage.records == stored_before
    assert all(node._p_oid is None and node._p_connection is None for node in nodes)
    del spoiled_node.bad
    connection.commit()
    reader = Connection(storage)
    graph = reader.get_root()["graph"]
    seen = {graph.number: graph}
    todo = [graph]
    while todo:
        for linked in todo.pop().links:
            if linked.number not in seen:
                seen[linked.number] = linked
                todo.append(linked)
    assert sorted(seen) == list(range(size))
    for node in nodes:
        assert [link.number for link in seen[node.number].links] == [link.number for link in node.links]


def test_the_file_of_a_commit_retried_after_a_pickling_error_checks_clean(tmp_path):
    path = tmp_path / "data.durus"
    connection = Connection(FileStorage(str(path)))
    parent, child = Node(1), Node(2)
    parent.links.append(child)
    parent.bad = unpicklable()
    connection.get_root()["parent"] = parent
    try:
        connection.commit()
    except (pickle.PicklingError, AttributeError):
        pass
    del parent.bad
    connection.commit()
    connection.get_storage().close()
    report = check_file(path)
    assert report.clean, report.format()
    assert Connection(FileStorage(str(path))).get_root()["parent"].links[0].number == 2

"""BTree: ordered mapping API, B-tree invariants, counts, persistence."""

from __future__ import annotations

import random
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import pytest

from durus.btree import BNode, BNode2, BNode4, BNode8, BNode16, BNode32, BNode512, BTree
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.storage import MemoryStorage

DEGREE_CLASSES = [BNode, BNode2, BNode4, BNode16]


def all_nodes(node: BNode) -> Iterator[BNode]:
    yield node
    for child in node.nodes or ():
        yield from all_nodes(child)


def check_invariants(tree: BTree, counts_required: bool = True) -> None:
    """Fail unless ``tree`` is a valid B-tree whose known counts are exact."""
    t = tree.root.minimum_degree
    leaf_depths = set()

    def check(node: BNode, low: object, high: object, depth: int, is_root: bool) -> int:
        assert node.__class__ is tree.root.__class__
        keys = [key for key, _ in node.items]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert all(isinstance(item, tuple) and len(item) == 2 for item in node.items)
        if keys:
            assert low is None or low < keys[0]
            assert high is None or keys[-1] < high
        assert len(keys) <= 2 * t - 1
        if not is_root:
            assert len(keys) >= t - 1
        count = len(keys)
        if node.nodes is None:
            leaf_depths.add(depth)
        else:
            assert len(node.nodes) == len(keys) + 1 and keys
            bounds = [low] + keys + [high]
            for i, child in enumerate(node.nodes):
                count += check(child, bounds[i], bounds[i + 1], depth + 1, False)
        try:
            stored = node._count
        except AttributeError:
            assert not counts_required, "a node lacks _count"
        else:
            assert stored == count
        return count

    total = check(tree.root, None, None, 0, True)
    assert len(leaf_depths) <= 1
    assert len(tree) == total


def random_operations(
    tree: BTree, model: dict, rng: random.Random, steps: int, key_range: int
) -> None:
    for step in range(steps):
        key = rng.randrange(key_range)
        op = rng.random()
        if op < 0.55:
            tree[key] = model[key] = step
        elif op < 0.9:
            if key in model:
                del tree[key], model[key]
            else:
                with pytest.raises(KeyError):
                    del tree[key]
        elif op < 0.95:
            assert tree.pop(key, None) == model.pop(key, None)
        elif model:
            smallest = min(model)
            assert tree.popitem() == (smallest, model.pop(smallest))


# -- the mapping and its invariants ---------------------------------------------


@pytest.mark.parametrize("node_class", DEGREE_CLASSES, ids=lambda c: c.__name__)
def test_random_operations_keep_the_invariants(node_class: type[BNode]) -> None:
    rng = random.Random(node_class.minimum_degree)
    tree = BTree(node_class)
    model: dict[int, int] = {}
    for _ in range(15):
        random_operations(tree, model, rng, 400, 700)
        check_invariants(tree)
        assert list(tree.items()) == sorted(model.items())
    # Empty it completely, checking as it shrinks.
    for key in rng.sample(sorted(model), len(model)):
        del tree[key]
        if rng.random() < 0.05:
            check_invariants(tree)
    check_invariants(tree)
    assert len(tree) == 0 and not tree and tree.get_depth() == 1


def test_ascending_and_descending_inserts() -> None:
    for keys in (range(2000), range(2000, 0, -1)):
        tree = BTree(BNode4)
        for key in keys:
            tree.add(key, str(key))
        check_invariants(tree)
        assert list(tree) == sorted(keys)
        assert tree.get_depth() > 3


def test_mapping_api() -> None:
    tree = BTree()
    assert isinstance(tree, MutableMapping)
    tree.update({"b": 2}, c=3)
    tree.update([("a", 1)])
    tree.update(BTree())
    other = BTree(BNode4)
    other.update(tree)
    assert other == tree == {"a": 1, "b": 2, "c": 3}
    tree.add("d")
    assert tree["d"] is True and "d" in tree and "z" not in tree
    assert tree.get("z") is None and tree.get("z", 0) == 0
    assert tree.setdefault("a", 9) == 1 and tree.setdefault("e") is None and "e" in tree
    assert list(tree.keys()) == ["a", "b", "c", "d", "e"]
    assert list(tree.values()) == [1, 2, 3, True, None]
    assert list(reversed(tree)) == ["e", "d", "c", "b", "a"]
    assert next(reversed(tree.items())) == ("e", None)
    assert ("b", 2) in tree.items() and 3 in tree.values()
    with pytest.raises(KeyError):
        tree["z"]
    with pytest.raises(KeyError):
        tree.pop("z")
    with pytest.raises(TypeError):
        tree.update({}, {})
    with pytest.raises(TypeError):
        BTree(dict)
    tree.clear()
    assert len(tree) == 0 and list(tree) == []
    with pytest.raises(KeyError):
        tree.popitem()
    with pytest.raises(KeyError):
        tree.get_min_item()
    with pytest.raises(KeyError):
        tree.get_max_item()


def test_ordered_queries_match_a_sorted_model() -> None:
    rng = random.Random(5)
    keys = sorted(rng.sample(range(0, 3000, 3), 600))
    tree = BTree(BNode4)
    for key in rng.sample(keys, len(keys)):
        tree[key] = -key
    items = [(key, -key) for key in keys]
    assert tree.get_min_item() == items[0] and tree.get_max_item() == items[-1]
    assert list(tree.items_backward()) == items[::-1]
    for probe in [-5, 0, 1, 3, keys[100], keys[100] + 1, keys[-1], 4000] + rng.sample(
        range(3000), 30
    ):
        above = [item for item in items if item[0] >= probe]
        below = [item for item in items if item[0] <= probe][::-1]
        assert list(tree.items_from(probe)) == above
        assert list(tree.items_from(probe, closed=False)) == [
            i for i in above if i[0] != probe
        ]
        assert list(tree.items_backward_from(probe, closed=True)) == below
        assert list(tree.items_backward_from(probe)) == [
            i for i in below if i[0] != probe
        ]
    for _ in range(60):
        start, end = rng.randrange(-10, 3010), rng.randrange(-10, 3010)
        if rng.random() < 0.3:
            start = rng.choice(keys)
        if rng.random() < 0.3:
            end = rng.choice(keys)
        for closed_start in (True, False):
            for closed_end in (True, False):
                got = list(tree.items_range(start, end, closed_start, closed_end))
                if start <= end:
                    want = [i for i in items if start <= i[0] <= end]
                else:
                    want = [i for i in items[::-1] if end <= i[0] <= start]
                want = [
                    i
                    for i in want
                    if (closed_start or i[0] != start) and (closed_end or i[0] != end)
                ]
                assert got == want, (start, end, closed_start, closed_end)


def test_popitem_takes_the_smallest_key() -> None:
    tree = BTree()
    tree.update({3: "c", 1: "a", 2: "b"})
    assert tree.popitem() == (1, "a") and tree.popitem() == (2, "b")
    assert list(tree.items()) == [(3, "c")]


def test_set_bnode_minimum_degree_rebuilds_with_another_node_class() -> None:
    tree = BTree()
    tree.update((i, i * i) for i in range(500))
    depth = tree.get_depth()
    assert tree.set_bnode_minimum_degree(2) is True
    assert tree.root.__class__ is BNode2 and tree.get_depth() > depth
    check_invariants(tree)
    assert tree.set_bnode_minimum_degree(2) is False
    assert tree.set_bnode_minimum_degree(512) is True
    assert (
        tree.root.__class__ is BNode512
        and tree.get_depth() == 1
        and tree.get_node_count() == 1
    )
    assert dict(tree.items()) == {i: i * i for i in range(500)}
    with pytest.raises(ValueError, match="use one of 2, 4, 8"):
        tree.set_bnode_minimum_degree(3)


def test_node_classes_are_named_by_degree() -> None:
    import durus.btree

    assert BNode.minimum_degree == 2
    for degree in (2, 4, 8, 16, 32, 64, 128, 256, 512):
        cls = getattr(durus.btree, f"BNode{degree}")
        assert cls.minimum_degree == degree and issubclass(cls, BNode)
    assert BTree().root.__class__ is BNode16
    assert BNode16().__getstate__() == {"items": [], "nodes": None, "_count": 0}


# -- persistence ----------------------------------------------------------------


def test_random_operations_across_commits_and_reopens() -> None:
    storage = MemoryStorage()
    connection = Connection(storage, cache_size=50)
    connection.root["tree"] = BTree(BNode4)
    connection.commit()
    rng = random.Random(21)
    model: dict[int, int] = {}
    for round_number in range(12):
        tree = connection.root["tree"]
        random_operations(tree, model, rng, 300, 900)
        connection.commit()
        connection.shrink_cache()  # ghost most nodes, so the next round reloads them
        if round_number % 3 == 2:
            connection = Connection(storage, cache_size=50)
        tree = connection.root["tree"]
        assert len(tree) == len(model)
        assert list(tree.items()) == sorted(model.items())
    check_invariants(connection.root["tree"])


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tree.durus"
    connection = Connection(FileStorage(str(path)))
    tree = connection.root["tree"] = BTree(BNode4)
    for i in range(0, 1000, 2):
        tree[f"k{i:04d}"] = [i]
    connection.commit()
    tree["k0002"].append("changed")
    tree.note_change_of_bnode_containing_key("k0002")
    with pytest.raises(KeyError):
        tree.note_change_of_bnode_containing_key("missing")
    connection.commit()
    connection.get_storage().close()

    reopened = Connection(FileStorage(str(path)))
    tree = reopened.root["tree"]
    assert len(tree) == 500 and tree["k0002"] == [2, "changed"]
    assert list(tree.items_range("k0100", "k0106")) == [
        ("k0100", [100]),
        ("k0102", [102]),
        ("k0104", [104]),
    ]
    check_invariants(tree)
    reopened.get_storage().close()


def committed_tree(
    size: int, node_class: type[BNode] = BNode4
) -> tuple[MemoryStorage, BTree]:
    storage = MemoryStorage()
    connection = Connection(storage)
    tree = connection.root["tree"] = BTree(node_class)
    for i in range(size):
        tree[i] = i
    connection.commit()
    return storage, tree


def test_reads_change_nothing() -> None:
    _, tree = committed_tree(300)
    len(tree), list(tree.items()), list(reversed(tree)), tree.get(5), 7 in tree
    list(tree.items_range(10, 50)), tree.get_min_item(), tree.get_node_count()
    with pytest.raises(KeyError):
        del tree[1000]
    with pytest.raises(KeyError):
        tree.pop(1000)
    assert tree.setdefault(3, "x") == 3
    assert tree._p_is_saved()
    assert all(node._p_is_saved() for node in all_nodes(tree.root))


def test_a_change_marks_one_path() -> None:
    _, tree = committed_tree(300)
    depth = tree.get_depth()
    tree[1000] = "new"
    changed = [node for node in all_nodes(tree.root) if node._p_is_unsaved()]
    assert 1 <= len(changed) <= depth + 2  # the path, plus a split's new node
    tree._p_connection.commit()
    tree[5] = "replaced"  # an existing key: only the node holding it changes
    assert sum(node._p_is_unsaved() for node in all_nodes(tree.root)) == 1


def test_nodes_without_counts_from_durus43() -> None:
    """Durus 4.3 writes nodes as {'items', 'nodes'}: len() must still be right."""
    storage, tree = committed_tree(2000)
    for node in all_nodes(tree.root):
        node._p_note_change()
        object.__delattr__(node, "_count")
    tree._p_connection.commit()
    node_count = tree.get_node_count()
    assert any(
        set(node.__getstate__()) == {"items", "nodes"} for node in all_nodes(tree.root)
    )

    connection = Connection(storage)
    tree = connection.root["tree"]
    loads = connection.get_load_count()
    tree[5000] = "new"  # loads one path, not the tree
    # (A split of an inner node also reads its children, to sum their counts.)
    assert connection.get_load_count() - loads < 30 < node_count
    assert len(tree) == 2001  # computed once, loading every node
    assert connection.get_load_count() - loads >= node_count
    for key in range(0, 2000, 3):
        del tree[key]
    tree[-1] = "first"
    assert len(tree) == 2001 - 667 + 1
    check_invariants(tree, counts_required=False)
    connection.commit()

    again = Connection(storage).root["tree"]
    assert len(again) == 1335
    check_invariants(again, counts_required=False)
    assert list(again.keys())[:3] == [-1, 1, 2]


def test_len_of_untouched_durus43_nodes_marks_nothing_changed() -> None:
    storage, tree = committed_tree(500)
    for node in all_nodes(tree.root):
        node._p_note_change()
        object.__delattr__(node, "_count")
    tree._p_connection.commit()
    connection = Connection(storage)
    tree = connection.root["tree"]
    assert len(tree) == 500
    assert all(node._p_is_saved() for node in all_nodes(tree.root))
    connection.commit()
    assert len(tree) == 500


# -- conflict resolution --------------------------------------------------------


def two_sessions(size: int) -> tuple[Connection, Connection]:
    from durus.shared_storage import SharedStorage

    shared = SharedStorage(MemoryStorage())
    first = Connection(shared.session())
    tree = first.root["tree"] = BTree(BNode4)
    for key in range(0, size * 10, 10):
        tree[key] = key
    first.commit()
    second = Connection(shared.session())
    return first, second


def test_changes_far_apart_merge_through_the_shared_path() -> None:
    first, second = two_sessions(200)
    first.root["tree"][11] = "first"  # leaves with room: no split
    first.root["tree"][20] = "replaced"
    second.root["tree"][1991] = "second"
    first.commit()
    second.commit()
    first.abort()
    for connection in (first, second):
        tree = connection.root["tree"]
        assert (
            len(tree) == 202
            and tree[11] == "first"
            and tree[20] == "replaced"
            and tree[1991] == "second"
        )
        check_invariants(tree)


def test_same_key_conflicts_but_a_reshaped_node_merges_by_replay() -> None:
    from durus.error import WriteConflictError

    first, second = two_sessions(200)
    first.root["tree"][11] = "first"
    second.root["tree"][11] = "second"
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()
    second.abort()
    assert second.root["tree"][11] == "first"
    # Sequential inserts left the nodes at their minimum: a delete borrows
    # or merges on its way down, which changes the shape of nodes it passes.
    # The second commit replays its insert on the reshaped committed tree.
    del first.root["tree"][500]
    second.root["tree"][1991] = "second"
    first.commit()
    second.commit()
    first.abort()
    for connection in (first, second):
        tree = connection.root["tree"]
        assert 500 not in tree and tree[1991] == "second" and len(tree) == 201
        check_invariants(tree)


def test_a_replayed_lookup_that_reads_differently_conflicts() -> None:
    from durus.error import WriteConflictError

    first, second = two_sessions(200)
    del first.root["tree"][500]
    # second saw 500 present, then inserted elsewhere: after first's delete
    # (which reshapes nodes) its lookup reads differently.
    assert 500 in second.root["tree"]
    second.root["tree"][1991] = "second"
    first.commit()
    with pytest.raises(WriteConflictError):
        second.commit()


def test_an_operation_meeting_newer_nodes_mid_transaction_starts_again_on_them() -> None:
    """second has used the root; first then changes a leaf second has not
    loaded yet (and, through the counts, the root): second's insert there
    brings the tree up to date and starts again, instead of going on with
    the old root or failing."""
    first, second = two_sessions(200)
    tree = second.root["tree"]
    assert tree.get(0) == 0  # the root and the leftmost path are used
    first.root["tree"][1991] = "first"
    first.commit()
    loads = second.get_load_count()
    tree[1992] = "second"  # the right edge: loads nodes first changed
    assert second.get_load_count() > loads
    second.commit()
    first.abort()
    for connection in (first, second):
        tree = connection.root["tree"]
        assert tree[1991] == "first" and tree[1992] == "second" and len(tree) == 202
        check_invariants(tree)


def test_a_refresh_that_finds_a_lookup_reading_differently_stops_the_transaction() -> None:
    from durus.error import ReadConflictError

    first, second = two_sessions(200)
    tree = second.root["tree"]
    assert 0 in tree
    del first.root["tree"][0]
    first.root["tree"][1991] = "first"
    first.commit()
    with pytest.raises(ReadConflictError):
        tree[1992] = "second"
    second.abort()
    assert 0 not in second.root["tree"]


def test_a_tree_whose_own_load_meets_newer_commits_starts_again() -> None:
    """second has used one tree and never loaded another; first changes
    both (the second one's own object, by clearing it): loading that tree
    meets the commit, the used tree is brought up to date, the insert runs."""
    first, second = two_sessions(200)
    first.root["other"] = BTree(BNode4)
    first.root["other"][1] = 1
    first.commit()
    second.abort()
    assert second.root["other"].get(1) == 1  # used: its root node will conflict
    tree = second.root["tree"]  # a ghost never loaded here
    first.root["other"][2] = 2
    first.root["tree"].clear()
    first.commit()
    tree[5] = "second"
    second.commit()
    first.abort()
    assert list(first.root["tree"].items()) == [(5, "second")] and first.root["other"][2] == 2


def test_counts_cached_from_durus43_nodes_follow_other_clients_changes() -> None:
    """A count computed in memory must not go stale when another client
    changes the subtree: every change marks the whole path it passes."""
    from durus.shared_storage import SharedStorage

    shared = SharedStorage(MemoryStorage())
    first = Connection(shared.session())
    tree = first.root["tree"] = BTree(BNode4)
    for key in range(0, 3000, 3):
        tree[key] = key
    for node in all_nodes(tree.root):
        object.__delattr__(node, "_count")
    first.commit()
    second = Connection(shared.session())  # never asks for len()
    assert len(first.root["tree"]) == 1000
    first.abort()

    second.root["tree"][1] = "new"
    del second.root["tree"][2997]
    second.root["tree"][3001] = "new"
    second.commit()
    first.abort()
    assert len(first.root["tree"]) == 1001
    check_invariants(first.root["tree"], counts_required=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "node_class", [BNode2, BNode8, BNode32], ids=lambda c: c.__name__
)
def test_long_random_run_with_commits_and_ghosting(
    tmp_path: Path, node_class: type[BNode]
) -> None:
    path = str(tmp_path / "long.durus")
    connection = Connection(FileStorage(path), cache_size=200)
    connection.root["tree"] = BTree(node_class)
    connection.commit()
    rng = random.Random(node_class.minimum_degree * 7)
    model: dict[int, int] = {}
    for round_number in range(20):
        random_operations(connection.root["tree"], model, rng, 2000, 20000)
        connection.commit()
        connection.shrink_cache()
        assert len(connection.root["tree"]) == len(model)
        if round_number % 5 == 4:
            connection.get_storage().close()
            connection = Connection(FileStorage(path), cache_size=200)
            tree = connection.root["tree"]
            check_invariants(tree)
            assert list(tree.items()) == sorted(model.items())
    connection.get_storage().close()


@pytest.mark.compat
def test_trees_written_without_node_counts_load_in_durus43(tmp_path, monkeypatch) -> None:
    from durus import btree
    from durus.connection import Connection
    from durus.file_storage import FileStorage
    from tests.durus43 import run_durus43

    monkeypatch.setattr(btree, "WRITE_NODE_COUNTS", False)
    path = tmp_path / "data.durus"
    storage = FileStorage(str(path))
    connection = Connection(storage)
    tree = connection.root["tree"] = BTree()
    for key in range(2000):
        tree[key] = str(key)
    del tree[7]
    connection.commit()
    storage.close()
    script = (
        "import sys, json\n"
        "from durus.file_storage import FileStorage\n"
        "from durus.connection import Connection\n"
        "tree = Connection(FileStorage(sys.argv[1])).get_root()['tree']\n"
        "print(json.dumps([len(tree), tree[1999], 7 in tree, tree.get_depth()]))\n"
    )
    assert run_durus43(script, args=[str(path)], parse_json=True) == [1999, "1999", False, tree.get_depth()]
    reopened = Connection(FileStorage(str(path)))
    assert len(reopened.root["tree"]) == 1999
    reopened.get_storage().close()


@pytest.mark.compat
def test_a_file_with_counted_nodes_can_be_handed_back_to_durus43(tmp_path, monkeypatch) -> None:
    from durus import btree
    from durus.connection import Connection, touch_every_reference
    from durus.file_storage import FileStorage
    from tests.durus43 import run_durus43

    path = tmp_path / "data.durus"
    connection = Connection(FileStorage(str(path)))
    tree = connection.root["tree"] = BTree()
    for key in range(3000):
        tree[key] = key
    connection.commit()
    monkeypatch.setattr(btree, "WRITE_NODE_COUNTS", False)
    touch_every_reference(connection, "BNode")
    connection.commit()
    connection.pack()
    connection.get_storage().close()
    script = (
        "import sys\n"
        "from durus.file_storage import FileStorage\n"
        "from durus.connection import Connection\n"
        "print(len(Connection(FileStorage(sys.argv[1])).get_root()['tree']))\n"
    )
    assert run_durus43(script, args=[str(path)]).strip() == "3000"

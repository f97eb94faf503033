"""User classes and data shared by our durus and the real Durus 4.3.

Both interpreters import this module (it is on the PYTHONPATH of every
reference subprocess), so records written by one name classes the other can
load.  It uses only the API the two have in common.
"""

from __future__ import annotations

from typing import Any

from durus.btree import BNode4, BTree
from durus.persistent import Persistent, PersistentObject
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
from durus.persistent_set import PersistentSet

TREE_SIZE = 5000
SMALL_TREE_SIZE = 600


class Person(Persistent):
    """A user class keeping its state in ``__dict__``.

    Instance attributes: ``name``, ``age``, ``friends`` (a PersistentList of
    Person), ``home`` (a Point), and whatever a test adds.
    """

    def __init__(self, name: str, age: int) -> None:
        self.name = name
        self.age = age
        self.friends = PersistentList()
        self.home = None


class Point(PersistentObject):
    """A user class keeping its state in slots; ``label`` may be unset.

    Instance attributes: ``x``, ``y``, ``label``.
    """

    __slots__ = ("x", "y", "label")

    def __init__(self, x: int, y: int, label: str | None = None) -> None:
        self.x = x
        self.y = y
        if label is not None:
            self.label = label


def tree_value(i: int) -> Any:
    """Mostly plain values, with a persistent object every 97th key."""
    if i % 97 == 0:
        return Point(i, -i, f"p{i}")
    return f"value {i}"


def populate(root: Any, commit: Any, btrees: bool = True) -> None:
    """Fill ``root`` with every kind of object, over several commits.

    Leaves a little garbage behind (a list dropped after it was stored), so
    that a pack has something to remove.  Without ``btrees``, no BTree.
    """
    root["garbage"] = PersistentList(range(200))
    commit()
    root["dict"] = PersistentDict({"a": 1, "b": "two", 3: (4.5, None), "bytes": b"\x00\xff"})
    root["list"] = PersistentList([1, "x", [2, 3], {"k": "v"}])
    root["set"] = PersistentSet({1, 2, "three", (4, 5)})
    alice = Person("alice", 30)
    bob = Person("bob", 25)
    alice.friends.append(bob)
    bob.friends.append(alice)
    alice.home = Point(1, 2, "home")
    bob.home = Point(3, 4)
    root["people"] = PersistentDict(alice=alice, bob=bob)
    del root["garbage"]
    commit()
    if not btrees:
        return
    tree = root["tree"] = BTree()
    for i in range(TREE_SIZE):
        tree[i] = tree_value(i)
        if i % 1000 == 999:
            commit()
    tree[-1] = alice
    small = root["small_tree"] = BTree(BNode4)
    for i in range(SMALL_TREE_SIZE):
        small[f"k{i:05d}"] = i
    commit()


def mutate(root: Any, step: int, commit: Any) -> None:
    """Change every kind of object; ``step`` makes each round different."""
    root["dict"]["a"] += step
    root["dict"].pop("b", None)
    root["dict"][f"new{step}"] = [step, {"nested": step}]
    root["list"].append(step)
    root["list"].pop(0)
    root["set"].add(f"s{step}")
    root["set"].discard(1)
    people = root["people"]
    people["alice"].age += step
    carol = Person(f"carol{step}", 40 + step)
    carol.home = Point(step, step)
    people["bob"].friends.append(carol)
    people[carol.name] = carol
    people["bob"].home.label = f"moved {step}"
    commit()
    if "tree" not in root:
        return
    tree = root["tree"]
    # Deletions spread over the whole tree make nodes merge and borrow.
    for i in range(step, TREE_SIZE, 3 + step):
        tree.pop(i, None)
    for i in range(TREE_SIZE + step * 1000, TREE_SIZE + step * 1000 + 500):
        tree[i] = tree_value(i)
    tree[-2 - step] = carol
    commit()
    small = root["small_tree"]
    for key in list(small.keys())[:: 2 + step]:
        del small[key]
    small[f"step{step}"] = step
    commit()


def populate_small(root: Any, btrees: bool = True) -> None:
    """A small graph of every kind, for tests at the level of records."""
    alice = Person("alice", 30)
    alice.home = Point(1, 2, "home")
    alice.friends.append(Person("bob", 25))
    alice.friends[0].friends.append(alice)
    root["people"] = PersistentDict(alice=alice)
    root["list"] = PersistentList([1, "x", (2, 3.5), b"\x00\xff", None, True])
    root["set"] = PersistentSet({1, "two", (3, 4)})
    if not btrees:
        return
    tree = root["tree"] = BTree(BNode4)
    for i in range(40):
        tree[i] = alice if i == 7 else f"v{i}"

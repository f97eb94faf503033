"""Drive whichever ``durus`` is importable: build, change, pack and dump files.

Run by the compatibility tests with the real Durus 4.3 (as a script, in its
own virtual environment) and with ours (imported in the pytest process), so
both sides do exactly the same thing.  Every command prints JSON.

    compat_driver.py build FILE [--pack] [--no-btree]
    compat_driver.py mutate FILE STEP [--pack]
    compat_driver.py dump FILE
    compat_driver.py file-records FILE      (every record in the file, hex)
    compat_driver.py new-oids FILE N        (the next N oids the file hands out)
    compat_driver.py records [--no-btree]  (records of a small graph, hex)
    compat_driver.py load-records          (stdin: records; dump the graph)
    compat_driver.py decode-records        (stdin: records; class, state, refs;
                                            Durus 4.3 only: its ObjectReader)

A dump is exact and oid-free: each persistent object appears in full where
it is first met (objects are numbered in the order met) and as ``{"ref": n}``
after that; dict items and set members are sorted so the order of iteration
does not matter; B-trees are dumped by their items, with ``len`` checked.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from durus.btree import BTree
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent import PersistentObject
from durus.storage import MemoryStorage

import compat_models

ROOT_OID = b"\0" * 8


def class_name(obj: Any) -> str:
    cls = obj.cls if isinstance(obj, Reference) else obj.__class__
    return f"{cls.__module__}.{cls.__name__}"


def _sorted_by_json(values: list) -> list:
    return sorted(values, key=lambda value: json.dumps(value, sort_keys=True))


class Reference:
    """What a persistent id in a state unpickles to when decoding records.

    Instance attributes: ``oid`` and ``cls``, the two halves of the id.
    """

    def __init__(self, oid: bytes, cls: type) -> None:
        self.oid = oid
        self.cls = cls


class Dumper:
    """Turns an object graph into plain JSON data.

    Instance attributes: ``numbers`` (oid -> the number of a persistent
    object already dumped), ``problems`` (inconsistencies seen on the way,
    such as a B-tree whose ``len`` is not its number of items).
    """

    def __init__(self) -> None:
        self.numbers: dict[bytes, int] = {}
        self.problems: list[str] = []

    def dump(self, value: Any) -> Any:
        if isinstance(value, PersistentObject):
            return self.dump_persistent(value)
        if isinstance(value, Reference):
            return {"pid": [value.oid.hex(), class_name(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, bytes):
            return {"bytes": value.hex()}
        if isinstance(value, tuple):
            return {"tuple": [self.dump(item) for item in value]}
        if isinstance(value, list):
            return [self.dump(item) for item in value]
        if isinstance(value, dict):
            pairs = [[self.dump(key), self.dump(item)] for key, item in value.items()]
            return {"dict": sorted(pairs, key=lambda pair: json.dumps(pair[0], sort_keys=True))}
        if isinstance(value, (set, frozenset)):
            return {type(value).__name__: _sorted_by_json([self.dump(item) for item in value])}
        raise TypeError(f"cannot dump {value!r}")

    def dump_persistent(self, obj: PersistentObject) -> Any:
        oid = obj._p_oid
        if oid in self.numbers:
            return {"ref": self.numbers[oid]}
        self.numbers[oid] = number = len(self.numbers)
        result: dict[str, Any] = {"class": class_name(obj), "n": number}
        if isinstance(obj, BTree):
            items = [[self.dump(key), self.dump(value)] for key, value in obj.items()]
            if len(obj) != len(items):
                self.problems.append(f"{class_name(obj)} {number}: len {len(obj)} but {len(items)} items")
            result["items"] = items
            result["node_class"] = class_name(obj.root)
        else:
            result["state"] = self.dump(obj.__getstate__())
        return result


def summary(connection: Connection) -> dict[str, Any]:
    """The dump of the root, with figures about the storage and the trees."""
    root = connection.get_root()
    dumper = Dumper()
    dumped = dumper.dump(root)
    storage = connection.get_storage()
    result = {
        "root": dumped,
        "problems": dumper.problems,
        "reachable": sum(1 for _ in storage.gen_oid_record(ROOT_OID)),
    }
    if "tree" in root:
        result["tree_depth"] = root["tree"].get_depth()
        result["tree_len"] = len(root["tree"])
    return result


def open_file(filename: str) -> Connection:
    return Connection(FileStorage(filename))


def build(filename: str, pack: bool = False, btrees: bool = True) -> dict[str, Any]:
    connection = open_file(filename)
    compat_models.populate(connection.get_root(), connection.commit, btrees)
    if pack:
        connection.pack()
    result = summary(connection)
    connection.get_storage().close()
    return result


def mutate(filename: str, step: int, pack: bool = False) -> dict[str, Any]:
    connection = open_file(filename)
    compat_models.mutate(connection.get_root(), step, connection.commit)
    if pack:
        connection.pack()
    result = summary(connection)
    connection.get_storage().close()
    return result


def dump(filename: str) -> dict[str, Any]:
    connection = Connection(FileStorage(filename, readonly=True))
    result = summary(connection)
    connection.get_storage().close()
    return result


def file_records(filename: str) -> dict[str, str]:
    """Every record the file holds (garbage too), by oid, as hex."""
    storage = FileStorage(filename, readonly=True)
    try:
        return {oid.hex(): record.hex() for oid, record in storage.gen_oid_record()}
    finally:
        storage.close()


def new_oids(filename: str, count: int) -> list[str]:
    """The oids the file's storage hands out next (nothing is committed)."""
    storage = FileStorage(filename)
    try:
        return [storage.new_oid().hex() for _ in range(count)]
    finally:
        storage.close()


def small_graph_records(btrees: bool = True) -> list[list[str]]:
    """Commit a small graph of every kind into memory; its records as hex."""
    connection = Connection(MemoryStorage())
    compat_models.populate_small(connection.get_root(), btrees)
    connection.commit()
    return [[oid.hex(), record.hex()] for oid, record in connection.get_storage().gen_oid_record(ROOT_OID)]


def load_records(records: list[list[str]]) -> dict[str, Any]:
    """Put hex records into a fresh MemoryStorage and dump what they hold."""
    storage = MemoryStorage()
    storage.begin()
    for oid, record in records:
        storage.store(bytes.fromhex(oid), bytes.fromhex(record))
    storage.end()
    return summary(Connection(storage))


def decode_records(records: list[list[str]]) -> list[dict[str, Any]]:
    """Decode records one by one with Durus 4.3's ObjectReader, no connection.

    Each gives the oid, the class, the state (persistent ids shown as
    ``{"pid": [oid, class]}``) and the refs listed after the data.
    """
    from durus.serialize import ObjectReader, unpack_record, split_oids

    class Cache:
        def get_instance(self, oid: bytes, cls: type, connection: Any) -> Reference:
            return Reference(oid, cls)

    class StubConnection:
        def get_cache(self) -> Cache:
            return Cache()

    reader = ObjectReader(StubConnection())
    result = []
    for oid, record in records:
        record_oid, data, refs = unpack_record(bytes.fromhex(record))
        ghost = reader.get_ghost(data)
        result.append({
            "oid": record_oid.hex(),
            "class": class_name(ghost),
            "state": Dumper().dump(reader.get_state(data)),
            "refs": [ref.hex() for ref in split_oids(refs)],
        })
    return result


def run_command(command: str, args: list[str], records: list[list[str]] | None = None) -> Any:
    """Run one command of the module docstring; ``records`` stand for stdin."""
    pack = "--pack" in args
    btrees = "--no-btree" not in args
    args = [arg for arg in args if not arg.startswith("--")]
    if command == "build":
        return build(args[0], pack, btrees)
    if command == "mutate":
        return mutate(args[0], int(args[1]), pack)
    if command == "dump":
        return dump(args[0])
    if command == "file-records":
        return file_records(args[0])
    if command == "new-oids":
        return new_oids(args[0], int(args[1]))
    if command == "records":
        return small_graph_records(btrees)
    if command == "load-records":
        return load_records(records)
    if command == "decode-records":
        return decode_records(records)
    raise SystemExit(f"unknown command {command!r}")


def main(argv: list[str]) -> None:
    command, *args = argv
    records = json.load(sys.stdin) if command in ("load-records", "decode-records") else None
    json.dump(run_command(command, args, records), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])

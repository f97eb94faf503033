"""One benchmark workload, run in a fresh process; prints its figures as JSON.

    workload.py IMPLEMENTATION WORKLOAD SIZE DIRECTORY

IMPLEMENTATION is ``durus`` (whichever durus is importable: ours or the real
Durus 4.3, chosen by the caller's PYTHONPATH) or ``zodb``.  Only the timed
part of a workload is measured; its setup (building a file to load or pack)
runs first, in the same process, untimed.  With BENCH_PROFILE set to a path,
the timed part runs under cProfile and the stats are written there.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux's ``VmHWM`` when there is one: ``getrusage``'s ``ru_maxrss``
    survives ``exec``, so in a child it starts at the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``function`` takes (under cProfile if asked), and its result."""
    profile_path = os.environ.get("BENCH_PROFILE")
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        start = time.perf_counter()
        result = profiler.runcall(function)
        seconds = time.perf_counter() - start
        profiler.dump_stats(profile_path)
        return seconds, result
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


class Plain:
    """The baseline: an ordinary object with the same attributes as Item."""

    def __init__(self, key: int) -> None:
        self.key = key
        self.name = f"item {key}"


def ns_per_read(obj: Any, reads: int) -> float:
    """Nanoseconds per attribute read of ``obj.key``, loop overhead removed."""

    def read_ten(obj: Any, loops: int) -> None:
        for _ in range(loops):
            obj.key; obj.key; obj.key; obj.key; obj.key  # noqa: E702
            obj.key; obj.key; obj.key; obj.key; obj.key  # noqa: E702

    def empty(obj: Any, loops: int) -> None:
        for _ in range(loops):
            pass

    loops = reads // 10

    def best(function: Callable[[Any, int], None]) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            function(obj, loops)
            times.append(time.perf_counter() - start)
        return min(times)

    best(read_ten)  # warm up (and let CPython specialise)
    return max(best(read_ten) - best(empty), 0.0) / (loops * 10) * 1e9


# --- Durus (ours or 4.3): the same code drives both ---------------------------


def durus_open(path: Path) -> Any:
    # Imported by main() before anything is timed.
    from durus.connection import Connection
    from durus.file_storage import FileStorage

    return Connection(FileStorage(str(path)))


def durus_close(connection: Any) -> None:
    connection.get_storage().close()


def durus_build_tree(connection: Any, size: int, name: str = "tree") -> None:
    from durus.btree import BTree

    from bench_models import Item

    tree = connection.get_root()[name] = BTree()
    for key in range(size):
        tree[key] = Item(key)
        if key % 1000 == 999:
            connection.commit()
    connection.commit()


def durus_attribute_read(directory: Path, size: int) -> dict[str, Any]:
    from bench_models import Item

    path = directory / "attribute.durus"
    connection = durus_open(path)
    connection.get_root()["item"] = Item(1)
    connection.commit()
    durus_close(connection)
    connection = durus_open(path)
    item = connection.get_root()["item"]
    persistent_ns = ns_per_read(item, size)
    plain_ns = ns_per_read(Plain(1), size)
    durus_close(connection)
    return {"persistent_ns": persistent_ns, "plain_ns": plain_ns, "ratio": persistent_ns / plain_ns}


def durus_build_btree(directory: Path, size: int) -> dict[str, Any]:
    path = directory / "btree.durus"
    if path.exists():
        path.unlink()
    connection = durus_open(path)
    seconds, _ = timed(lambda: durus_build_tree(connection, size))
    durus_close(connection)
    return {"seconds": seconds, "items_per_s": size / seconds, "file_mb": path.stat().st_size / 2**20}


def durus_cold_load(directory: Path, size: int) -> dict[str, Any]:
    path = directory / "btree.durus"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run the build_btree workload first")
    gc.collect()
    baseline = peak_rss_mb()

    def load_all() -> Any:
        connection = durus_open(path)
        for _, item in connection.get_root()["tree"].items():
            item.key  # loads the ghost
        return connection

    seconds, connection = timed(load_all)
    loaded = connection.get_load_count()
    peak = peak_rss_mb()
    durus_close(connection)
    return {
        "seconds": seconds,
        "objects": loaded,
        "objects_per_s": loaded / seconds,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - baseline,
    }


def durus_small_commits(directory: Path, size: int) -> dict[str, Any]:
    from bench_models import Item

    path = directory / "commits.durus"
    path.unlink(missing_ok=True)
    connection = durus_open(path)
    item = connection.get_root()["item"] = Item(0)
    connection.commit()

    def commits() -> None:
        for key in range(size):
            item.key = key
            connection.commit()

    seconds, _ = timed(commits)
    durus_close(connection)
    return {"seconds": seconds, "commits_per_s": size / seconds}


def durus_pack(directory: Path, size: int) -> dict[str, Any]:
    work = directory / "pack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    path = work / "pack.durus"
    connection = durus_open(path)
    durus_build_tree(connection, size // 2, "keep")
    durus_build_tree(connection, size // 2, "drop")
    del connection.get_root()["drop"]
    connection.commit()
    durus_close(connection)
    size_before = path.stat().st_size
    connection = durus_open(path)
    seconds, _ = timed(connection.pack)
    files = sorted(p.name for p in work.iterdir())
    durus_close(connection)
    return {
        "seconds": seconds,
        "mb_before": size_before / 2**20,
        "mb_after": path.stat().st_size / 2**20,
        "directory_mb": sum(p.stat().st_size for p in work.iterdir()) / 2**20,
        "files": files,
    }


# --- ZODB: the baselines for attribute reads and fsync'd commits -------------


def zodb_open(path: Path) -> tuple[Any, Any]:
    import ZODB
    import ZODB.FileStorage

    database = ZODB.DB(ZODB.FileStorage.FileStorage(str(path)))
    return database, database.open()


def zodb_attribute_read(directory: Path, size: int) -> dict[str, Any]:
    import transaction

    from zodb_models import Item

    database, connection = zodb_open(directory / "attribute.fs")
    connection.root()["item"] = Item(1)
    transaction.commit()
    database.close()
    database, connection = zodb_open(directory / "attribute.fs")
    item = connection.root()["item"]
    persistent_ns = ns_per_read(item, size)
    plain_ns = ns_per_read(Plain(1), size)
    database.close()
    return {"persistent_ns": persistent_ns, "plain_ns": plain_ns, "ratio": persistent_ns / plain_ns}


def zodb_small_commits(directory: Path, size: int) -> dict[str, Any]:
    import transaction

    from zodb_models import Item

    for leftover in directory.glob("commits.fs*"):
        leftover.unlink()
    database, connection = zodb_open(directory / "commits.fs")
    item = connection.root()["item"] = Item(0)
    transaction.commit()

    def commits() -> None:
        for key in range(size):
            item.key = key
            transaction.commit()

    seconds, _ = timed(commits)
    database.close()
    return {"seconds": seconds, "commits_per_s": size / seconds}


WORKLOADS = {
    ("durus", "attribute_read"): durus_attribute_read,
    ("durus", "build_btree"): durus_build_btree,
    ("durus", "cold_load"): durus_cold_load,
    ("durus", "small_commits"): durus_small_commits,
    ("durus", "pack"): durus_pack,
    ("zodb", "attribute_read"): zodb_attribute_read,
    ("zodb", "small_commits"): zodb_small_commits,
}


def main(argv: list[str]) -> None:
    implementation, workload, size, directory = argv
    # Import time is not part of any workload.
    if implementation == "durus":
        import durus.btree, durus.connection, durus.file_storage  # noqa: F401, E401
        import bench_models  # noqa: F401
    else:
        import ZODB.FileStorage, transaction  # noqa: F401, E401
        import zodb_models  # noqa: F401
    result = WORKLOADS[implementation, workload](Path(directory), int(size))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])

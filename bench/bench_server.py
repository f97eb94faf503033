"""Storage server figures, ours against the real Durus 4.3, in one run.

    python bench/bench_server.py [--seconds 2] [--objects 10000]

Each side runs its own server (``durus -s`` on a temporary file) and its own
clients, in separate processes: the Durus 4.3 ones in the interpreter named
by ``DURUS43_PYTHON`` (default: built under ``.cache/venvs``, see ``tests/durus43.py``).  Measured:

1. one client's small commits per second (ours fsyncs each commit before
   acknowledging it; Durus 4.3 does not fsync at all);
2. four clients' aggregate small commits per second;
3. one client's cold load of N small objects (a fresh connection walks a
   list of them), in objects per second: ours with default settings (bulk
   loads sent ahead), and ours with ``ClientStorage(prefetch=False)``
   (iteration still loads in batches), both against Durus 4.3's (one round
   trip per object).  ``bench_network.py`` adds lookups by key and a slower link.

Prints each figure and our ratio to Durus 4.3's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from durus43 import durus43_python
from server_process import ServerProcess

# Runs under either implementation: both have the same module names.
WORKER = r"""
import sys, time
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.persistent_dict import PersistentDict
from durus.persistent_list import PersistentList
mode, port = sys.argv[1], int(sys.argv[2])
options = {"prefetch": False} if mode == "coldload-noprefetch" else {}  # ours only
connection = Connection(ClientStorage(port=port, **options))
root = connection.get_root()
if mode == "commits":
    name, start_at, seconds = sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
    mine = root[name]
    time.sleep(max(0, start_at - time.time()))
    count = 0
    end = time.time() + seconds
    while time.time() < end:
        mine["v"] += 1
        connection.commit()
        count += 1
    print(count / seconds)
elif mode == "setup":
    for name in sys.argv[3:]:
        root[name] = PersistentDict(v=0)
    connection.commit()
elif mode == "populate":
    root["items"] = PersistentList(PersistentDict(n=n) for n in range(int(sys.argv[3])))
    connection.commit()
elif mode.startswith("coldload"):
    start = time.perf_counter()
    items = root["items"]
    total = sum(item["n"] for item in items)
    elapsed = time.perf_counter() - start
    assert total == sum(range(len(items)))
    print(len(items) / elapsed)
"""


def run_workers(python: str, env: dict | None, cwd: str, arguments: list[list[str]]) -> list[float]:
    processes = [
        subprocess.Popen([python, "-c", WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=cwd)
        for args in arguments
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        if process.returncode:
            raise RuntimeError(f"worker failed:\n{err}")
        results.append(float(out.strip()) if out.strip() else 0.0)
    return results


def measure(label: str, python: str, server_python: str, env: dict | None, cwd: str,
            seconds: float, objects: int) -> dict[str, float]:
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        server = ServerProcess(Path(directory) / "bench.durus", python=server_python,
                               log_path=Path(directory) / "server.log")
        with server:
            port = str(server.address[1])
            run_workers(python, env, cwd, [["setup", port, "solo", "c0", "c1", "c2", "c3"]])
            start_at = str(time.time() + 1.0)
            figures["1 client commits/s"] = run_workers(
                python, env, cwd, [["commits", port, "solo", start_at, str(seconds)]])[0]
            start_at = str(time.time() + 1.5)
            figures["4 clients commits/s"] = sum(run_workers(
                python, env, cwd, [["commits", port, f"c{n}", start_at, str(seconds)] for n in range(4)]))
            run_workers(python, env, cwd, [["populate", port, str(objects)]])
            figures[f"cold loads/s ({objects} objects)"] = max(
                run_workers(python, env, cwd, [["coldload", port]])[0] for _ in range(3))
            if label == "ours":
                figures["cold loads/s, prefetch=False"] = max(
                    run_workers(python, env, cwd, [["coldload-noprefetch", port]])[0] for _ in range(3))
    for name, value in figures.items():
        print(f"  {label:10} {name:32} {value:10.0f}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each commit measurement")
    parser.add_argument("--objects", type=int, default=10000, help="objects in the cold-load test")
    options = parser.parse_args()
    theirs_python = str(durus43_python())
    ours = measure("ours", sys.executable, sys.executable, None, str(REPO), options.seconds, options.objects)
    clean_env = {"PATH": os.environ["PATH"]}
    theirs = measure("Durus 4.3", theirs_python, theirs_python, clean_env, "/", options.seconds, options.objects)
    print("ratios, ours / Durus 4.3:")
    for name in ours:
        baseline = theirs.get(name, theirs[f"cold loads/s ({options.objects} objects)"])
        print(f"  {name:32} {ours[name] / baseline:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

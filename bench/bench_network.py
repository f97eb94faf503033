"""Storage server and client over loopback and over a slower link, ours
against the real Durus 4.3, in one run.

    python bench/bench_network.py [--rounds 3] [--seconds 2] [--objects 10000]
                                  [--delay 0.00025] [--no-link]

Measured for each implementation, with default settings (ours fsyncs each
commit before acknowledging it; Durus 4.3 never syncs):

1. one client's small commits per second, and four clients' together;
2. the server's CPU time per commit (user + system, from ``/proc/PID/stat``)
   over those commits;
3. one client's cold loads of N objects looked up one key at a time
   (``tree[k].a`` on a BTree, in key order, a fresh process; the best of
   three processes): objects per second.  Ours
   also with ``prefetch=False`` (one round trip per record, as Durus 4.3),
   for reference.

first on loopback, then over a link with ``2 * delay`` more per round trip:
the server in one network namespace, the clients in another, a veth pair
between them and a proxy delaying every chunk (:mod:`netlink_delay`; needs
root, and ``--no-link`` skips it).  The figures go in rounds, one run of each
implementation a round, so a slow spell of the shared machine falls on both
sides; each line shows the range over the rounds and the range of the
rounds' ratios (ours / Durus 4.3; for CPU per commit, Durus 4.3 / ours).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from durus43 import clean_env, durus43_python
from netlink_delay import DelayedLink
from server_process import ServerProcess, free_port

# Runs under either implementation: both have the same module names.
WORKER = r"""
import json, sys, time
from durus.btree import BTree
from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.persistent import Persistent
from durus.persistent_dict import PersistentDict

class Item(Persistent):
    def __init__(self, a):
        self.a = a

mode, host, port, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
args = sys.argv[5:]
connection = Connection(ClientStorage(host=host, port=port, **options))
root = connection.get_root()
if mode == "setup":
    for name in args:
        root[name] = PersistentDict(v=0)
    connection.commit()
elif mode == "commits":
    name, start_at, seconds = args[0], float(args[1]), float(args[2])
    mine = root[name]
    time.sleep(max(0, start_at - time.time()))
    count = 0
    end = time.time() + seconds
    while time.time() < end:
        mine["v"] += 1
        connection.commit()
        count += 1
    print(count)
elif mode == "populate":
    tree = root["tree"] = BTree()
    count = int(args[0])
    for key in range(count):
        tree[key] = Item(key)
        if key % 2000 == 1999:
            connection.commit()
    connection.commit()
elif mode == "coldkeys":
    count = int(args[0])
    start = time.perf_counter()
    tree = root["tree"]
    total = 0
    for key in range(count):
        total += tree[key].a
    elapsed = time.perf_counter() - start
    assert total == sum(range(count))
    print(count / elapsed)
"""

OURS, THEIRS = "ours", "Durus 4.3"
COLD_RUNS = 3


class Side:
    """One implementation: how to run its server and its clients."""

    def __init__(self, name: str, python: str, env: dict | None, cwd: str) -> None:
        self.name, self.python, self.env, self.cwd = name, python, env, cwd

    def worker(self, wrap: Callable[[list[str]], list[str]], host: str, port: int, mode: str,
               *args: str, options: str = "{}") -> subprocess.Popen:
        command = wrap([self.python, "-c", WORKER, mode, host, str(port), options, *args])
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, cwd=self.cwd)


def finish(processes: Sequence[subprocess.Popen]) -> list[float]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode:
            raise RuntimeError(f"worker failed:\n{err}")
        results.append(float(out) if out.strip() else 0.0)
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    """A running server and how clients reach it: ``host``, ``port``,
    ``wrap`` (puts a client command where it runs), ``pid`` (the server's).
    """

    def __init__(self, host: str, port: int, wrap: Callable[[list[str]], list[str]], pid: int) -> None:
        self.host, self.port, self.wrap, self.pid = host, port, wrap, pid


def run_figures(side: Side, target: Target, seconds: float, objects: int, figures: dict, link: str) -> None:
    """Commits, server CPU per commit and cold key loads against ``target``."""
    def workers(*calls: tuple) -> list[float]:
        return finish([side.worker(target.wrap, target.host, target.port, *call[0], options=call[1])
                       for call in calls])

    workers((("setup", "solo", "c0", "c1", "c2", "c3"), "{}"))
    for label, names in (("1 client", ["solo"]), ("4 clients", ["c0", "c1", "c2", "c3"])):
        start_at = str(time.time() + 1.5)
        before = cpu_seconds(target.pid)
        commits = sum(workers(*((("commits", name, start_at, str(seconds)), "{}") for name in names)))
        spent = cpu_seconds(target.pid) - before
        figures[f"{link}: {label} commits/s"] = commits / seconds
        figures[f"{link}: server CPU µs/commit, {label}"] = spent / commits * 1e6
    workers((("populate", str(objects)), "{}"))
    # Best of a few fresh processes: a slow spell of the shared machine
    # shows as one low figure.
    figures[f"{link}: cold loads by key/s"] = max(
        workers((("coldkeys", str(objects)), "{}"))[0] for _ in range(COLD_RUNS))
    if side.name == OURS and link == "loopback":
        figures[f"{link}: cold loads by key/s, prefetch=False"] = max(
            workers((("coldkeys", str(objects)), '{"prefetch": false}'))[0] for _ in range(COLD_RUNS))


def on_loopback(side: Side, directory: str, seconds: float, objects: int, figures: dict) -> None:
    server = ServerProcess(Path(directory) / f"{side.name}-loopback.durus".replace(" ", ""),
                           python=side.python, log_path=Path(directory) / "loopback.log")
    with server:
        host, port = server.address
        run_figures(side, Target(host, port, lambda command: command, server.process.pid),
                    seconds, objects, figures, "loopback")


def over_link(side: Side, link: DelayedLink, directory: str, seconds: float, objects: int, figures: dict) -> None:
    port = free_port()
    file = Path(directory) / f"{side.name}-link.durus".replace(" ", "")
    with open(Path(directory) / "link.log", "ab") as log:
        server = link.start(link.in_server([side.python, "-m", "durus", "-s", "--host", "127.0.0.1",
                                            "--port", str(port), "--file", str(file)]),
                            stdout=log, stderr=subprocess.STDOUT, env=side.env, cwd=side.cwd)
    try:
        link.wait_for_port(link.server_ns, "127.0.0.1", port)
        proxy_port = link.start_proxy(("127.0.0.1", port))
        run_figures(side, Target(link.server_ip, proxy_port, link.in_client, server.pid),
                    seconds, objects, figures, f"{2 * link.delay * 1e3:g} ms link")
    finally:
        server.terminate()
        server.wait(15)


def spread(values: list[float]) -> str:
    low, high = min(values), max(values)
    if high >= 100:
        return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def report(results: dict[str, list[dict[str, float]]]) -> None:
    ours, theirs = results[OURS], results[THEIRS]
    print(f"\n{'figure':50} {'ours':>16} {'Durus 4.3':>16} {'ratio':>11}")
    for name in ours[0]:
        base = name.replace(", prefetch=False", "")
        ratios = []
        for mine, baseline in zip(ours, theirs):
            if "CPU" in name:
                ratios.append(baseline[base] / mine[name] if mine[name] else float("inf"))
            else:
                ratios.append(mine[name] / baseline[base])
        theirs_text = spread([round_[base] for round_ in theirs]) if base == name else "(as above)"
        print(f"{name:50} {spread([round_[name] for round_ in ours]):>16} {theirs_text:>16} "
              f"{spread(ratios):>10}x")
    print("ratio: ours / Durus 4.3 (for CPU per commit: Durus 4.3 / ours, so higher is better "
          "everywhere); ranges over the rounds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each implementation, alternating")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each commit measurement")
    parser.add_argument("--objects", type=int, default=10000, help="objects looked up in the cold-load test")
    parser.add_argument("--delay", type=float, default=0.00025, help="seconds the link adds each way")
    parser.add_argument("--no-link", action="store_true", help="loopback only (no namespaces, no root needed)")
    options = parser.parse_args(argv)
    theirs_python = str(durus43_python())
    sides = [Side(OURS, sys.executable, None, str(REPO)), Side(THEIRS, theirs_python, clean_env(), "/")]
    results: dict[str, list[dict[str, float]]] = defaultdict(list)
    link = None if options.no_link else DelayedLink(options.delay)
    try:
        if link is not None:
            link.create()
        for round_number in range(1, options.rounds + 1):
            for side in sides:
                figures: dict[str, float] = {}
                with tempfile.TemporaryDirectory() as directory:
                    on_loopback(side, directory, options.seconds, options.objects, figures)
                    if link is not None:
                        over_link(side, link, directory, options.seconds, options.objects, figures)
                results[side.name].append(figures)
                print(f"round {round_number}, {side.name}: " +
                      ", ".join(f"{name} {value:,.0f}" for name, value in figures.items()), flush=True)
    finally:
        if link is not None:
            link.destroy()
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

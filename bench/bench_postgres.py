"""PostgreSQL benchmarks: our PostgresStorage against RelStorage, and the ceiling.

One throwaway cluster (``tests/support/postgres.py``: fsync=on,
synchronous_commit=on) serves every run: RelStorage 4.3.0 history-free on
psycopg2 (installed on first use into ``.cache/venvs/relstorage``; set
RELSTORAGE_PYTHON to use another interpreter) and ours, each workload on a
database of its own made for it, in fresh subprocesses
(``bench/scripts/pg_workload.py``); then ``pgbench -N`` with four clients
on the same cluster, the rate of durable updates the server itself takes.
One line per workload, with the ratio oriented so that above 1 is ours
better:

- 4 clients on disjoint objects / on one shared BTree: four processes commit
  for ``--seconds``; commits per second, and (shared tree) the share of
  attempts that ended in a conflict the application saw (and replayed);
- 1 client's small commits (one attribute of one object each);
- cold loads by key: a fresh process loads 10,000 items by key, shuffled;
- build: 100,000 small objects into a BTree, a commit every 1,000;
- pack: 20,000 live objects and 20,000 dead ones (a dropped tree);
- round trips per small commit, counted by a TCP proxy between the client
  and PostgreSQL (a round trip is a turn of the conversation: the client
  sending after the server last spoke), and statements (the protocol's
  Query and Execute messages) per commit.

    python bench/bench_postgres.py [--quick] [--seconds S] [--repeat N]

The machine is shared: compare the ratios of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
WORKLOAD = SCRIPTS / "pg_workload.py"

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import durus43 as reference  # noqa: E402  (tests/durus43.py: the venvs)
from tests.support.postgres import Cluster, throwaway_cluster  # noqa: E402

RELSTORAGE = reference.VenvSpec(
    name="relstorage",
    requirements=("relstorage==4.3.0", "ZODB", "psycopg2-binary"),
    probe="import relstorage.adapters.postgresql, ZODB, psycopg2, BTrees.OOBTree\n",
    env_var="RELSTORAGE_PYTHON",
)
CLIENTS = 4
@dataclass(frozen=True)
class Implementation:
    """A side of the comparison: its interpreter and import path."""

    name: str
    python: Callable[[], Path | str]
    pythonpath: tuple[Path, ...]


OURS = Implementation("ours", lambda: sys.executable, (REPO, SCRIPTS))
THEIRS = Implementation("relstorage", lambda: reference.venv_python(RELSTORAGE), (SCRIPTS,))
SIDES = (OURS, THEIRS)


@dataclass(frozen=True)
class Sizes:
    """How much each workload does (full, or ``--quick``)."""

    small_commits: int
    cold_load: int
    build: int
    pack: int
    seconds: float
    round_trips: int


FULL = Sizes(small_commits=1000, cold_load=10_000, build=100_000, pack=20_000, seconds=10.0, round_trips=200)
QUICK = Sizes(small_commits=50, cold_load=500, build=2_000, pack=1_000, seconds=1.5, round_trips=20)


class Bench:
    """Runs workloads on one cluster (``tests/support/postgres.py``), each on
    a database made for it.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.made = 0

    def uri(self, database: str) -> str:
        return f"postgresql://{self.cluster.user}@127.0.0.1:{self.cluster.port}/{database}"

    def new_database(self, side: Implementation, label: str) -> str:
        """The URI of a new, empty database for one workload of one side."""
        import psycopg

        self.made += 1
        name = f"{side.name}_{label}_{self.made}"
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def server_version(self) -> str:
        import psycopg

        with psycopg.connect(self.cluster.dsn(), autocommit=True) as connection:
            return connection.execute("SHOW server_version").fetchone()[0].split()[0]

    def run(self, side: Implementation, workload: str, size: int, dsn: str, *extra: str) -> dict[str, Any]:
        return reference.run_python(
            side.python(), script=WORKLOAD, args=[side.name, workload, str(size), dsn, *extra],
            pythonpath=side.pythonpath, timeout=1800, parse_json=True)

    def clients(self, side: Implementation, workload: str, dsn: str, seconds: float) -> dict[str, Any]:
        """``CLIENTS`` processes at once; their commits per second and conflict share."""
        self.run(side, "setup_clients", CLIENTS, dsn)
        processes = [
            subprocess.Popen(
                [str(side.python()), str(WORKLOAD), side.name, workload, "0", dsn, str(client)],
                cwd=reference.SCRIPTS, env=reference.clean_env(side.pythonpath),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for client in range(CLIENTS)
        ]
        try:
            for process in processes:  # every client connected before any starts
                if process.stdout.readline().strip() != "ready":
                    raise reference.ReferenceEnvError(
                        f"{side.name} {workload} client failed to start:\n{process.communicate()[1]}")
            start_at = time.time() + 0.5
            for process in processes:
                process.stdin.write(f"{start_at} {seconds}\n")
                process.stdin.flush()
            results = []
            for process in processes:
                out, err = process.communicate(timeout=seconds + 600)
                if process.returncode != 0:
                    raise reference.ReferenceEnvError(f"{side.name} {workload} client failed:\n{err}")
                results.append(json.loads(out))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        commits = sum(r["commits"] for r in results)
        attempts = sum(r["attempts"] for r in results)
        conflicts = sum(r["conflicts"] for r in results)
        return {"commits_per_s": commits / seconds, "conflict_share": conflicts / max(attempts, 1),
                "commits": commits}


@dataclass(frozen=True)
class Line:
    """One line of the table: its label, the figure, and the figures of each side."""

    label: str
    unit: str
    ours: float
    theirs: float
    higher_is_better: bool = True
    note: str = ""

    def ratio(self) -> float:
        return self.ours / self.theirs if self.higher_is_better else self.theirs / self.ours

    def text(self) -> str:
        return (f"{self.label:<34} ours {self.ours:>10,.1f} {self.unit:<10} relstorage "
                f"{self.theirs:>10,.1f} {self.unit:<10} ratio {self.ratio():5.2f}x  {self.note}")


def measure_clients(bench: Bench, sizes: Sizes, workload: str) -> Line:
    """Four clients at once, on disjoint objects or on one shared BTree."""
    results = {side.name: bench.clients(side, workload, bench.new_database(side, workload), sizes.seconds)
               for side in SIDES}
    ours, theirs = results["ours"], results["relstorage"]
    if workload == "shared":
        note = f"conflicts: ours {ours['conflict_share']:.1%}, relstorage {theirs['conflict_share']:.1%}"
        return Line("4 clients, one shared BTree", "commits/s", ours["commits_per_s"], theirs["commits_per_s"],
                    note=note)
    return Line(DISJOINT_LABEL, "commits/s", ours["commits_per_s"], theirs["commits_per_s"])


def measure_small(bench: Bench, sizes: Sizes) -> Line:
    results = {side.name: bench.run(side, "small_commits", sizes.small_commits,
                                    bench.new_database(side, "small"))
               for side in SIDES}
    return Line("1 client, small commits", "commits/s", results["ours"]["commits_per_s"],
                results["relstorage"]["commits_per_s"])


def measure_cold(bench: Bench, sizes: Sizes) -> Line:
    results = {}
    for side in SIDES:
        dsn = bench.new_database(side, "cold")
        bench.run(side, "setup_tree", sizes.cold_load, dsn)
        results[side.name] = bench.run(side, "cold_load", sizes.cold_load, dsn)
    return Line(f"cold loads of {sizes.cold_load:,} by key", "objects/s",
                results["ours"]["objects_per_s"], results["relstorage"]["objects_per_s"])


def measure_build(bench: Bench, sizes: Sizes) -> Line:
    results = {side.name: bench.run(side, "build", sizes.build, bench.new_database(side, "build"))
               for side in SIDES}
    return Line(f"build of {sizes.build:,} objects", "objects/s",
                results["ours"]["objects_per_s"], results["relstorage"]["objects_per_s"])


def measure_pack(bench: Bench, sizes: Sizes) -> Line:
    results = {}
    for side in SIDES:
        dsn = bench.new_database(side, "pack")
        bench.run(side, "setup_pack", sizes.pack, dsn)
        results[side.name] = bench.run(side, "pack", sizes.pack, dsn)
    return Line(f"pack {sizes.pack:,} live + {sizes.pack:,} dead", "seconds",
                results["ours"]["seconds"], results["relstorage"]["seconds"], higher_is_better=False)


def measure_round_trips(bench: Bench, sizes: Sizes) -> Line:
    results = {side.name: bench.run(side, "round_trips", sizes.round_trips, bench.new_database(side, "trips"))
               for side in SIDES}
    ours, theirs = results["ours"], results["relstorage"]
    return Line("round trips per small commit", "trips", ours["round_trips_per_commit"],
                theirs["round_trips_per_commit"], higher_is_better=False,
                note=f"statements: ours {ours['statements_per_commit']:.1f}, "
                     f"relstorage {theirs['statements_per_commit']:.1f}")


DISJOINT_LABEL = "4 clients, disjoint objects"

#: Workload name (for ``--only``) -> how it is measured, in the order run.
WORKLOADS: dict[str, Callable[[Bench, Sizes], Line]] = {
    "disjoint": lambda bench, sizes: measure_clients(bench, sizes, "disjoint"),
    "shared": lambda bench, sizes: measure_clients(bench, sizes, "shared"),
    "small": measure_small,
    "cold": measure_cold,
    "build": measure_build,
    "pack": measure_pack,
    "trips": measure_round_trips,
}


def measure(bench: Bench, sizes: Sizes, only: Iterable[str] = WORKLOADS) -> Iterator[Line]:
    """Each chosen workload on both sides, one line at a time."""
    chosen = set(only)
    for name, workload in WORKLOADS.items():
        if name in chosen:
            yield workload(bench, sizes)


def pgbench_ceiling(bench: Bench, seconds: float) -> float:
    """Durable updates per second that ``pgbench -N`` gets with ``CLIENTS`` clients."""
    dsn = bench.new_database(OURS, "pgbench")
    pgbench = os.path.join(bench.cluster.bindir, "pgbench")
    if not os.path.exists(pgbench):  # initdb found on PATH, pgbench elsewhere
        pgbench = shutil.which("pgbench") or pgbench
    subprocess.run([pgbench, "-i", "-q", "-s", "4", dsn], check=True, capture_output=True)
    result = subprocess.run(
        [pgbench, "-N", "-c", str(CLIENTS), "-j", str(CLIENTS), "-T", str(max(1, round(seconds))), dsn],
        check=True, capture_output=True, text=True)
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output:\n{result.stdout}{result.stderr}")
    return float(match.group(1))


def best_of(rounds: list[list[Line]]) -> list[Line]:
    """Each line at each side's best over the rounds, with the ranges in its note."""
    best = []
    for same in zip(*rounds):
        pick = max if same[0].higher_is_better else min
        ours, theirs = [line.ours for line in same], [line.theirs for line in same]
        ranges = f"ranges: ours {min(ours):,.1f}-{max(ours):,.1f}, relstorage {min(theirs):,.1f}-{max(theirs):,.1f}"
        best.append(Line(same[0].label, same[0].unit, pick(ours), pick(theirs), same[0].higher_is_better,
                         f"{ranges}; {same[-1].note}" if same[-1].note else ranges))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--seconds", type=float, help="how long each concurrent workload runs")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run everything N times on the cluster, then print each figure's best "
                             "and range (the machine is shared)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(WORKLOADS),
                        metavar="W,W", help=f"only these workloads, of {','.join(WORKLOADS)}")
    options = parser.parse_args(argv)
    sizes = QUICK if options.quick else FULL
    seconds = options.seconds or sizes.seconds
    sizes = Sizes(**{**sizes.__dict__, "seconds": seconds})
    try:
        reference.venv_python(RELSTORAGE)
    except reference.ReferenceEnvError as error:
        print(f"FAILED: {error}", flush=True)
        return 1
    with throwaway_cluster() as cluster:
        bench = Bench(cluster)
        print(f"PostgreSQL {bench.server_version()} (fsync=on, synchronous_commit=on); "
              f"{'quick' if options.quick else 'full'} sizes; {os.cpu_count()} CPUs", flush=True)
        rounds: list[list[Line]] = []
        ceilings: list[float] = []
        for round in range(max(1, options.repeat)):
            if options.repeat > 1:
                print(f"-- round {round + 1} of {options.repeat}", flush=True)
            lines = []
            for line in measure(bench, sizes, options.only):
                print(line.text(), flush=True)
                lines.append(line)
            rounds.append(lines)
            ceilings.append(pgbench_ceiling(bench, seconds))
            print_ceiling(ceilings[-1], lines)
        if len(rounds) > 1:
            print(f"-- best of {len(rounds)} rounds", flush=True)
            lines = best_of(rounds)
            for line in lines:
                print(line.text(), flush=True)
            print_ceiling(max(ceilings), lines, f" (range {min(ceilings):,.1f}-{max(ceilings):,.1f})")
    return 0


def print_ceiling(ceiling: float, lines: list[Line], note: str = "") -> None:
    text = f"{'pgbench -N, 4 clients (ceiling)':<34} {ceiling:>10,.1f} updates/s{note}"
    disjoint = next((line for line in lines if line.label == DISJOINT_LABEL), None)
    if disjoint is not None:
        text += (f"; ours 4 clients disjoint = {disjoint.ours / ceiling:.0%} of it, "
                 f"relstorage {disjoint.theirs / ceiling:.0%}")
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())

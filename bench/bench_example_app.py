"""The example wiki against the same wiki on Flask-SQLAlchemy + SQLite.

Both run under gunicorn with 4 sync workers (``example_app/gunicorn.conf.py``);
ours reaches its data through ``flask durus serve``, the baseline
(``bench/sqlite_baseline``) keeps it in SQLite with WAL and
``synchronous=FULL``, so both make every commit durable before answering.
Ours runs twice, as two deployments with their own data: ``durus``, with
conflict resolution (the default ``DURUS_RESOLUTION_ROUNDS``), and
``durus-r0``, the same app with ``DURUS_RESOLUTION_ROUNDS=0`` (no conflict
resolution, as in Durus 4.3: every conflict replays the request), which
runs only the edit workload.  ``--resolution on`` or ``off`` keeps one of them.
``--postgres`` adds ``durus-pg``: the same app with ``DURUS_STORAGE`` a
PostgreSQL database on a throwaway cluster (``tests/support/postgres.py``:
fsync and synchronous_commit on), every worker its own PostgreSQL sessions,
no storage server; its CPU column counts the PostgreSQL server processes as
the storage's.

Every app gets the same seed data through HTTP (accounts, pages), then a load
generator on loopback (asyncio, one new connection per request, since sync
workers close each one) runs each workload with N concurrent clients.  The
apps take turns (the order rotating), the first turn of each unmeasured (it
warms the caches, as on a server that has been running), so that load from
other programs on the machine falls on all alike:

- ``page``: logged-in clients read random pages (the read-heavy path);
- ``recent``: the paginated "recent changes" listing;
- ``edit``: each client edits its own page again and again, sending the
  revision it last saw as the base; every edit appends to the shared log of
  recent changes and moves its page in the word index.  A 409 is counted,
  and afterwards every page's revision count must equal 1 + its client's
  successful edits (no edit lost, none applied twice).

Prints requests/s, p50 and p99 latency per app and workload, the CPU time
per request of the web workers + the storage server (Linux), the ratios
(ours / baseline, overall and turn by turn; the targets: page >= 1.5x,
edit >= 1x) and, for edits, the share answered 409 (target < 1 %), the
conflicts our workers met and replayed (logged by ``counted_app``, by class
of the objects that collided) and the lost-edit check.  Takes about three
minutes.

    python bench/bench_example_app.py [--resolution both|on|off] [--postgres] [--workloads page,recent,edit]
        [--clients 16] [--duration 8] [--rounds 4] [--pages 200]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))  # tests.support.postgres, for --postgres

from server_process import free_port

GUNICORN_CONF = REPO / "example_app" / "gunicorn.conf.py"
WORKLOADS = ("page", "recent", "edit")
# Which apps each --resolution runs, in the order of their first turn.
RESOLUTION_APPS = {"both": ("durus-r0", "durus", "sqlite"), "on": ("durus", "sqlite"), "off": ("durus-r0", "sqlite")}
# Apps that run only some workloads: without resolution only edits differ.
APP_WORKLOADS = {"durus-r0": ("edit",)}
TARGETS = {"page": 1.5, "edit": 1.0}  # ours with resolution / baseline, requests/s
MAX_CONFLICT_SHARE = 0.01  # edits answered 409, with resolution
FAST_HASH = "pbkdf2:sha256:1000"  # sign-ups are set-up here, not what is measured
_letters = random.Random(0)
VOCABULARY = sorted({
    "".join(_letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_letters.randint(3, 9)))
    for _ in range(2000)
})


def page_text(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        count = min(words, rng.randint(6, 14))
        sentences.append(" ".join(rng.choice(VOCABULARY) for _ in range(count)).capitalize() + ".")
        words -= count
    return " ".join(sentences)


def shared_text(rng: random.Random, index: int, pages: int) -> str:
    """A shared page: Markdown (a heading, a list, paragraphs) with wiki links to
    two pages that exist and one that does not, which every view checks."""
    return (f"# Page {index}\n\n{page_text(rng, 150)}\n\n- {page_text(rng, 10)}\n- {page_text(rng, 10)}\n\n"
            f"{page_text(rng, 130)} See [[Page {(index + 1) % pages}]], [[Page {(index + 7) % pages}|another]] "
            f"and [[Missing {index}]].")


def own_text(index: int) -> str:
    """The text client ``index``'s page is created with; each edit adds 8 words to it
    (so an edit moves its page in and out of about 16 posting lists)."""
    return page_text(random.Random(10 + index), 120)


# -- servers ------------------------------------------------------------------------


class Deployment:
    """An app under gunicorn -w 4 (plus its storage server, for ours).

    ``name`` is ``durus``, ``durus-r0`` (ours without conflict resolution),
    ``durus-pg`` (ours on PostgreSQL: give ``postgres``, the database's URI,
    and ``storage_pid``, the postmaster's) or ``sqlite``.  Our workers log
    the conflicts they meet to ``events``.
    """

    def __init__(self, name: str, folder: Path, workers: int, profile: bool = False,
                 postgres: str | None = None, storage_pid: int | None = None) -> None:
        self.name = name
        self.folder = folder
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.storage_pid = storage_pid
        self.events = folder / "events.log"
        pythonpath = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "FLASK_PASSWORD_HASH_METHOD": FAST_HASH, "PYTHONPATH": pythonpath}
        instance = folder / "instance"
        if name.startswith("durus"):
            if name == "durus-r0":
                env["FLASK_DURUS_RESOLUTION_ROUNDS"] = "0"
            if postgres is not None:
                env["FLASK_DURUS_STORAGE"] = postgres
            else:
                storage_port = free_port()
                env["FLASK_DURUS_STORAGE"] = f"durus://127.0.0.1:{storage_port}"
                spec = f"example_app:create_app(instance_path={str(instance)!r})"
                self._start([sys.executable, "-m", "flask", "--app", spec, "durus", "serve"], env, "server")
                self.storage_pid = self.processes[-1].pid
                self._wait(lambda: _port_open(storage_port))
            profiles = None
            if profile:
                profiles = str(folder / "profiles")
                os.makedirs(profiles, exist_ok=True)
            spec = (f"counted_app:create_app('example_app:create_app', events={str(self.events)!r}, "
                    f"profile={profiles!r}, instance_path={str(instance)!r})")
        else:
            spec = f"sqlite_baseline:create_app(instance_path={str(instance)!r})"
        self._start(
            [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers), spec],
            env, "gunicorn",
        )
        self._wait(lambda: _port_open(self.port))

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the web workers and by the storage server
        (or PostgreSQL's processes) (Linux; else 0).
        """
        web = self.processes[-1]  # gunicorn was started last
        return _tree_cpu(web.pid), _tree_cpu(self.storage_pid) if self.storage_pid is not None else 0.0

    def events_since(self, offset: int) -> tuple[list[str], int]:
        """The conflict log's lines from byte ``offset`` on, and the new end."""
        try:
            with open(self.events, "rb") as log:
                log.seek(offset)
                data = log.read()
        except FileNotFoundError:
            return [], offset
        return data.decode().splitlines(), offset + len(data)

    def _start(self, command: list[str], env: dict[str, str], log_name: str) -> None:
        with open(self.folder / f"{log_name}.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))

    def _wait(self, ready, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise SystemExit(f"{self.name}: a server exited; see the logs in {self.folder}")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{self.name}: servers did not come up; see the logs in {self.folder}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in reversed(self.processes):  # gunicorn first, then the storage server
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        process = todo.pop()
        try:
            with open(f"/proc/{process}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            with open(f"/proc/{process}/task/{process}/children") as children:
                todo += [int(child) for child in children.read().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# -- a visitor, for the set-up ---------------------------------------------------------------


class Visitor:
    """Plain blocking HTTP with a session cookie, to seed data and read results."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, data: dict[str, str] | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        body = None
        if data is not None:
            body = urlencode(data)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body, headers)
            reply = connection.getresponse()
            text = reply.read().decode()
        finally:
            connection.close()
        found = re.search(r"session=([^;]*)", reply.headers.get("Set-Cookie") or "")
        if found:
            self.cookie = f"session={found.group(1)}"
        return reply.status, text

    def token(self) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.request("GET", "/login")[1]).group(1)

    def post(self, path: str, data: dict[str, str]) -> int:
        status, text = self.request("POST", path, {"csrf_token": self.token(), **data})
        if status != 302:
            raise SystemExit(f"POST {path} answered {status}: {text[:300]}")
        return status


def seed(port: int, clients: int, pages: int) -> list[Visitor]:
    """One account and one own page per client, plus ``pages`` shared pages."""
    rng = random.Random(1)
    visitors = []
    for index in range(clients):
        visitor = Visitor(port)
        visitor.post("/signup", {"name": f"user{index}", "password": "bench password", "confirm": "bench password"})
        visitor.post("/new", {"title": f"Own {index}", "text": own_text(index), "tags": "own"})
        visitors.append(visitor)
    for index in range(pages):
        visitors[index % clients].post(
            "/new", {"title": f"Page {index}", "text": shared_text(rng, index, pages), "tags": f"t{index % 10} shared"})
    return visitors


# -- the load generator ------------------------------------------------------------------


@dataclass
class Result:
    """Requests measured: their latencies (s), status counts, the time taken,
    the rate of each turn that went into it, and (ours) the conflicts the
    workers met meanwhile: how many, how many were replayed, and the classes
    of the objects they collided on."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    turn_rates: list[float] = field(default_factory=list)
    conflicts: int = 0
    replays: int = 0
    collided: Counter = field(default_factory=Counter)
    web_cpu: float = 0.0
    server_cpu: float = 0.0

    def add(self, other: Result) -> None:
        self.turn_rates.append(other.rate)
        self.latencies += other.latencies
        self.elapsed += other.elapsed
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.conflicts += other.conflicts
        self.replays += other.replays
        self.collided += other.collided
        self.web_cpu += other.web_cpu
        self.server_cpu += other.server_cpu

    def record(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def count_events(self, lines: list[str]) -> None:
        """Take in lines of ``counted_app``'s conflict log."""
        for line in lines:
            fields = line.split()
            if fields[0] == "retry":
                self.replays += 1
            elif fields[0] == "conflict":
                self.conflicts += 1
                self.collided.update({item.split(":")[0] for item in fields[4:]} or {fields[3]})

    @property
    def share(self) -> float:
        """The share of requests answered 409."""
        return self.statuses.get(409, 0) / max(1, len(self.latencies))

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def fetch(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await reader.readline()
        await reader.read()  # to the end: gunicorn's sync workers close after each response
    finally:
        writer.close()
    return int(head.split()[1])


def get_request(port: int, path: str, cookie: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
            "Connection: close\r\n\r\n").encode()


def post_request(port: int, path: str, cookie: str, data: dict[str, str]) -> bytes:
    body = urlencode(data).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def run_load(port: int, next_request, clients: int, duration: float, warmup: float = 0.5) -> Result:
    """``clients`` loops of ``next_request(client) -> (bytes, on_status)`` for ``duration`` s."""
    result = Result()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def client(index: int) -> None:
        while (now := time.perf_counter()) < stop_at:
            request, on_status = next_request(index)
            status = await fetch(port, request)
            done = time.perf_counter()
            on_status(status)
            if now >= measure_from:
                result.record(status, done - now)

    await asyncio.gather(*(client(index) for index in range(clients)))
    result.elapsed = time.perf_counter() - measure_from
    return result


def page_workload(port: int, visitors: list[Visitor], pages: int):
    rng = random.Random(2)
    requests = [get_request(port, f"/wiki/page-{index}", visitors[0].cookie) for index in range(pages)]

    def next_request(index: int):
        return requests[rng.randrange(pages)], _ignore

    return next_request


def recent_workload(port: int, visitors: list[Visitor]):
    requests = [get_request(port, "/", visitor.cookie) for visitor in visitors]
    return lambda index: (requests[index], _ignore)


class EditWorkload:
    """Each client edits its own page, tracking the revision its edit starts from."""

    def __init__(self, port: int, visitors: list[Visitor]) -> None:
        self.port = port
        self.visitors = visitors
        self.tokens = [visitor.token() for visitor in visitors]
        self.base = [1] * len(visitors)
        self.saved = [0] * len(visitors)
        self.rng = random.Random(3)
        self.texts = [own_text(index) for index in range(len(visitors))]

    def __call__(self, index: int):
        text = self.texts[index] + " " + page_text(self.rng, 8)
        data = {"csrf_token": self.tokens[index], "title": f"Own {index}", "text": text, "tags": "own",
                "base": str(self.base[index]), "comment": "bench"}

        def on_status(status: int) -> None:
            if status == 302:
                self.base[index] += 1
                self.saved[index] += 1

        return post_request(self.port, f"/wiki/own-{index}/edit", self.visitors[index].cookie, data), on_status

    def lost_edits(self) -> list[str]:
        """Pages whose revision count is not 1 + the edits saved on them."""
        problems = []
        for index, visitor in enumerate(self.visitors):
            _, text = visitor.request("GET", f"/wiki/own-{index}/history")
            count = int(re.search(r"(\d+) revisions", text).group(1))
            if count != 1 + self.saved[index]:
                problems.append(f"own-{index}: {count} revisions for {self.saved[index]} saved edits")
        return problems


def _ignore(status: int) -> None:
    pass


# -- the run ------------------------------------------------------------------------------


def measure(folder: Path, args: argparse.Namespace) -> dict[str, dict[str, Result | list[str]]]:
    """Run every workload on every app, with a throwaway PostgreSQL cluster
    for ``durus-pg`` (``--postgres``).
    """
    if not args.postgres:
        return measure_apps(folder, args, RESOLUTION_APPS[args.resolution])
    from tests.support.postgres import throwaway_cluster, uri_of

    from durus.postgres_storage import init_schema

    with throwaway_cluster() as cluster:
        dsn = cluster.new_dsn()
        init_schema(dsn)  # before the workers' first requests, which would race to create it
        postgres = {"uri": uri_of(dsn), "pid": cluster.postmaster_pid()}
        return measure_apps(folder, args, (*RESOLUTION_APPS[args.resolution], "durus-pg"), postgres)


def measure_apps(folder: Path, args: argparse.Namespace, apps: tuple[str, ...],
                 postgres: dict | None = None) -> dict[str, dict[str, Result | list[str]]]:
    """Run every workload on every app, taking turns, so background load falls on all alike."""
    deployments = {}
    try:
        for name in apps:
            (folder / name).mkdir(parents=True)
            on_postgres = {"postgres": postgres["uri"], "storage_pid": postgres["pid"]} if name == "durus-pg" else {}
            deployments[name] = Deployment(name, folder / name, args.workers, args.profile, **on_postgres)
        visitors = {name: seed(deployments[name].port, args.clients, args.pages) for name in apps}
        generators = {}
        for name, deployment in deployments.items():
            port = deployment.port
            generators[name] = {
                "page": page_workload(port, visitors[name], args.pages),
                "recent": recent_workload(port, visitors[name]),
                "edit": EditWorkload(port, visitors[name]),
            }
        results = {name: {workload: Result() for workload in WORKLOADS} for name in apps}
        turn = args.duration / args.rounds
        for workload in args.workloads:
            taking_part = [name for name in apps if workload in APP_WORKLOADS.get(name, WORKLOADS)]
            for name in taking_part:  # an unmeasured turn: warm caches, as on a server that has been running
                asyncio.run(run_load(deployments[name].port, generators[name][workload], args.clients, turn))
            for round in range(args.rounds):
                shift = round % len(taking_part)
                for name in taking_part[shift:] + taking_part[:shift]:
                    deployment = deployments[name]
                    _, offset = deployment.events_since(0)
                    web_cpu, server_cpu = deployment.cpu_seconds()
                    segment = asyncio.run(run_load(deployment.port, generators[name][workload], args.clients, turn))
                    segment.count_events(deployment.events_since(offset)[0])
                    web_after, server_after = deployment.cpu_seconds()
                    segment.web_cpu, segment.server_cpu = web_after - web_cpu, server_after - server_cpu
                    results[name][workload].add(segment)
        for name in apps:
            if "edit" in args.workloads:
                results[name]["lost"] = generators[name]["edit"].lost_edits()
        return results
    finally:
        for deployment in deployments.values():
            deployment.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", choices=sorted(RESOLUTION_APPS), default="both",
                        help="ours with conflict resolution (on), without (off), or both, each against SQLite (both)")
    parser.add_argument("--postgres", action="store_true",
                        help="also run ours on PostgreSQL (durus-pg), on a throwaway cluster")
    parser.add_argument("--workloads", type=_workloads, default=WORKLOADS,
                        help=f"comma-separated, from {','.join(WORKLOADS)} (all)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds measured per workload and app, split over the rounds (8)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="turns each app takes per workload, rotating which goes first (4)")
    parser.add_argument("--pages", type=int, default=200, help="pages seeded besides the clients' own (200)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers per app (4)")
    parser.add_argument("--profile", action="store_true",
                        help="run our workers under cProfile, their stats in DIR/<app>/profiles (use with --keep)")
    parser.add_argument("--keep", metavar="DIR", help="keep data and server logs in DIR (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-wiki-") as scratch:
        results = measure(Path(args.keep or scratch), args)
    return report(results, args)


def _workloads(text: str) -> tuple[str, ...]:
    chosen = tuple(word.strip() for word in text.split(",") if word.strip())
    unknown = [word for word in chosen if word not in WORKLOADS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(WORKLOADS)}, not {text!r}")
    return tuple(workload for workload in WORKLOADS if workload in chosen)


def report(results: dict[str, dict[str, Result | list[str]]], args: argparse.Namespace) -> int:
    """Print the figures; 1 if an edit was lost or a target missed."""
    apps = list(results)
    print(f"\nexample_app vs Flask-SQLAlchemy + SQLite (synchronous=FULL): gunicorn -w {args.workers}, "
          f"{args.clients} clients, {args.duration:g} s per workload and app in {args.rounds} turns, "
          f"{os.cpu_count()} cores; durus-r0 = DURUS_RESOLUTION_ROUNDS=0 (no conflict resolution)")
    print(f"{'workload':10} {'app':9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>14}  statuses")
    for workload in args.workloads:
        for name in apps:
            result = results[name][workload]
            if not result.latencies:
                continue
            statuses = ", ".join(f"{code}: {count}" for code, count in sorted(result.statuses.items()))
            requests = len(result.latencies)
            cpu = f"{1000 * result.web_cpu / requests:.1f}+{1000 * result.server_cpu / requests:.1f}"
            print(f"{workload:10} {name:9} {result.rate:8.1f} {result.percentile(0.5):8.1f} "
                  f"{result.percentile(0.99):8.1f} {cpu:>14}  {statuses}")
    failed = False
    for workload in args.workloads:
        theirs = results["sqlite"][workload]
        for name in apps:
            ours = results[name][workload]
            if name == "sqlite" or not ours.latencies:
                continue
            if name == "durus-pg" and results.get("durus", {}).get(workload, Result()).latencies:
                server = results["durus"][workload]
                print(f"ratio {workload:8} durus-pg/durus (PostgreSQL / storage server) requests/s = "
                      f"{ours.rate / server.rate:.2f}x")
            ratio = ours.rate / theirs.rate
            turns = sorted(a / b for a, b in zip(ours.turn_rates, theirs.turn_rates))
            verdict = ""
            if name == "durus" and workload in TARGETS:
                met = ratio >= TARGETS[workload]
                failed |= not met
                verdict = f" (target >= {TARGETS[workload]:.1f}x: {'met' if met else 'MISSED'})"
            print(f"ratio {workload:8} {name}/sqlite requests/s = {ratio:.2f}x{verdict}; "
                  f"turn by turn {', '.join(f'{turn:.2f}' for turn in turns)}")
    if "edit" in args.workloads:
        for name in apps:
            edits, lost = results[name]["edit"], results[name]["lost"]
            line = (f"edits {name:9} 409s: {edits.statuses.get(409, 0)} of {len(edits.latencies)} "
                    f"= {100 * edits.share:.2f} %")
            if name == "durus":
                met = edits.share < MAX_CONFLICT_SHARE
                failed |= not met
                line += f" (target < {100 * MAX_CONFLICT_SHARE:g} %: {'met' if met else 'MISSED'})"
            if name.startswith("durus"):
                classes = ", ".join(f"{kind} {count}" for kind, count in edits.collided.most_common(4))
                line += (f"; conflicts met {edits.conflicts}, replays {edits.replays}"
                         + (f" (on {classes})" if classes else ""))
            print(line + f"; lost or doubled: {'none' if not lost else lost}")
            failed |= bool(lost)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Core benchmarks: this package against the real Durus 4.3 and ZODB.

Each workload runs for each implementation in a fresh subprocess
(``bench/scripts/workload.py``); this script builds the reference virtual
environments on first use (see ``tests/durus43.py``), runs the workloads,
and prints one line per workload with the figures, the ratio ours/theirs
(oriented so that above 1 means ours is better, except for attribute reads
where it is a slowdown factor) and the target.  See ``bench/README.md``.

    python bench/bench_core.py [--quick] [--only NAME ...] [--repeat N] [--profile]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
WORKLOAD = SCRIPTS / "workload.py"

sys.path.insert(0, str(REPO / "tests"))

import durus43 as reference  # noqa: E402  (tests/durus43.py: the venvs)


@dataclass(frozen=True)
class Implementation:
    """A database to measure: ``name``, how to find its interpreter, and the
    import path that selects it (ours needs the repository on the path).
    """

    name: str
    python: Callable[[], Path | str]
    pythonpath: tuple[Path, ...]
    kind: str  # "durus" or "zodb": which half of workload.py drives it


OURS = Implementation("ours", lambda: sys.executable, (REPO, SCRIPTS), "durus")
DURUS43 = Implementation("durus43", reference.durus43_python, (SCRIPTS,), "durus")
ZODB = Implementation("zodb", reference.zodb_python, (SCRIPTS,), "zodb")


def run(implementation: Implementation, workload: str, size: int, directory: Path, profile: Path | None = None) -> dict[str, Any]:
    """Run one workload in a fresh process of ``implementation``."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {"BENCH_PROFILE": str(profile)} if profile else {}
    return reference.run_python(
        implementation.python(),
        script=WORKLOAD,
        args=[implementation.kind, workload, str(size), str(directory)],
        pythonpath=implementation.pythonpath,
        env=env,
        timeout=1800,
        parse_json=True,
    )


def ratio_text(value: float, target: str) -> str:
    return f"ratio {value:.2f}x ({target})"


@dataclass(frozen=True)
class Benchmark:
    """A workload, the implementations it runs on, its size, and how to report it."""

    name: str
    workload: str
    implementations: tuple[Implementation, ...]
    size: int
    quick_size: int
    report: Callable[[dict[str, dict[str, Any]]], str]
    # Of repeated runs, the one with the least of this figure is reported.
    best_by: str = "seconds"

    def best(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The figures to report from repeated runs of one implementation."""
        if self.best_by == "each":
            # Each figure at its best, then the ratio of those.
            merged = {key: min(run[key] for run in runs) for key in runs[0]}
            merged["ratio"] = merged["persistent_ns"] / merged["plain_ns"]
            return merged
        return min(runs, key=lambda run: run[self.best_by])


def report_attribute_read(results: dict[str, dict[str, Any]]) -> str:
    parts = [
        f"{name} {r['persistent_ns']:.1f}ns/{r['plain_ns']:.1f}ns={r['ratio']:.2f}x"
        for name, r in results.items()
    ]
    return "  ".join(parts) + "  (persistent/plain; target ours <= 2x)"


def report_build_btree(results: dict[str, dict[str, Any]]) -> str:
    ours, theirs = results["ours"], results["durus43"]
    return (
        f"ours {ours['seconds']:.2f}s ({ours['file_mb']:.1f}MB)  "
        f"durus43 {theirs['seconds']:.2f}s ({theirs['file_mb']:.1f}MB)  "
        + ratio_text(theirs["seconds"] / ours["seconds"], "speed, target >= 2x")
    )


def report_cold_load(results: dict[str, dict[str, Any]]) -> str:
    ours, theirs = results["ours"], results["durus43"]
    return (
        f"ours {ours['objects_per_s']:,.0f} obj/s peak {ours['peak_rss_mb']:.0f}MB "
        f"(+{ours['rss_growth_mb']:.0f})  "
        f"durus43 {theirs['objects_per_s']:,.0f} obj/s peak {theirs['peak_rss_mb']:.0f}MB "
        f"(+{theirs['rss_growth_mb']:.0f})  "
        + ratio_text(ours["objects_per_s"] / theirs["objects_per_s"], "speed, target >= 1.5x")
        + f"  memory {ours['rss_growth_mb'] / theirs['rss_growth_mb']:.2f}x (target <= 1x)"
    )


def report_small_commits(results: dict[str, dict[str, Any]]) -> str:
    ours, zodb, durus43 = results["ours"], results["zodb"], results["durus43"]
    return (
        f"ours {ours['commits_per_s']:,.0f}/s (fsync)  zodb {zodb['commits_per_s']:,.0f}/s (fsync)  "
        f"durus43 {durus43['commits_per_s']:,.0f}/s (no fsync)  "
        + ratio_text(ours["commits_per_s"] / zodb["commits_per_s"], "vs zodb, target >= 1.5x")
    )


def report_pack(results: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, r in results.items():
        leftovers = [f for f in r["files"] if f != "pack.durus"]
        parts.append(
            f"{name} {r['seconds']:.2f}s {r['mb_before']:.1f}->{r['mb_after']:.1f}MB "
            f"dir {r['directory_mb']:.1f}MB leftovers {leftovers or 'none'}"
        )
    ratio = results["durus43"]["seconds"] / results["ours"]["seconds"]
    return "  ".join(parts) + "  " + ratio_text(ratio, "speed, target >= 1x, no leftovers")


BENCHMARKS = [
    Benchmark(
        "attribute_read", "attribute_read", (OURS, DURUS43, ZODB), 2_000_000, 500_000,
        report_attribute_read, best_by="each",
    ),
    Benchmark("build_btree", "build_btree", (OURS, DURUS43), 100_000, 10_000, report_build_btree),
    Benchmark("cold_load", "cold_load", (OURS, DURUS43), 100_000, 10_000, report_cold_load),
    Benchmark("small_commits", "small_commits", (OURS, ZODB, DURUS43), 2_000, 200, report_small_commits),
    Benchmark("pack_half_garbage", "pack", (OURS, DURUS43), 100_000, 10_000, report_pack),
]


def label(benchmark: Benchmark, size: int) -> str:
    """The name shown for a run: the benchmark's name with its size."""
    if benchmark.name == "attribute_read":
        return benchmark.name
    if size >= 1000 and size % 1000 == 0:
        return f"{benchmark.name}_{size // 1000}k"
    return f"{benchmark.name}_{size}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", action="append", metavar="NAME", choices=[b.name for b in BENCHMARKS],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="run each workload N times, each in a fresh process, and report the best (the machine is shared)",
    )
    parser.add_argument("--profile", action="store_true", help="profile ours; print where the time goes")
    parser.add_argument("--dir", type=Path, help="where to put the files (default: a temporary directory)")
    options = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not options.only or b.name in options.only]
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-core-", dir=options.dir) as temporary:
        root = Path(temporary)
        for benchmark in selected:
            size = benchmark.quick_size if options.quick else benchmark.size
            results = {}
            try:
                for implementation in benchmark.implementations:
                    directory = root / implementation.name
                    if benchmark.workload == "cold_load" and not (directory / "btree.durus").exists():
                        run(implementation, "build_btree", size, directory)
                # Rounds of one run each, so that a slow spell of the
                # machine falls on both sides of a ratio.
                runs: dict[str, list[dict[str, Any]]] = {i.name: [] for i in benchmark.implementations}
                for _ in range(max(options.repeat, 1)):
                    for implementation in benchmark.implementations:
                        runs[implementation.name].append(
                            run(implementation, benchmark.workload, size, root / implementation.name))
                for implementation in benchmark.implementations:
                    results[implementation.name] = benchmark.best(runs[implementation.name])
                    if options.profile and implementation is OURS:
                        profile = root / f"{benchmark.name}.prof"
                        run(implementation, benchmark.workload, size, root / implementation.name, profile)
                        print_profile(benchmark.name, profile)
            except reference.ReferenceEnvError as error:
                failed = True
                print(f"{label(benchmark, size):<22} FAILED: {error}", flush=True)
                continue
            print(f"{label(benchmark, size):<22} {benchmark.report(results)}", flush=True)
    return 1 if failed else 0


def print_profile(name: str, path: Path) -> None:
    import pstats

    print(f"--- profile of ours, {name} (top functions by own time) ---")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    sys.exit(main())

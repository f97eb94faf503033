"""bench/bench_postgres.py runs end to end (quick mode) and prints every figure.

Slow: it builds RelStorage's venv on first use (PyPI), starts a PostgreSQL
cluster and runs every workload on both sides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import INSTALL_HINT, find_bindir

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench_postgres.py"

LINES = (
    "4 clients, disjoint objects",
    "4 clients, one shared BTree",
    "1 client, small commits",
    "cold loads of",
    "build of",
    "pack ",
    "round trips per small commit",
    "pgbench -N, 4 clients (ceiling)",
)


def _require_postgres() -> None:
    """PostgreSQL's server programs and pgbench, or a skip (a failure under CI)."""
    bindir = find_bindir()
    problem = INSTALL_HINT if bindir is None else None
    if bindir is not None and not (Path(bindir, "pgbench").exists() or shutil.which("pgbench")):
        problem = "pgbench is not installed (it comes with PostgreSQL's client programs)"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(problem + " (CI=true: not skipping)")
    pytest.skip(problem)


@pytest.mark.slow
def test_quick_bench_prints_every_figure_and_ratio() -> None:
    _require_postgres()
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--seconds", "1"],
        capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for label in LINES:
        assert label in out, f"no line {label!r} in:\n{out}"
    ratios = [float(r) for r in re.findall(r"ratio\s+([\d.]+)x", out)]
    assert len(ratios) == 7 and all(r > 0 for r in ratios), out
    trips = re.search(r"round trips per small commit\s+ours\s+([\d.]+)", out)
    assert trips is not None and float(trips.group(1)) >= 1, out
    assert re.search(r"ceiling\)\s+[\d,.]+ updates/s", out), out

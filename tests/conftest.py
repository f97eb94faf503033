"""Shared pytest set-up: the slow-test switch and fixtures used across files."""

from __future__ import annotations

import pytest

# PostgreSQL fixtures (postgres_cluster, postgres_dsn): a throwaway cluster.
from support.postgres import postgres_cluster, postgres_dsn  # noqa: F401


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the long stress tests marked slow (CI does)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow stress test: give --run-slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)

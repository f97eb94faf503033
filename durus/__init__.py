"""A persistent object database in the Durus tradition, compatible with Durus 4.3."""

from __future__ import annotations

DISTRIBUTION = "flask-durus"
# The version in pyproject.toml: the answer where the distribution is not installed.
SOURCE_VERSION = "0.1.0"
# The Durus release whose files, protocol and programs this package serves.
DURUS_COMPATIBLE_VERSION = "4.3"


def distribution_version() -> str:
    """This package's version: the installed distribution's, else SOURCE_VERSION."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return SOURCE_VERSION


def __getattr__(name: str) -> str:
    # __version__ is looked up on first use, so `import durus` stays cheap.
    if name == "__version__":
        globals()["__version__"] = found = distribution_version()
        return found
    raise AttributeError(f"module 'durus' has no attribute {name!r}")

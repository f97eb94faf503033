"""Sphinx configuration for the flask-durus user guide and API reference.

Built by the test suite (tests/test_docs.py) with ``-W --keep-going``, so
any warning fails the tests.  Build by hand with::

    python -m sphinx -W -b html docs/guide build/guide
"""

from __future__ import annotations

import os
import sys

# The packages are imported from the checkout, installed or not.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

project = "flask-durus"
author = "the flask-durus authors"
copyright = "the flask-durus authors"

try:
    from durus import distribution_version

    release = distribution_version()
except ImportError:  # pragma: no cover - the package is always importable here
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
root_doc = "index"
language = "en"

html_theme = "alabaster"
html_title = f"flask-durus {release}"

# Inventories are not fetched: the build must work offline and in a few
# seconds.  The explicit mapping keeps :mod: roles to other projects working
# if someone turns fetching on locally.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {
    "members": True,
    # Accessors such as Connection.get_root() have no docstring; they are
    # still public API and belong in the reference.
    "undoc-members": True,
}

# Type annotations name many classes that the reference does not document
# (Flask's, the standard library's, private helpers); unresolved references
# stay plain text instead of warnings.
nitpicky = False

"""The C accelerator, where it was built: ``speedups`` is the module or None.

``durus._speedups`` holds C versions of a few functions on the path of every
object a connection loads, and of the pickler's ``persistent_id`` (see its
source for which).  It is optional: the install builds it where a C
compiler is at hand, and durus is complete without it, in pure Python.
Setting ``DURUS_PURE_PYTHON=1`` in the environment ignores it even when
built, which is how the tests run the pure Python versions too.
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("DURUS_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from durus import _speedups
    except ImportError:
        return None
    return _speedups


speedups = _load()

"""The public names of ``durus`` and ``flask_durus``, and what a Sphinx
build documented, for tests/test_docs.py.

Which modules are public: every module of the two packages whose own name
does not start with ``_`` (so ``durus._speedups`` is private), except
``durus.__main__``, the ``python -m durus`` entry point, which only runs
the command.  The packages themselves (``durus``, ``flask_durus``) count.

Which names are public in a module: the names not starting with ``_``
that the module itself defines as classes or functions (their
``__module__`` is the module: imported helpers such as ``Path`` belong to
the module that defines them), plus every name in its ``__all__``, if it
has one.  Constants are not counted unless ``__all__`` lists them: their
origin cannot be told from the value.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import zlib
from pathlib import Path

PACKAGES = ("durus", "flask_durus")
EXCLUDED_MODULES = frozenset({"durus.__main__"})


def public_modules() -> list[str]:
    """The dotted names of the public modules, packages first."""
    modules = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules.append(package_name)
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{package_name}."):
            short = info.name.rsplit(".", 1)[1]
            if short.startswith("_") or info.name in EXCLUDED_MODULES:
                continue
            modules.append(info.name)
    return modules


def public_names(module_name: str) -> set[str]:
    """The public names of one module, as the module docstring says."""
    module = importlib.import_module(module_name)
    names = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module_name
    }
    names.update(getattr(module, "__all__", ()))
    return names


def all_public_names() -> set[str]:
    """Every public name, fully qualified (``durus.btree.BTree``)."""
    return {f"{module}.{name}" for module in public_modules() for name in public_names(module)}


def documented_objects(inventory: Path) -> dict[str, str]:
    """The Python objects in a Sphinx ``objects.inv``: full name to role
    (``py:class``, ``py:function``, ``py:module``, ...).

    Read by the version 2 format (four text header lines, then zlib
    compressed lines ``name domain:role priority uri display-name``), so
    the test does not lean on Sphinx's internal loader API.
    """
    data = inventory.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    header = data[:header_end].decode("utf-8")
    if not header.startswith("# Sphinx inventory version 2"):
        raise ValueError(f"{inventory}: not a version 2 inventory:\n{header}")
    objects = {}
    for line in zlib.decompress(data[header_end:]).decode("utf-8").splitlines():
        if not line.strip():
            continue
        # The name may hold spaces only for non-Python roles (labels, terms).
        name, role, _rest = line.split(None, 2)
        if role.startswith("py:"):
            objects[name] = role
    return objects

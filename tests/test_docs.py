"""The Sphinx guide and API reference build without a single warning.

Sphinx is in the ``test`` extra, so this runs everywhere the suite does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.api_names import all_public_names, documented_objects, public_modules

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide"

CHAPTERS = [
    "first-app",
    "models",
    "transactions",
    "schema",
    "deployment",
    "postgresql",
    "backup",
    "packing",
    "testing",
    "commands",
    "compatibility",
]

# Every public module has its own page, api/<module>.html.
API_PAGES = public_modules()


def test_guide_builds_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(GUIDE), str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr
    for page in ["index", *CHAPTERS, "api/index"]:
        assert (out / f"{page}.html").is_file(), page
    for module in API_PAGES:
        html = (out / "api" / f"{module}.html").read_text(encoding="utf-8")
        # autodoc imported the module and documented it (an import failure
        # would also be a warning, but say which page lacks it).
        assert f'id="module-{module}"' in html, module
    # The links to the format and protocol documents are copied with the build.
    downloads = {path.name for path in (out / "_downloads").rglob("*.md")}
    assert {"file-format.md", "protocol.md"} <= downloads
    assert_every_public_name_is_documented(out / "objects.inv")


def assert_every_public_name_is_documented(inventory: Path) -> None:
    """Every public module, and every public name in it, is an object of
    the built reference (its ``objects.inv``), under the module's own
    name.  Which modules and names are public is defined in
    ``tests/support/api_names.py``: every module not starting with ``_``
    but ``durus.__main__``; the classes and functions it defines, and its
    ``__all__``.
    """
    documented = documented_objects(inventory)
    modules = public_modules()
    assert "durus.connection" in modules and "flask_durus.extension" in modules
    missing_modules = [module for module in modules if documented.get(module) != "py:module"]
    assert not missing_modules, f"public modules without a reference page: {missing_modules}"
    names = all_public_names()
    assert len(names) > 200  # the collection found the packages' names
    missing = sorted(names - documented.keys())
    assert not missing, (
        f"{len(missing)} public names are not in the API reference (add them to "
        f"docs/guide/api/): {', '.join(missing)}"
    )


def test_every_chapter_is_in_the_toctree() -> None:
    index = (GUIDE / "index.rst").read_text(encoding="utf-8")
    for chapter in CHAPTERS:
        assert f"\n   {chapter}\n" in index, chapter
    on_disk = {path.stem for path in GUIDE.glob("*.rst")} - {"index"}
    assert on_disk == set(CHAPTERS)

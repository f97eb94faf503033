"""The Sphinx guide and API reference build without a single warning.

Sphinx is in the ``test`` extra, so this runs everywhere the suite does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide"

CHAPTERS = [
    "first-app",
    "models",
    "transactions",
    "schema",
    "deployment",
    "backup",
    "packing",
    "testing",
    "commands",
    "compatibility",
]

API_PAGES = [
    "durus.connection",
    "durus.persistent",
    "durus.persistent_dict",
    "durus.persistent_list",
    "durus.persistent_set",
    "durus.btree",
    "durus.persistent_counter",
    "durus.file_storage",
    "durus.client_storage",
    "durus.storage_server",
    "durus.error",
    "durus.check",
    "durus.backup",
    "durus.schema",
    "flask_durus",
]


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


def test_every_chapter_is_in_the_toctree() -> None:
    index = (GUIDE / "index.rst").read_text(encoding="utf-8")
    for chapter in CHAPTERS:
        assert f"\n   {chapter}\n" in index, chapter
    on_disk = {path.stem for path in GUIDE.glob("*.rst")} - {"index"}
    assert on_disk == set(CHAPTERS)

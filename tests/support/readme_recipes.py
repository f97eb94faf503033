"""The README's Flask recipes as files: its code blocks that start with a
path comment (``# myapp/models.py``, ``<!-- myapp/templates/post.html -->``),
written into a project folder exactly as a reader would copy them.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
# The README's Flask part: from here up to the next section.
SECTION_START = "## Using Durus in a Flask app"
SECTION_END = "## The `durus` command\n"

_BLOCK = re.compile(r"^```[a-z]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_PATH = re.compile(r"^(?:#|<!--)\s*([\w][\w./-]*\.(?:py|html))\b")


def flask_section() -> str:
    text = README.read_text()
    start = text.index(SECTION_START)
    return text[start:text.index(SECTION_END, start)]


def recipe_files() -> dict[str, str]:
    """Relative path -> text, for every block of the section that names its file."""
    files: dict[str, str] = {}
    for match in _BLOCK.finditer(flask_section()):
        code = match.group(1)
        named = _PATH.match(code.splitlines()[0]) if code.strip() else None
        if named is None:
            continue
        path = named.group(1)
        if path in files:
            raise ValueError(f"README names {path} in two code blocks")
        files[path] = code
    return files


def write_project(folder: Path, *paths: str) -> None:
    """Write the named README files (all of them if none) under ``folder``."""
    files = recipe_files()
    for path in paths or tuple(files):
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path])


def post_form(port: int, path: str, fields: dict[str, str]) -> tuple[int, str]:
    """POST a form, not following redirects: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=urllib.parse.urlencode(fields),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()

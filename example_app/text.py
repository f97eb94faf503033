"""Page text: slugs, search words, tags, and the small markup the wiki renders.

Kept free of any storage so the Durus app and the SQLite baseline in
``bench/`` turn text into the same HTML and the same index words.

The markup, chosen to be guessable without a help page:

- a blank line separates paragraphs;
- ``# Heading`` and ``## Subheading`` at the start of a line;
- lines starting with ``- `` form a list;
- ``[[Page title]]`` links to a page, ``**bold**``, ``*emphasis*``, ```code```.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

from markupsafe import Markup, escape

MAX_TAGS = 10

_WORD = re.compile(r"[^\W_]+")
_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
_TAG = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
_MARKUP = re.compile(r"\[\[|\]\]|\*|`|^#+ |^- ", re.MULTILINE)
_INLINE = re.compile(
    r"\[\[(?P<link>[^\]\n]{1,100})\]\]"
    r"|\*\*(?P<bold>[^*\n]+)\*\*"
    r"|\*(?P<em>[^*\n]+)\*"
    r"|`(?P<code>[^`\n]+)`"
)


def slugify(title: str) -> str:
    """The URL name of a page: lowercase ASCII words joined by hyphens.

    Empty when the title has no letter or digit that survives the folding,
    which the forms report as an error.
    """
    folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return _SLUG_JUNK.sub("-", folded.lower()).strip("-")[:80]


def words(*texts: str) -> set[str]:
    """The distinct search words of ``texts``: lowercased, two letters or more."""
    found: set[str] = set()
    for text in texts:
        found.update(word for word in _WORD.findall(text.lower()) if len(word) > 1)
    return found


def parse_tags(raw: str) -> tuple[list[str], str | None]:
    """Tags typed as ``"python, web db"``: the sorted distinct tags, or an error."""
    tags = sorted({tag for tag in re.split(r"[\s,]+", raw.strip().lower()) if tag})
    bad = [tag for tag in tags if not _TAG.match(tag)]
    if bad:
        return tags, (
            f"{bad[0]!r} is not a valid tag: use up to 30 lowercase letters, "
            "digits and hyphens, starting with a letter or digit."
        )
    if len(tags) > MAX_TAGS:
        return tags, f"Use at most {MAX_TAGS} tags (you gave {len(tags)})."
    return tags, None


def render(text: str) -> str:
    """The HTML of a page's text (computed once per revision and stored)."""
    html: list[str] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()):
        lines = block.split("\n")
        if all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{_inline(line[2:])}</li>" for line in lines)
            html.append(f"<ul>{items}</ul>")
        elif lines[0].startswith("## "):
            html.append(f"<h3>{_inline(lines[0][3:])}</h3>")
            if lines[1:]:
                html.append(f"<p>{_inline(' '.join(lines[1:]))}</p>")
        elif lines[0].startswith("# "):
            html.append(f"<h2>{_inline(lines[0][2:])}</h2>")
            if lines[1:]:
                html.append(f"<p>{_inline(' '.join(lines[1:]))}</p>")
        elif block.strip():
            html.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(html)


def _inline(line: str) -> str:
    out: list[str] = []
    position = 0
    for match in _INLINE.finditer(line):
        out.append(str(escape(line[position : match.start()])))
        if match["link"] is not None:
            title = match["link"].strip()
            out.append(f'<a href="/wiki/{slugify(title)}">{escape(title)}</a>')
        elif match["bold"] is not None:
            out.append(f"<strong>{escape(match['bold'])}</strong>")
        elif match["em"] is not None:
            out.append(f"<em>{escape(match['em'])}</em>")
        else:
            out.append(f"<code>{escape(match['code'])}</code>")
        position = match.end()
    out.append(str(escape(line[position:])))
    return "".join(out)


def diff_lines(old: str, new: str) -> list[tuple[str, str]]:
    """A line diff as ``(kind, line)`` pairs, kind one of ``"+"``, ``"-"``, ``" "``, ``"@"``."""
    lines: list[tuple[str, str]] = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=2):
        if line.startswith(("---", "+++")):
            continue
        kind = line[:1] if line[:1] in "+- @" else " "
        lines.append((kind, line[1:] if kind != "@" else line))
    return lines


def excerpt(text: str, terms: Iterable[str], width: int = 160) -> Markup:
    """A short piece of ``text`` (markup removed) around the first search term, terms in ``<mark>``."""
    text = _MARKUP.sub("", text)
    lowered = text.lower()
    positions = [lowered.find(term) for term in terms]
    start = min((p for p in positions if p >= 0), default=0)
    start = max(0, start - width // 4)
    piece = text[start : start + width].replace("\n", " ")
    marked = Markup("…") if start else Markup("")
    terms = sorted({term for term in terms if term}, key=len, reverse=True)
    position = 0
    if terms:
        for match in re.finditer("|".join(map(re.escape, terms)), piece, re.IGNORECASE):
            marked += piece[position : match.start()] + Markup("<mark>%s</mark>") % match.group()
            position = match.end()
    marked += piece[position:]
    return marked + (Markup("…") if start + width < len(text) else Markup(""))

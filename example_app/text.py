"""Page text: titles, slugs, search words, tags and search excerpts.

Kept free of any storage so the Durus app and the SQLite baseline in
``bench/`` make the same slugs and the same index words.  Page text itself
is Markdown, turned into HTML by :mod:`example_app.markup`.

Titles may be in any script.  Everything that compares titles, slugs or
words first brings them to Unicode normal form C (:func:`nfc`), so a title
typed with a precomposed "é" and a link typed with "e" plus a combining
accent name the same page, in the URL, the lookup, links and the index.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from markupsafe import Markup

MAX_TAGS = 10
MAX_TITLE = 100
MAX_SLUG = 80

_TAG = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
_LEGACY_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
_MARKUP = re.compile(r"\[\[|\]\]|\*|`|^#+ |^[-+*>] |^\d+\. |^```", re.MULTILINE)
# Characters a title may hold although Unicode files them as format
# controls: the joiners that Arabic, Indic scripts and emoji need.
_JOINERS = frozenset("\u200c\u200d")


def nfc(text: str) -> str:
    """``text`` in Unicode normal form C, the one form stored and compared."""
    return unicodedata.normalize("NFC", text)


class _WordCharacters(dict):
    """A ``str.translate`` table: letters, marks and digits stay, anything else is a space.

    Marks count as part of a word: Devanagari, Thai or Arabic words carry
    vowel signs that a regular expression's ``\\w`` would split them at.
    Filled in as characters are met.
    """

    def __missing__(self, code: int) -> int | str:
        keep = unicodedata.category(chr(code))[0] in "LMN"
        self[code] = code if keep else " "
        return self[code]


_WORD_CHARACTERS = _WordCharacters()


def _split(text: str) -> list[str]:
    """The runs of letters, marks and digits in ``text``."""
    return text.translate(_WORD_CHARACTERS).split()


def slugify(title: str) -> str:
    """The URL name of a page: the title's letters, marks and digits, lowercased, joined by hyphens.

    Any script is kept as it is ("日本語 ページ" -> "日本語-ページ"); runs of
    anything else (spaces, punctuation, slashes) become one hyphen.  Empty
    when the title has no letter or digit, which the forms report.  Applying
    it to a slug gives the same slug, so a URL can be checked against it.
    """
    slug = "-".join(_split(nfc(nfc(title).lower())))
    return slug[:MAX_SLUG].strip("-")


def legacy_slug(title: str) -> str:
    """The slug earlier versions of the wiki made: accents dropped, ASCII only.

    Pages created then keep their slug, and a link to "Crème" still finds
    the page stored as ``creme``.
    """
    folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    return _LEGACY_SLUG_JUNK.sub("-", folded.lower()).strip("-")[:MAX_SLUG]


def title_error(title: str) -> str | None:
    """Why ``title`` cannot name a page, or None if it can."""
    if not title:
        return "Give the page a title."
    if len(title) > MAX_TITLE:
        return f"Keep the title under {MAX_TITLE} characters (it has {len(title)})."
    for char in title:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and char not in _JOINERS):
            return (f"The title contains the invisible control character U+{ord(char):04X}; "
                    "remove it.")
    if "/" in title or "\\" in title:
        return "Titles cannot contain / or \\ (they would read as a path in the page's address)."
    if not slugify(title):
        return "Use at least one letter or digit in the title."
    return None


def words(*texts: str) -> set[str]:
    """The distinct search words of ``texts``: NFC, lowercased, two characters or more."""
    found: set[str] = set()
    for text in texts:
        found.update(word for word in _split(nfc(text).lower()) if len(word) > 1)
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


def excerpt(text: str, terms: Iterable[str], width: int = 160) -> Markup:
    """A short piece of ``text`` (markup removed) around the first search term, terms in ``<mark>``.

    Terms are matched as prefixes of words, as the search matches them.
    """
    text = _MARKUP.sub("", nfc(text))
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

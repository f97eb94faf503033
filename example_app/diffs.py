"""Differences between two texts, for people: lines numbered, changed words highlighted.

A diff is a list of :class:`DiffRow`: unchanged lines near a change, removed
and added lines (a changed line is a removed line followed by its added
version, the words that differ marked with ``<del>``/``<ins>``), and gaps
standing for runs of unchanged lines that are not shown.  difflib finds the
changes; nothing here knows about storage, so both wiki implementations
show the same diffs.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from markupsafe import Markup, escape

CONTEXT = 3

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


@dataclass(frozen=True)
class DiffRow:
    """One row of a diff.

    ``kind`` is ``"same"``, ``"del"``, ``"add"`` or ``"gap"``; ``old`` and
    ``new`` are line numbers (None where the line is not on that side);
    ``html`` is the line, escaped, with changed words marked; for a gap,
    ``skipped`` is how many unchanged lines it stands for.
    """

    kind: str
    old: int | None
    new: int | None
    html: Markup
    skipped: int = 0


def diff_rows(old: str, new: str, context: int = CONTEXT) -> list[DiffRow]:
    """The changes that turn ``old`` into ``new``, with ``context`` unchanged lines around each."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    rows: list[DiffRow] = []
    for group in matcher.get_grouped_opcodes(context):
        first_old = group[0][1]
        shown_until = rows_end(rows)
        if first_old > shown_until:
            rows.append(DiffRow("gap", None, None, Markup(""), first_old - shown_until))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                rows.extend(DiffRow("same", i + 1, j + 1, escape(old_lines[i]))
                            for i, j in zip(range(i1, i2), range(j1, j2)))
            else:
                rows.extend(_changed(old_lines, i1, i2, new_lines, j1, j2))
    if rows and rows_end(rows) < len(old_lines):
        rows.append(DiffRow("gap", None, None, Markup(""), len(old_lines) - rows_end(rows)))
    return rows


def rows_end(rows: list[DiffRow]) -> int:
    """How many old lines the rows so far cover (the last old line number shown)."""
    for row in reversed(rows):
        if row.old is not None:
            return row.old
    return 0


def _changed(old_lines: list[str], i1: int, i2: int, new_lines: list[str], j1: int, j2: int) -> list[DiffRow]:
    """Removed lines then added lines; lines paired by position get word highlights."""
    removed: list[DiffRow] = []
    added: list[DiffRow] = []
    paired = min(i2 - i1, j2 - j1)
    for offset in range(max(i2 - i1, j2 - j1)):
        i, j = i1 + offset, j1 + offset
        if offset < paired:
            before, after = word_diff(old_lines[i], new_lines[j])
            removed.append(DiffRow("del", i + 1, None, before))
            added.append(DiffRow("add", None, j + 1, after))
        else:
            if i < i2:
                removed.append(DiffRow("del", i + 1, None, escape(old_lines[i])))
            if j < j2:
                added.append(DiffRow("add", None, j + 1, escape(new_lines[j])))
    return removed + added


def word_diff(old: str, new: str) -> tuple[Markup, Markup]:
    """Two versions of a line, escaped, with the words only one of them has marked."""
    old_tokens, new_tokens = _TOKEN.findall(old), _TOKEN.findall(new)
    matcher = difflib.SequenceMatcher(None, old_tokens, new_tokens, autojunk=False)
    before, after = Markup(""), Markup("")
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old_piece, new_piece = "".join(old_tokens[i1:i2]), "".join(new_tokens[j1:j2])
        if tag == "equal":
            before += old_piece
            after += new_piece
            continue
        if old_piece:
            before += Markup("<del>%s</del>") % old_piece
        if new_piece:
            after += Markup("<ins>%s</ins>") % new_piece
    return before, after

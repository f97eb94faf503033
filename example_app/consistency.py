"""The wiki checks itself: every derived structure recomputed from the pages.

Pages and their revisions are the wiki's facts; everything else the app keeps
is derived from them and updated, edit by edit, next to them:

- the search index ``Wiki.words`` (each word of a page's current title and
  text -> the slugs of the pages that have it);
- the tag index ``Wiki.tags`` (each tag of a page's current revision -> the
  slugs of the pages that have it);
- the log of recent changes ``Wiki.recent`` (every revision of every page,
  once, under ``(timestamp, slug)``);
- each page's ``current`` revision (the newest one) and the numbering of its
  revisions, each revision's stored HTML (its text, rendered, when the
  current renderer made it), and the accounts its authors are;
- the redirects renames leave (``Wiki.redirects``): each old slug is no
  longer a page's and leads, through later renames, to a page that exists;
- the item counts that every BTree keeps for its O(1) ``len`` (pagination
  uses them).

:func:`check_wiki` recomputes all of them and reports every difference, one
sentence each.  An empty list means the wiki is consistent.  ``flask wiki
check`` runs it on the app's database (see :data:`wiki_cli`).

Differences should never appear: every edit changes a page and its index
entries in one transaction.  When they do, concurrent transactions were
committed as no serial order of them would have left the data, a bug of the
database's conflict handling, and the check is how it is found.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from durus.connection import Connection
from durus.error import ConflictError
from durus.file_storage import FileStorage
from example_app.models import WIKI_KEY, Wiki
from example_app.markup import HTML_FORMAT, render
from example_app.text import words
from flask_durus.storage_uri import FILE, MEMORY

# How many times ``flask wiki check`` reads the wiki again when other
# clients' commits make its read conflict.
CHECK_ATTEMPTS = 5


@dataclass
class WikiCheck:
    """What one check found: ``problems`` (sentences) and ``counts`` (what it read)."""

    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        c = self.counts
        return (f"{c.get('pages', 0):,} pages, {c.get('revisions', 0):,} revisions, "
                f"{c.get('users', 0):,} users, {c.get('words', 0):,} indexed words, "
                f"{c.get('tags', 0):,} tags")


def check_wiki(root: Mapping[str, Any]) -> list[str]:
    """Every inconsistency of the wiki under ``root`` (empty if there is none, or no wiki)."""
    return inspect_wiki(root).problems


def inspect_wiki(root: Mapping[str, Any]) -> WikiCheck:
    """Check the wiki under ``root``; the problems and what was counted."""
    wiki = root.get(WIKI_KEY)
    result = WikiCheck()
    if wiki is not None:
        _Checker(wiki, result).run()
    return result


def _slugs(slugs: Iterable[str]) -> str:
    names = sorted(slugs)
    return ("page " if len(names) == 1 else "pages ") + ", ".join(repr(name) for name in names)


class _Checker:
    def __init__(self, wiki: Wiki, result: WikiCheck) -> None:
        self.wiki = wiki
        self.result = result
        self.problems = result.problems

    def report(self, problem: str) -> None:
        self.problems.append(problem)

    def items(self, name: str, tree: Any) -> list[tuple[Any, Any]]:
        """The items of a BTree, checking its count and its order on the way."""
        items = list(tree.items())
        if len(tree) != len(items):
            self.report(f"{name}: its count says {len(tree)} entries, but it holds {len(items)}")
        for (before, _), (after, _) in zip(items, items[1:]):
            if not before < after:
                self.report(f"{name}: key {after!r} comes after {before!r}, out of order")
        return items

    def run(self) -> None:
        wiki = self.wiki
        users = self.check_users()
        pages = self.items("pages", wiki.pages)
        page_by_slug = dict(pages)
        expected_words: dict[str, set[str]] = {}
        expected_tags: dict[str, set[str]] = {}
        revisions: dict[int, tuple[str, Any]] = {}  # id(revision) -> (slug, revision)
        for slug, page in pages:
            current = self.check_page(slug, page, users, revisions)
            if current is not None:
                for word in words(current.title, current.text):
                    expected_words.setdefault(word, set()).add(slug)
                for tag in current.tags:
                    expected_tags.setdefault(tag, set()).add(slug)
        stored_words = self.check_index("search index", "word", wiki.words, expected_words, page_by_slug)
        stored_tags = self.check_index("tag index", "tag", wiki.tags, expected_tags, page_by_slug)
        self.check_recent(page_by_slug, revisions)
        self.check_redirects(page_by_slug)
        self.result.counts.update(
            pages=len(pages), revisions=len(revisions), users=len(users),
            words=stored_words, tags=stored_tags)

    def check_users(self) -> dict[int, Any]:
        """id(user) -> user, for every account under its right key."""
        users = {}
        for key, user in self.items("users", self.wiki.users):
            if key != user.name.lower():
                self.report(f"users: the account {user.name!r} is filed under {key!r}")
            users[id(user)] = user
        return users

    def check_page(self, slug: str, page: Any, users: dict[int, Any],
                   revisions: dict[int, tuple[str, Any]]):
        """Check one page and its revisions; its current revision, if it has one."""
        if page.slug != slug:
            self.report(f"pages: the page {page.slug!r} is filed under {slug!r}")
        where = f"page {slug!r}"
        history = self.items(f"{where}: revisions", page.revisions)
        numbers = [number for number, _ in history]
        if numbers != list(range(1, len(history) + 1)):
            self.report(f"{where}: its revisions are numbered {numbers}, not 1 to {len(history)}")
        for number, revision in history:
            revisions[id(revision)] = (slug, revision)
            if revision.number != number:
                self.report(f"{where}: revision {revision.number} is filed as revision {number}")
            if revision.slug != slug:
                self.report(f"{where}: revision {number} names the page {revision.slug!r}")
            if id(revision.author) not in users:
                self.report(f"{where}: revision {number} was written by {revision.author.name!r}, "
                            "who has no account")
            if revision.html_format == HTML_FORMAT and revision.html != render(revision.text):
                self.report(f"{where}: revision {number}'s stored HTML is not its text rendered")
        current = page.current
        if current is None:
            self.report(f"{where}: it has no current revision")
        elif not history:
            self.report(f"{where}: it has a current revision ({current.number}) but no history")
        elif current is not history[-1][1]:
            self.report(f"{where}: its current revision is {current.number}, "
                        f"but its newest is {history[-1][0]}")
        return current

    def check_index(self, name: str, kind: str, index: Any, expected: dict[str, set[str]],
                    pages: dict[str, Any]) -> int:
        """Compare a posting-set index with what the pages say; its entry count."""
        stored: dict[str, set[str]] = {}
        for key, postings in self.items(name, index):
            stored[key] = set(postings)
            if not stored[key]:
                self.report(f"{name}: the entry for {key!r} is empty (empty entries are removed)")
        for key in sorted(stored.keys() | expected.keys()):
            want = expected.get(key, set())
            have = stored.get(key)
            if have is None:
                self.report(f"{name}: no entry for the {kind} {key!r}, which {_slugs(want)} "
                            f"{'has' if len(want) == 1 else 'have'}")
                continue
            missing, extra = want - have, have - want
            if missing:
                self.report(f"{name}: the entry for {key!r} lacks {_slugs(missing)}, "
                            f"whose current revision has that {kind}")
            unknown = {slug for slug in extra if slug not in pages}
            if extra - unknown:
                self.report(f"{name}: the entry for {key!r} lists {_slugs(extra - unknown)}, "
                            f"whose current revision lacks that {kind}")
            if unknown:
                self.report(f"{name}: the entry for {key!r} lists {_slugs(unknown)}, "
                            "which the wiki does not have")
        return len(stored)

    def check_redirects(self, pages: dict[str, Any]) -> None:
        """Every old slug leads somewhere, and no live page hides behind one."""
        redirects = getattr(self.wiki, "redirects", None)
        if redirects is None:
            return
        table = dict(self.items("redirects", redirects))
        for old, new in table.items():
            if old in pages:
                self.report(f"redirects: {old!r} is a page's slug but also redirects to {new!r}")
            seen = {old}
            target = new
            while target in table and target not in pages and target not in seen:
                seen.add(target)
                target = table[target]
            if target not in pages:
                self.report(f"redirects: {old!r} leads to {target!r}, which the wiki does not have")

    def check_recent(self, pages: dict[str, Any], revisions: dict[int, tuple[str, Any]]) -> None:
        """Every revision is in the log of recent changes once, under its own key."""
        logged: dict[int, Any] = {}
        for key, revision in self.items("recent changes", self.wiki.recent):
            if not (isinstance(key, tuple) and len(key) == 2):
                self.report(f"recent changes: the key {key!r} is not (timestamp, slug)")
                continue
            timestamp, slug = key
            if (revision.timestamp, revision.slug) != key:
                self.report(f"recent changes: revision {revision.number} of {revision.slug!r} "
                            f"saved at {revision.timestamp!r} is filed under {key!r}")
            if id(revision) in logged:
                self.report(f"recent changes: revision {revision.number} of {revision.slug!r} "
                            f"is listed twice, under {logged[id(revision)]!r} and {key!r}")
                continue
            logged[id(revision)] = key
            if id(revision) not in revisions:
                where = "no page" if slug not in pages else f"not in the history of {slug!r}"
                self.report(f"recent changes: the entry {key!r} (revision {revision.number} "
                            f"of {revision.slug!r}) is {where}")
        for identity, (slug, revision) in revisions.items():
            if identity not in logged:
                self.report(f"recent changes: revision {revision.number} of {slug!r} is missing")


# -- flask wiki check -------------------------------------------------------------

wiki_cli = AppGroup("wiki", help="Look after the wiki's data.")


def _check_app_data() -> WikiCheck | None:
    """Check the app's database; None if this process cannot see one (memory://)."""
    durus = current_app.extensions["durus"]
    location = durus.settings().location
    if location.kind == FILE and not durus.holds_embedded_storage():
        # A running `flask run` holds the file's lock; a read-only open needs
        # none and sees the file as its last commit left it.
        if not os.path.exists(location.file):
            raise click.ClickException(f"There is no data file at {location.file} yet.")
        storage = FileStorage(location.file, readonly=True)
        try:
            return inspect_wiki(Connection(storage).get_root())
        finally:
            storage.close()
    if location.kind == MEMORY and not durus.holds_embedded_storage():
        return None
    for attempt in range(1, CHECK_ATTEMPTS + 1):
        try:
            return inspect_wiki(durus.root)
        except ConflictError:
            # Someone committed while we read: read everything again.
            durus.connection.abort()
    raise click.ClickException(
        f"The wiki kept changing while it was read ({CHECK_ATTEMPTS} attempts); try again "
        "when it is quieter.")


@wiki_cli.command("check")
def check_command() -> None:
    """Recompute the indexes and the log from the pages; report every difference.

    Exit status 0 when the wiki is consistent, 1 (and every problem, one a
    line) when it is not.
    """
    result = _check_app_data()
    if result is None:
        click.echo("DURUS_STORAGE is memory:// and this process has not opened it: nothing to check.")
        return
    if result.consistent:
        click.echo(f"The wiki is consistent: {result.summary()}.")
        return
    for problem in result.problems:
        click.echo(problem)
    click.echo(f"The wiki is inconsistent: {len(result.problems):,} problems in {result.summary()}.")
    raise click.exceptions.Exit(1)

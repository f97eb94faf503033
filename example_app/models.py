"""The wiki's data: persistent classes reachable from one ``Wiki`` object.

Everything lives under ``root["wiki"]``.  Indexes are BTrees so that a
change rewrites only the few nodes on one path, and two edits of different
pages touch different objects wherever the data allows it.  The shared
spots an edit always touches are the log of recent changes (every edit
appends at its newest end) and the posting lists of words that appear in
or vanish from the text.  Concurrent edits meet there only on different
keys, which BTree conflict resolution merges at commit; what it cannot
merge (a node that both split) conflicts, and the Flask extension replays
the losing request.

Edits of the *same* page are a different matter: two people editing from
the same revision must not silently overwrite each other.  Every edit names
the revision it started from (``base``), and :meth:`Wiki.edit_page` refuses an
edit whose base is no longer the current revision (:class:`EditConflict`),
so the view can show the newer text instead of losing either edit.  Reverts
and renames are edits too (a new revision, from a named base).

Renames and deletions are rarer and touch more: a rename files the page
and every one of its entries in the log under the new slug and leaves a
redirect behind; a deletion takes the page out of every index and the log.
Each is one transaction, so the indexes stay as :mod:`example_app.consistency`
expects them whichever edits run beside it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from werkzeug.security import check_password_hash, generate_password_hash

from durus.btree import BNode32, BTree
from durus.persistent import Persistent
from durus.persistent_set import PersistentSet
from example_app.markup import HTML_FORMAT, render, render_cached
from example_app.text import legacy_slug, nfc, slugify, words

WIKI_KEY = "wiki"

log = logging.getLogger(__name__)

# Nodes of the log of recent changes, which every edit appends to.  Conflict
# resolution replays concurrent inserts on the committed tree, splits
# included, so any node size works; BNode32 keeps the log a little shallower.
# WIKI_LOG_NODE_DEGREE picks another (the benchmark runs the plain BTree()
# default, 16, too).
LOG_NODE = BTree.node_class_for_degree(int(os.environ.get("WIKI_LOG_NODE_DEGREE", BNode32.minimum_degree)))


class EditConflict(Exception):
    """An edit started from a revision that is no longer the page's current one.

    Instance attributes: ``page`` (the page) and ``base`` (the revision number
    the edit started from).
    """

    def __init__(self, page: Page, base: int) -> None:
        super().__init__(
            f"{page.title!r} was changed (now revision {page.current.number}) "
            f"since revision {base}, which this edit started from"
        )
        self.page = page
        self.base = base


class SlugTaken(Exception):
    """A rename would give a page the slug of another page (``slug``)."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"A page called {slug!r} exists already")
        self.slug = slug


class User(Persistent):
    """An account.

    Instance attributes:

    - ``name``: the unique login name, as typed at sign-up.
    - ``password_hash``: a werkzeug password hash (never the password).
    - ``created``: when the account was made (seconds since the epoch).
    """

    def __init__(self, name: str, password: str, method: str = "scrypt") -> None:
        self.name = name
        self.password_hash = generate_password_hash(password, method=method)
        self.created = time.time()

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class Revision(Persistent):
    """One saved version of a page; only its ``slug`` ever changes (when the page is renamed).

    Instance attributes:

    - ``slug``: the page's slug (so a revision found in the log of recent
      changes can link to its page).
    - ``number``: 1 for the first version, then counting up.
    - ``title``, ``text``, ``tags``: the page as this revision left it
      (``tags`` a tuple of strings).
    - ``html``: ``text`` rendered, kept so a page view does no rendering.
    - ``html_format``: the renderer that made ``html``
      (:data:`example_app.markup.HTML_FORMAT`); revisions saved by earlier
      versions of the wiki have none (the class default) and are rendered
      again when shown (:meth:`display_html`).
    - ``comment``: the editor's summary of the change (may be empty).
    - ``author``: the :class:`User` who saved it.
    - ``timestamp``: when it was saved (seconds since the epoch).
    """

    def __init__(
        self, slug: str, number: int, title: str, text: str, tags: tuple[str, ...], comment: str, author: User
    ) -> None:
        self.slug = slug
        self.number = number
        self.title = title
        self.text = text
        self.tags = tags
        self.html = render(text)
        self.html_format = HTML_FORMAT
        self.comment = comment
        self.author = author
        self.timestamp = time.time()

    html_format = None

    def display_html(self) -> str:
        """The HTML to show: the stored one, unless an older renderer made it."""
        if self.html_format == HTML_FORMAT:
            return self.html
        return render_cached(self.text)


class Page(Persistent):
    """A wiki page and its full history.

    Instance attributes:

    - ``slug``: the page's URL name, made from its first title; it changes
      only when the page is renamed.
    - ``revisions``: BTree revision number -> :class:`Revision`.
    - ``current``: the latest revision (what the page shows).
    """

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.revisions = BTree()
        self.current: Revision | None = None

    @property
    def title(self) -> str:
        return self.current.title

    @property
    def tags(self) -> tuple[str, ...]:
        return self.current.tags

    @property
    def updated(self) -> float:
        return self.current.timestamp

    @property
    def author(self) -> User:
        """Who created the page (the only one who may delete it)."""
        return self.revisions[1].author

    @property
    def revision_count(self) -> int:
        return len(self.revisions)

    def history(self) -> Iterator[Revision]:
        """Revisions, newest first."""
        return (revision for _, revision in self.revisions.items_backward())


class Wiki(Persistent):
    """The application's root object: every page, account and index.

    Instance attributes:

    - ``pages``: BTree slug -> :class:`Page`.
    - ``users``: BTree lowercased name -> :class:`User` (names are unique
      regardless of case).
    - ``tags``: BTree tag -> PersistentSet of the slugs of pages with that tag.
    - ``words``: BTree word -> PersistentSet of slugs, the search index over
      titles and texts.  Keys are sorted, so the words a search term begins
      are one range of keys (:meth:`search`).  A posting list is one object, so an edit loads one
      record per word it adds or removes, and concurrent edits adding
      different pages to one word merge at commit (a set never splits).
    - ``recent``: BTree ``(timestamp, slug)`` -> :class:`Revision`, the log
      of every edit, newest at the end.  Entries are only ever appended,
      so concurrent edits change this tree only at its right edge, with
      different keys (renames and deletions move or remove a page's entries).
    - ``redirects``: BTree old slug -> the slug a renamed page moved to
      (which may itself have moved on).  None until the first rename: wikis
      made before renames existed have no such attribute.
    """

    redirects: BTree | None = None

    def __init__(self) -> None:
        self.pages = BTree()
        self.users = BTree()
        self.tags = BTree()
        self.words = BTree()
        self.recent = BTree(LOG_NODE)

    # -- accounts -------------------------------------------------------------

    def find_user(self, name: str) -> User | None:
        return self.users.get(name.lower())

    def add_user(self, name: str, password: str, method: str = "scrypt") -> User:
        """A new account; the caller checked that the name is free.

        ``method`` is the werkzeug hash method for the password.
        """
        user = User(name, password, method)
        self.users[name.lower()] = user
        return user

    # -- pages ------------------------------------------------------------------

    def create_page(self, slug: str, title: str, text: str, tags: list[str], author: User) -> Page:
        """A new page with its first revision; the caller checked the slug is free.

        A redirect left under the slug by a rename gives way to the new page.
        """
        page = Page(slug)
        self.pages[slug] = page
        if self.redirects is not None and slug in self.redirects:
            del self.redirects[slug]
        self._save(page, title, text, tags, "Created", author)
        return page

    def resolve(self, slug: str) -> Page | None:
        """The page a URL or link names: by slug, through redirects, or by its legacy ASCII slug."""
        slug = nfc(slug)
        page = self.pages.get(slug)
        if page is not None:
            return page
        target = self.redirect_target(slug)
        if target is not None:
            return self.pages.get(target)
        legacy = legacy_slug(slug)
        return self.pages.get(legacy) if legacy and legacy != slug else None

    def redirect_target(self, slug: str) -> str | None:
        """Where a renamed page's old slug leads now, following later renames; None if nowhere."""
        seen = set()
        while self.redirects is not None and slug in self.redirects and slug not in seen:
            seen.add(slug)
            slug = self.redirects[slug]
            if slug in self.pages:
                return slug
        return None

    def rename_page(self, page: Page, base: int, title: str, author: User) -> Revision:
        """Give ``page`` a new title (and the slug that goes with it), as a new revision.

        The old slug redirects to the new one.  Raises :class:`EditConflict`
        when ``base`` is not the current revision and :class:`SlugTaken` when
        another page has the new slug; nothing is changed then.
        """
        if base != page.current.number:
            raise EditConflict(page, base)
        old_slug, new_slug = page.slug, slugify(title)
        if new_slug != old_slug and new_slug in self.pages:
            raise SlugTaken(new_slug)
        current = page.current
        comment = f"Renamed from {current.title!r}"
        if new_slug != old_slug:
            self._move(page, old_slug, new_slug)
        return self._save(page, title, current.text, list(current.tags), comment, author, indexed_as=old_slug)

    def _move(self, page: Page, old_slug: str, new_slug: str) -> None:
        """File ``page`` and its log entries under ``new_slug`` and leave a redirect behind."""
        del self.pages[old_slug]
        self.pages[new_slug] = page
        page.slug = new_slug
        for _, revision in page.revisions.items():
            self._unlog(revision, old_slug)
            revision.slug = new_slug
            self.recent[(revision.timestamp, new_slug)] = revision
        if self.redirects is None:
            self.redirects = BTree()
        if new_slug in self.redirects:
            del self.redirects[new_slug]
        self.redirects[old_slug] = new_slug

    def _unlog(self, revision: Revision, slug: str) -> None:
        key = (revision.timestamp, slug)
        if key in self.recent:
            del self.recent[key]
        else:
            log.warning("The log of recent changes has no entry %r to remove: it is inconsistent "
                        "(run `flask wiki check`)", key)

    def revert_page(self, page: Page, base: int, number: int, author: User) -> Revision:
        """A new revision with the text and tags of revision ``number``.

        The title stays: it goes with the page's slug, which only a rename
        changes.  Raises KeyError if there is no such revision and
        :class:`EditConflict` as :meth:`edit_page` does.
        """
        old = page.revisions[number]
        return self.edit_page(page, base, page.current.title, old.text, list(old.tags),
                              f"Reverted to revision {number}", author)

    def delete_page(self, page: Page) -> None:
        """Remove ``page``, its history, its index entries and the redirects that lead to it."""
        slug, current = page.slug, page.current
        self._reindex(self.words, slug, words(current.title, current.text), set())
        self._reindex(self.tags, slug, set(current.tags), set())
        for _, revision in page.revisions.items():
            self._unlog(revision, slug)
        del self.pages[slug]
        if self.redirects is not None:
            leading_here = [old for old, _ in self.redirects.items() if self._leads_to(old, slug)]
            for old in leading_here:
                del self.redirects[old]

    def _leads_to(self, old: str, slug: str) -> bool:
        seen = set()
        while old in self.redirects and old not in seen:
            seen.add(old)
            old = self.redirects[old]
            if old == slug:
                return True
        return False

    def edit_page(
        self, page: Page, base: int, title: str, text: str, tags: list[str], comment: str, author: User
    ) -> Revision:
        """Save a new revision of ``page`` made from revision ``base``.

        Raises :class:`EditConflict` when someone saved another revision
        after ``base``; nothing is changed then.
        """
        if base != page.current.number:
            raise EditConflict(page, base)
        return self._save(page, title, text, tags, comment, author)

    def _save(self, page: Page, title: str, text: str, tags: list[str], comment: str, author: User,
              indexed_as: str | None = None) -> Revision:
        """Add a revision; ``indexed_as`` is the slug the indexes list the page under, if not its own."""
        old = page.current
        number = old.number + 1 if old else 1
        revision = Revision(page.slug, number, title, text, tuple(tags), comment, author)
        old_words = words(old.title, old.text) if old else set()
        old_tags = set(old.tags) if old else set()
        old_slug = indexed_as or page.slug
        if old_slug == page.slug:
            self._reindex(self.words, page.slug, old_words, words(title, text))
            self._reindex(self.tags, page.slug, old_tags, set(tags))
        else:
            self._reindex(self.words, old_slug, old_words, set())
            self._reindex(self.tags, old_slug, old_tags, set())
            self._reindex(self.words, page.slug, set(), words(title, text))
            self._reindex(self.tags, page.slug, set(), set(tags))
        self.recent[(revision.timestamp, page.slug)] = revision
        page.revisions[number] = revision
        page.current = revision
        return revision

    @staticmethod
    def _reindex(index: BTree, slug: str, old: set[str], new: set[str]) -> None:
        """Move ``slug`` between posting sets; only changed keys are touched.

        A key to remove ``slug`` from may have no entry, though the page's
        previous revision has it: the index lost it (concurrent commits that
        the database merged where it should have refused one).  There is then
        nothing to remove, and the edit goes on instead of failing now and at
        every later edit of the page.  It is logged; ``flask wiki check``
        reports the damage (see :mod:`example_app.consistency`).
        """
        for key in old - new:
            postings = index.get(key)
            if postings is None:
                log.warning("The index has no entry for %r to remove the page %r from: "
                            "it is inconsistent (run `flask wiki check`)", key, slug)
                continue
            postings.discard(slug)
            if not postings:
                del index[key]
        for key in new - old:
            postings = index.get(key)
            if postings is None:
                postings = index[key] = PersistentSet()
            postings.add(slug)

    # -- reading ----------------------------------------------------------------

    def recent_changes(self) -> Iterator[Revision]:
        """Every revision of every page, the newest first."""
        return (revision for _, revision in self.recent.items_backward())

    def tagged(self, tag: str) -> Iterator[Page]:
        """Pages with ``tag``, by slug."""
        postings = self.tags.get(tag)
        return (self.pages[slug] for slug in sorted(postings)) if postings else iter(())

    def tag_counts(self) -> Iterator[tuple[str, int]]:
        """``(tag, number of pages)`` for every tag, alphabetically."""
        return ((tag, len(postings)) for tag, postings in self.tags.items())

    def search(self, terms: set[str]) -> list[Page]:
        """Pages whose title or text has, for every term, a word starting with it; best first.

        Each term's pages are the union of the posting lists of the words it
        begins (one range of the word BTree, at most
        :data:`MAX_PREFIX_WORDS` words); the results are their intersection,
        smallest first.  Ranked by :func:`_rank`: pages with every term in
        the title first, then pages with more terms as whole words.
        """
        if not terms:
            return []
        found: list[tuple[set[str], set[str]]] = []  # per term: (pages, pages with the exact word)
        for term in terms:
            slugs, exact = self._prefix_postings(term)
            if not slugs:
                return []
            found.append((slugs, exact))
        found.sort(key=lambda pair: len(pair[0]))
        slugs = set(found[0][0])
        for other, _ in found[1:]:
            slugs &= other
        pages = [self.pages[slug] for slug in slugs if slug in self.pages]
        return sorted(pages, key=lambda page: _rank(page, terms, found))

    def _prefix_postings(self, term: str) -> tuple[set[str], set[str]]:
        slugs: set[str] = set()
        exact: set[str] = set()
        for count, (word, postings) in enumerate(self.words.items_range(term, term + "\U0010ffff", True, True)):
            if count >= MAX_PREFIX_WORDS:
                break
            slugs.update(postings)
            if word == term:
                exact.update(postings)
        return slugs, exact


# How many index words one search term may expand to (a short prefix of a
# big wiki would otherwise read most of the index).
MAX_PREFIX_WORDS = 500


def _rank(page: Page, terms: set[str], found: list[tuple[set[str], set[str]]]) -> tuple:
    """Sort key of a search result: title matches, then whole-word matches, then title."""
    title_words = words(page.title)
    in_title = sum(any(word.startswith(term) for word in title_words) for term in terms)
    whole = sum(page.slug in exact for _, exact in found)
    return (-in_title, -whole, page.title.lower(), page.slug)


def get_wiki(root) -> Wiki:
    """The Wiki under ``root``, made on first use (a commit makes it stick)."""
    wiki = root.get(WIKI_KEY)
    if wiki is None:
        wiki = root[WIKI_KEY] = Wiki()
    return wiki

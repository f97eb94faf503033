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
so the view can show the newer text instead of losing either edit.
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
from example_app.text import render, words

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
    """One saved version of a page; never changed after it is made.

    Instance attributes:

    - ``slug``: the page's slug (so a revision found in the log of recent
      changes can link to its page).
    - ``number``: 1 for the first version, then counting up.
    - ``title``, ``text``, ``tags``: the page as this revision left it
      (``tags`` a tuple of strings).
    - ``html``: ``text`` rendered, kept so a page view does no rendering.
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
        self.comment = comment
        self.author = author
        self.timestamp = time.time()


class Page(Persistent):
    """A wiki page and its full history.

    Instance attributes:

    - ``slug``: the page's URL name, fixed when the page is created.
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
      titles and texts.  A posting list is one object, so an edit loads one
      record per word it adds or removes, and concurrent edits adding
      different pages to one word merge at commit (a set never splits).
    - ``recent``: BTree ``(timestamp, slug)`` -> :class:`Revision`, the log
      of every edit, newest at the end.  Entries are only ever appended,
      so concurrent edits change this tree only at its right edge, with
      different keys.
    """

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
        """A new page with its first revision; the caller checked the slug is free."""
        page = Page(slug)
        self.pages[slug] = page
        self._save(page, title, text, tags, "Created", author)
        return page

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

    def _save(self, page: Page, title: str, text: str, tags: list[str], comment: str, author: User) -> Revision:
        old = page.current
        number = old.number + 1 if old else 1
        revision = Revision(page.slug, number, title, text, tuple(tags), comment, author)
        old_words = words(old.title, old.text) if old else set()
        self._reindex(self.words, page.slug, old_words, words(title, text))
        self._reindex(self.tags, page.slug, set(old.tags) if old else set(), set(tags))
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
        """Pages whose title or text holds every word of ``terms``, by slug.

        Intersects the posting lists, smallest first, so a rare word keeps
        the work small however common the others are.
        """
        postings = []
        for term in terms:
            found = self.words.get(term)
            if found is None:
                return []
            postings.append(found)
        if not postings:
            return []
        postings.sort(key=len)
        slugs = set(postings[0])
        for other in postings[1:]:
            slugs = {slug for slug in slugs if slug in other}
        return [self.pages[slug] for slug in sorted(slugs)]


def get_wiki(root) -> Wiki:
    """The Wiki under ``root``, made on first use (a commit makes it stick)."""
    wiki = root.get(WIKI_KEY)
    if wiki is None:
        wiki = root[WIKI_KEY] = Wiki()
    return wiki

"""Generated sequences of page operations (create, edit, revert, rename, delete),
each committed, with the wiki checked after every one of them.

The model beside it is a dict title -> slug of the pages that should exist
and a dict of the old slugs that should redirect; the wiki must agree with
it, and :func:`example_app.consistency.check_wiki` must find nothing wrong.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durus.connection import Connection
from durus.storage import MemoryStorage
from example_app.consistency import check_wiki
from example_app.models import EditConflict, SlugTaken, get_wiki
from example_app.text import slugify

TITLES = ("Apple pie", "Яблоко", "りんご", "Apple Pie!", "Pear")
WORDS = ("durable", "durability", "pie", "crust", "яблоко", "りんご")

operations = st.lists(
    st.tuples(
        st.sampled_from(("create", "edit", "revert", "rename", "delete")),
        st.sampled_from(TITLES),
        st.sampled_from(TITLES),
        st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
        st.integers(min_value=1, max_value=6),
    ),
    min_size=1, max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_any_sequence_of_page_operations_keeps_the_wiki_consistent(steps):
    connection = Connection(MemoryStorage())
    wiki = get_wiki(connection.get_root())
    author = wiki.add_user("ann", "long password", "pbkdf2:sha256:1000")
    connection.commit()
    pages: dict[str, str] = {}  # slug -> the text it should show
    for operation, title, other, chosen, number in steps:
        slug = slugify(title)
        page = wiki.pages.get(slug)
        text = " ".join(chosen)
        if operation == "create":
            if page is None:
                wiki.create_page(slug, title, text, ["t"], author)
                pages[slug] = text
        elif page is None:
            pass
        elif operation == "edit":
            wiki.edit_page(page, page.current.number, page.title, text, [], "", author)
            pages[slug] = text
        elif operation == "revert":
            number = min(number, page.revision_count)
            wiki.revert_page(page, page.current.number, number, author)
            pages[slug] = page.revisions[number].text
        elif operation == "rename":
            try:
                wiki.rename_page(page, page.current.number, other, author)
            except SlugTaken:
                assert slugify(other) in pages and slugify(other) != slug
            else:
                pages[page.slug] = pages.pop(slug)
                assert slug == page.slug or wiki.resolve(slug) is page
        else:
            wiki.delete_page(page)
            del pages[slug]
            assert wiki.resolve(slug) is None
        connection.commit()
        assert check_wiki(connection.get_root()) == [], (operation, title, other)
        assert {slug: page.current.text for slug, page in wiki.pages.items()} == pages
    for word in WORDS:  # prefix search agrees (titles here have the words of their slugs)
        found = {page.slug for page in wiki.search({word[:4]})}
        assert found == {slug for slug, text in pages.items()
                         if any(w.startswith(word[:4]) for w in text.split() + slug.split("-"))}


def test_a_stale_base_changes_nothing():
    connection = Connection(MemoryStorage())
    wiki = get_wiki(connection.get_root())
    author = wiki.add_user("ann", "long password", "pbkdf2:sha256:1000")
    page = wiki.create_page("pear", "Pear", "ripe", [], author)
    wiki.edit_page(page, 1, "Pear", "riper", [], "", author)
    for change in (lambda: wiki.rename_page(page, 1, "Quince", author),
                   lambda: wiki.revert_page(page, 1, 1, author)):
        try:
            change()
        except EditConflict as conflict:
            assert conflict.base == 1
        else:
            raise AssertionError("a change from a stale base went through")
    assert (page.slug, page.revision_count, page.current.text) == ("pear", 2, "riper")
    assert check_wiki(connection.get_root()) == []

"""The wiki's pages as a product: Markdown, preview, diffs, revert, rename, delete,
Unicode titles, pager labels (Flask test client, in-memory store)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from example_app.consistency import check_wiki
from example_app.database import current_wiki
from example_app.markup import HTML_FORMAT
from tests.support.wiki_site import Wiki, make_app, signed_up


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def alice(app) -> Wiki:
    return signed_up(app, "alice")


@pytest.fixture
def bob(app) -> Wiki:
    return signed_up(app, "bob")


def consistent(app) -> list[str]:
    with app.app_context():
        return check_wiki(app.extensions["durus"].root)


def text_of(response) -> str:
    """The rendered page text (the <div class="text"> of a page view)."""
    return response.text.split('<div class="text">', 1)[1].split("</div>", 1)[0]


MARKDOWN = """## Shopping
- milk
- eggs

one line
same paragraph\\
after a hard break

1. first
2. second

```
x = 1 < 2
```

> a quote

[the docs](https://example.com/docs) and [[Existing Page]] and [[Nowhere|somewhere else]]
"""


def test_markdown_constructs_render_as_commonmark(alice):
    alice.create("Existing Page", "here")
    alice.create("Markdown", MARKDOWN)
    html = text_of(alice.client.get("/wiki/markdown"))
    assert "<h3>Shopping</h3>\n<ul>\n<li>milk</li>\n<li>eggs</li>\n</ul>" in html  # a list right under a heading
    assert "<p>one line\nsame paragraph<br>\nafter a hard break</p>" in html
    assert "<ol>\n<li>first</li>\n<li>second</li>\n</ol>" in html
    assert "<pre><code>x = 1 &lt; 2\n</code></pre>" in html
    assert "<blockquote>\n<p>a quote</p>\n</blockquote>" in html
    assert '<a href="https://example.com/docs" rel="noopener noreferrer">the docs</a>' in html
    assert '<a class="wikilink" href="/wiki/existing-page" title="Existing Page"' in html
    assert ('<a class="wikilink missing" href="/new?title=Nowhere" '
            'title="Nowhere (no such page yet: create it)" rel="noopener noreferrer">somewhere else</a>') in html

    alice.create("Nowhere", "now it exists")  # the same stored HTML, now a plain link
    html = text_of(alice.client.get("/wiki/markdown"))
    assert 'class="wikilink missing"' not in html and 'href="/wiki/nowhere"' in html


def test_html_is_rendered_once_per_revision(alice, app):
    alice.create("Stored", "*once*")
    with app.app_context():
        revision = current_wiki().pages["stored"].current
        assert (revision.html, revision.html_format) == ("<p><em>once</em></p>\n", HTML_FORMAT)


def test_revisions_stored_by_the_old_renderer_are_shown_as_markdown(alice, app):
    alice.create("Old", "# Title\n- a\n- b")
    with app.app_context():
        revision = current_wiki().pages["old"].current
        del revision.html_format  # as a revision saved before Markdown came
        revision.html = "<p>old markup</p>"
        app.extensions["durus"].connection.commit()
    html = text_of(alice.client.get("/wiki/old"))
    assert "<h2>Title</h2>\n<ul>\n<li>a</li>" in html and "old markup" not in html
    assert consistent(app) == []


def test_preview_renders_without_saving(alice, app):
    response = alice.post("/new", {"title": "Draft", "text": "**bold** [[Draft]]", "action": "preview"})
    assert response.status_code == 200
    preview = response.text.split('aria-label="Preview"', 1)[1].split("</section>", 1)[0]
    assert "<strong>bold</strong>" in preview
    assert ">**bold** [[Draft]]</textarea>" in response.text  # the text is kept in the form
    assert alice.client.get("/wiki/draft").status_code == 404

    alice.create("Draft", "v1")
    edit = alice.post("/wiki/draft/edit", {"title": "Draft", "text": "> v2", "base": "1", "action": "preview"})
    assert "<blockquote>" in edit.text
    with app.app_context():
        assert current_wiki().pages["draft"].revision_count == 1


def test_any_two_revisions_compare_with_word_highlights(alice):
    alice.create("Notes", "alpha\nbeta\ngamma\n" + "\n".join(f"line {i}" for i in range(20)))
    alice.edit("notes", "alpha\nBETA two\ngamma\n" + "\n".join(f"line {i}" for i in range(20)), base=1)
    alice.edit("notes", "alpha\nBETA two\ngamma\n" + "\n".join(f"line {i}" for i in range(20)) + "\nend", base=2)
    history = alice.client.get("/wiki/notes/history").text
    assert 'action="/wiki/notes/compare"' in history and 'name="from" value="1"' in history

    compare = alice.client.get("/wiki/notes/compare?from=3&to=1")  # either order: oldest first
    assert compare.status_code == 200
    assert "revision 1 → 3" in compare.text
    assert '<td class="line"><del>beta</del></td>' in compare.text
    assert '<td class="line"><ins>BETA two</ins></td>' in compare.text
    assert '<tr class="add"><td class="num"></td><td class="num">24</td><td class="sign">+</td><td class="line">end</td></tr>' in compare.text
    assert "unchanged lines" in compare.text  # the long unchanged middle is folded
    assert "@@" not in compare.text and "<pre" not in compare.text
    assert alice.client.get("/wiki/notes/compare?from=1&to=9").status_code == 404
    assert alice.client.get("/wiki/notes/compare?from=x&to=1").status_code == 400


def test_revert_makes_a_new_revision_with_the_old_text(alice, app):
    alice.create("Doc", "good text", "keep")
    alice.edit("doc", "vandalised", base=1, tags="spam")
    page = alice.client.get("/wiki/doc/rev/1").text
    assert "Revert to this revision" in page
    response = alice.post("/wiki/doc/rev/1", {"number": "1", "base": "2"}, path="/wiki/doc/revert")
    assert response.status_code == 302
    assert "good text" in alice.client.get("/wiki/doc").text
    with app.app_context():
        page = current_wiki().pages["doc"]
        assert page.revision_count == 3
        assert (page.current.text, page.current.tags, page.current.comment) == (
            "good text", ("keep",), "Reverted to revision 1")
    assert "1 page with" in alice.client.get("/search?q=good").text
    assert "0 pages with" in alice.client.get("/search?q=vandalised").text
    stale = alice.post("/wiki/doc/rev/1", {"number": "2", "base": "2"}, path="/wiki/doc/revert")
    assert stale.status_code == 302 and stale.headers["Location"] == "/wiki/doc/history"
    assert alice.post("/wiki/doc/rev/1", {"number": "9", "base": "3"}, path="/wiki/doc/revert").status_code == 404
    assert consistent(app) == []


def test_rename_moves_the_page_and_leaves_a_redirect(alice, app):
    alice.create("Old Name", "words about durability", "db")
    alice.edit("old-name", "more words about durability", base=1, tags="db")
    alice.create("Linker", "see [[Old Name]]")
    response = alice.post("/wiki/old-name/rename", {"title": "New Name", "base": "2"})
    assert (response.status_code, response.headers["Location"]) == (302, "/wiki/new-name")

    assert alice.client.get("/wiki/old-name").headers["Location"] == "/wiki/new-name"
    assert alice.client.get("/wiki/old-name/history").headers["Location"] == "/wiki/new-name/history"
    assert "<h1>New Name</h1>" in alice.client.get("/wiki/new-name").text
    linker = text_of(alice.client.get("/wiki/linker"))
    assert 'href="/wiki/old-name"' in linker and "missing" not in linker  # the old link still works
    assert 'href="/wiki/new-name"' in alice.client.get("/search?q=durability").text
    assert 'href="/wiki/new-name"' in alice.client.get("/tags/db").text
    assert "/wiki/new-name/rev/1" in alice.client.get("/").text  # the log follows the page
    with app.app_context():
        page = current_wiki().pages["new-name"]
        assert page.current.comment == "Renamed from 'Old Name'" and page.revision_count == 3
        assert "old-name" not in current_wiki().pages
    assert consistent(app) == []

    # Renamed again, and back: redirects follow, a page is never hidden behind one.
    assert alice.post("/wiki/new-name/rename", {"title": "Third", "base": "3"}).status_code == 302
    assert alice.client.get("/wiki/old-name").headers["Location"] == "/wiki/third"
    assert alice.post("/wiki/third/rename", {"title": "Old Name", "base": "4"}).status_code == 302
    assert alice.client.get("/wiki/old-name").status_code == 200
    assert alice.client.get("/wiki/third").headers["Location"] == "/wiki/old-name"
    assert consistent(app) == []


def test_rename_refuses_taken_and_bad_titles_and_stale_forms(alice, app):
    alice.create("One", "1")
    alice.create("Two", "2")
    taken = alice.post("/wiki/one/rename", {"title": "TWO", "base": "1"})
    assert taken.status_code == 400 and "exists already" in taken.text
    assert alice.post("/wiki/one/rename", {"title": "a/b", "base": "1"}).status_code == 400
    assert alice.post("/wiki/one/rename", {"title": "", "base": "1"}).status_code == 400
    stale = alice.post("/wiki/one/rename", {"title": "Uno", "base": "7"})
    assert stale.status_code == 409 and "changed the page" in stale.text
    with app.app_context():
        assert sorted(current_wiki().pages.keys()) == ["one", "two"]
    assert consistent(app) == []


def test_only_the_creator_deletes_a_page(alice, bob, app):
    alice.create("Mine", "alice's unique words", "private")
    alice.create("Other", "links to [[Mine]]")
    alice.post("/wiki/mine/rename", {"title": "Still Mine", "base": "1"})
    bob_edit = bob.edit("still-mine", "bob was here", base=2, title="Still Mine")
    assert bob_edit.status_code == 302
    assert "Delete" not in bob.client.get("/wiki/still-mine").text.split('class="actions"')[1].split("</div>")[0]
    assert bob.client.get("/wiki/still-mine/delete").status_code == 403
    forbidden = bob.post("/wiki/other", {}, path="/wiki/still-mine/delete")
    assert forbidden.status_code == 403 and "Only alice" in forbidden.text

    assert alice.client.get("/wiki/still-mine/delete").status_code == 200
    assert alice.post("/wiki/other", {}, path="/wiki/still-mine/delete").status_code == 302
    assert alice.client.get("/wiki/still-mine").status_code == 404
    assert alice.client.get("/wiki/mine").status_code == 404  # its redirect went with it
    assert "0 pages with" in alice.client.get("/search?q=bob").text
    assert alice.client.get("/tags/private").status_code == 404
    assert "still-mine" not in alice.client.get("/").text
    assert 'class="wikilink missing"' in alice.client.get("/wiki/other").text
    assert consistent(app) == []


def test_page_changes_need_an_account(app, alice):
    alice.create("Locked", "text")
    visitor = app.test_client()
    for path in ("/wiki/locked/rename", "/wiki/locked/delete"):
        assert visitor.get(path).headers["Location"].startswith("/login")
    assert visitor.post("/wiki/locked/revert", data={}).status_code == 400  # no CSRF token, no session


@pytest.mark.parametrize("title, slug", [
    ("日本語のページ", "日本語のページ"),
    ("Привет Мир", "привет-мир"),
    ("مرحبا بالعالم", "مرحبا-بالعالم"),
    ("हिन्दी पृष्ठ", "हिन्दी-पृष्ठ"),
])
def test_titles_in_any_script(alice, app, title, slug):
    response = alice.create(title, f"Text of {title}. [[{title}]]")
    assert response.status_code == 302
    assert response.headers["Location"] == "/wiki/" + quote(slug)
    page = alice.client.get("/wiki/" + quote(slug))
    assert page.status_code == 200 and f"<h1>{title}</h1>" in page.text
    assert "missing" not in text_of(page)  # its link to itself finds it
    assert alice.create(title.upper(), "again").status_code == 400  # the same slug
    first_word = title.split()[0].lower()
    assert "1 page with" in alice.client.get("/search", query_string={"q": first_word[:2]}).text
    assert consistent(app) == []


def test_titles_are_nfc_everywhere(alice, app):
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"
    assert alice.create(decomposed, "coffee").headers["Location"] == "/wiki/" + quote("caf\u00e9")
    assert alice.create(composed, "again").status_code == 400  # the same page
    assert alice.client.get("/wiki/" + quote("cafe\u0301")).headers["Location"] == "/wiki/" + quote("caf\u00e9")
    assert alice.client.get("/wiki/CAF%C3%89").headers["Location"] == "/wiki/" + quote("caf\u00e9")
    alice.create("Linker", f"[[{decomposed}]]")
    assert "missing" not in text_of(alice.client.get("/wiki/linker"))
    with app.app_context():
        assert current_wiki().pages["caf\u00e9"].title == composed


@pytest.mark.parametrize("title, message", [
    ("", "Give the page a title."),
    ("x" * 101, "Keep the title under 100 characters"),
    ("bell\x07", "invisible control character U+0007"),
    ("right\u202eleft", "invisible control character U+202E"),
    ("a/b", "cannot contain / or \\"),
    ("..", "at least one letter or digit"),
])
def test_bad_titles_get_a_clear_400(alice, title, message):
    response = alice.create(title, "text")
    assert response.status_code == 400
    assert message in response.text.replace("&#39;", "'").replace("&amp;", "&")


def test_old_ascii_slugs_still_answer_links_with_accents(alice, app):
    with app.app_context():
        wiki = current_wiki()
        wiki.create_page("creme-brulee", "Crème Brûlée", "dessert", [], wiki.find_user("alice"))
        app.extensions["durus"].connection.commit()
    alice.create("Menu", "[[Crème Brûlée]]")
    assert "missing" not in text_of(alice.client.get("/wiki/menu"))
    assert alice.client.get("/wiki/" + quote("crème-brûlée")).headers["Location"] == "/wiki/creme-brulee"


def test_pager_labels_fit_the_order(alice, app):
    with app.app_context():
        wiki = current_wiki()
        author = wiki.find_user("alice")
        page = wiki.create_page("many", "Many", "v0", ["t"], author)
        for number in range(1, 25):
            wiki.edit_page(page, number, "Many", f"v{number}", ["t"], "", author)
        for number in range(25):
            wiki.create_page(f"p{number:02}", f"P{number:02} common", "common", ["t"], author)
        app.extensions["durus"].connection.commit()
    for path in ("/", "/wiki/many/history"):
        text = alice.client.get(path).text
        assert "Older →" in text and "Next →" not in text
    for path in ("/pages", "/tags/t", "/search?q=common"):
        text = alice.client.get(path).text
        assert "Next →" in text and "Older →" not in text, path
        assert "← Previous" in alice.client.get(path + ("&" if "?" in path else "?") + "page=2").text

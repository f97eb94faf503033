"""The example wiki through Flask's test client, on an in-memory store.

Deployment under gunicorn with a storage server is in
test_example_app_deploy.py; a real browser in test_browser.py.
"""

from __future__ import annotations

import os
import threading

import pytest
from flask import Flask

from durus.connection import Connection
from durus.file_storage import FileStorage
from example_app import load_secret_key
from example_app.backup import back_up
from example_app.database import current_wiki
from example_app.markup import render
from example_app.text import excerpt, parse_tags, slugify, words
from tests.support.wiki_site import FAST_HASH, Wiki, make_app, token  # noqa: F401 (other tests import them from here)

@pytest.fixture
def app(tmp_path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def wiki(app) -> Wiki:
    return Wiki(app.test_client())


@pytest.fixture
def alice(wiki) -> Wiki:
    assert wiki.signup("alice").status_code == 302
    return wiki


# -- accounts -------------------------------------------------------------------


def test_sign_up_log_out_and_log_in_again(wiki):
    response = wiki.signup("alice")
    assert response.status_code == 302
    assert '<span class="who">alice</span>' in wiki.client.get("/").text
    wiki.post("/", {}, path="/logout")
    assert '<span class="who">' not in wiki.client.get("/").text

    wrong = wiki.login("ALICE", "not the password")
    assert wrong.status_code == 400
    assert "Wrong name or password." in wrong.text
    right = wiki.login("ALICE", next="/tags")
    assert (right.status_code, right.headers["Location"]) == (302, "/tags")
    assert '<span class="who">alice</span>' in wiki.client.get("/").text


def test_sign_up_errors_are_shown_next_to_the_fields(alice):
    alice.post("/", {}, path="/logout")
    response = alice.post("/signup", {"name": "Alice", "password": "short", "confirm": "short"})
    assert response.status_code == 400
    assert "The name &#39;Alice&#39; is taken" in response.text
    assert "Use at least 8 characters." in response.text
    assert 'value="Alice"' in response.text  # what was typed is kept
    mismatch = alice.post("/signup", {"name": "bob", "password": "long enough", "confirm": "long enougH"})
    assert "The two passwords differ" in mismatch.text
    assert alice.post("/signup", {"name": "b", "password": "x" * 9, "confirm": "x" * 9}).status_code == 400


def test_login_only_redirects_within_the_site(alice):
    alice.post("/", {}, path="/logout")
    response = alice.login("alice", next="https://evil.example/")
    assert response.headers["Location"] == "/"


def test_changing_pages_needs_an_account(wiki):
    response = wiki.client.get("/new")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/new")


def test_forms_without_the_session_token_are_refused(alice, app):
    assert alice.client.post("/new", data={"title": "X", "text": "y"}).status_code == 400
    forged = alice.client.post("/new", data={"title": "X", "text": "y", "csrf_token": "forged"})
    assert forged.status_code == 400
    assert "did not come from this site" in forged.text
    assert alice.client.get("/wiki/x").status_code == 404


# -- pages and history ----------------------------------------------------------------


def test_create_edit_and_history(alice):
    created = alice.create("Durus Notes", "# Intro\n\nObjects **persist**.\n\n- one\n- two", "db python")
    assert (created.status_code, created.headers["Location"]) == (302, "/wiki/durus-notes")
    page = alice.client.get("/wiki/durus-notes").text
    assert "<h2>Intro</h2>" in page and "<strong>persist</strong>" in page and "<li>two</li>" in page
    assert "Created &#39;Durus Notes&#39;." in page  # the flash message

    assert alice.edit("durus-notes", "Objects persist.\nSecond line.", base=1, comment="shorter").status_code == 302
    assert alice.edit("durus-notes", "Objects persist.\nThird line.", base=2).status_code == 302
    history = alice.client.get("/wiki/durus-notes/history").text
    assert "3 revisions" in history and "shorter" in history
    assert history.index('rev/3">3<') < history.index('rev/1">1<')  # newest first

    recent = alice.client.get("/").text  # the log of changes lists every edit, newest first
    assert recent.index("/wiki/durus-notes/rev/3") < recent.index("/wiki/durus-notes/rev/1")

    revision = alice.client.get("/wiki/durus-notes/rev/3").text
    assert '<tr class="del"><td class="num">2</td><td class="num"></td><td class="sign">−</td><td class="line"><del>Second</del> line.</td></tr>' in revision
    assert '<tr class="add"><td class="num"></td><td class="num">2</td><td class="sign">+</td><td class="line"><ins>Third</ins> line.</td></tr>' in revision
    assert "@@" not in revision
    assert alice.client.get("/wiki/durus-notes/rev/9").status_code == 404


def test_page_form_errors_keep_what_was_typed(alice):
    alice.create("Taken", "text")
    response = alice.create("Taken!", "", "Not_A_Tag")
    assert response.status_code == 400
    assert "A page with this title exists already" in response.text
    assert "Write something" in response.text
    assert "is not a valid tag" in response.text
    assert 'value="Not_A_Tag"' in response.text
    assert alice.create("!!!", "text").status_code == 400


def test_an_edit_of_an_old_revision_is_reported_and_kept(alice, app):
    alice.create("Shared", "first version")
    assert alice.edit("shared", "second version", base=1).status_code == 302
    stale = alice.edit("shared", "my version from 1", base=1)
    assert stale.status_code == 409
    assert "saved revision 2 while you were editing" in stale.text
    assert ">my version from 1</textarea>" in stale.text
    assert '<td class="line"><del>second</del> version</td>' in stale.text
    assert 'name="base" value="2"' in stale.text  # sending it again is a deliberate overwrite
    with app.app_context():
        assert current_wiki().pages["shared"].revision_count == 2
    assert alice.edit("shared", "my version from 1", base=2).status_code == 302
    assert "my version from 1" in alice.client.get("/wiki/shared").text


def test_a_missing_page_offers_to_create_it(alice):
    response = alice.client.get("/wiki/new-idea")
    assert response.status_code == 404
    assert "/new?title=New+idea" in response.text


# -- search, tags, listings ------------------------------------------------------------


def test_search_and_tags_follow_edits(alice, app):
    alice.create("Apples", "Red fruit grows on trees.", "fruit")
    alice.create("Bananas", "Yellow fruit, grows in bunches.", "fruit tropical")
    results = alice.client.get("/search?q=fruit+grows").text
    assert "2 pages with" in results
    assert "<mark>fruit</mark>" in results
    assert "1 page with" in alice.client.get("/search?q=yellow").text

    alice.edit("bananas", "Green when picked.", base=1, tags="tropical")
    assert "0 pages with" in alice.client.get("/search?q=yellow").text
    assert "1 page with" in alice.client.get("/search?q=picked").text
    assert 'href="/wiki/bananas"' not in alice.client.get("/tags/fruit").text
    assert alice.client.get("/tags/tropical").status_code == 200
    with app.app_context():
        wiki = current_wiki()
        assert "yellow" not in wiki.words  # empty posting lists are removed
        assert dict(wiki.tag_counts()) == {"fruit": 1, "tropical": 1}
    assert alice.client.get("/tags/nothing").status_code == 404


def test_an_edit_that_finds_its_index_entry_gone_is_saved_and_the_check_still_sees_the_damage(
        alice, app, caplog):
    """An index damaged by a database bug must not make a page uneditable,
    nor may the edit hide the damage it did not repair.
    """
    alice.create("Bananas", "Yellow fruit, grows in bunches.", "fruit tropical")
    with app.app_context():
        wiki = current_wiki()
        del wiki.words["yellow"], wiki.words["fruit"], wiki.tags["tropical"]
        app.extensions["durus"].connection.commit()
    assert app.test_cli_runner().invoke(args=["wiki", "check"]).exit_code == 1

    # The edit drops "yellow" and "tropical", whose entries are gone, and keeps "fruit".
    with caplog.at_level("WARNING", logger="example_app.models"):
        assert alice.edit("bananas", "Green fruit when picked.", base=1, tags="fruit").status_code == 302
    assert sorted(record.args for record in caplog.records) == [("tropical", "bananas"), ("yellow", "bananas")]
    assert "1 page with" in alice.client.get("/search?q=picked").text
    check = app.test_cli_runner().invoke(args=["wiki", "check"])
    assert check.exit_code == 1
    assert check.output.splitlines()[:-1] == [
        "search index: no entry for the word 'fruit', which page 'bananas' has"]


def test_recent_changes_are_paginated_newest_first(alice, app):
    with app.app_context():
        wiki = current_wiki()
        author = wiki.find_user("alice")
        for number in range(25):
            wiki.create_page(f"page-{number}", f"Page {number}", "text", [], author)
        app.extensions["durus"].connection.commit()
    first = alice.client.get("/").text
    assert first.count('class="row"') == 20
    assert "Page 24" in first and 'rel="next" href="/?page=2"' in first
    second = alice.client.get("/?page=2").text
    assert second.count('class="row"') == 5 and "Page 0<" in second
    assert "Page 2 of 2" in second
    assert alice.client.get("/pages?page=2").text.count('class="row"') == 5


# -- text, secret key, backup ----------------------------------------------------------


def test_markup_is_sanitised_and_links_pages():
    html = render("<script>alert(1)</script>\n\nsee [[Other Page]] and `a<b`")
    assert "<script>" not in html and "alert(1)" not in html
    assert '<a class="wikilink" href="/wiki/other-page" title="Other Page"' in html
    assert "<code>a&lt;b</code>" in html
    assert slugify("  Crème Brûlée, 2nd try! ") == "crème-brûlée-2nd-try"
    assert words("It's the BTree's day") == {"it", "the", "btree", "day"}
    assert parse_tags("web, Web python") == (["python", "web"], None)
    assert "at most 10" in parse_tags(" ".join(f"t{i}" for i in range(11)))[1]
    assert str(excerpt("a <b> & c", ["b"])) == "a &lt;<mark>b</mark>&gt; &amp; c"


def test_the_secret_key_is_made_once_and_shared(tmp_path):
    keys: list[str] = []
    threads = [threading.Thread(target=lambda: keys.append(load_secret_key(str(tmp_path)))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert sorted(os.listdir(tmp_path)) == ["secret_key"]


def test_backup_of_a_file_being_written(tmp_path):
    data = tmp_path / "instance" / "data.durus"
    app = make_app(tmp_path, DURUS_STORAGE=f"file://{data}")
    wiki = Wiki(app.test_client())
    wiki.signup("alice")
    wiki.create("Kept", "safe and sound")
    backup = tmp_path / "backup.durus"
    result = app.test_cli_runner().invoke(args=["backup", str(backup)])
    assert result.exit_code == 0, result.output
    assert "1 wiki pages" in result.output

    # A commit caught half-written at the end of the copy is dropped.
    torn = tmp_path / "torn.durus"
    torn.write_bytes(data.read_bytes() + b"\x00\x00\x00\x00\x00\x00\x01\x00partial")
    size, _, pages = back_up(str(torn), str(tmp_path / "from-torn.durus"))
    assert (size, pages) == (os.path.getsize(backup), 1)  # the whole commits, no free space
    storage = FileStorage(str(backup), readonly=True)
    try:
        assert Connection(storage).get_root()["wiki"].pages["kept"].current.text == "safe and sound"
    finally:
        storage.close()

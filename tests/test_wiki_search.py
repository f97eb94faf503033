"""Search: words found by their beginnings, title matches ranked first, from the Durus index."""

from __future__ import annotations

import re

import pytest

from example_app.database import current_wiki
from tests.support.wiki_site import Wiki, make_app, signed_up


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def alice(app) -> Wiki:
    return signed_up(app, "alice")


def titles(response) -> list[str]:
    return re.findall(r'<a class="title" href="[^"]+">([^<]+)</a>', response.text)


def test_a_prefix_finds_longer_words(alice):
    alice.create("Storage", "Durus gives durability to commits.")
    alice.create("Other", "Nothing to see.")
    results = alice.client.get("/search?q=durab")
    assert titles(results) == ["Storage"]
    assert "<mark>durab</mark>ility" in results.text
    assert titles(alice.client.get("/search?q=DURAB+comm")) == ["Storage"]  # every term, any case
    assert titles(alice.client.get("/search?q=durab+nothing")) == []
    assert titles(alice.client.get("/search?q=zzz")) == []


def test_title_matches_come_first_then_whole_words(alice):
    alice.create("Zebra notes", "about the database")        # the term in the text only, as a prefix
    alice.create("Alpha", "a database and its data")          # the exact word in the text
    alice.create("Databases explained", "tables")             # the term in the title
    alice.create("Data", "rows")                              # the exact word in the title
    assert titles(alice.client.get("/search?q=data")) == [
        "Data", "Databases explained", "Alpha", "Zebra notes"]


def test_search_reads_a_range_of_the_word_index(alice, app):
    alice.create("Runner", "running runs runner")
    with app.app_context():
        wiki = current_wiki()
        assert [word for word, _ in wiki.words.items_range("run", "run\U0010ffff", True, True)] == [
            "runner", "running", "runs"]
        assert [page.slug for page in wiki.search({"run"})] == ["runner"]


def test_results_follow_renames_and_deletions(alice):
    alice.create("Durable", "persistence")
    alice.post("/wiki/durable/rename", {"title": "Lasting", "base": "1"})
    results = alice.client.get("/search?q=pers")
    assert titles(results) == ["Lasting"] and 'href="/wiki/lasting"' in results.text
    assert titles(alice.client.get("/search?q=durab")) == []  # the old title's words left the index
    alice.post("/wiki/lasting/delete", {})
    assert titles(alice.client.get("/search?q=pers")) == []


def test_non_latin_prefixes(alice):
    alice.create("東京の天気", "晴れ")
    alice.create("Москва", "Погода в Москве")
    assert titles(alice.client.get("/search", query_string={"q": "東京"})) == ["東京の天気"]
    assert titles(alice.client.get("/search", query_string={"q": "погод"})) == ["Москва"]

"""Cross-site scripting attempts through every field a user writes: page text
(Markdown and raw HTML), titles, wiki link targets and labels, tags and edit
summaries.  Every page that shows them is parsed, and none may hold a
``<script>``, an ``on*=`` event handler or a ``javascript:`` (or ``data:``,
``vbscript:``) URL.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from example_app.markup import render
from tests.support.wiki_site import Wiki, make_app, signed_up

ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)><circle/></svg>",
    "<iframe src=javascript:alert(1)></iframe>",
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt&#58;alert(1)">click</a>',
    '<a href="&#106;avascript:alert(1)">click</a>',
    '<a href=" javascript:alert(1)">click</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>',
    '<a href="vbscript:msgbox(1)">click</a>',
    '<p style="background:url(javascript:alert(1))" onmouseover="alert(1)">hover</p>',
    "[click](javascript:alert(1))",
    "[click](JAVASCRIPT:alert(1))",
    "![img](javascript:alert(1))",
    "[click](<javascript:alert(1)>)",
    '[[" onmouseover="alert(1)]]',
    "[[<script>alert(1)</script>]]",
    '[[Target|<img src=x onerror=alert(1)>]]',
    "<details open ontoggle=alert(1)>x</details>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<form action=javascript:alert(1)><button>go</button></form>",
    '<object data="javascript:alert(1)"></object>',
    "```\n</code><script>alert(1)</script>\n```",
]

_BAD_URL = re.compile(r"^(javascript|vbscript|data):", re.IGNORECASE)


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "object", "embed", "style", "svg", "math"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action", "data", "formaction", "style") and value:
                cleaned = re.sub(r"[\x00-\x20]", "", value)
                if _BAD_URL.match(cleaned) or "javascript:" in cleaned.lower():
                    self.found.append(f"<{tag} {name}={value!r}>")


def dangers(html: str) -> list[str]:
    """What in ``html`` could run script: tags, handlers, URLs."""
    scan = _Scan()
    scan.feed(html)
    return scan.found


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def alice(app) -> Wiki:
    return signed_up(app, "alice")


def test_the_scanner_sees_what_it_looks_for():
    assert dangers('<a href=" JavaScript:x">') and dangers("<img onerror=x>") and dangers("<script>")
    assert dangers('<a href="&#106;avascript:x">')
    assert not dangers('<a href="/wiki/x" title="javascript: a word">')


@pytest.mark.parametrize("attack", ATTACKS)
def test_rendered_text_carries_no_script(attack):
    html = render(f"Before\n\n{attack}\n\nafter")
    assert dangers(html) == [], html
    assert "<form" not in html and "<button" not in html  # the site's own forms are the only ones
    assert "Before" in html  # the text before it survives


def test_every_page_showing_user_text_is_safe(alice, app):
    text = "\n\n".join(ATTACKS)
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    assert alice.create("Target", "the page some attacks link to").status_code == 302
    assert alice.create(f"Title {evil}", text, "safe-tag").status_code == 400  # "/" is refused in titles
    title = "Title \"><img src=x onerror=alert(2)> 'x' & <b>"
    assert alice.create(title, text, "safe-tag").status_code == 302
    slug = "title-img-src-x-onerror-alert-2-x-b"
    assert alice.edit(slug, text + "\n\nmore", base=1, title=title, tags="safe-tag",
                      comment=f"summary {evil} javascript:alert(3)").status_code == 302
    bad_tags = alice.create("Tagged", "t", tags=evil)
    assert bad_tags.status_code == 400 and dangers(bad_tags.text) == []
    preview = alice.post("/new", {"title": title, "text": text, "action": "preview"})
    pages = {
        "page": alice.client.get(f"/wiki/{slug}"),
        "revision": alice.client.get(f"/wiki/{slug}/rev/2"),
        "compare": alice.client.get(f"/wiki/{slug}/compare?from=1&to=2"),
        "history": alice.client.get(f"/wiki/{slug}/history"),
        "recent": alice.client.get("/"),
        "all pages": alice.client.get("/pages"),
        "search": alice.client.get("/search", query_string={"q": "alert " + evil}),
        "tag": alice.client.get("/tags/safe-tag"),
        "edit form": alice.client.get(f"/wiki/{slug}/edit"),
        "rename form": alice.client.get(f"/wiki/{slug}/rename"),
        "preview": preview,
        "missing": alice.client.get("/wiki/" + quote(evil.replace("/", ""))),
        "conflict": alice.edit(slug, text, base=1, title=title),
    }
    assert "summary &#34;&gt;&lt;script&gt;" in pages["history"].text  # the summary is shown, escaped
    assert "onerror=alert(2)&gt;" in pages["page"].text  # the title too
    for name, response in pages.items():
        assert response.status_code in (200, 404, 409), name
        assert dangers(response.text) == [], name

"""Page text is Markdown (CommonMark), with ``[[Wiki Links]]``, rendered to safe HTML.

markdown-it-py parses CommonMark; raw HTML in a page is allowed through it
and then cut down by the nh3 sanitiser to a list of harmless tags and
attributes, so no script, event handler or ``javascript:`` URL survives.

``[[Page title]]`` and ``[[Page title|label]]`` link to the page with that
title's slug.  Whether the target exists is not known when a revision is
rendered (it changes when pages are created, renamed or deleted), so the
stored HTML marks every wiki link with ``class="wikilink"`` and the page's
title, and :func:`mark_missing_links` restyles those whose page is missing
when the page is shown, pointing them at the form that creates it.

:data:`HTML_FORMAT` names this renderer's output.  Revisions store it next
to their HTML; HTML stored by another renderer (older wikis kept plain
text rendered by a home-made markup) is rendered again when shown.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from collections.abc import Callable
from urllib.parse import quote, unquote, urlencode

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markupsafe import escape

from example_app.text import nfc, slugify

HTML_FORMAT = "commonmark-1"

_ALLOWED_TAGS = nh3.ALLOWED_TAGS - {"map", "area"}
_ALLOWED_ATTRIBUTES = {
    **{tag: set(attributes) for tag, attributes in nh3.ALLOWED_ATTRIBUTES.items()},
    "a": {"href", "title", "class"},
    "code": {"class"},
    "img": {"src", "alt", "title", "width", "height"},
}
_URL_SCHEMES = {"http", "https", "mailto"}
_WIKILINK = re.compile(r'<a class="wikilink" href="/wiki/([^"?#]*)" title="([^"]*)"')


def _wikilink(state: StateInline, silent: bool) -> bool:
    """The inline rule for ``[[target]]`` and ``[[target|label]]``."""
    source, start = state.src, state.pos
    if not source.startswith("[[", start):
        return False
    end = source.find("]]", start + 2)
    inner = source[start + 2 : end] if end >= 0 else ""
    if not inner or len(inner) > 200 or "\n" in inner or "[" in inner:
        return False
    target, _, label = inner.partition("|")
    target = nfc(target.strip())
    slug = slugify(target)
    if not slug:
        return False
    if not silent:
        token = state.push("wikilink", "a", 0)
        token.meta = {"slug": slug, "target": target, "label": label.strip() or target}
    state.pos = end + 2
    return True


def _render_wikilink(renderer, tokens, index, options, env) -> str:
    meta = tokens[index].meta
    return (f'<a class="wikilink" href="/wiki/{quote(meta["slug"])}" title="{escape(meta["target"])}">'
            f'{escape(meta["label"])}</a>')


def _demote_headings(state) -> None:
    """``# Heading`` becomes ``<h2>``: the page's title is its one ``<h1>``."""
    for token in state.tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1]) + 1, 6)}"


def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": True}).enable("strikethrough").enable("table")
    parser.inline.ruler.before("link", "wikilink", _wikilink)
    parser.add_render_rule("wikilink", _render_wikilink)
    parser.core.ruler.push("demote_headings", _demote_headings)
    return parser


_PARSER = _parser()


def render(text: str) -> str:
    """The HTML of a page's text: Markdown rendered, then sanitised."""
    html = _PARSER.render(nfc(text.replace("\r\n", "\n")))
    return nh3.clean(html, tags=_ALLOWED_TAGS, attributes=_ALLOWED_ATTRIBUTES,
                     url_schemes=_URL_SCHEMES, link_rel="noopener noreferrer")


@functools.lru_cache(maxsize=512)
def render_cached(text: str) -> str:
    """:func:`render`, remembered: for revisions stored with HTML of an older format."""
    return render(text)


def linked_slugs(html: str) -> set[str]:
    """The slugs of the pages that rendered HTML links to with wiki links."""
    return {unquote(match[1]) for match in _WIKILINK.finditer(html)}


def mark_missing_links(html: str, exists: Callable[[str], bool]) -> str:
    """``html`` with its wiki links to missing pages restyled and pointed at "create".

    ``exists(slug)`` says whether a page answers to a slug; it is asked once
    per distinct target.
    """
    if 'class="wikilink"' not in html:
        return html
    known: dict[str, bool] = {}

    def replace(match: re.Match[str]) -> str:
        slug = unquote(match[1])
        if slug not in known:
            known[slug] = exists(slug)
        if known[slug]:
            return match[0]
        title = html_lib.unescape(match[2])
        return (f'<a class="wikilink missing" href="/new?{escape(urlencode({"title": title}))}" '
                f'title="{match[2]} (no such page yet: create it)"')

    return _WIKILINK.sub(replace, html)

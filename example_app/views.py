"""The wiki's pages: listings, reading, creating, editing, history, search, tags.

Views change persistent objects and return; the Durus extension commits
when a view returns normally, aborts when it fails or answers with an
error status, and replays the request when a commit meets a conflict.
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from example_app.auth import login_required
from example_app.database import current_wiki
from example_app.forms import PageForm
from example_app.models import EditConflict, Page
from example_app.pagination import page_number, paginate
from example_app.text import diff_lines, excerpt, words

bp = Blueprint("wiki", __name__)


def _page_or_404(slug: str) -> Page:
    page = current_wiki().pages.get(slug)
    if page is None:
        abort(404, description=f"There is no page called {slug!r} yet.")
    return page


@bp.route("/")
def index() -> Any:
    wiki = current_wiki()
    listing = paginate(wiki.recent_changes(), len(wiki.recent), page_number(request.args.get("page")))
    return render_template("index.html", listing=listing)


@bp.route("/pages")
def all_pages() -> Any:
    wiki = current_wiki()
    pages = (page for _, page in wiki.pages.items())
    listing = paginate(pages, len(wiki.pages), page_number(request.args.get("page")))
    return render_template("pages.html", listing=listing)


@bp.route("/wiki/<slug>")
def page(slug: str) -> Any:
    page = current_wiki().pages.get(slug)
    if page is None:
        return render_template("missing.html", slug=slug), 404
    return render_template("page.html", page=page)


@bp.route("/new", methods=["GET", "POST"])
@login_required
def new_page() -> Any:
    if request.method == "GET":
        return render_template("edit.html", form=PageForm(request.args), page=None)
    wiki = current_wiki()
    form = PageForm(request.form)
    if not form.validate(slug_taken=lambda slug: slug in wiki.pages):
        return render_template("edit.html", form=form, page=None), 400
    page = wiki.create_page(form.slug, form.values["title"], form.values["text"], form.tags, g.user)
    flash(f"Created {page.title!r}.")
    return redirect(url_for("wiki.page", slug=page.slug))


@bp.route("/wiki/<slug>/edit", methods=["GET", "POST"])
@login_required
def edit(slug: str) -> Any:
    page = _page_or_404(slug)
    if request.method == "GET":
        current = page.current
        form = PageForm(
            {"title": current.title, "text": current.text, "tags": " ".join(current.tags),
             "base": str(current.number)}
        )
        return render_template("edit.html", form=form, page=page)
    form = PageForm(request.form)
    if not form.validate():
        return render_template("edit.html", form=form, page=page), 400
    try:
        revision = current_wiki().edit_page(
            page, form.base, form.values["title"], form.values["text"], form.tags,
            form.values["comment"], g.user,
        )
    except EditConflict:
        return _conflict(page, form)
    flash(f"Saved revision {revision.number} of {page.title!r}.")
    return redirect(url_for("wiki.page", slug=page.slug))


def _conflict(page: Page, form: PageForm) -> Any:
    """Show an edit that lost the race next to the revision that won it.

    The form keeps the user's text and now names the current revision as
    its base, so sending it again (after merging by hand) saves it.
    """
    theirs = page.current
    mine = form.values["text"]
    form.values["base"] = str(theirs.number)
    form.base = theirs.number
    form.errors["text"] = (
        f"{theirs.author.name} saved revision {theirs.number} while you were editing. "
        "Your text is kept below; merge in their changes and save again."
    )
    return render_template(
        "edit.html", form=form, page=page, theirs=theirs, diff=diff_lines(theirs.text, mine)
    ), 409


@bp.route("/wiki/<slug>/history")
def history(slug: str) -> Any:
    page = _page_or_404(slug)
    listing = paginate(page.history(), page.revision_count, page_number(request.args.get("page")))
    return render_template("history.html", page=page, listing=listing)


@bp.route("/wiki/<slug>/rev/<int:number>")
def revision(slug: str, number: int) -> Any:
    page = _page_or_404(slug)
    shown = page.revisions.get(number)
    if shown is None:
        abort(404, description=f"{page.title!r} has no revision {number}.")
    previous = page.revisions.get(number - 1)
    diff = diff_lines(previous.text if previous else "", shown.text)
    return render_template("revision.html", page=page, revision=shown, previous=previous, diff=diff)


@bp.route("/search")
def search() -> Any:
    query = request.args.get("q", "").strip()
    terms = words(query)
    results = current_wiki().search(terms) if terms else []
    listing = paginate(results, len(results), page_number(request.args.get("page")))
    excerpts = {page.slug: excerpt(page.current.text, terms) for page in listing.items}
    return render_template("search.html", query=query, listing=listing, excerpts=excerpts)


@bp.route("/tags")
def tags() -> Any:
    return render_template("tags.html", tags=list(current_wiki().tag_counts()))


@bp.route("/tags/<tag>")
def tag(tag: str) -> Any:
    wiki = current_wiki()
    postings = wiki.tags.get(tag)
    if postings is None:
        abort(404, description=f"No page has the tag {tag!r}.")
    listing = paginate(wiki.tagged(tag), len(postings), page_number(request.args.get("page")))
    return render_template("tag.html", tag=tag, listing=listing)

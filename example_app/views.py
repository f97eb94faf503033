"""The wiki's pages: listings, reading, creating, editing, history, search, tags,
and the changes made to a page as a whole: revert, rename, delete.

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
from markupsafe import Markup

from example_app.auth import login_required
from example_app.database import current_wiki
from example_app.diffs import diff_rows
from example_app.forms import PageForm
from example_app.markup import mark_missing_links, render
from example_app.models import EditConflict, Page, Revision, SlugTaken
from example_app.pagination import page_number, paginate
from example_app.text import excerpt, nfc, slugify, title_error, words

bp = Blueprint("wiki", __name__)


@bp.app_template_filter("page_html")
def page_html(revision: Revision) -> Markup:
    """A revision's stored HTML, its links to missing pages marked (see :mod:`example_app.markup`)."""
    wiki = current_wiki()
    return Markup(mark_missing_links(revision.display_html(), lambda slug: wiki.resolve(slug) is not None))


def _find(slug: str) -> Page | None:
    """The page ``slug`` names: exactly, or normalised, through a redirect or as a legacy slug."""
    wiki = current_wiki()
    page = wiki.pages.get(slug)
    if page is None:
        page = wiki.resolve(slug) or wiki.resolve(slugify(slug))
    return page


def _page_or_404(slug: str) -> Page:
    """The page named by the URL; a GET under another name of it is redirected to its own."""
    page = _find(slug)
    if page is None:
        abort(404, description=f"There is no page called {slug!r} yet.")
    if page.slug != slug and request.method == "GET":
        abort(redirect(url_for(request.endpoint, **{**request.view_args, "slug": page.slug},
                               **request.args.to_dict())))
    return page


def _base(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        abort(400, description="The revision number this change started from is missing or not a number.")


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
        page = _find(slug)
        if page is None:
            return render_template("missing.html", slug=nfc(slug)), 404
        return redirect(url_for("wiki.page", slug=page.slug))
    return render_template("page.html", page=page)


def _preview(form: PageForm, page: Page | None) -> Any:
    """The edit form again, with the text rendered above it; nothing is saved."""
    form.validate()
    return render_template("edit.html", form=form, page=page, preview=Markup(render(form.values["text"])))


@bp.route("/new", methods=["GET", "POST"])
@login_required
def new_page() -> Any:
    if request.method == "GET":
        return render_template("edit.html", form=PageForm(request.args), page=None)
    wiki = current_wiki()
    form = PageForm(request.form)
    if request.form.get("action") == "preview":
        return _preview(form, None)
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
    if request.form.get("action") == "preview":
        return _preview(form, page)
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
        "edit.html", form=form, page=page, theirs=theirs, diff=diff_rows(theirs.text, mine)
    ), 409


@bp.route("/wiki/<slug>/history")
def history(slug: str) -> Any:
    page = _page_or_404(slug)
    listing = paginate(page.history(), page.revision_count, page_number(request.args.get("page")))
    return render_template("history.html", page=page, listing=listing)


def _revision_or_404(page: Page, number: int) -> Revision:
    shown = page.revisions.get(number)
    if shown is None:
        abort(404, description=f"{page.title!r} has no revision {number}.")
    return shown


@bp.route("/wiki/<slug>/rev/<int:number>")
def revision(slug: str, number: int) -> Any:
    page = _page_or_404(slug)
    shown = _revision_or_404(page, number)
    previous = page.revisions.get(number - 1)
    diff = diff_rows(previous.text if previous else "", shown.text)
    return render_template("revision.html", page=page, revision=shown, previous=previous, diff=diff)


@bp.route("/wiki/<slug>/compare")
def compare(slug: str) -> Any:
    """Any two revisions of a page, the older one first whichever order they were picked in."""
    page = _page_or_404(slug)
    numbers = []
    for name in ("from", "to"):
        try:
            numbers.append(int(request.args.get(name, "")))
        except ValueError:
            abort(400, description="Choose two revisions to compare (the “from” and “to” columns).")
    old, new = (_revision_or_404(page, number) for number in sorted(numbers))
    return render_template("compare.html", page=page, old=old, new=new, diff=diff_rows(old.text, new.text))


@bp.route("/wiki/<slug>/revert", methods=["POST"])
@login_required
def revert(slug: str) -> Any:
    page = _page_or_404(slug)
    number = _base(request.form.get("number"))
    _revision_or_404(page, number)
    try:
        revision = current_wiki().revert_page(page, _base(request.form.get("base")), number, g.user)
    except EditConflict:
        flash(f"{page.title!r} was changed while you looked at it; nothing was reverted. Check the history.")
        return redirect(url_for("wiki.history", slug=page.slug))
    flash(f"Reverted {page.title!r} to revision {number} (saved as revision {revision.number}).")
    return redirect(url_for("wiki.page", slug=page.slug))


@bp.route("/wiki/<slug>/rename", methods=["GET", "POST"])
@login_required
def rename(slug: str) -> Any:
    page = _page_or_404(slug)
    if request.method == "GET":
        return render_template("rename.html", page=page, title=page.title, base=page.current.number, error=None)
    title = nfc(request.form.get("title", "").strip())
    base = _base(request.form.get("base"))
    error = title_error(title)
    status = 400
    if error is None:
        try:
            current_wiki().rename_page(page, base, title, g.user)
        except SlugTaken as taken:
            error = f"The page {taken.slug!r} exists already: choose another title."
        except EditConflict:
            error = "Someone changed the page while you were renaming it: look at it again first."
            base, status = page.current.number, 409
        else:
            flash(f"Renamed to {title!r}; the old address leads here.")
            return redirect(url_for("wiki.page", slug=page.slug))
    return render_template("rename.html", page=page, title=title, base=base, error=error), status


@bp.route("/wiki/<slug>/delete", methods=["GET", "POST"])
@login_required
def delete(slug: str) -> Any:
    page = _page_or_404(slug)
    if page.author is not g.user:
        abort(403, description=f"Only {page.author.name}, who created {page.title!r}, can delete it.")
    if request.method == "GET":
        return render_template("delete.html", page=page)
    title = page.title
    current_wiki().delete_page(page)
    flash(f"Deleted {title!r} and its history.")
    return redirect(url_for("wiki.index"))


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

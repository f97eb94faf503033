"""The wiki's pages on SQLAlchemy: the same URLs, forms and templates as example_app."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from markupsafe import Markup
from sqlalchemy import delete, func, select

from example_app.auth import log_in, login_required, safe_next
from example_app.forms import LoginForm, PageForm, SignupForm
from example_app.pagination import PER_PAGE, Pagination, page_number
from example_app.diffs import diff_rows
from example_app.markup import mark_missing_links, render
from example_app.text import excerpt, words
from sqlite_baseline.models import Page, PageTag, PageWord, Revision, User, db

auth = Blueprint("auth", __name__)
wiki = Blueprint("wiki", __name__)


@wiki.app_template_filter("page_html")
def page_html(revision: Revision) -> Markup:
    """The stored HTML, links to missing pages marked: one query per distinct link target."""
    exists = lambda slug: db.session.scalar(select(Page.id).where(Page.slug == slug)) is not None
    return Markup(mark_missing_links(revision.html, exists))


def find_user(name: str) -> User | None:
    return db.session.scalar(select(User).where(User.name_key == name.lower()))


@auth.before_app_request
def load_user() -> None:
    name = session.get("user")
    g.user = find_user(name) if name else None


@auth.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    form = SignupForm(request.form)
    if request.method == "POST":
        if form.validate(name_taken=lambda name: find_user(name) is not None):
            user = User(form.values["name"], form.values["password"], current_app.config["PASSWORD_HASH_METHOD"])
            db.session.add(user)
            db.session.commit()
            log_in(user.name)
            flash(f"Welcome, {user.name}! You can now create and edit pages.")
            return redirect(url_for("wiki.index"))
        return render_template("signup.html", form=form), 400
    return render_template("signup.html", form=form)


@auth.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm(request.form if request.method == "POST" else request.args)
    if request.method == "POST":
        user = find_user(form.values["name"])
        if user is not None and user.check_password(form.values["password"]):
            log_in(user.name)
            flash(f"Logged in as {user.name}.")
            return redirect(safe_next(form.values["next"]))
        form.errors["password"] = "Wrong name or password."
        return render_template("login.html", form=form), 400
    return render_template("login.html", form=form)


@auth.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    flash("Logged out.")
    return redirect(url_for("wiki.index"))


def _paginate(query: Any, total: int) -> Pagination:
    number = page_number(request.args.get("page"))
    rows = db.session.scalars(query.offset((number - 1) * PER_PAGE).limit(PER_PAGE))
    return Pagination(list(rows), total, number)


def _page_or_404(slug: str) -> Page:
    page = db.session.scalar(select(Page).where(Page.slug == slug))
    if page is None:
        abort(404, description=f"There is no page called {slug!r} yet.")
    return page


@wiki.route("/")
def index() -> Any:
    total = db.session.scalar(select(func.count(Revision.id)))
    listing = _paginate(select(Revision).order_by(Revision.timestamp.desc()), total)
    return render_template("index.html", listing=listing)


@wiki.route("/pages")
def all_pages() -> Any:
    total = db.session.scalar(select(func.count(Page.id)))
    listing = _paginate(select(Page).order_by(Page.slug), total)
    return render_template("pages.html", listing=listing)


@wiki.route("/wiki/<slug>")
def page(slug: str) -> Any:
    page = db.session.scalar(select(Page).where(Page.slug == slug))
    if page is None:
        return render_template("missing.html", slug=slug), 404
    return render_template("page.html", page=page)


def _save(page: Page, form: PageForm, comment: str) -> Revision:
    """Add a revision, move the page's index rows to match it; the caller commits."""
    old = page.current
    revision = Revision(
        number=old.number + 1 if old else 1, title=form.values["title"], text=form.values["text"],
        tag_text=" ".join(form.tags), comment=comment, author=g.user, page_id=page.id, slug=page.slug,
    )
    db.session.add(revision)
    for model, column, old_keys, new_keys in (
        (PageWord, PageWord.word, words(old.title, old.text) if old else set(),
         words(form.values["title"], form.values["text"])),
        (PageTag, PageTag.tag, set(old.tags) if old else set(), set(form.tags)),
    ):
        if old_keys - new_keys:
            db.session.execute(delete(model).where(model.page_id == page.id, column.in_(old_keys - new_keys)))
        db.session.add_all(
            model(page_id=page.id, **{column.key: key}) for key in new_keys - old_keys
        )
    db.session.flush()
    page.current = revision
    page.updated = revision.timestamp
    return revision


@wiki.route("/new", methods=["GET", "POST"])
@login_required
def new_page() -> Any:
    if request.method == "GET":
        return render_template("edit.html", form=PageForm(request.args), page=None)
    form = PageForm(request.form)
    taken = lambda slug: db.session.scalar(select(Page.id).where(Page.slug == slug)) is not None
    if not form.validate(slug_taken=taken):
        return render_template("edit.html", form=form, page=None), 400
    page = Page(slug=form.slug, updated=0.0)
    db.session.add(page)
    db.session.flush()
    _save(page, form, "Created")
    db.session.commit()
    flash(f"Created {page.title!r}.")
    return redirect(url_for("wiki.page", slug=page.slug))


@wiki.route("/wiki/<slug>/edit", methods=["GET", "POST"])
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
        form.validate()
        return render_template("edit.html", form=form, page=page, preview=Markup(render(form.values["text"])))
    if not form.validate():
        return render_template("edit.html", form=form, page=page), 400
    if form.base != page.current.number:
        theirs = page.current
        form.values["base"] = str(theirs.number)
        form.errors["text"] = (
            f"{theirs.author.name} saved revision {theirs.number} while you were editing. "
            "Your text is kept below; merge in their changes and save again."
        )
        return render_template(
            "edit.html", form=form, page=page, theirs=theirs,
            diff=diff_rows(theirs.text, form.values["text"]),
        ), 409
    revision = _save(page, form, form.values["comment"])
    db.session.commit()
    flash(f"Saved revision {revision.number} of {page.title!r}.")
    return redirect(url_for("wiki.page", slug=page.slug))


@wiki.route("/wiki/<slug>/history")
def history(slug: str) -> Any:
    page = _page_or_404(slug)
    total = db.session.scalar(select(func.count(Revision.id)).where(Revision.page_id == page.id))
    query = select(Revision).where(Revision.page_id == page.id).order_by(Revision.number.desc())
    return render_template("history.html", page=page, listing=_paginate(query, total))


@wiki.route("/wiki/<slug>/rev/<int:number>")
def revision(slug: str, number: int) -> Any:
    page = _page_or_404(slug)
    found = {
        revision.number: revision
        for revision in db.session.scalars(
            select(Revision).where(Revision.page_id == page.id, Revision.number.in_((number - 1, number)))
        )
    }
    if number not in found:
        abort(404, description=f"{page.title!r} has no revision {number}.")
    shown, previous = found[number], found.get(number - 1)
    diff = diff_rows(previous.text if previous else "", shown.text)
    return render_template("revision.html", page=page, revision=shown, previous=previous, diff=diff)


@wiki.route("/wiki/<slug>/compare")
def compare(slug: str) -> Any:
    page = _page_or_404(slug)
    try:
        numbers = sorted(int(request.args.get(name, "")) for name in ("from", "to"))
    except ValueError:
        abort(400, description="Choose two revisions to compare.")
    found = {
        revision.number: revision
        for revision in db.session.scalars(
            select(Revision).where(Revision.page_id == page.id, Revision.number.in_(numbers)))
    }
    if any(number not in found for number in numbers):
        abort(404, description=f"{page.title!r} has no such revision.")
    old, new = found[numbers[0]], found[numbers[1]]
    return render_template("compare.html", page=page, old=old, new=new, diff=diff_rows(old.text, new.text))


# Rename, delete and revert exist so that the shared templates can link to
# them; the benchmark measures none of them, and the baseline leaves them out.
@wiki.route("/wiki/<slug>/revert", methods=["POST"], endpoint="revert")
@wiki.route("/wiki/<slug>/rename", methods=["GET", "POST"], endpoint="rename")
@wiki.route("/wiki/<slug>/delete", methods=["GET", "POST"], endpoint="delete")
def not_in_the_baseline(slug: str) -> Any:
    abort(501, description="The SQLite baseline does not rename, delete or revert pages.")


@wiki.route("/search")
def search() -> Any:
    query = request.args.get("q", "").strip()
    terms = words(query)
    matching = (
        select(PageWord.page_id).where(PageWord.word.in_(terms))
        .group_by(PageWord.page_id).having(func.count() == len(terms))
    )
    total = db.session.scalar(select(func.count()).select_from(matching.subquery())) if terms else 0
    listing = _paginate(select(Page).where(Page.id.in_(matching)).order_by(Page.slug), total)
    excerpts = {page.slug: excerpt(page.current.text, terms) for page in listing.items}
    return render_template("search.html", query=query, listing=listing, excerpts=excerpts)


@wiki.route("/tags")
def tags() -> Any:
    rows = db.session.execute(select(PageTag.tag, func.count()).group_by(PageTag.tag).order_by(PageTag.tag))
    return render_template("tags.html", tags=[tuple(row) for row in rows])


@wiki.route("/tags/<tag>")
def tag(tag: str) -> Any:
    total = db.session.scalar(select(func.count()).where(PageTag.tag == tag))
    if not total:
        abort(404, description=f"No page has the tag {tag!r}.")
    query = select(Page).join(PageTag, PageTag.page_id == Page.id).where(PageTag.tag == tag).order_by(Page.slug)
    return render_template("tag.html", tag=tag, listing=_paginate(query, total))

"""Accounts: sign up, log in, log out, and who is asking.

The session cookie (signed with the app's secret key) holds the user's name;
each request looks the user up again, so a deleted account is logged out.
Passwords are stored only as werkzeug hashes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from example_app.csrf import csrf_token
from example_app.database import current_wiki
from example_app.forms import LoginForm, SignupForm

bp = Blueprint("auth", __name__)


@bp.before_app_request
def load_user() -> None:
    name = session.get("user")
    g.user = current_wiki().find_user(name) if name else None


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Send visitors who are not logged in to the login page, then back."""

    @functools.wraps(view)
    def wrapped(**kwargs: Any) -> Any:
        if g.user is None:
            flash("Log in or sign up to change pages.")
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(**kwargs)

    return wrapped


def log_in(name: str) -> None:
    """Start a fresh session for ``name`` (a new CSRF token with it)."""
    session.clear()
    session["user"] = name
    csrf_token()


def safe_next(target: str) -> str:
    """``target`` if it is a path on this site, else the home page."""
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.netloc:
        return target
    return url_for("wiki.index")


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    form = SignupForm(request.form)
    if request.method == "POST":
        wiki = current_wiki()
        if form.validate(name_taken=lambda name: wiki.find_user(name) is not None):
            user = wiki.add_user(
                form.values["name"], form.values["password"], current_app.config["PASSWORD_HASH_METHOD"]
            )
            log_in(user.name)
            flash(f"Welcome, {user.name}! You can now create and edit pages.")
            return redirect(url_for("wiki.index"))
        return render_template("signup.html", form=form), 400
    return render_template("signup.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm(request.form if request.method == "POST" else request.args)
    if request.method == "POST":
        user = current_wiki().find_user(form.values["name"])
        if user is not None and user.check_password(form.values["password"]):
            log_in(user.name)
            flash(f"Logged in as {user.name}.")
            return redirect(safe_next(form.values["next"]))
        form.errors["password"] = "Wrong name or password."
        return render_template("login.html", form=form), 400
    return render_template("login.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    flash("Logged out.")
    return redirect(url_for("wiki.index"))

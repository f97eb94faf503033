"""Accounts: sign up, log in, log out, and who is asking.

The session cookie (signed with the app's secret key) holds the user's name;
each request looks the user up again, so a deleted account is logged out.
Passwords are stored only as werkzeug hashes, and kept as typed (spaces
included).  A login answers in the same time whether the name exists or
not (an unknown name is checked against a stand-in hash of the same cost),
and failures are throttled per account and per client address
(:mod:`example_app.throttle`): a throttled attempt gets a 429 and its
password is not even checked.
"""

from __future__ import annotations

import functools
import math
import secrets
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
from werkzeug.security import check_password_hash, generate_password_hash

from example_app.csrf import csrf_token
from example_app.database import current_wiki
from example_app.forms import LoginForm, SignupForm
from example_app.models import User
from example_app.throttle import login_wait, record_failed_login

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
    if request.method != "POST":
        return render_template("login.html", form=form)
    name, password = form.values["name"], form.values["password"]
    wait, now = login_wait(name, request.remote_addr)
    if wait is not None:
        seconds = max(math.ceil(wait), 1)
        form.errors["password"] = (
            f"Too many failed logins; try again in {describe_wait(seconds)}.")
        response = current_app.make_response((render_template("login.html", form=form), 429))
        response.headers["Retry-After"] = str(seconds)
        return response
    user = current_wiki().find_user(name)
    if password_matches(user, password):
        log_in(user.name)
        flash(f"Logged in as {user.name}.")
        return redirect(safe_next(form.values["next"]))
    record_failed_login(name, request.remote_addr, now)
    form.errors["password"] = "Wrong name or password."
    return render_template("login.html", form=form), 400


def password_matches(user: User | None, password: str) -> bool:
    """Whether ``password`` is ``user``'s, at the same cost when there is no such user.

    An unknown name is checked against a stand-in hash made with the same
    method, so the answer takes as long as for a real account and its time
    does not tell which names exist.
    """
    # Made on every path, so the first login of a process costs the same too.
    stand_in = _stand_in_hash(current_app.config["PASSWORD_HASH_METHOD"])

    def check(candidate: str) -> bool:
        if user is None:
            check_password_hash(stand_in, candidate)
            return False
        return user.check_password(candidate)

    if check(password):
        return True
    # Passwords used to be stored with surrounding spaces stripped, like
    # other fields; accounts made then still log in with the password as
    # they type it.  (The stand-in takes the same second check.)
    stripped = password.strip()
    return stripped != password and check(stripped)


@functools.cache
def _stand_in_hash(method: str) -> str:
    """A hash of a random password, made once per process and method."""
    return generate_password_hash(secrets.token_urlsafe(16), method=method)


def describe_wait(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    session.clear()
    flash("Logged out.")
    return redirect(url_for("wiki.index"))

"""Protection against cross-site request forgery, with no extra dependency.

Each session gets a random token; every form that changes something carries
it in a hidden ``csrf_token`` field, and a request that changes something
without the session's token is refused.  Another site can make a browser
send a POST, but it cannot read the token out of our pages.
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, abort, request, session

_SESSION_KEY = "_csrf"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def csrf_token() -> str:
    """This session's token, made on first use (templates call it)."""
    token = session.get(_SESSION_KEY)
    if token is None:
        token = session[_SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def check_csrf_token() -> None:
    """Refuse (400) a state-changing request that lacks the session's token."""
    if request.method not in _UNSAFE_METHODS:
        return
    expected = session.get(_SESSION_KEY)
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        abort(
            400,
            description="This form has expired or did not come from this site. "
            "Go back, reload the page and send it again.",
        )


def init_csrf(app: Flask) -> None:
    app.before_request(check_csrf_token)
    app.jinja_env.globals["csrf_token"] = csrf_token

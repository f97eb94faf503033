"""Browser-facing hardening: security headers on every response, and the
session cookie's flags.

The headers are added by a WSGI middleware around the whole app rather
than an after-request hook, so that they are also on the answers the
Durus extension makes after the app's hooks have run (the 409 after
repeated conflicts, the 503 when the storage server is gone), on static
files and on every error page.

Configuration (app config, or ``FLASK_``-prefixed environment variables):

- ``WIKI_BEHIND_TLS`` (also read from the plain environment variable of
  that name): the site is served over HTTPS, so the session cookie gets
  ``Secure`` and responses carry ``Strict-Transport-Security``.
- ``WIKI_PROXY_COUNT``: how many reverse proxies (the one terminating TLS,
  say) stand in front of the app; their ``X-Forwarded-For`` and
  ``X-Forwarded-Proto`` are then trusted, so the login throttle sees the
  visitor's address rather than the proxy's.  0 (the default) trusts none.
- ``WIKI_CONTENT_SECURITY_POLICY``: replaces the default policy below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

# The templates use no inline script or style and load only the site's own
# stylesheet, so nothing but 'self' is needed; a page's text can then not
# run script even if some markup slipped through the renderer.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HSTS_SECONDS = 365 * 24 * 3600
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

StartResponse = Callable[..., Any]


def security_headers(policy: str, behind_tls: bool) -> list[tuple[str, str]]:
    """The headers every response carries."""
    headers = [
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if behind_tls:
        headers.append(("Strict-Transport-Security", f"max-age={HSTS_SECONDS}"))
    return headers


class SecurityHeaders:
    """WSGI middleware adding ``headers`` to every response that lacks them
    (a view may set its own, a stricter policy say).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], headers: list[tuple[str, str]]) -> None:
        self.app = app
        self.headers = headers

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def adding_headers(status: str, response_headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            present = {name.lower() for name, _ in response_headers}
            response_headers.extend((name, value) for name, value in self.headers
                                    if name.lower() not in present)
            return start_response(status, response_headers, *exc_info)

        return self.app(environ, adding_headers)


def flag(value: Any, name: str) -> bool:
    """A yes/no setting given as a bool, a number or a word ("1", "true", "off")."""
    if isinstance(value, (bool, int)):
        return bool(value)
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{name} must be yes or no (1/true/on or 0/false/off), not {value!r}")


def behind_tls(config: Mapping[str, Any]) -> bool:
    return flag(config.get("WIKI_BEHIND_TLS", os.environ.get("WIKI_BEHIND_TLS", "")), "WIKI_BEHIND_TLS")


def proxy_count(config: Mapping[str, Any]) -> int:
    value = config.get("WIKI_PROXY_COUNT", 0)
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or isinstance(value, bool):
        raise ValueError(f"WIKI_PROXY_COUNT must be the number of proxies in front of the app, not {value!r}")
    return count


def init_security(app: Flask) -> None:
    """Set the cookie flags and wrap the app in the header middleware.

    Call after every other extension has wrapped ``app.wsgi_app``, so the
    headers also reach the responses those wrappers make.
    """
    tls = behind_tls(app.config)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    if tls:
        app.config["SESSION_COOKIE_SECURE"] = True
        app.config["PREFERRED_URL_SCHEME"] = "https"
    proxies = proxy_count(app.config)
    wsgi_app = app.wsgi_app
    if proxies:
        wsgi_app = ProxyFix(wsgi_app, x_for=proxies, x_proto=proxies)
    policy = app.config.get("WIKI_CONTENT_SECURITY_POLICY") or CONTENT_SECURITY_POLICY
    app.wsgi_app = SecurityHeaders(wsgi_app, security_headers(policy, tls))  # type: ignore[method-assign]

"""A multi-user wiki whose data lives only in Durus: the example application.

Pages keep their full revision history; tags, a word index for search and a
"recently edited" list are BTrees; accounts have hashed passwords and log in
with Flask's signed-cookie sessions; forms carry CSRF tokens and show their
errors next to the fields.

Run it on the embedded default (one process, data in the instance folder)::

    flask --app example_app run

or deployed, with a storage server and four gunicorn workers::

    python -m example_app

``flask --app example_app wiki check`` recomputes the search and tag indexes
and the log of recent changes from the pages and reports every difference
(exit status 1 if there is any); ``flask --app example_app backup DEST``
copies the live data file.

Configuration comes from, in order: ``instance/config.py``, environment
variables prefixed ``FLASK_`` (``FLASK_DURUS_STORAGE=durus://127.0.0.1:2972``,
``FLASK_SECRET_KEY=...``), then the ``config`` mapping given to
:func:`create_app`.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import Flask, Response, make_response, render_template
from werkzeug.exceptions import HTTPException

from example_app.csrf import init_csrf
from example_app.database import durus
from example_app.security import init_security
from example_app.throttle import init_throttle

SECRET_KEY_FILE = "secret_key"


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    """Build the wiki application (the app factory ``flask`` and gunicorn call)."""
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.update(
        WIKI_TITLE="Durus Wiki",
        PASSWORD_HASH_METHOD="scrypt",
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1 << 20,
    )
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(app.instance_path)

    durus.init_app(app)
    init_csrf(app)
    init_throttle(app)

    from example_app import auth, backup, consistency, views

    app.register_blueprint(auth.bp)
    app.register_blueprint(views.bp)
    app.cli.add_command(backup.backup_command)
    app.cli.add_command(consistency.wiki_cli)
    app.jinja_env.filters["when"] = format_time
    app.register_error_handler(HTTPException, render_error)
    init_security(app)  # last: its headers wrap every other layer's answers
    return app


def load_secret_key(instance_path: str) -> str:
    """The key that signs session cookies, made on first run in the instance folder.

    Every worker of a deployment must use the same key, and the first run
    of several workers at once must agree on it: the key is written to a
    temporary file and hard-linked into place, which fails for all but the
    first, and everyone then reads whatever the first wrote.
    """
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, SECRET_KEY_FILE)
    if not os.path.exists(path):
        fd, temporary = tempfile.mkstemp(dir=instance_path, prefix=".secret-")
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
            os.close(fd)
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    with open(path) as file:
        return file.read().strip()


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_error(error: HTTPException) -> Response:
    """Every HTTP error as a page of the site, with the reason and headers it gives.

    The headers matter: a 503 from the storage extension carries
    ``Retry-After``, a 405 its ``Allow``.
    """
    response = make_response(render_template("error.html", error=error), error.code or 500)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response

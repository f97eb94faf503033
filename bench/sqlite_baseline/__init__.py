"""The wiki on Flask-SQLAlchemy + SQLite: the baseline the benchmark measures against.

The same pages, forms, templates and stylesheet as ``example_app`` (it uses
them directly), with the data in SQLite as a Flask developer would usually
keep it: WAL journal, ``synchronous=FULL`` so that a commit is on disk when
it returns (as a Durus commit is), a busy timeout so that concurrent
writers wait instead of failing, and ``BEGIN IMMEDIATE`` for POST requests
so that a read-then-write transaction cannot lose a race with another
writer (SQLite would answer "database is locked" rather than wait).

Run it: ``PYTHONPATH=bench gunicorn -w 4 'sqlite_baseline:create_app()'``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, has_request_context, request
from sqlalchemy import event
from werkzeug.exceptions import HTTPException

import example_app
from example_app import format_time, load_secret_key, render_error
from example_app.csrf import init_csrf
from sqlite_baseline.models import db

_EXAMPLE_DIR = os.path.dirname(os.path.abspath(example_app.__file__))


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=instance_path,
        instance_relative_config=True,
        template_folder=os.path.join(_EXAMPLE_DIR, "templates"),
        static_folder=os.path.join(_EXAMPLE_DIR, "static"),
    )
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        WIKI_TITLE="SQLite Wiki",
        PASSWORD_HASH_METHOD="scrypt",
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1 << 20,
        SQLALCHEMY_DATABASE_URI="sqlite:///" + os.path.join(app.instance_path, "wiki.sqlite3"),
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_secret_key(app.instance_path)

    db.init_app(app)
    with app.app_context():
        _configure_sqlite(db.engine)
        _create_tables(app.instance_path)
    init_csrf(app)

    from sqlite_baseline import views

    app.register_blueprint(views.auth)
    app.register_blueprint(views.wiki)
    app.jinja_env.filters["when"] = format_time
    app.register_error_handler(HTTPException, render_error)
    return app


def _configure_sqlite(engine: Any) -> None:
    """Durable WAL commits, waiting writers, and explicit BEGINs (see module doc)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        writing = has_request_context() and request.method == "POST"
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def _create_tables(instance_path: str) -> None:
    """Create missing tables once, even when several workers start together."""
    with open(os.path.join(instance_path, ".schema.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db.create_all()

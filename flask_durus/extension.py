"""The ``Durus`` extension: a connection per request, committed before the
response leaves Flask, aborted on errors, replayed on conflicts.

The life of a request:

1. The first use of ``durus.connection`` (or ``durus.root``) checks a
   connection out of the app's pool in this process; checkout brings it up
   to date with every commit so far.
2. After the view and every other after-request hook, the extension's own
   hook (registered to run last) commits, unless the commit veto rejects the
   response (by default: status >= 400), in which case it aborts.
3. A ConflictError met anywhere in the request (raised by the view, by the
   commit, or caught by the app) aborts, and the whole request is run
   again (see :mod:`flask_durus.replay`), up to ``DURUS_RETRY_ATTEMPTS``
   times, after which the client gets a 409.
4. A storage server that cannot be reached, or does not answer within
   ``DURUS_SOCKET_TIMEOUT``, gives a 503 with ``Retry-After``; so does one
   lost after the commit data went out (the outcome is unknown).  A
   connection lost before that raises DisconnectedError, a ConflictError:
   the request is replayed, on a new connection.
5. When the request ends its connection goes back to the pool, and so does
   an app context's when that ends; changes that were never committed
   (outside a request, say) are aborted.

A request always has a transaction of its own, even inside an app context
that was already pushed (a test's ``with app.app_context():``), whose ``g``
Flask lends to the request: the context's own transaction is set aside, left
uncommitted, and is current again once the request ends.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any

from durus.connection import Connection
from durus.error import CommitRefusedError, ConflictError
from durus.persistent import PersistentObject
from flask import Flask, Request, Response, current_app, g, has_app_context, has_request_context, request, session
from flask.globals import request_ctx
from werkzeug.exceptions import Conflict

from flask_durus import signals
from flask_durus.errors import SERVER_ERRORS, EmbeddedStorageError, StorageUnavailable
from flask_durus.pool import ConnectionPool, PooledConnection, storage_opener
from flask_durus.replay import ATTEMPT, REPLAY, REPLAYABLE, RequestReplayer
from flask_durus.settings import CONFIG_DEFAULTS, DurusSettings, ignored_environment

log = logging.getLogger("flask_durus")

_G_KEY = "_durus_transaction"


@dataclass
class ContextTransaction:
    """The extension's state for one request or app context (on ``flask.g``).

    Instance attributes:

    - ``pool``: where the connection comes from and goes back to.
    - ``owner``: the request this transaction belongs to, or None for an app
      context's own.
    - ``outer``: the app context's transaction this request's set aside, to
      be current again when the request ends.
    - ``connection``: the checked-out connection, once used.
    - ``conflict``: a ConflictError met with no connection to remember it
      (a conflict creating the root, or raised by the app itself).
    - ``lost``: the error that lost the storage server, if one did.
    - ``raised``: an exception the view (or a hook) raised, even if an
      error handler turned it into an ordinary response: the request's
      changes are then aborted, never committed.
    - ``at_boundary``: nothing was done since the last commit or abort
      (set by the request hook; cleared by each use of ``durus.connection``).
    """

    pool: ConnectionPool
    owner: Request | None = None
    outer: ContextTransaction | None = None
    connection: PooledConnection | None = None
    conflict: ConflictError | None = None
    lost: BaseException | None = None
    raised: BaseException | None = None
    at_boundary: bool = False

    def met_conflict(self) -> ConflictError | None:
        if self.conflict is not None:
            return self.conflict
        return None if self.connection is None else self.connection.conflict


class Durus:
    """The Flask extension: ``durus = Durus(app)`` or ``durus.init_app(app)``.

    One instance may serve several apps; the state of each (settings, the
    connection pool of this process) is kept by app.  ``durus.connection``
    and ``durus.root`` work in any request or app context.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._settings: weakref.WeakKeyDictionary[Flask, DurusSettings] = weakref.WeakKeyDictionary()
        self._pools: weakref.WeakKeyDictionary[Flask, ConnectionPool] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``DURUS_*`` settings and hook into the app; opens nothing.

        The storage is opened by the first request (in each worker process),
        so this is safe before gunicorn forks, ``--preload`` included.
        Settings come from ``app.config`` alone; ``FLASK_DURUS_*`` variables
        that it does not reflect are logged as a WARNING, since running on
        the embedded default instead of the intended server is silent.
        """
        if "durus" in app.extensions:
            raise RuntimeError(
                f"Durus is already set up on the app {app.name!r}; call init_app once per app")
        ignored = ignored_environment(app.config, os.environ)
        if ignored:
            log.warning(
                "app %r does not use these environment variables (%s). An app factory loads "
                "them with app.config.from_prefixed_env() before durus.init_app(app); config "
                "given after that overrides them.",
                app.name, "; ".join(ignored))
        for key, value in CONFIG_DEFAULTS.items():
            app.config.setdefault(key, value)
        settings = DurusSettings.from_config(app.config, app.instance_path)
        self._settings[app] = settings
        app.extensions["durus"] = self
        app.wsgi_app = RequestReplayer(  # type: ignore[method-assign]
            app.wsgi_app, app, settings.retry_attempts, settings.retry_delay, settings.replay_body_limit)
        # App-wide after-request hooks run last-registered first: go first in
        # the list, so the commit sees the response every other hook made.
        app.after_request_funcs.setdefault(None, []).insert(0, self._finish_request)
        # Teardown hooks run last-registered first too: end the transaction
        # after any app hook that still used the connection.
        app.teardown_request_funcs.setdefault(None, []).insert(0, self._end_request)
        app.teardown_appcontext(self._end_context)
        app.register_error_handler(ConflictError, self._handle_conflict)
        app.register_error_handler(CommitRefusedError, self._handle_refused_commit)
        self._watch_for_conflicts(app)
        for error_class in SERVER_ERRORS:
            app.register_error_handler(error_class, self._handle_lost_server)
        app.shell_context_processor(self._shell_context)
        from flask_durus.cli import durus_group

        app.cli.add_command(durus_group)

    # -- the public face ----------------------------------------------------

    @property
    def connection(self) -> Connection:
        """The current request's connection (else the app context's), checked out on first use."""
        transaction = self._transaction()
        if transaction.connection is None:
            app = current_app._get_current_object()
            try:
                connection = transaction.pool.checkout()
            except ConflictError as error:  # another client was creating the root
                transaction.conflict = error
                raise
            except SERVER_ERRORS as error:
                raise self._unavailable(app, error) from error
            transaction.connection = connection
            signals.connection_checked_out.send(app, connection=connection)
        transaction.at_boundary = False
        return transaction.connection

    @property
    def root(self) -> PersistentObject:
        """The root object of :attr:`connection`."""
        return self.connection.get_root()

    def settings(self, app: Flask | None = None) -> DurusSettings:
        """The settings read from ``app``'s config (default: the current app)."""
        app = _resolve_app(app)
        try:
            return self._settings[app]
        except KeyError:
            raise RuntimeError(
                f"The app {app.name!r} is not set up with this Durus: call durus.init_app(app) "
                "in the app factory"
            ) from None

    def get_pool(self, app: Flask | None = None) -> ConnectionPool:
        """``app``'s connection pool in this process, made on first use."""
        app = _resolve_app(app)
        pool = self._pools.get(app)
        if pool is None:
            settings = self.settings(app)
            pool = ConnectionPool(
                storage_opener(settings), settings.cache_size, settings.pool_size, settings.resolution_rounds)
            # setdefault: of two threads racing here, both use the first pool.
            pool = self._pools.setdefault(app, pool)
        return pool

    def holds_embedded_storage(self, app: Flask | None = None) -> bool:
        """True if ``app``'s pool in this process has its embedded storage open.

        The CLI then works through the pool: the file's lock refuses a second
        open even in this process, and a memory:// store exists only here.
        """
        pool = self._pools.get(_resolve_app(app))
        return pool is not None and not pool.closed and pool.opener.holds_storage()

    def close(self, app: Flask | None = None) -> None:
        """Close ``app``'s pool in this process (its embedded storage too).

        For tests and orderly shutdowns; a later request opens a new pool.
        """
        pool = self._pools.pop(_resolve_app(app), None)
        if pool is not None:
            pool.close()

    # -- the request's transaction -------------------------------------------

    def _transaction(self) -> ContextTransaction:
        """The current request's transaction, else the app context's.

        Both live on ``g``; a request in an app context pushed before it
        shares that context's ``g``, so its own transaction displaces the
        context's (kept as ``outer``) until :meth:`_end_request`.
        """
        app = _current_app()
        owner = request._get_current_object() if has_request_context() else None
        transaction = g.get(_G_KEY)
        if transaction is None or transaction.owner is not owner:
            transaction = ContextTransaction(self.get_pool(app), owner=owner, outer=transaction)
            setattr(g, _G_KEY, transaction)
        return transaction

    def _request_transaction(self) -> ContextTransaction | None:
        """The current request's transaction, if it has begun one; never the
        app context's, which a request must neither commit nor end.
        """
        transaction = g.get(_G_KEY)
        if transaction is None or transaction.owner is not request._get_current_object():
            return None
        return transaction

    def _finish_request(self, response: Response) -> Response:
        """Commit, abort or replay: the last after-request hook."""
        transaction = self._request_transaction()
        if transaction is None:
            return response
        app = current_app._get_current_object()
        connection = transaction.connection
        conflict = transaction.met_conflict()
        if conflict is None and transaction.lost is None:
            if connection is None or transaction.at_boundary:
                return response
            transaction.at_boundary = True
            if not connection.has_changes():
                # Nothing to store: skip the commit's round trip.  The next
                # checkout's abort() ends this read-only transaction.
                return response
            if transaction.raised is not None:
                self._abort(app, connection, "error")
                return response
            if self._settings[app].commit_veto(request, response):
                self._abort(app, connection, "vetoed")
                return response
            try:
                connection.commit()
            except ConflictError as error:
                conflict = error
            except SERVER_ERRORS as error:
                transaction.lost = error
                connection.broken = True
            except CommitRefusedError as error:  # a full disk: nothing stored, reads go on
                self._abort(app, connection, "error")
                return _error_response(app, self._refused(app, error))
            except Exception:  # unpicklable state, say: the client gets a 500
                self._abort(app, connection, "error")
                raise
            else:
                signals.transaction_committed.send(app, connection=connection)
                return response
        transaction.at_boundary = True
        if conflict is not None:
            return self._after_conflict(app, transaction, conflict, response)
        return self._after_lost_server(app, transaction, response)

    def _after_conflict(
        self, app: Flask, transaction: ContextTransaction, error: ConflictError, response: Response
    ) -> Response:
        if transaction.connection is not None and not transaction.connection.broken:
            self._abort(app, transaction.connection, "conflict")
        environ = request.environ
        attempt = environ.get(ATTEMPT, 1)
        will_retry = bool(environ.get(REPLAYABLE))
        signals.conflict_detected.send(app, error=error, attempt=attempt, will_retry=will_retry)
        if will_retry:
            log.info("%s %s: %s on run %d (%s); replaying the request",
                     request.method, request.path, type(error).__name__, attempt, error)
            environ[REPLAY] = True
            return response
        log.warning("%s %s: %s on run %d (%s); giving up with 409",
                    request.method, request.path, type(error).__name__, attempt, error)
        return _error_response(app, Conflict(
            "The data changed while this request ran, again and again; please try again."))

    def _after_lost_server(self, app: Flask, transaction: ContextTransaction, response: Response) -> Response:
        error = transaction.lost
        log.warning("%s %s: lost the storage server (%s); answering 503",
                    request.method, request.path, error)
        return _error_response(app, self._unavailable(app, error))

    def _abort(self, app: Flask, connection: PooledConnection, reason: str) -> None:
        try:
            connection.abort()
        except SERVER_ERRORS:
            connection.broken = True
        signals.transaction_aborted.send(app, connection=connection, reason=reason)

    def _end_request(self, exception: BaseException | None) -> None:
        """End the request's transaction and make the app context's own (if
        the request displaced one) current again: the app context may live on
        (a test's ``with app.app_context():`` around requests).
        """
        transaction = self._request_transaction()
        if transaction is None:
            return
        self._end_transaction(transaction, "error" if exception else "context ended")
        if transaction.outer is None:
            g.pop(_G_KEY)
        else:
            setattr(g, _G_KEY, transaction.outer)

    def _end_context(self, exception: BaseException | None) -> None:
        transaction = g.pop(_G_KEY, None)
        if transaction is not None:
            self._end_transaction(transaction, "context ended")

    def _end_transaction(self, transaction: ContextTransaction, reason: str) -> None:
        """Abort what was neither committed nor aborted; return the connection."""
        connection = transaction.connection
        if connection is None:
            return
        if not transaction.at_boundary and not connection.broken:
            self._abort(current_app._get_current_object(), connection, reason)
        transaction.pool.checkin(connection)

    # -- error handlers ----------------------------------------------------------

    def _watch_for_conflicts(self, app: Flask) -> None:
        """Note every ConflictError the hooks or the view raise, before any
        error handler sees it: an app's own handler may turn it into an
        ordinary response, and the request must be replayed all the same.
        Any other exception is noted too: the request's changes are then
        aborted, whatever the handler answers.

        Flask hands an error raised by an after-request hook to no error
        handler (it answers 500, or raises it in a test), and the hooks after
        it, the commit among them, never run: so a ConflictError raised there
        is caught where the hooks run, and the request is finished as one
        that met a conflict.
        """
        handle_user_exception = app.handle_user_exception
        process_response = app.process_response

        def noting_conflicts(error: Exception) -> Any:
            if isinstance(error, ConflictError):
                self._note_conflict(error)
            else:
                self._note_raised(error)
            return handle_user_exception(error)

        def finishing_after_conflicts(response: Response) -> Response:
            try:
                return process_response(response)
            except ConflictError as error:
                self._note_conflict(error)
                return self._finish_request(response)

        app.handle_user_exception = noting_conflicts  # type: ignore[method-assign]
        app.process_response = finishing_after_conflicts  # type: ignore[method-assign]

    def _note_raised(self, error: Exception) -> None:
        """The view raised: whatever response a handler makes of it, the
        request's changes are aborted (SPEC: commit when the view returns
        normally, abort when it raises).
        """
        transaction = self._request_transaction() if has_request_context() else None
        if transaction is not None and transaction.raised is None:
            transaction.raised = error

    def _note_conflict(self, error: ConflictError) -> None:
        transaction = self._transaction()
        if transaction.met_conflict() is None:
            transaction.conflict = error

    def _handle_conflict(self, error: ConflictError) -> Any:
        """A stand-in answer: the request hook replays, or answers 409."""
        return Conflict()

    def _handle_lost_server(self, error: BaseException) -> Any:
        """The server went away mid-request: a 503 (and no commit)."""
        transaction = self._transaction()
        transaction.lost = error
        if transaction.connection is not None:
            transaction.connection.broken = True
        return self._unavailable(current_app._get_current_object(), error)

    def _handle_refused_commit(self, error: CommitRefusedError) -> Any:
        """A commit the view made itself was refused (a full disk)."""
        return self._refused(current_app._get_current_object(), error)

    def _refused(self, app: Flask, error: CommitRefusedError) -> StorageUnavailable:
        """A 503 with ``Retry-After``: the storage stored nothing of this
        request's changes (a full disk, say) and goes on serving reads, so
        the client may try again once the cause is gone.
        """
        log.error("%s %s: the storage refused the commit (%s); answering 503", request.method, request.path, error)
        return StorageUnavailable(
            f"The database could not store this change ({error}); nothing was changed. Please try again later.",
            retry_after=self._settings[app].retry_after,
        )

    def _unavailable(self, app: Flask, error: BaseException) -> StorageUnavailable:
        return StorageUnavailable(
            f"The database is not reachable ({error}). Please try again shortly.",
            retry_after=self._settings[app].retry_after,
        )

    def _shell_context(self) -> dict[str, object]:
        context: dict[str, object] = {"durus": self}
        try:
            context["connection"] = self.connection
            context["root"] = self.root
        except (StorageUnavailable, EmbeddedStorageError) as error:
            log.warning("durus: no connection in this shell: %s", error)
        return context


def _resolve_app(app: Flask | None) -> Flask:
    """``app``, or the current app if None (``current_app`` itself works too)."""
    if app is None:
        return _current_app()
    unwrap = getattr(app, "_get_current_object", None)
    return app if unwrap is None else unwrap()


def _current_app() -> Flask:
    if not has_app_context():
        raise RuntimeError(
            "Working outside of an application context: durus.connection and durus.root "
            "need a request, or an app context pushed with `with app.app_context():` "
            "(as CLI commands, tests and scripts do)."
        )
    return current_app._get_current_object()  # type: ignore[attr-defined]


def _error_response(app: Flask, error: Any) -> Response:
    """The response the app's own error handlers give for an HTTP error, in
    place of the one the app made.

    That run stored nothing, so what it put in the session goes too: a
    flashed "Created ..." must not show on the 409 page, and a cookie must
    not name an account whose sign-up was never stored.
    """
    if has_request_context():
        _drop_session_changes(app)
        return app.make_response(app.handle_http_exception(error))
    return app.make_response(error)


def _drop_session_changes(app: Flask) -> None:
    """Put the request's session back as its cookie brought it in."""
    request_ctx.flashes = None
    interface = app.session_interface
    if interface.is_null_session(session):
        return
    original = interface.open_session(app, request)
    session.clear()
    session.update(original or {})
    session.modified = False  # the browser keeps the cookie it has

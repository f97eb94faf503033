"""An app factory for the benchmark that also logs every conflict a worker meets.

Gunicorn calls ``counted_app:create_app("example_app:create_app", events=PATH,
...)``: it builds the named app and connects to ``flask_durus.signals`` a
receiver that appends one line per event to ``PATH``, so the benchmark can
tell how many requests met a conflict, how many were replayed and on which
classes of objects they collided.  Each line is written with one
``write`` to a file opened for appending, which keeps the lines of
concurrent workers whole.

A line is ``conflict <attempt> <retry|final> <error class> <class>:<oid> ...``
(the classes of the objects that conflicted), or ``retry <attempt>``.

With ``profile=DIR`` each worker also runs its edit requests (``POST``
to a path ending in ``/edit``) under cProfile and rewrites ``DIR/<pid>.prof`` every ``PROFILE_EVERY`` requests (a worker is
stopped by a signal, so there is no last chance to write at exit).
"""

from __future__ import annotations

import cProfile
import importlib
import os
from typing import Any

from flask import Flask

from durus.persistent import real_class
from flask_durus import signals

PROFILE_EVERY = 50


def create_app(factory: str, events: str, profile: str | None = None, **arguments: Any) -> Flask:
    """The app ``factory`` (``module:function``) makes, logging conflicts to ``events``."""
    module, name = factory.split(":")
    app = getattr(importlib.import_module(module), name)(**arguments)
    if profile:
        app.wsgi_app = _profiled(app.wsgi_app, profile)

    def write(line: str) -> None:
        fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def on_conflict(sender: Flask, error: Exception, attempt: int, will_retry: bool, **extra: Any) -> None:
        connection = sender.extensions["durus"].connection
        described = []
        for oid in getattr(error, "oids", None) or ():
            try:
                obj = connection.get(oid)
            except Exception:  # noqa: BLE001 - a diagnostic must not fail the request
                obj = None
            kind = real_class(type(obj)).__name__ if obj is not None else "?"
            described.append(f"{kind}:{int.from_bytes(oid, 'big')}")
        kind = type(error).__name__
        write(f"conflict {attempt} {'retry' if will_retry else 'final'} {kind} {' '.join(described)}")

    def on_retry(sender: Flask, attempt: int, **extra: Any) -> None:
        write(f"retry {attempt}")

    signals.conflict_detected.connect(on_conflict, app, weak=False)
    signals.request_retried.connect(on_retry, app, weak=False)
    return app


def _profiled(wsgi_app: Any, folder: str) -> Any:
    """Edits through ``wsgi_app`` under one cProfile per worker process, dumped now and then.

    The profiler starts in the worker (after gunicorn's fork), on its first request.
    """
    profiles: dict[int, cProfile.Profile] = {}
    counts: dict[int, int] = {}

    def profiled(environ: dict, start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] != "POST" or not environ["PATH_INFO"].endswith("/edit"):
            return wsgi_app(environ, start_response)
        pid = os.getpid()
        profiler = profiles.setdefault(pid, cProfile.Profile())
        profiler.enable()
        try:
            return list(wsgi_app(environ, start_response))
        finally:
            profiler.disable()
            counts[pid] = counts.get(pid, 0) + 1
            if counts[pid] % PROFILE_EVERY == 0:
                profiler.dump_stats(os.path.join(folder, f"{pid}.prof"))

    return profiled

"""Replaying whole requests: the WSGI side of conflict handling.

Durus detects conflicts optimistically, so a request that met one is simply
run again from scratch: a new request context, the before- and
after-request hooks, the view.  :class:`RequestReplayer` wraps
``app.wsgi_app``; it buffers the request body so each run reads it anew,
and holds back each run's ``start_response`` until it knows whether the
extension asked for a replay (by setting ``environ[REPLAY]`` while the app
ran).  Only then is the response passed on, so a replayed run never
reaches the client.  Its body is not read either: a streamed body is
produced only for the run that is passed on.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask_durus import signals

#: environ keys, set on each run's own copy of the environ.
ATTEMPT = "flask_durus.attempt"  # 1 for the first run, 2 for the first replay
REPLAYABLE = "flask_durus.replayable"  # True if a conflict may replay this run
REPLAY = "flask_durus.replay"  # set by the extension: discard this run, run again

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class RequestReplayer:
    """WSGI middleware that runs a request again when the extension asks.

    Instance attributes:

    - ``wsgi_app``: the wrapped WSGI callable (Flask's own ``wsgi_app``).
    - ``app``: the Flask app, the sender of ``request_retried``.
    - ``retry_attempts``: replays allowed after the first run.
    - ``retry_delay``: seconds; the jittered back-off doubles from this.
    - ``body_limit``: bodies up to this many bytes are buffered and so
      replayable; a larger body runs once.
    """

    def __init__(self, wsgi_app: WSGIApp, app: Any, retry_attempts: int, retry_delay: float, body_limit: int) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.retry_attempts = retry_attempts
        self.retry_delay = retry_delay
        self.body_limit = body_limit

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = self._buffer_body(environ)
        runs = 1 if body is None else 1 + self.retry_attempts
        attempt = 1
        while True:
            run_environ = dict(environ)
            if body is not None:
                run_environ["wsgi.input"] = io.BytesIO(body)
            run_environ[ATTEMPT] = attempt
            run_environ[REPLAYABLE] = attempt < runs
            held = _HeldResponse()
            app_iter = self.wsgi_app(run_environ, held.start_response)
            if not run_environ.get(REPLAY):
                return held.release(start_response, app_iter)
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
            attempt += 1
            delay = random.uniform(0, self.retry_delay * 2 ** (attempt - 2))
            signals.request_retried.send(self.app, attempt=attempt, delay=delay)
            time.sleep(delay)

    def _buffer_body(self, environ: dict) -> bytes | None:
        """The whole body, replacing ``wsgi.input``; None if over the limit.

        A body of unknown length (chunked) is read up to the limit; if it
        goes on, what was read is put back in front of the rest.
        """
        stream = environ.get("wsgi.input")
        length_text = environ.get("CONTENT_LENGTH")
        if stream is None:
            return b""
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                return None  # let the app answer the malformed header, once
            if length > self.body_limit:
                return None
            return _read_up_to(stream, length)
        if not environ.get("wsgi.input_terminated"):
            return b""  # no length and no end marker: WSGI says there is no body
        body = _read_up_to(stream, self.body_limit + 1)
        if len(body) <= self.body_limit:
            return body
        environ["wsgi.input"] = _PrefixedStream(body, stream)
        return None


def _read_up_to(stream: Any, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = stream.read(min(size, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _PrefixedStream(io.RawIOBase):
    """Bytes already read from a stream, then the rest of that stream."""

    def __init__(self, prefix: bytes, rest: Any) -> None:
        self._prefix = io.BytesIO(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._prefix.read(len(buffer)) or self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _HeldResponse:
    """A ``start_response`` that keeps the status and headers until released.

    Instance attributes: ``status``, ``headers``, ``exc_info`` as given, and
    ``written``: bytes given to the ``write`` callable meanwhile.
    """

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list | None = None
        self.exc_info: Any = None
        self.written: list[bytes] = []
        self._released_to: Callable | None = None

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if self._released_to is not None:  # an app that starts while iterating
            return self._released_to(status, headers, exc_info)
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.written.append

    def release(self, start_response: Callable, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        """Pass the held response on; ``app_iter`` goes to the server as is."""
        self._released_to = start_response
        if self.status is not None:
            write = start_response(self.status, self.headers, self.exc_info)
            for data in self.written:
                write(data)
        return app_iter

"""The example wiki as its visitors see it: through Flask's test client
(:class:`Wiki`, on an app from :func:`make_app`), or as real processes,
gunicorn on a storage server, with HTTP visitors (:class:`Client`) who keep
cookies and fill in its forms.

Used by the wiki's tests (test_example_app*.py, test_wiki_*.py).
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app
from flask_durus.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONF = ROOT / "example_app" / "gunicorn.conf.py"
FAST_HASH = "pbkdf2:sha256:1000"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_BASE = re.compile(r'name="base" value="(\d+)"')


def make_app(tmp_path: Path, **config: Any) -> Flask:
    """The wiki on an in-memory store, with a fast password hash; ``config`` adds settings."""
    settings = {"DURUS_STORAGE": "memory://", "PASSWORD_HASH_METHOD": FAST_HASH, "SECRET_KEY": "test"}
    settings.update(config)
    return create_app(settings, instance_path=str(tmp_path / "instance"))


def token(html: str) -> str:
    """The CSRF token of the (first) form in ``html``."""
    return _CSRF.search(html).group(1)


class Wiki:
    """A test client that knows the wiki's forms (and fetches their tokens)."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def post(self, form_path: str, data: dict[str, str], path: str | None = None):
        """Fetch the form at ``form_path`` for its token, then post ``data`` (to ``path`` if given)."""
        data = {"csrf_token": token(self.client.get(form_path).text), **data}
        return self.client.post(path or form_path, data=data)

    def signup(self, name: str, password: str = "correct horse"):
        return self.post("/signup", {"name": name, "password": password, "confirm": password})

    def login(self, name: str, password: str = "correct horse", next: str = ""):
        return self.post("/login", {"name": name, "password": password, "next": next})

    def create(self, title: str, text: str, tags: str = ""):
        return self.post("/new", {"title": title, "text": text, "tags": tags})

    def edit(self, slug: str, text: str, base: int, title: str | None = None, tags: str = "", comment: str = ""):
        data = {"title": title or self.client.get(f"/wiki/{slug}").text.split("<h1>")[1].split("<")[0],
                "text": text, "tags": tags, "base": str(base), "comment": comment}
        return self.post(f"/wiki/{slug}/edit", data)


def signed_up(app: Flask, name: str) -> Wiki:
    """A test client of ``app`` with a new account ``name``, signed in."""
    wiki = Wiki(app.test_client())
    assert wiki.signup(name).status_code == 302
    return wiki


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    text: str


class Client:
    """One visitor: a cookie jar and plain HTTP requests (redirects not followed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, data: dict[str, str] | None = None) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = None
        if data is not None:
            body = urlencode(data)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body, headers)
            reply = connection.getresponse()
            text = reply.read().decode()
        finally:
            connection.close()
        for header in reply.headers.get_all("Set-Cookie") or ():
            for name, morsel in SimpleCookie(header).items():
                if morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return Response(reply.status, reply.headers, text)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_form(self, form_path: str, data: dict[str, str], path: str | None = None) -> Response:
        """Fetch the form (for its CSRF token), then send it."""
        page = self.get(form_path)
        found = _CSRF.search(page.text)
        assert found, f"no form at {form_path} ({page.status}): {page.text[:300]}"
        return self.request("POST", path or form_path, {"csrf_token": found.group(1), **data})

    def post_form_again_after_409(self, form_path: str, data: dict[str, str], attempts: int = 5) -> Response:
        """Send the form; after a 409 page (the extension gave up replaying
        under contention: nothing was stored) send it again, as a person
        would, up to ``attempts`` times.  The last answer.
        """
        for _ in range(attempts):
            response = self.post_form(form_path, data)
            if response.status != 409:
                break
        return response

    def signup(self, name: str, password: str = "long password") -> Response:
        return self.post_form("/signup", {"name": name, "password": password, "confirm": password})

    def edit(self, slug: str, title: str, text: str, base: int, tags: str = "") -> Response:
        return self.post_form(
            f"/wiki/{slug}/edit", {"title": title, "text": text, "base": str(base), "tags": tags})

    def edit_current(self, slug: str, title: str, text: str, tags: str = "") -> tuple[Response, Response]:
        """Open the edit form and send it from the revision it shows: (form, answer).

        The answer is None when the form itself did not come (the form's
        response says why).
        """
        form = self.get(f"/wiki/{slug}/edit")
        token, base = _CSRF.search(form.text), _BASE.search(form.text)
        if form.status != 200 or not token or not base:
            return form, None
        data = {"csrf_token": token.group(1), "title": title, "text": text, "tags": tags,
                "base": base.group(1)}
        return form, self.request("POST", f"/wiki/{slug}/edit", data)

    def rename(self, slug: str, title: str) -> Response:
        """Rename a page from the revision its rename form shows (the form's response if it has none)."""
        form = self.get(f"/wiki/{slug}/rename")
        base = _BASE.search(form.text)
        if form.status != 200 or not base:
            return form
        return self.post_form(f"/wiki/{slug}/rename", {"title": title, "base": base.group(1)})

    def revert(self, slug: str, number: int) -> Response:
        """Revert a page to revision ``number``, from the revision its edit form shows."""
        base = self.current_revision(slug)
        return self.post_form(f"/wiki/{slug}/edit", {"number": str(number), "base": str(base)},
                              path=f"/wiki/{slug}/revert")

    def delete(self, slug: str) -> Response:
        return self.post_form(f"/wiki/{slug}/delete", {})

    def current_revision(self, slug: str) -> int:
        return int(_BASE.search(self.get(f"/wiki/{slug}/edit").text).group(1))


def wait_for_http(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            if Client(port).get("/").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer on port {port} in {timeout} s:\n{log.read_text()}")


class Gunicorn:
    """``gunicorn -c example_app/gunicorn.conf.py`` on a free port, 4 workers.

    ``env`` adds to (or overrides) the workers' environment.
    """

    def __init__(self, instance: Path, storage_uri: str, workers: int = 4,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = instance / "gunicorn.log"
        self.env = {**os.environ, "FLASK_DURUS_STORAGE": storage_uri, "FLASK_PASSWORD_HASH_METHOD": FAST_HASH,
                    **(env or {})}
        self.app_spec = f"example_app:create_app(instance_path={str(instance)!r})"
        command = [
            sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF),
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), self.app_spec,
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for_http(self.port, self.process, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_clients(count: int, work: Callable[[int], Any], timeout: float = 120.0) -> list:
    """Run ``work(index)`` in ``count`` threads at once; their results, or raise."""
    results: list = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = work(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return results

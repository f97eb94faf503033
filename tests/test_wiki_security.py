"""The example wiki's login safety and browser hardening, over HTTP.

Login throttling per account and per client address (429 with
Retry-After, the password not even checked, in again once the window has
passed), shared by processes through a real storage server; equal login
time for unknown and known names; passwords kept as typed; security
headers on every kind of response; the session cookie's ``Secure`` flag
behind the TLS switch; usernames that try to inject markup.
"""

from __future__ import annotations

import re
import statistics
import threading
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from server_process import ServerProcess

from durus.client_storage import ClientStorage
from durus.connection import Connection
from example_app import create_app
from example_app.database import current_wiki, durus
from example_app.models import User
from example_app.throttle import ROOT_KEY, address_key
from flask_durus import signals
from flask_durus.testing import free_port
from tests.support.wiki_site import FAST_HASH, Client, Gunicorn, run_clients

PASSWORD = "correct horse"


class Clock:
    """The throttle's clock, moved by the test."""

    def __init__(self, now: float = 6000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_app(tmp_path, **config) -> Flask:
    settings = {"DURUS_STORAGE": "memory://", "PASSWORD_HASH_METHOD": FAST_HASH, "SECRET_KEY": "test"}
    settings.update(config)
    return create_app(settings, instance_path=str(tmp_path / "instance"))


class Visitor:
    """A test client that fills in the wiki's forms (fetching their CSRF tokens)."""

    def __init__(self, app: Flask, address: str = "192.0.2.1") -> None:
        self.client: FlaskClient = app.test_client()
        self.client.environ_base["REMOTE_ADDR"] = address

    def post(self, path: str, data: dict[str, str]):
        page = self.client.get(path).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        return self.client.post(path, data={"csrf_token": token, **data})

    def signup(self, name: str, password: str = PASSWORD):
        return self.post("/signup", {"name": name, "password": password, "confirm": password})

    def login(self, name: str, password: str = PASSWORD):
        return self.post("/login", {"name": name, "password": password, "next": ""})


@pytest.fixture
def clock() -> Clock:
    return Clock()


def throttled_app(tmp_path, clock: Clock, account_limit: int = 3, address_limit: int = 100, **config) -> Flask:
    return make_app(tmp_path, WIKI_LOGIN_WINDOW=60, WIKI_LOGIN_ACCOUNT_LIMIT=account_limit,
                    WIKI_LOGIN_ADDRESS_LIMIT=address_limit, WIKI_LOGIN_CLOCK=clock, **config)


def count_password_checks(monkeypatch) -> list[str]:
    """Record every password checked against an account."""
    checked: list[str] = []
    original = User.check_password

    def check_password(self: User, password: str) -> bool:
        checked.append(password)
        return original(self, password)

    monkeypatch.setattr(User, "check_password", check_password)
    return checked


# -- throttling ---------------------------------------------------------------------


def test_an_account_is_throttled_after_its_failures_until_the_window_passes(tmp_path, clock, monkeypatch):
    app = throttled_app(tmp_path, clock, account_limit=3)
    visitor = Visitor(app)
    assert visitor.signup("alice").status_code == 302
    visitor.post("/logout", {})
    for _ in range(3):
        assert visitor.login("alice", "wrong password").status_code == 400
    checked = count_password_checks(monkeypatch)
    clock.now += 15
    refused = visitor.login("alice")  # the right password, refused all the same
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "45"
    assert "Too many failed logins" in refused.text
    assert checked == []
    assert "Log out" not in visitor.client.get("/").text
    # Another address is refused too: the limit is the account's.
    assert Visitor(app, "198.51.100.7").login("alice").status_code == 429
    clock.now += 45
    assert visitor.login("alice").status_code == 302
    assert checked == [PASSWORD]
    assert "Log out" in visitor.client.get("/").text


def test_an_address_is_throttled_across_accounts(tmp_path, clock):
    app = throttled_app(tmp_path, clock, account_limit=100, address_limit=3)
    for name in ("alice", "bob"):
        assert Visitor(app, "203.0.113.9").signup(name).status_code == 302
    attacker = Visitor(app)
    for name in ("alice", "bob", "nobody"):
        assert attacker.login(name, "wrong password").status_code == 400
    refused = attacker.login("bob")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == 60
    assert Visitor(app, "198.51.100.7").login("bob").status_code == 302
    clock.now += 60
    assert attacker.login("bob").status_code == 302


def test_unknown_names_count_like_real_ones(tmp_path, clock):
    """Throttling only real accounts would tell which names exist."""
    app = throttled_app(tmp_path, clock, account_limit=2)
    visitor = Visitor(app)
    assert [visitor.login("ghost", "wrong password").status_code for _ in range(3)] == [400, 400, 429]


def test_old_windows_are_dropped(tmp_path, clock):
    app = throttled_app(tmp_path, clock)
    visitor = Visitor(app)
    for _ in range(5):
        assert visitor.login("someone", "wrong password").status_code == 400
        clock.now += 60
    with app.app_context():
        windows = durus.root[ROOT_KEY].windows
        assert list(windows.keys()) == [6240.0]
        window = windows[6240.0]
        assert ([int(c) for c in window.accounts.values()], [int(c) for c in window.addresses.values()]) == ([1], [1])


def test_bad_throttle_settings_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="WIKI_LOGIN_WINDOW"):
        make_app(tmp_path, WIKI_LOGIN_WINDOW="soon")
    with pytest.raises(ValueError, match="WIKI_LOGIN_ACCOUNT_LIMIT"):
        make_app(tmp_path, WIKI_LOGIN_ACCOUNT_LIMIT=-1)


def test_ipv6_clients_count_by_their_64_network():
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1") == "192.0.2.1"


def test_two_app_instances_on_one_storage_server_share_the_counts(tmp_path, clock, monkeypatch):
    """Each instance is what one gunicorn worker runs; both count toward one limit,
    and two failures recorded at the same moment merge rather than conflict.
    """
    with ServerProcess(tmp_path / "data.durus") as server:
        uri = f"durus://127.0.0.1:{server.address[1]}"
        first = throttled_app(tmp_path / "a", clock, account_limit=5, DURUS_STORAGE=uri)
        second = throttled_app(tmp_path / "b", clock, account_limit=5, DURUS_STORAGE=uri)
        conflicts: list[object] = []

        def note_conflict(app: Flask, **info: object) -> None:
            conflicts.append(info)

        signals.conflict_detected.connect(note_conflict)
        try:
            assert Visitor(first).signup("alice").status_code == 302
            a, b = Visitor(first), Visitor(second)
            for visitor in (a, b):
                assert visitor.login("alice", "wrong password").status_code == 400
            # Both instances check the counts (2 < 5), both check the password
            # while the other does, then both record their failure.
            together = threading.Barrier(2)
            check_password = User.check_password

            def meeting(self: User, password: str) -> bool:
                together.wait(10)
                return check_password(self, password)

            monkeypatch.setattr(User, "check_password", meeting)
            statuses = run_clients(2, lambda i: (a, b)[i].login("alice", "wrong password").status_code)
            monkeypatch.setattr(User, "check_password", check_password)
            assert statuses == [400, 400]
            assert conflicts == []
            assert a.login("alice", "wrong password").status_code == 400
            assert b.login("alice").status_code == 429
            assert a.login("alice").status_code == 429
        finally:
            signals.conflict_detected.disconnect(note_conflict)
            for app in (first, second):
                durus.close(app)


def test_gunicorn_workers_count_every_concurrent_failure(tmp_path):
    """Failures sent at once reach four worker processes; none is lost when
    their commits meet at the storage server (the counters merge).
    """
    failures = 12
    server = ServerProcess(tmp_path / "data.durus", log_path=tmp_path / "server.log").start()
    try:
        web = Gunicorn(tmp_path, f"durus://127.0.0.1:{server.address[1]}", env={
            "FLASK_WIKI_LOGIN_ACCOUNT_LIMIT": str(failures), "FLASK_WIKI_LOGIN_ADDRESS_LIMIT": "1000",
            # One window for the whole test: its next end is in 2033.
            "FLASK_WIKI_LOGIN_WINDOW": str(10**9)})
        try:
            assert Client(web.port).signup("alice", PASSWORD).status == 302
            statuses = run_clients(failures, lambda i: Client(web.port).post_form(
                "/login", {"name": "alice", "password": f"wrong {i}"}).status)
            assert statuses == [400] * failures
            refused = Client(web.port).post_form("/login", {"name": "alice", "password": PASSWORD})
            assert refused.status == 429
            assert 0 < int(refused.headers["Retry-After"]) <= 10**9
        finally:
            web.stop()
        connection = Connection(ClientStorage(address=server.address))
        (window,) = connection.get_root()[ROOT_KEY].windows.values()
        assert int(window.accounts["alice"]) == failures
        assert int(window.addresses["127.0.0.1"]) == failures
        connection.get_storage().close()
    finally:
        server.stop()


# -- equal work for unknown names ---------------------------------------------------------


def test_login_takes_as_long_for_unknown_names_as_for_real_ones(tmp_path):
    """Real password hashing (scrypt) dominates both; medians within 20 %."""
    app = make_app(tmp_path, PASSWORD_HASH_METHOD="scrypt", WIKI_LOGIN_ACCOUNT_LIMIT=0,
                   WIKI_LOGIN_ADDRESS_LIMIT=0)
    visitor = Visitor(app)
    assert visitor.signup("alice").status_code == 302
    visitor.post("/logout", {})
    token = re.search(r'name="csrf_token" value="([^"]+)"', visitor.client.get("/login").text).group(1)

    def attempt(name: str) -> float:
        started = time.perf_counter()
        response = visitor.client.post("/login", data={"csrf_token": token, "name": name,
                                                        "password": "wrong password"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 400
        return elapsed

    attempt("alice"), attempt("nobody")  # warm up both paths
    known, unknown = [], []
    for _ in range(9):
        known.append(attempt("alice"))
        unknown.append(attempt("nobody"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.8 <= ratio <= 1.2, (known, unknown)


# -- passwords as typed ------------------------------------------------------------------


def test_passwords_keep_their_spaces(tmp_path):
    app = make_app(tmp_path)
    visitor = Visitor(app)
    spaced = "  two words  "
    assert visitor.signup("alice", spaced).status_code == 302
    visitor.post("/logout", {})
    assert visitor.login("alice", "two words").status_code == 400
    assert visitor.login("alice", "two words  ").status_code == 400
    assert visitor.login("alice", spaced).status_code == 302


def test_a_password_of_spaces_only_is_refused(tmp_path):
    response = Visitor(make_app(tmp_path)).signup("alice", " " * 12)
    assert response.status_code == 400
    assert "besides spaces" in response.text


def test_accounts_stored_with_stripped_passwords_still_log_in_as_typed(tmp_path):
    """Accounts made before passwords were kept as typed hold the stripped one."""
    app = make_app(tmp_path)
    with app.app_context():
        current_wiki().add_user("olduser", "old password", FAST_HASH)
        durus.connection.commit()
    visitor = Visitor(app)
    assert visitor.login("olduser", "wrong").status_code == 400
    assert visitor.login("olduser", " old password ").status_code == 302


# -- headers and cookies -------------------------------------------------------------------


EXPECTED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def assert_hardened(response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.status_code)
    policy = response.headers["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy


def test_every_kind_of_response_carries_the_security_headers(tmp_path, clock):
    app = throttled_app(tmp_path, clock, account_limit=1)
    visitor = Visitor(app)
    client = visitor.client
    responses = {
        "page": client.get("/"),
        "form": client.get("/login"),
        "missing": client.get("/no/such/thing"),
        "static": client.get("/static/style.css"),
        "no token": client.post("/login", data={"name": "x"}),
        "method": client.get("/logout"),
        "wrong password": visitor.login("alice", "wrong password"),
        "throttled": visitor.login("alice", "wrong password"),
    }
    assert {name: response.status_code for name, response in responses.items()} == {
        "page": 200, "form": 200, "missing": 404, "static": 200, "no token": 400, "method": 405,
        "wrong password": 400, "throttled": 429}
    for response in responses.values():
        assert_hardened(response)
        assert "Strict-Transport-Security" not in response.headers
    assert "Allow" in responses["method"].headers  # the error page keeps its own headers


def test_the_durus_extensions_own_answers_carry_the_headers_too(tmp_path, clock, monkeypatch):
    """The 503 for a missing storage server, and the 409 the extension makes
    after its commit hook (after every app hook) when a conflict outlasts the
    replays: here the first failures of a window, made at once, both create
    the window, and no replay is allowed.
    """
    app = make_app(tmp_path, DURUS_STORAGE=f"durus://127.0.0.1:{free_port()}", DURUS_SOCKET_TIMEOUT=2)
    response = app.test_client().get("/")
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert_hardened(response)

    app = throttled_app(tmp_path / "conflict", clock, DURUS_RETRY_ATTEMPTS=0)
    together = threading.Barrier(2)
    monkeypatch.setattr("example_app.auth.password_matches", lambda user, password: together.wait(10) < 0)
    visitors = [Visitor(app), Visitor(app)]
    responses = run_clients(2, lambda i: visitors[i].login("alice", "wrong password"))
    assert sorted(response.status_code for response in responses) == [400, 409]
    for response in responses:
        assert_hardened(response)


def test_the_templates_need_no_inline_script_or_style():
    """The policy forbids inline script and style; the templates must not rely on them."""
    from pathlib import Path

    for template in (Path(__file__).resolve().parents[1] / "example_app" / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", text), template.name


def session_cookie(app: Flask) -> str:
    visitor = Visitor(app)
    response = visitor.signup("alice")
    assert response.status_code == 302
    (cookie,) = [value for value in response.headers.getlist("Set-Cookie") if value.startswith("session=")]
    return cookie


def test_the_session_cookie_is_secure_only_behind_tls(tmp_path, monkeypatch):
    monkeypatch.delenv("WIKI_BEHIND_TLS", raising=False)
    plain = session_cookie(make_app(tmp_path / "plain"))
    assert "HttpOnly" in plain and "SameSite=Lax" in plain
    assert "Secure" not in plain
    secure = session_cookie(make_app(tmp_path / "tls", WIKI_BEHIND_TLS=True))
    assert "Secure" in secure and "HttpOnly" in secure and "SameSite=Lax" in secure
    monkeypatch.setenv("WIKI_BEHIND_TLS", "1")
    app = make_app(tmp_path / "env")
    assert "Secure" in session_cookie(app)
    page = app.test_client().get("/")
    assert_hardened(page)
    assert page.headers["Strict-Transport-Security"].startswith("max-age=")


def test_bad_deployment_switches_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="WIKI_BEHIND_TLS"):
        make_app(tmp_path, WIKI_BEHIND_TLS="maybe")
    with pytest.raises(ValueError, match="WIKI_PROXY_COUNT"):
        make_app(tmp_path, WIKI_PROXY_COUNT="nginx")


def test_behind_a_proxy_the_visitors_address_is_throttled(tmp_path, clock):
    app = make_app(tmp_path, WIKI_PROXY_COUNT=1, WIKI_LOGIN_ACCOUNT_LIMIT=100, WIKI_LOGIN_ADDRESS_LIMIT=1,
                   WIKI_LOGIN_CLOCK=clock)

    def login(forwarded_for: str) -> int:
        client = app.test_client()
        client.environ_base.update(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded_for)
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        return client.post("/login", data={"csrf_token": token, "name": "x", "password": "wrong password"}
                           ).status_code

    assert [login("192.0.2.1"), login("192.0.2.1"), login("192.0.2.2")] == [400, 429, 400]


# -- markup in names -------------------------------------------------------------------------


ATTACK = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.mark.parametrize("form", ["signup", "login"])
def test_markup_typed_as_a_name_comes_back_escaped(tmp_path, form):
    visitor = Visitor(make_app(tmp_path))
    response = getattr(visitor, form)(ATTACK)
    assert response.status_code == 400
    assert "<script>alert(1)" not in response.text
    assert "<img src=x" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text

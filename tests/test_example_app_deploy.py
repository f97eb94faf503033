"""The example wiki deployed: gunicorn -w 4 against a real storage server.

Several HTTP clients sign up, create and edit pages at once; edits of one
page race and each must end saved or reported, never lost; the storage
server restarts mid-session; ``python -m example_app`` starts both servers
and stops both on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from server_process import ServerProcess, free_port

from durus.connection import Connection
from durus.file_storage import FileStorage
from tests.support.wiki_site import FAST_HASH, ROOT, Client, Gunicorn, run_clients, wait_for_http


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A storage server and gunicorn -w 4 on it, for the whole module."""
    instance = tmp_path_factory.mktemp("wiki")
    server = ServerProcess(instance / "data.durus", log_path=instance / "server.log").start()
    try:
        web = Gunicorn(instance, f"durus://127.0.0.1:{server.address[1]}")
        try:
            yield server, web
        finally:
            web.stop()
    finally:
        server.stop()


def revision_texts(client: Client, slug: str) -> dict[int, str]:
    """Revision number -> the text it saved, read back through the site."""
    history = client.get(f"/wiki/{slug}/history?page=1").text
    total = int(re.search(r"(\d+) revisions", history).group(1))
    texts = {}
    for number in range(1, total + 1):
        page = client.get(f"/wiki/{slug}/rev/{number}").text
        texts[number] = re.search(r'<div class="text"><p>(.*?)</p>', page).group(1)
    return texts


def test_sign_up_log_in_create_search_and_history(deployment):
    _, web = deployment
    client = Client(web.port)
    assert client.signup("carol").status == 302
    assert client.post_form("/", {}, path="/logout").status == 302
    assert client.post_form("/login", {"name": "carol", "password": "long password"}).status == 302
    created = client.post_form("/new", {"title": "Gunicorn Notes", "text": "Workers share one server.",
                                        "tags": "deploy"})
    assert (created.status, created.headers["Location"]) == (302, "/wiki/gunicorn-notes")
    assert client.edit("gunicorn-notes", "Gunicorn Notes", "Four workers share one storage server.", 1,
                       tags="deploy").status == 302
    # Every worker sees the edit (they answer in turn; ask more times than there are workers).
    for _ in range(8):
        assert "Four workers share" in Client(web.port).get("/wiki/gunicorn-notes").text
        assert 'href="/wiki/gunicorn-notes"' in Client(web.port).get("/search?q=storage+workers").text
    assert revision_texts(client, "gunicorn-notes") == {
        1: "Workers share one server.", 2: "Four workers share one storage server."}
    assert 'href="/wiki/gunicorn-notes"' in client.get("/tags/deploy").text


@pytest.mark.parametrize(
    "count, rounds", [(6, 6), pytest.param(12, 15, marks=pytest.mark.slow)], ids=["6x6", "12x15"])
def test_concurrent_edits_are_saved_or_reported_never_lost(deployment, count, rounds):
    """Clients edit their own page and one page they all share, at once.

    An edit of the shared page that started from an old revision must be
    reported (409), never saved over the other; every saved edit is exactly
    one revision, in every page's history.
    """
    _, web = deployment
    run = f"r{count}x{rounds}"
    clients = [Client(web.port) for _ in range(count)]
    # Sign-ups and creations all add to the same index entries at once: a
    # few are answered 409 (nothing stored) and are sent again; a 409 that
    # had stored something would make the second answer a 400 (name taken).
    password = "long password"
    signed_up = run_clients(count, lambda i: clients[i].post_form_again_after_409(
        "/signup", {"name": f"{run}-editor{i}", "password": password, "confirm": password}).status)
    assert signed_up == [302] * count
    assert clients[0].post_form("/new", {"title": f"{run} shared", "text": "v0"}).status == 302
    created = run_clients(count, lambda i: clients[i].post_form_again_after_409(
        "/new", {"title": f"{run} own {i}", "text": f"own {i} v0"}).status)
    assert created == [302] * count

    def edit_loop(i: int) -> tuple[list[str], list[str], int]:
        client = clients[i]
        own, shared = f"{run}-own-{i}", f"{run}-shared"
        saved: dict[str, list[str]] = {shared: [], own: []}
        reported = 0
        for round in range(rounds):
            for slug, title, text, base in (
                (own, f"{run} own {i}", f"own {i} v{round + 1}", 1 + len(saved[own])),
                (shared, f"{run} shared", f"shared by {i} round {round}", client.current_revision(shared)),
            ):
                response = client.edit(slug, title, text, base)
                assert response.status in (302, 409), response.text[:500]
                if response.status == 302:
                    saved[slug].append(text)
                else:
                    reported += 1
        return saved[shared], saved[own], reported

    results = run_clients(count, edit_loop)
    reader = Client(web.port)
    shared = revision_texts(reader, f"{run}-shared")
    saved = [text for saved_shared, _, _ in results for text in saved_shared]
    assert len(shared) == 1 + len(saved)  # each saved edit is one revision, no more
    assert sorted(shared.values()) == sorted(["v0", *saved])
    saved_own = [own for _, own, _ in results]
    reported = sum(count for _, _, count in results)
    assert reported + len(saved) + sum(map(len, saved_own)) == count * rounds * 2
    for i, own in enumerate(saved_own):
        assert list(revision_texts(reader, f"{run}-own-{i}").values()) == [f"own {i} v0", *own]
    # Edits of different pages meet only in shared indexes, where conflicts
    # are merged or replayed: nearly all are saved.
    assert sum(map(len, saved_own)) >= 0.9 * count * rounds


@pytest.mark.parametrize("stop", ["stop", "kill"], ids=["sigterm", "sigkill"])
def test_a_storage_server_restart_mid_session_recovers(tmp_path, stop):
    server = ServerProcess(tmp_path / "data.durus", log_path=tmp_path / "server.log").start()
    web = Gunicorn(tmp_path, f"durus://127.0.0.1:{server.address[1]}")
    try:
        client = Client(web.port)
        assert client.signup("dave").status == 302
        assert client.post_form("/new", {"title": "Before", "text": "written before the restart"}).status == 302
        for _ in range(8):  # every worker has a connection to the old server
            assert client.get("/wiki/before").status == 200

        getattr(server, stop)()
        down = client.get("/wiki/before")
        assert down.status == 503
        assert down.headers["Retry-After"]

        server.start()
        statuses = [client.get("/wiki/before").status for _ in range(8)]
        assert statuses == [200] * 8, statuses  # broken connections are replaced, the reads replayed
        assert '<span class="who">dave</span>' in client.get("/").text  # still logged in
        assert client.edit("before", "Before", "edited after the restart", 1).status == 302
        assert revision_texts(client, "before") == {
            1: "written before the restart", 2: "edited after the restart"}
    finally:
        web.stop()
        server.stop()


def children_of(pid: int) -> set[int]:
    """The pids of every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_python_m_example_app_runs_both_servers_and_stops_both(tmp_path, sig):
    port, storage_port = free_port(), free_port()
    log = tmp_path / "run.log"
    env = {**os.environ, "FLASK_PASSWORD_HASH_METHOD": FAST_HASH}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--port", str(port), "--storage-port", str(storage_port),
             "--instance", str(tmp_path / "instance")],
            env=env, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    try:
        wait_for_http(port, process, log, timeout=60)
        client = Client(port)
        assert client.signup("erin").status == 302
        assert client.post_form("/new", {"title": "Deployed", "text": "through python -m"}).status == 302
        # The storage server, gunicorn's master and its 4 workers (the first
        # worker may answer before the last one has started).
        deadline = time.monotonic() + 30
        while len(children := children_of(process.pid)) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children) >= 6
        process.send_signal(sig)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not [pid for pid in children if alive(pid)], log.read_text()
    assert f"The wiki is at http://127.0.0.1:{port}/" in log.read_text()
    assert "Stopped the wiki and its storage server." in log.read_text()
    # The data outlives the run: it is in the instance folder's file.
    storage = FileStorage(str(tmp_path / "instance" / "data.durus"), readonly=True)
    try:
        assert Connection(storage).get_root()["wiki"].pages["deployed"].current.text == "through python -m"
    finally:
        storage.close()
    assert (tmp_path / "instance" / "secret_key").exists()

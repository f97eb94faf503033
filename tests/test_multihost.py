"""The wiki deployed on several machines: PostgreSQL on one "host", the wiki
under gunicorn (two workers) on two others, each host a Linux network
namespace on a private subnet (``tests/support/netns_hosts.py``).

The visitors of each app host run inside that host (``ip netns exec``) and
reach its wiki on its loopback; the wiki reaches PostgreSQL across the
bridge at the db host's private address.  Accounts made on one host log in
on the other, and a session begun on one is good on the other; editors on
both hosts at once lose no acknowledged edit and leave the wiki consistent
(``flask wiki check``); a change saved on one host shows on the other at
its next request.

The quick tests check the namespace plumbing itself.  Everything needs root
and ``ip``: without them the tests skip with one line (under ``CI=true``
they fail).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from durus.postgres_storage import PostgresStorage
from tests.support.netns_hosts import Host, PrivateNetwork, namespaces, pids_in, unavailable_reason
from tests.support.postgres import INSTALL_HINT, Cluster, find_bindir, throwaway_cluster
from tests.support.wiki_site import FAST_HASH
from tests.support.wiki_visitors import VisitorsProcess

REPO = Path(__file__).resolve().parent.parent
WIKI_PORT = 8000
WIKI_WORKERS = 2
EDITORS_PER_HOST = 3
EDITS_PER_EDITOR = 20
EDIT_SECONDS = 90.0  # editors stop early rather than run past this
SOCKET_TIMEOUT = 5.0  # DURUS_SOCKET_TIMEOUT on both app hosts


def require(reason: str | None) -> None:
    """Skip with ``reason`` (one line), or fail under CI."""
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


@pytest.fixture
def network_available() -> None:
    require(unavailable_reason())


# -- the plumbing --------------------------------------------------------------------


def test_hosts_reach_each_other_across_the_bridge_and_nothing_is_left(network_available):
    with PrivateNetwork(["server", "client"], tag=f"{os.getpid()}t") as network:
        server, client = network.hosts["server"], network.hosts["client"]
        assert (server.address, client.address) == ("10.253.0.1", "10.253.0.2")
        assert network.addresses_outside() == set()  # the subnet exists only inside the hosts
        listening = network.start(server, [sys.executable, "-m", "http.server", "--bind", server.address, "8123"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        network.wait_for_port(client, server.address, 8123, process=listening)
        fetched = network.run(client, [sys.executable, "-c", _FETCH, f"http://{server.address}:8123/"])
        assert fetched.stdout.strip() == "200", fetched.stderr
        # A process started by a process in a namespace: not tracked, still killed.
        network.run(server, ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        made = {host.namespace for host in network.hosts.values()} | {network.bridge_namespace}
        assert made <= namespaces()
        stray = pids_in(server.namespace)
        assert len(stray) == 2  # the web server and the sleep
    assert not made & namespaces()
    assert listening.poll() is not None
    for pid in stray:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def test_an_error_inside_still_removes_every_namespace(network_available):
    network = PrivateNetwork(["only"], tag=f"{os.getpid()}e")
    with pytest.raises(ZeroDivisionError), network:
        network.run(network.hosts["only"], ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        stray = pids_in(network.hosts["only"].namespace)
        assert len(stray) == 1
        1 / 0
    assert not {network.hosts["only"].namespace, network.bridge_namespace} & namespaces()
    assert all(_is_zombie(pid) for pid in stray)


def test_a_sigterm_still_removes_every_namespace(network_available):
    """A run stopped with SIGTERM (as CI stops a job) cleans up on its way out."""
    tag = f"{os.getpid()}s"
    script = ("import sys, time\n"
              "from tests.support.netns_hosts import PrivateNetwork\n"
              f"with PrivateNetwork(['a', 'b'], tag={tag!r}):\n"
              "    print('ready', flush=True)\n"
              "    time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert f"durusnet-{tag}-a" in namespaces()
        process.terminate()
        assert process.wait(30) == 128 + 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not {name for name in namespaces() if name.startswith(f"durusnet-{tag}-")}


def test_without_root_or_ip_the_reason_is_one_line(monkeypatch):
    import tests.support.netns_hosts as netns_hosts

    monkeypatch.setattr(netns_hosts.os, "geteuid", lambda: 1000)
    assert unavailable_reason() == "network namespaces need root (ip netns add)"
    monkeypatch.setattr(netns_hosts.shutil, "which", lambda name: None)
    assert unavailable_reason() == "the ip command is missing (apt-get install iproute2)"


def test_a_cut_host_is_unreachable_until_mended(network_available):
    with PrivateNetwork(["server", "client"], tag=f"{os.getpid()}c") as network:
        server, client = network.hosts["server"], network.hosts["client"]
        listening = network.start(server, [sys.executable, "-m", "http.server", "--bind", server.address, "8123"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        network.wait_for_port(client, server.address, 8123, process=listening)
        network.cut(server)
        with pytest.raises(RuntimeError, match="nothing listened"):
            network.wait_for_port(client, server.address, 8123, timeout=2)
        network.mend(server)
        network.wait_for_port(client, server.address, 8123, timeout=30)


def test_host_names_must_be_plain_and_distinct():
    with pytest.raises(ValueError, match="lower-case"):
        PrivateNetwork(["App 1"])
    with pytest.raises(ValueError, match="must differ"):
        PrivateNetwork(["a", "a"])
    with pytest.raises(ValueError, match="no room"):
        PrivateNetwork(["a", "b", "c"], subnet="10.253.0.0/30")


def test_hosts_cannot_reach_the_machine_loopback(network_available):
    """Each host has a loopback of its own: a port listening on the machine's
    127.0.0.1 is not reachable from inside.
    """
    with socket_listening() as port, PrivateNetwork(["alone"], tag=f"{os.getpid()}l") as network:
        probe = network.run(network.hosts["alone"], [sys.executable, "-c", _CONNECT, str(port)])
        assert probe.stdout.strip() == "refused", probe.stderr


_FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)"
_CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


@contextlib.contextmanager
def socket_listening() -> Iterator[int]:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# -- PostgreSQL on the db host --------------------------------------------------------


@contextlib.contextmanager
def postgres_on(network: PrivateNetwork, host: Host) -> Iterator[Cluster]:
    """A throwaway cluster (tests/support/postgres.py) moved onto ``host``:
    made and started as usual, stopped, then started again inside the
    host's namespace listening on its private address only, and letting in
    the subnet (its own pg_hba file; the cluster's trusts loopback only).
    Its Unix socket, being a file, still serves the test's own set-up.
    """
    with throwaway_cluster() as cluster:
        cluster.stop()
        hba = os.path.join(cluster.root, "subnet_hba.conf")
        with open(hba, "w") as file:
            file.write(f"local all all trust\nhost all all {network.subnet} trust\n")
        os.chmod(hba, 0o644)
        options = (f"-p {cluster.port} -k {cluster.socketdir} -c listen_addresses={host.address} "
                   f"-c hba_file={hba} -c fsync=on -c synchronous_commit=on -c max_connections=200")
        as_user = ["runuser", "-u", cluster.user, "--"] if os.geteuid() == 0 else []
        started = network.run(host, [*as_user, os.path.join(cluster.bindir, "pg_ctl"), "-D", cluster.datadir,
                                     "-o", options, "-l", os.path.join(cluster.root, "server.log"),
                                     "-w", "-t", "60", "start"], timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        yield cluster  # throwaway_cluster stops it (pg_ctl signals the postmaster by pid)


def new_database(cluster: Cluster, host: Host, name: str) -> str:
    """A new database's ``postgresql://`` URI at ``host``'s address, its
    schema made once first (so the workers' first requests do not race to).
    """
    local = f"host={cluster.socketdir} port={cluster.port} user=postgres"
    with psycopg.connect(f"{local} dbname=postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    PostgresStorage(f"{local} dbname={name}").close()
    return f"postgresql://postgres@{host.address}:{cluster.port}/{name}"


# -- the deployment -------------------------------------------------------------------


@dataclass
class Deployment:
    network: PrivateNetwork
    cluster: Cluster
    uri: str
    instances: dict[str, Path]  # app host name -> its instance folder (and wiki.log)
    visitors: dict[str, VisitorsProcess]  # app host name -> its visitors

    def wiki_check(self, host: str) -> subprocess.CompletedProcess:
        """``flask wiki check`` run on app host ``host``, on the wiki's database."""
        app_spec = f"example_app:create_app(instance_path={str(self.instances[host])!r})"
        return self.network.run(self.network.hosts[host], [sys.executable, "-m", "flask", "--app", app_spec,
                                                           "wiki", "check"],
                                env={**wiki_env(), "FLASK_DURUS_STORAGE": self.uri}, cwd=REPO, timeout=300)

    def log_size(self, host: str) -> int:
        return (self.instances[host] / "wiki.log").stat().st_size

    def log_lines(self, host: str, marker: str, since: int = 0) -> list[str]:
        """The lines of ``host``'s wiki log holding ``marker``, from byte ``since`` on."""
        with open(self.instances[host] / "wiki.log", "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return [line for line in text.splitlines() if marker in line]


def wiki_env() -> dict[str, str]:
    """What both app hosts are configured with: the same secret key (a
    session cookie is good on either), a quick password hash, a short
    wait for the database.
    """
    env = {**os.environ, "FLASK_PASSWORD_HASH_METHOD": FAST_HASH, "FLASK_SECRET_KEY": "multihost test key",
           "FLASK_DURUS_SOCKET_TIMEOUT": str(SOCKET_TIMEOUT), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("FLASK_DURUS_STORAGE", None)
    return env


def start_wiki(network: PrivateNetwork, host: Host, uri: str, instance: Path) -> subprocess.Popen:
    """``python -m example_app --postgres URI`` on ``host``: gunicorn, two
    workers, on the host's loopback; returns once it listens.
    """
    instance.mkdir(parents=True)
    with open(instance / "wiki.log", "ab") as log:
        process = network.start(
            host, [sys.executable, "-m", "example_app", "--postgres", uri, "--host", "127.0.0.1",
                   "--port", str(WIKI_PORT), "--workers", str(WIKI_WORKERS), "--instance", str(instance)],
            cwd=REPO, env=wiki_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        network.wait_for_port(host, "127.0.0.1", WIKI_PORT, timeout=120, process=process)
    except RuntimeError as error:
        raise RuntimeError(f"the wiki on {host.name}: {error}\n"
                           + (instance / "wiki.log").read_text(errors="replace")[-3000:]) from None
    return process


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    require(unavailable_reason() or (INSTALL_HINT if find_bindir() is None else None))
    root = tmp_path_factory.mktemp("multihost")
    with PrivateNetwork(["db", "app1", "app2"]) as network, postgres_on(network, network.hosts["db"]) as cluster:
        uri = new_database(cluster, network.hosts["db"], "wiki")
        instances = {name: root / name for name in ("app1", "app2")}
        for name, instance in instances.items():
            start_wiki(network, network.hosts[name], uri, instance)
        visitors = {name: VisitorsProcess(functools.partial(network.start, network.hosts[name], cwd=REPO),
                                          WIKI_PORT, f"visitors on {name}")
                    for name in instances}
        try:
            yield Deployment(network, cluster, uri, instances, visitors)
        finally:
            for each in visitors.values():
                each.close()
            # Gunicorn first (its workers finish their requests), then
            # PostgreSQL (leaving postgres_on), then the namespaces.
            network.stop_started()


# -- the wiki on two hosts ------------------------------------------------------------


@pytest.mark.slow
def test_both_app_hosts_reach_postgresql_across_the_bridge(deployment):
    for visitors in deployment.visitors.values():
        assert visitors.ask(do="page", slug="no-such-page")["status"] == 404  # a request: a connection
    local = f"host={deployment.cluster.socketdir} port={deployment.cluster.port} user=postgres dbname=postgres"
    with psycopg.connect(local) as connection:
        clients = {str(row[0]) for row in connection.execute(
            "SELECT DISTINCT client_addr FROM pg_stat_activity WHERE datname = 'wiki'")}
    hosts = deployment.network.hosts
    assert clients == {hosts["app1"].address, hosts["app2"].address}


@pytest.mark.slow
def test_an_account_made_on_one_host_logs_in_on_the_other(deployment):
    one, other = deployment.visitors["app1"], deployment.visitors["app2"]
    assert one.ask(do="signup", names=["alice", "arno"])["statuses"] == [302, 302]
    assert other.ask(do="login", names=["alice", "arno"])["statuses"] == [302, 302]
    assert other.ask(do="signup", names=["bruno"])["statuses"] == [302]
    assert one.ask(do="login", names=["bruno"])["statuses"] == [302]
    # The name is taken on both hosts now.
    assert one.ask(do="signup", names=["bruno"])["statuses"] == [400]


@pytest.mark.slow
def test_a_session_begun_on_one_host_is_good_on_the_other(deployment):
    """One browser behind a load balancer: logged in on one host, its
    cookie lets it edit on the other (both hosts share the secret key).
    """
    one, other = deployment.visitors["app1"], deployment.visitors["app2"]
    assert one.ask(do="signup", names=["carla"])["statuses"] == [302]
    created = one.ask(do="create", name="carla", title="Carried over", text="made on one host")
    assert created["status"] == 302
    other.ask(do="set_cookies", name="carla", cookies=one.ask(do="cookies", name="carla")["cookies"])
    saved = other.ask(do="edit", name="carla", slug=created["slug"], title="Carried over", text="edited on the other")
    assert (saved["form"], saved["status"], saved["revision"]) == (200, 302, 2)
    other.ask(do="set_cookies", name="carla", cookies={})
    assert other.ask(do="edit", name="carla", slug=created["slug"], title="Carried over", text="x")["form"] == 302


@pytest.mark.slow
def test_a_change_saved_on_one_host_shows_on_the_other_at_its_next_request(deployment):
    hosts = deployment.visitors
    hosts["app1"].ask(do="signup", names=["vera"])
    hosts["app2"].ask(do="login", names=["vera"])
    created = hosts["app1"].ask(do="create", name="vera", title="Seen everywhere", text="first words")
    assert created["status"] == 302
    slug = created["slug"]
    for round in range(6):
        writer, reader = ("app1", "app2") if round % 2 == 0 else ("app2", "app1")
        for _ in range(2 * WIKI_WORKERS):  # so that the reader's workers hold the page, likely all of them
            assert hosts[reader].ask(do="page", slug=slug)["status"] == 200
        text = f"round {round} written on {writer}"
        saved = hosts[writer].ask(do="edit", name="vera", slug=slug, title="Seen everywhere", text=text)
        assert saved["status"] == 302 and saved["revision"] == round + 2, saved
        for _ in range(2 * WIKI_WORKERS):
            shown = hosts[reader].ask(do="page", slug=slug)
            assert (shown["revision"], shown["text"]) == (round + 2, text), (reader, shown)


@pytest.mark.slow
def test_editors_on_both_hosts_at_once_lose_no_edit_and_keep_the_wiki_consistent(deployment):
    """Three editors per host, each mostly on a page of its own and
    sometimes on a page all share, every page sharing a few words; each
    account made on the other host.  Every edit the wiki acknowledged (302)
    is its revision of the page, no other revision exists, the indexes
    agree with the pages, and no worker met a damaged index or failed.
    """
    hosts = deployment.visitors
    logged = {host: deployment.log_size(host) for host in hosts}
    editors = {host: [f"{host}-editor{i}" for i in range(EDITORS_PER_HOST)] for host in hosts}
    for host, other in (("app1", "app2"), ("app2", "app1")):
        assert hosts[other].ask(do="signup", names=editors[host])["statuses"] == [302] * EDITORS_PER_HOST
        assert hosts[host].ask(do="login", names=editors[host])["statuses"] == [302] * EDITORS_PER_HOST
    titles: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {host: {} for host in hosts}
    for host, names in editors.items():
        for name in names:
            created = hosts[host].ask(do="create", name=name, title=f"Page of {name}", text=f"{name} begins")
            assert created["status"] == 302, created
            own[host][name] = created["slug"]
            titles[created["slug"]] = f"Page of {name}"
    commons = hosts["app1"].ask(do="create", name=editors["app1"][0], title="Commons", text="everyone begins")
    titles[commons["slug"]] = "Commons"

    results: dict[str, dict] = {}

    def edit_on(host: str) -> None:
        results[host] = hosts[host].ask(
            do="edits", editors=own[host], titles=titles, shared=[commons["slug"]], count=EDITS_PER_EDITOR,
            seconds=EDIT_SECONDS, seed=host, timeout=EDIT_SECONDS + 240)

    threads = [threading.Thread(target=edit_on, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(EDIT_SECONDS + 300)
    assert set(results) == set(hosts), "an editing host did not answer (see the error above)"

    reports = [editor for host in hosts for editor in results[host]["editors"]]
    unexpected = [line for editor in reports for line in editor["unexpected"]]
    assert not unexpected, "\n".join(unexpected[:10])
    saved: dict[str, list] = {slug: [] for slug in titles}
    for editor in reports:
        for slug, revision, text in editor["saved"]:
            saved[slug].append((revision, text))
    print("\n" + "; ".join(f"{editor['name']}: {editor['statuses']}" for editor in reports))
    for host in hosts:
        assert any(editor["saved"] for editor in results[host]["editors"]), f"no edit saved on {host}"
    attempted = sum(sum(editor["statuses"].values()) for editor in reports)
    assert sum(map(len, saved.values())) >= attempted // 3, "most edits were refused"

    # No edit lost, none made up: read back on the host that did not write them, too.
    for slug, acknowledged in saved.items():
        for reader in hosts:
            stored = hosts[reader].ask(do="revisions", slug=slug)
            assert stored["count"] == 1 + len(acknowledged), (slug, reader, stored["count"], len(acknowledged))
            for revision, text in acknowledged:
                assert stored["texts"][str(revision)] == text, (slug, revision, text, stored["texts"])

    for host in hosts:
        checked = deployment.wiki_check(host)
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
        assert "The wiki is consistent" in checked.stdout
        assert not deployment.log_lines(host, "is inconsistent", since=logged[host])
        assert not deployment.log_lines(host, "Traceback", since=logged[host]), \
            (deployment.instances[host] / "wiki.log").read_text()[-5000:]


# Last in the file: it cuts a link of the shared deployment (mended after).
@pytest.mark.slow
def test_an_app_host_cut_off_from_the_database_answers_503_then_recovers(deployment):
    """A failed link (packets lost, nothing refused) between one app host and
    the database costs that host's requests a 503 after the socket timeout,
    not a worker; the other host carries on; once the link is mended the
    cut host serves again and shows what was saved meanwhile.
    """
    network, hosts = deployment.network, deployment.visitors
    assert hosts["app1"].ask(do="signup", names=["ida"])["statuses"] == [302]
    created = hosts["app1"].ask(do="create", name="ida", title="Through a cut", text="before the cut")
    slug = created["slug"]
    assert hosts["app2"].ask(do="page", slug=slug)["text"] == "before the cut"
    network.cut(network.hosts["app2"])
    try:
        saved = hosts["app1"].ask(do="edit", name="ida", slug=slug, title="Through a cut", text="during the cut")
        assert saved["status"] == 302, saved
        started = time.monotonic()
        during = hosts["app2"].ask(do="page", slug=slug)
        waited = time.monotonic() - started
    finally:
        network.mend(network.hosts["app2"])
    print(f"\nthe cut host answered {during['status']} after {waited:.1f} s")
    assert during["status"] == 503 and waited < SOCKET_TIMEOUT + 15, (during, waited)
    deadline = time.monotonic() + 60
    while True:
        shown = hosts["app2"].ask(do="page", slug=slug)
        if shown["status"] == 200 or time.monotonic() > deadline:
            break
    assert (shown["status"], shown["text"]) == (200, "during the cut")

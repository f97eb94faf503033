"""What ``durus`` and ``flask durus`` say when they cannot do what was asked:
one line on stderr naming what is wrong and what to do, no traceback, the
documented exit status (``durus``: 2; ``flask durus``: 1, click's), and
nothing created on disk by a typo.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import sys
from pathlib import Path

import pytest
from server_process import ServerProcess, free_port

from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict

REPO = Path(__file__).resolve().parents[1]
APP = "tests.flask_apps.bank:create_app"


def durus(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", *args], input=stdin, check=False,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def flask_durus(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BANK_INSTANCE_PATH": str(tmp_path / "instance")}
    env.pop("FLASK_DURUS_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "flask", "--app", APP, "durus", *args], input="",
                          check=False, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)


def failed(result: subprocess.CompletedProcess, status: int, prefix: str, *words: str) -> str:
    """Assert a clean failure: the status, no traceback, and a last stderr
    line that starts with ``prefix`` and holds ``words``; that line.
    """
    assert result.returncode == status, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    line = lines[-1]
    assert line.startswith(prefix), result.stderr
    assert [line for line in lines if line.startswith(prefix)] == [line]
    for word in words:
        assert word in line, line
    return line


@pytest.fixture
def listener():
    """A port something that is not a Durus server listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def _database(path: Path) -> None:
    connection = Connection(FileStorage(str(path)))
    connection.get_root()["junk"] = PersistentDict(data="x" * 100000)
    connection.commit()
    del connection.get_root()["junk"]
    connection.commit()
    connection.get_storage().close()


# -- durus -c / -p without a server -----------------------------------------------


@pytest.mark.parametrize("mode", ["-c", "-p"])
def test_no_server(mode):
    port = str(free_port())
    line = failed(durus(mode, "--port", port), 2, f"durus {mode}: no storage server at 127.0.0.1:{port}",
                  "connection refused", f"durus -s --file FILE --port {port}")
    assert line.count("\n") == 0


def test_no_server_on_a_unix_socket(tmp_path):
    failed(durus("-p", "--address", str(tmp_path / "none.sock")), 2, "durus -p: no storage server at",
           "--address")


def test_a_missing_keyfile(tmp_path):
    failed(durus("-c", "--port", str(free_port()), "--keyfile", str(tmp_path / "nokey")), 2,
           "durus -c: cannot read the keyfile", "no such file")


# -- files: missing, mistyped, locked ---------------------------------------------


def test_pack_refuses_a_missing_file_and_creates_nothing(tmp_path):
    failed(durus("-p", "--file", "typo.durus", cwd=tmp_path), 2, "durus -p: no such file: typo.durus")
    assert list(tmp_path.iterdir()) == []


def test_pack_refuses_an_empty_file_and_a_folder(tmp_path):
    (tmp_path / "empty.durus").touch()
    failed(durus("-p", "--file", str(tmp_path / "empty.durus")), 2, "durus -p:", "is empty")
    assert (tmp_path / "empty.durus").stat().st_size == 0
    failed(durus("-p", "--file", str(tmp_path)), 2, "durus -p:", "is a folder")


@pytest.mark.parametrize("mode", ["-c", "-s", "-p"])
def test_a_missing_folder_is_refused_and_not_created(tmp_path, mode):
    failed(durus(mode, "--file", "nodir/sub/x.durus", "--port", str(free_port()), cwd=tmp_path), 2,
           f"durus {mode}:", "nodir/sub", "does not exist", "mkdir -p")
    assert list(tmp_path.iterdir()) == []


def test_console_refuses_a_missing_file_without_create(tmp_path):
    line = failed(durus("-c", "--file", "typo.durus", cwd=tmp_path), 2, "durus -c: no such file: typo.durus",
                  "add --create", "nothing was created")
    assert line.count("\n") == 0
    assert list(tmp_path.iterdir()) == []


def test_console_create_makes_a_new_database(tmp_path):
    result = durus("-c", "--create", "--file", "new.durus", cwd=tmp_path,
                   stdin="root['n'] = 1\nconnection.commit()\n")
    assert result.returncode == 0, result.stderr
    storage = FileStorage(str(tmp_path / "new.durus"), readonly=True)
    assert Connection(storage).get_root()["n"] == 1
    storage.close()
    # On an existing file --create changes nothing: it opens it.
    result = durus("-c", "--create", "--file", "new.durus", cwd=tmp_path, stdin="print('n is', root['n'])\n")
    assert result.returncode == 0 and "n is 1" in result.stdout, result.stderr


def test_console_create_still_refuses_a_missing_folder(tmp_path):
    failed(durus("-c", "--create", "--file", "nodir/x.durus", cwd=tmp_path), 2, "durus -c:", "does not exist",
           "mkdir -p")
    assert list(tmp_path.iterdir()) == []


def test_console_create_needs_a_file_and_a_writable_open(tmp_path):
    failed(durus("-c", "--create", "--port", str(free_port())), 2, "durus -c: --create goes with --file")
    failed(durus("-c", "--create", "--readonly", "--file", str(tmp_path / "x.durus")), 2,
           "durus -c: --create and --readonly")
    assert list(tmp_path.iterdir()) == []


def test_console_readonly_on_a_missing_file(tmp_path):
    failed(durus("-c", "--readonly", "--file", str(tmp_path / "x.durus")), 2, "durus -c: no such file")
    assert list(tmp_path.iterdir()) == []


def test_a_file_a_server_holds(tmp_path):
    path = tmp_path / "held.durus"
    _database(path)
    before = path.read_bytes()
    with ServerProcess(path):
        failed(durus("-p", "--file", str(path)), 2, "durus -p:", "in use by another process", "durus -p --port")
        failed(durus("-c", "--file", str(path)), 2, "durus -c:", "in use by another process", "--readonly")
        failed(durus("-s", "--file", str(path), "--port", str(free_port())), 2, "durus -s:",
               "in use by another process", "durus -c --port")
        assert path.read_bytes() == before


# -- ports ------------------------------------------------------------------------


def test_serve_on_a_port_in_use_creates_no_file(tmp_path, listener):
    failed(durus("-s", "--file", "new.durus", "--port", str(listener), cwd=tmp_path), 2,
           f"durus -s: cannot listen on 127.0.0.1:{listener}: address already in use",
           "another --port")
    assert list(tmp_path.iterdir()) == []


def test_serve_on_a_port_in_use_keeps_an_existing_file(tmp_path, listener):
    path = tmp_path / "kept.durus"
    _database(path)
    before = path.read_bytes()
    failed(durus("-s", "--file", str(path), "--port", str(listener)), 2, "durus -s: cannot listen")
    assert path.read_bytes() == before


@pytest.mark.slow
def test_client_of_something_that_never_answers(listener):
    # It accepts (the kernel's backlog) but never answers: the handshake
    # times out (the client's 30 s).
    result = subprocess.run([sys.executable, "-m", "durus", "-p", "--port", str(listener)], input="",
                            capture_output=True, text=True, timeout=90, check=False)
    failed(result, 2, "durus -p:", str(listener))


def test_client_of_something_that_is_not_a_durus_server():
    """A web server where the Durus server was expected: it answers the
    handshake with HTTP, and the client says so at once.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]

    sock.settimeout(0.1)
    done = threading.Event()

    def answer_like_a_web_server() -> None:
        while not done.is_set():  # every connection (the client may look before it talks)
            try:
                peer, _ = sock.accept()
            except OSError:  # a timeout: look at done again
                continue
            peer.settimeout(10)
            with peer:
                if peer.recv(5):
                    peer.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer_like_a_web_server, daemon=True)
    thread.start()
    try:
        result = subprocess.run([sys.executable, "-m", "durus", "-p", "--port", str(port)], input="",
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        done.set()
        thread.join(5)
        sock.close()
    failed(result, 2, "durus -p:", str(port))


# -- pack reports sizes and time ----------------------------------------------------


def test_pack_reports_sizes_time_and_progress(tmp_path):
    path = tmp_path / "big.durus"
    _database(path)
    before = path.stat().st_size
    result = durus("-p", "--file", str(path), "--progress")
    assert result.returncode == 0, result.stderr
    after = path.stat().st_size
    assert after < before
    assert result.stdout.startswith(f"packed {path}: {before / 1e3:.1f} kB -> {after} bytes in ")
    assert result.stdout.rstrip().endswith(" s")
    assert f"packing {path}: " in result.stderr and f"of {before / 1e3:.1f} kB" in result.stderr
    assert not (tmp_path / "big.durus.pack").exists()
    result = durus("-p", "--file", str(path))  # not a terminal: no progress line
    assert result.returncode == 0 and result.stderr == ""


def test_stop_without_a_server_exits_2():
    failed(durus("-s", "--stop", "--port", str(free_port())), 2, "durus -s: no Durus server is running")


# -- flask durus ------------------------------------------------------------------


def test_flask_serve_refuses_a_missing_folder(tmp_path):
    result = flask_durus(tmp_path, "serve", "--file", "typo_dir/sub/x.durus", "--port", str(free_port()))
    failed(result, 1, "Error: cannot serve", "typo_dir/sub", "does not exist", "mkdir -p")
    assert not (tmp_path / "typo_dir").exists()


def test_flask_serve_on_a_port_in_use_creates_no_file(tmp_path, listener):
    result = flask_durus(tmp_path, "serve", "--file", "new.durus", "--port", str(listener))
    failed(result, 1, f"Error: cannot listen on 127.0.0.1:{listener}: address already in use",
           "flask durus stop")
    assert not (tmp_path / "new.durus").exists()


def test_flask_pack_of_a_missing_file_creates_nothing(tmp_path):
    failed(flask_durus(tmp_path, "pack"), 1, "Error: there is no database file at", "nothing to pack")
    assert not (tmp_path / "instance" / "data.durus").exists()


def test_flask_pack_reports_sizes_time_and_progress(tmp_path):
    (tmp_path / "instance").mkdir()
    path = tmp_path / "instance" / "data.durus"
    _database(path)
    before = path.stat().st_size
    result = flask_durus(tmp_path, "pack", "--progress")
    assert result.returncode == 0, result.stderr
    after = path.stat().st_size
    assert f": {before} -> {after} bytes; finished. Took " in result.stdout
    assert f"packing {path}: " in result.stderr and "Traceback" not in result.stderr


def test_flask_pack_without_a_server(tmp_path):
    env_storage = f"durus://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BANK_INSTANCE_PATH": str(tmp_path / "instance"),
           "FLASK_DURUS_STORAGE": f'"{env_storage}"'}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", APP, "durus", "pack"], input="",
                            capture_output=True, text=True, timeout=60, env=env, check=False, cwd=tmp_path)
    failed(result, 1, "Error: no storage server answers", "start one")


def test_flask_serve_still_creates_a_new_file_in_an_existing_folder(tmp_path):
    from durus.storage_server import wait_for_server

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "BANK_INSTANCE_PATH": str(tmp_path / "instance")}
    env.pop("FLASK_DURUS_STORAGE", None)
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", APP, "durus", "serve", "--file",
                                "fresh.durus", "--port", str(port)], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_server(port=port, maxtries=120, sleeptime=0.25)
        assert (tmp_path / "fresh.durus").stat().st_size > 0
    finally:
        process.terminate()
        assert process.wait(30) == 0

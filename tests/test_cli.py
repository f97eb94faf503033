"""The ``durus`` command: -s (serve, stop), -c (console), -p (pack); and
``flask durus info``'s progress line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_process import ServerProcess, free_port

from durus.client_storage import ClientStorage
from durus.connection import Connection
from durus.file_storage import FileStorage
from durus.persistent_dict import PersistentDict


def durus(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durus", *args], input=stdin, check=False, capture_output=True,
                          text=True, timeout=timeout)


def test_usage():
    result = durus()
    assert result.returncode == 2 and "-s" in result.stderr and "-c" in result.stderr
    assert durus("-x").returncode == 2


def test_console_script_is_installed():
    # pip puts console scripts beside the interpreter (a venv's bin/), which
    # need not be on PATH when the venv's python is run by its path.
    command = shutil.which("durus", path=str(Path(sys.executable).parent)) or shutil.which("durus")
    if command is None:
        pytest.skip("the durus console script is not installed (pip install -e .)")
    result = subprocess.run([command], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "durus -s" in result.stderr


def test_console_over_a_server(tmp_path):
    with ServerProcess(tmp_path / "data.durus") as server:
        port = str(server.address[1])
        result = durus("-c", "--port", port, stdin="root['k'] = 41 + 1\nconnection.commit()\n")
        assert result.returncode == 0, result.stderr
        assert Connection(ClientStorage(address=server.address)).get_root()["k"] == 42
        result = durus("-c", "--port", port, stdin="print('value', root['k'])\n")
        assert "value 42" in result.stdout


def test_console_on_a_file(tmp_path):
    path = str(tmp_path / "direct.durus")
    result = durus("-c", "--create", "--file", path, stdin="root['x'] = [1, 2]\nconnection.commit()\n")
    assert result.returncode == 0, result.stderr
    storage = FileStorage(path, readonly=True)
    assert Connection(storage).get_root()["x"] == [1, 2]
    storage.close()
    # Durus 4.3's console names are there too.
    result = durus("-c", "--file", path, stdin="pp(str_to_int8(int8_to_str(7)) + len(get(int8_to_str(0))))\n")
    assert result.returncode == 0 and "8" in result.stdout.split(), result.stderr


def test_pack_a_file_and_over_a_server(tmp_path):
    path = str(tmp_path / "pack.durus")
    connection = Connection(FileStorage(path))
    connection.get_root()["junk"] = PersistentDict(data="x" * 10000)
    connection.commit()
    del connection.get_root()["junk"]
    connection.commit()
    connection.get_storage().close()
    before = (tmp_path / "pack.durus").stat().st_size
    result = durus("-p", "--file", path)
    assert result.returncode == 0, result.stderr
    assert "packed" in result.stdout
    assert (tmp_path / "pack.durus").stat().st_size < before
    with ServerProcess(path) as server:
        result = durus("-p", "--port", str(server.address[1]))
        assert result.returncode == 0, result.stderr
        assert "packing in the background" in result.stdout


def test_stop_and_logging_options(tmp_path):
    logfile = tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data.durus",
                           args=["--logfile", str(logfile), "--logginglevel", "DEBUG"])
    with server:
        client = ClientStorage(address=server.address)
        client.close()
        result = durus("-s", "--stop", "--port", str(server.address[1]))
        assert result.returncode == 0, result.stderr
        assert server.process.wait(10) == 0
        server.process = None
    text = logfile.read_text()
    assert "Ready on" in text and "connected" in text and "Stopped" in text


def test_stop_without_a_server():
    result = durus("-s", "--stop", "--port", str(free_port()))
    assert result.returncode == 2 and "no Durus server" in result.stderr


def test_repair_option(tmp_path):
    path = tmp_path / "torn.durus"
    connection = Connection(FileStorage(str(path)))
    connection.get_root()["kept"] = 1
    connection.commit()
    connection.get_storage().close()
    with open(path, "ab") as file:
        file.write(b"\0\0\0\0\0\0\1\0partial")  # a crash mid-transaction
    with pytest.raises(RuntimeError, match="exited"):
        ServerProcess(path).start()
    with ServerProcess(path, args=["--repair"]) as server:
        assert Connection(ClientStorage(address=server.address)).get_root()["kept"] == 1


def test_readonly_option(tmp_path):
    path = tmp_path / "ro.durus"
    connection = Connection(FileStorage(str(path)))
    connection.get_root()["x"] = 1
    connection.commit()
    connection.get_storage().close()
    with ServerProcess(path, args=["--readonly"]) as server:
        reader = Connection(ClientStorage(address=server.address))
        assert reader.get_root()["x"] == 1


# -- flask durus info --progress -----------------------------------------------


def flask_durus_info(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "BANK_INSTANCE_PATH": str(tmp_path / "instance")}
    env.pop("FLASK_DURUS_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "flask", "--app", "tests.flask_apps.bank:create_app",
                           "durus", "info", *args], input="", check=False, capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)


def test_flask_info_progress(tmp_path):
    (tmp_path / "instance").mkdir()
    connection = Connection(FileStorage(str(tmp_path / "instance" / "data.durus")))
    connection.get_root()["many"] = PersistentDict((i, PersistentDict()) for i in range(2500))
    connection.commit()
    connection.get_storage().close()
    summary = "Objects reachable from the root: 2502"
    # --progress: the count so far on stderr (the first at 1000 objects,
    # then about once a second), ending with the total.
    result = flask_durus_info(tmp_path, "--progress")
    assert result.returncode == 0, result.stderr
    assert summary in result.stdout
    assert "counting objects reachable from the root: 1000 so far" in result.stderr
    assert result.stderr.endswith("counting objects reachable from the root: 2502, done\n"), result.stderr
    # Without it (stderr not a terminal): the summary alone, no progress lines.
    result = flask_durus_info(tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert summary in result.stdout and "counting" not in result.stdout
    assert result.stdout.count("Objects reachable") == 1

"""The README's "Using Durus in a Flask app" recipes, copied as a reader
copies them into a new project and run: the app with the test client, the
pytest set-up, the deployment on a storage server and the script helpers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from server_process import ServerProcess

from durus.client_storage import ClientStorage
from durus.record import ROOT_OID
from flask_durus import Durus
from tests.flask_apps.processes import Running, free_port
from tests.support.readme_recipes import flask_section, post_form, write_project

MYAPP = ("myapp/__init__.py", "myapp/models.py", "myapp/views.py", "myapp/templates/post.html")


def project_env(folder: Path, **extra: str) -> dict[str, str]:
    """A reader's shell in ``folder``: no FLASK_DURUS_* or pytest settings of ours."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FLASK_", "PYTEST_"))}
    env["PYTHONPATH"] = str(folder)
    env.update(extra)
    return env


def run(command: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False)


def flask(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "flask", "--app", "myapp", *args], folder, env)


CLIENT_SCRIPT = """
from myapp import create_app

app = create_app()
client = app.test_client()
response = client.post("/posts", data={"slug": "hi", "title": "Hello there", "body": "first post"})
assert response.status_code == 302, response.status_code
assert response.headers["Location"] == "/posts/hi", response.headers["Location"]
page = client.get("/posts/hi")
assert page.status_code == 200 and b"<h1>Hello there</h1>" in page.data, page.data
assert client.get("/posts/nothing").status_code == 404
print("ok")
"""


def test_myapp_recipe_runs_under_the_test_client(tmp_path: Path) -> None:
    """myapp as the README writes it, with no configuration: the embedded file."""
    write_project(tmp_path, *MYAPP)
    result = run([sys.executable, "-c", CLIENT_SCRIPT], tmp_path, project_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "instance" / "data.durus").exists()


def test_testing_recipe_runs_under_pytest(tmp_path: Path) -> None:
    """The README's conftest.py and test, with the plugin from its entry point."""
    write_project(tmp_path, *MYAPP, "conftest.py", "tests/test_posts.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    result = run(command, tmp_path, project_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    # With autoloading off, the README's `-p flask_durus.testing` loads it instead.
    result = run([*command, "-p", "flask_durus.testing"], tmp_path,
                 project_env(tmp_path, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    # Listing it in pytest_plugins as well, as older instructions said, is harmless.
    conftest = tmp_path / "conftest.py"
    conftest.write_text('pytest_plugins = ["flask_durus.testing"]\n' + conftest.read_text())
    result = run(command, tmp_path, project_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_deploy_recipe_uses_the_server_from_the_environment(tmp_path: Path) -> None:
    """gunicorn and `flask durus pack/stop/info` with FLASK_DURUS_STORAGE, as
    the README deploys: everything goes to the server, nothing to an
    embedded file.
    """
    section = flask_section()
    assert "FLASK_DURUS_STORAGE=durus://127.0.0.1:2972 \\\n    gunicorn -w 4 --threads 4 'myapp:create_app()'" in section
    write_project(tmp_path, *MYAPP)
    with ServerProcess(tmp_path / "server.durus") as server:
        host, port = server.address
        env = project_env(tmp_path, FLASK_DURUS_STORAGE=f"durus://{host}:{port}")
        app_port = free_port()
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{app_port}",
                   "--chdir", str(tmp_path), "myapp:create_app()"]
        web = Running(command, env, app_port, tmp_path / "gunicorn.log")
        with web.start_context():
            statuses = [post_form(app_port, "/posts", {"slug": f"p{n}", "title": f"T{n}", "body": "b"})[0]
                        for n in range(6)]
        assert statuses == [302] * 6, (statuses, web.log.read_text())
        assert not (tmp_path / "instance" / "data.durus").exists()
        storage = ClientStorage(address=server.address)
        try:
            # root, its BTree and six posts at least
            assert sum(1 for _ in storage.gen_oid_record(ROOT_OID)) >= 8
        finally:
            storage.close()

        info = flask(tmp_path, env, "durus", "info")
        assert info.returncode == 0, info.stdout + info.stderr
        assert f"Storage: durus://{host}:{port}" in info.stdout
        pack = flask(tmp_path, env, "durus", "pack")
        assert pack.returncode == 0, pack.stdout + pack.stderr
        assert f"Pack started on the server at durus://{host}:{port}" in pack.stdout
        stop = flask(tmp_path, env, "durus", "stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert server.process is not None
        assert server.process.wait(15) == 0
    assert "WARNING" not in info.stderr + pack.stderr + stop.stderr
    assert not (tmp_path / "instance" / "data.durus").exists()


def test_script_recipe_runs(tmp_path: Path) -> None:
    """seed.py: storage_server() and app_root() as the README shows them."""
    write_project(tmp_path, *MYAPP, "seed.py")
    result = run([sys.executable, "seed.py"], tmp_path, project_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ignored_environment_variables_are_logged(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FLASK_DURUS_STORAGE", "durus://127.0.0.1:2972")
    monkeypatch.setenv("FLASK_DURUS_POOL_SIZE", "4")
    caplog.set_level(logging.WARNING, logger="flask_durus")

    Durus(Flask("never_loaded"))  # the factory forgot from_prefixed_env()
    assert "FLASK_DURUS_STORAGE: the app's config has no DURUS_STORAGE" in caplog.text
    assert "FLASK_DURUS_POOL_SIZE" in caplog.text
    caplog.clear()

    app = Flask("loaded")
    app.config.from_prefixed_env()
    Durus(app)
    assert app.extensions["durus"].settings(app).pool_size == 4
    assert caplog.text == ""

    app = Flask("overridden")
    app.config.from_prefixed_env()
    app.config.update(DURUS_STORAGE="memory://")
    Durus(app)
    assert "FLASK_DURUS_STORAGE: the app's config sets DURUS_STORAGE = 'memory://'" in caplog.text
    assert "POOL_SIZE" not in caplog.text
    caplog.clear()

    monkeypatch.setenv("FLASK_DURUS_STORGE", "memory://")
    app = Flask("typo")
    app.config.from_prefixed_env()
    Durus(app)
    assert "FLASK_DURUS_STORGE: DURUS_STORGE is not a flask-durus setting" in caplog.text

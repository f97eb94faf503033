"""Run the real Durus 4.3 (and other reference databases) next to ours.

The real Durus is installed under the same package name, ``durus``, as ours,
so it can only live in a separate virtual environment.  This module builds
such environments on demand under ``<repo>/.cache/venvs/`` (git-ignored),
once, and reuses them while they work; a file lock keeps two pytest
processes from building the same one at once.  Set ``DURUS43_PYTHON`` to an
interpreter that already has ``durus==4.3`` to skip the build.

Subprocesses get a clean import path: only ``tests/durus43_scripts`` (the
shared model classes) and whatever the caller adds, and a working
directory outside the repository, so the real ``durus`` is never shadowed
by ours (``python -c`` puts the working directory first on ``sys.path``).

The benchmarks import this module too, so pytest is optional here.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import pytest
except ImportError:  # the benchmarks run without pytest
    pytest = None

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".cache" / "venvs"
SCRIPTS = Path(__file__).resolve().parent / "durus43_scripts"


class ReferenceEnvError(RuntimeError):
    """A reference environment could not be built or a script in it failed."""


@dataclass(frozen=True)
class VenvSpec:
    """What a reference virtual environment holds.

    - ``name``: its directory under ``.cache/venvs``.
    - ``requirements``: the pip requirement strings to install.
    - ``probe``: Python code that exits non-zero unless the venv is usable.
    - ``env_var``: names an existing interpreter to use instead of building.
    """

    name: str
    requirements: tuple[str, ...]
    probe: str
    env_var: str | None = None


DURUS43 = VenvSpec(
    name="durus43",
    requirements=("durus==4.3",),
    # The C extension must be there: the benchmarks measure Durus at its best.
    probe=(
        "import sys, importlib.metadata as m, durus._persistent\n"
        "sys.exit(m.version('durus') != '4.3')\n"
    ),
    env_var="DURUS43_PYTHON",
)

ZODB = VenvSpec(
    name="zodb",
    requirements=("ZODB",),
    probe="import ZODB, ZODB.FileStorage, BTrees.OOBTree, persistent\n",
    env_var="ZODB_PYTHON",
)


def _probe(python: Path, spec: VenvSpec) -> str | None:
    """None if ``python`` passes the probe of ``spec``, else why not."""
    try:
        result = subprocess.run(
            [str(python), "-c", spec.probe],
            cwd=SCRIPTS,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if result.returncode == 0 else result.stderr or f"exit status {result.returncode}"


_ready: dict[str, Path] = {}


def venv_python(spec: VenvSpec) -> Path:
    """The interpreter of the venv ``spec`` describes, built if need be.

    A build that fails raises with pip's output and the way around it.
    """
    if spec.name in _ready:
        return _ready[spec.name]
    override = os.environ.get(spec.env_var or "")
    if override:
        python = Path(override)
        problem = _probe(python, spec)
        if problem:
            raise ReferenceEnvError(
                f"{spec.env_var}={override} does not have {' '.join(spec.requirements)} "
                f"({problem.strip()}); unset it to let the tests build {VENVS / spec.name}"
            )
        _ready[spec.name] = python
        return python
    venv = VENVS / spec.name
    python = venv / "bin" / "python"
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{spec.name}.lock", "w") as lock:
        # Whoever gets the lock first builds; the others then find it built.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists() or _probe(python, spec):
            _build(venv, spec)
            problem = _probe(python, spec)
            if problem:
                raise ReferenceEnvError(f"{venv} was built but does not work: {problem}")
    _ready[spec.name] = python
    return python


def _build(venv: Path, spec: VenvSpec) -> None:
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *spec.requirements],
    ]
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise ReferenceEnvError(
                f"building {venv} failed at {' '.join(command)}:\n{result.stdout}{result.stderr}\n"
                f"PyPI must be reachable, or set {spec.env_var} to an interpreter "
                f"that has {' '.join(spec.requirements)}"
            )


def durus43_python() -> Path:
    """The interpreter of a virtual environment with the real Durus 4.3."""
    return venv_python(DURUS43)


def zodb_python() -> Path:
    """The interpreter of a virtual environment with ZODB."""
    return venv_python(ZODB)


def clean_env(pythonpath: tuple[Path | str, ...] | list[Path | str] = (), extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a reference subprocess: our package out of sight."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTHON") and key != "VIRTUAL_ENV"
    }
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in [SCRIPTS, *pythonpath])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def run_python(
    python: Path | str,
    code: str | None = None,
    *,
    script: Path | str | None = None,
    args: tuple[str, ...] | list[str] = (),
    pythonpath: tuple[Path | str, ...] | list[Path | str] = (),
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    parse_json: bool = False,
) -> Any:
    """Run ``code`` (or the file ``script``) in ``python``; its stdout.

    ``input`` is sent to its stdin.  With ``parse_json`` the stdout is decoded as JSON.  A non-zero exit, or
    a timeout, raises ReferenceEnvError carrying the process's stderr.
    """
    if (code is None) == (script is None):
        raise TypeError("give exactly one of code and script")
    command = [str(python), "-c", code] if code is not None else [str(python), str(script)]
    command += [str(arg) for arg in args]
    try:
        result = subprocess.run(
            command,
            cwd=SCRIPTS,
            env=clean_env(pythonpath, env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        raise ReferenceEnvError(f"{python} timed out after {timeout}s:\n{error.stderr or ''}") from None
    if result.returncode != 0:
        what = f"script {script}" if script is not None else f"code:\n{code}"
        raise ReferenceEnvError(
            f"{python} exited with {result.returncode} running {what}\n--- stderr ---\n{result.stderr}"
        )
    return json.loads(result.stdout) if parse_json else result.stdout


@dataclass
class Durus43:
    """A handle on the real Durus 4.3 for tests.

    - ``python``: its interpreter.
    - ``pythonpath``: extra import paths for every run (the model classes'
      directory is always there).
    """

    python: Path
    pythonpath: list[Path] = field(default_factory=list)

    def run(self, code: str | None = None, **options: Any) -> Any:
        """Run code or a script with the real Durus 4.3; see :func:`run_python`."""
        options.setdefault("pythonpath", self.pythonpath)
        return run_python(self.python, code, **options)

    def run_json(self, code: str | None = None, **options: Any) -> Any:
        """Like :meth:`run`, decoding the stdout as JSON."""
        return self.run(code, parse_json=True, **options)


def run_durus43(code: str | None = None, **options: Any) -> Any:
    """Run code or a script with the real Durus 4.3; see :func:`run_python`."""
    return run_python(durus43_python(), code, **options)


if pytest is not None:

    @pytest.fixture(scope="session")
    def durus43() -> Durus43:
        """The real Durus 4.3, built into ``.cache/venvs/durus43`` on first use."""
        try:
            return Durus43(durus43_python())
        except ReferenceEnvError as error:
            pytest.fail(str(error), pytrace=False)

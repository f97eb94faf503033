"""Packaging (issue 13): license, metadata, versions, extras, what a wheel
installs, and the module-level names Durus 4.3 programs import
(``durus.utils``, ``durus.logger``, ``durus.file`` and a few others).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def run_python(code: str, cwd: Path, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (pythonpath or [REPO]))}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


# -- metadata ---------------------------------------------------------------

def test_mit_license_file_is_shipped():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the flask-durus authors" in text
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]


def test_classifiers():
    classifiers = set(PROJECT["classifiers"])
    assert {
        "Programming Language :: Python :: 3.11", "Framework :: Flask", "Operating System :: OS Independent",
        "Topic :: Database", "Typing :: Typed",
    } <= classifiers
    # An SPDX license expression replaces the license classifier (PEP 639).
    assert not any(c.startswith("License ::") for c in classifiers)


def test_py_typed_markers_are_package_data():
    for package in ("durus", "flask_durus"):
        assert (REPO / package / "py.typed").exists()
        assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_wheel_packages_leave_out_the_example_app():
    from setuptools import find_packages

    found = find_packages(str(REPO), include=PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    assert "durus" in found and "flask_durus" in found
    assert not [name for name in found if name.split(".")[0] not in ("durus", "flask_durus")]


def test_test_extra_has_what_tests_import_and_bench_the_rest():
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"test", "browser", "bench", "example", "postgresql"}
    names = {extra: {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in reqs}
             for extra, reqs in extras.items()}
    assert names["test"] == {"pytest", "pytest-timeout", "hypothesis", "selenium", "sphinx",
                             "markdown-it-py", "nh3", "psycopg"}
    assert names["browser"] == {"selenium"}
    assert names["example"] == {"markdown-it-py", "nh3"}
    assert names["postgresql"] == {"psycopg"}
    # `test` is the whole suite, the browser test, the wiki and the
    # PostgreSQL storage included: the same requirements, so they cannot
    # drift apart.
    for extra in ("browser", "example", "postgresql"):
        assert set(extras[extra]) <= set(extras["test"])
    assert names["bench"] == {"flask-sqlalchemy"}


def test_example_app_runs_from_the_checkout():
    done = subprocess.run([sys.executable, "-m", "example_app", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--port" in done.stdout


def test_versions_are_this_package_s():
    import durus
    import flask_durus

    assert durus.SOURCE_VERSION == PROJECT["version"]
    assert durus.DURUS_COMPATIBLE_VERSION == "4.3"
    assert flask_durus.__version__ == durus.__version__ == durus.distribution_version()
    from importlib.metadata import PackageNotFoundError, version

    try:
        assert durus.__version__ == version("flask-durus")
    except PackageNotFoundError:
        assert durus.__version__ == PROJECT["version"]


def test_version_falls_back_to_the_source_version_when_not_installed(monkeypatch):
    import importlib.metadata

    import durus

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert durus.distribution_version() == PROJECT["version"]


# -- names Durus 4.3 programs import ---------------------------------------

def test_utils_numbers_round_trip():
    from durus.utils import int4_to_str, int8_to_str, str_to_int4, str_to_int8

    for n in (0, 1, 255, 2**32 - 1):
        assert str_to_int4(int4_to_str(n)) == n and len(int4_to_str(n)) == 4
    for n in (0, 1, 2**40, 2**64 - 1):
        assert str_to_int8(int8_to_str(n)) == n and len(int8_to_str(n)) == 8
    assert int8_to_str(5) == b"\0" * 7 + b"\x05"


def test_utils_python2_names():
    from durus import utils

    assert utils.as_bytes("abc\xe9") == b"abc\xe9" and utils.as_bytes(b"x") == b"x"
    assert utils.as_bytes(bytearray(b"y")) == bytearray(b"y")
    assert utils.empty_byte_string == b"" and utils.join_bytes([b"a", b"b"]) == b"ab"
    assert list(utils.xrange(3)) == [0, 1, 2] and utils.next(iter([7])) == 7
    assert list(utils.iteritems({1: 2})) == [(1, 2)]
    assert utils.loads(utils.dumps([1, "a"])) == [1, "a"]
    assert isinstance(b"", utils.byte_string) and isinstance(bytearray(), utils.byte_string)
    assert isinstance(utils.BytesIO(), io.BytesIO) and isinstance(utils.IS_PYPY, bool)
    assert issubclass(utils.ShortRead, IOError)


def test_utils_read_and_write_on_files_and_sockets():
    from durus.utils import (
        BytesIO, ShortRead, read, read_int4, read_int4_str, read_int8, read_int8_str, write, write_all,
        write_int4, write_int4_str, write_int8, write_int8_str,
    )

    f = BytesIO()
    write(f, "ab")
    write_all(f, b"c", "d")
    write_int4(f, 7)
    write_int8(f, 2**40)
    write_int4_str(f, b"four")
    write_int8_str(f, b"eight")
    f.seek(0)
    assert read(f, 4) == b"abcd" and read_int4(f) == 7 and read_int8(f) == 2**40
    assert read_int4_str(f) == b"four" and read_int8_str(f) == b"eight"
    with pytest.raises(ShortRead):
        read(f, 1)

    class Socket:
        """Sends 3 bytes a call; receives from a buffer 2 bytes at a time."""

        def __init__(self):
            self.sent, self.incoming = b"", b"hello"

        def send(self, data):
            self.sent += bytes(data[:3])
            return min(3, len(data))

        def recv(self, n):
            piece, self.incoming = self.incoming[:min(n, 2)], self.incoming[min(n, 2):]
            return piece

    s = Socket()
    write(s, "0123456789")
    assert s.sent == b"0123456789"
    assert read(s, 4) == b"hell"
    with pytest.raises(ShortRead):
        read(s, 2)


def test_utils_arrays_and_sets():
    from durus.utils import BitArray, Byte, ByteArray, BytesIO, IntArray, IntSet, WordArray, int8_to_str

    b = ByteArray(size=5)
    b[0], b[1:3] = b"a", b"bc"
    assert len(b) == 5 and b[0:3] == b"abc" and list(b)[3] == b"\0"
    with pytest.raises(IndexError):
        b[5]
    with pytest.raises(ValueError):
        b[0] = b"xx"

    byte = Byte(b"\x80")
    assert byte[0] == 1 and byte[-1] == 0
    byte[7] = 1
    assert int(byte) == 0x81 and byte.byte() == b"\x81"

    bits = BitArray(10)
    bits[0] = bits[9] = 1
    assert str(bits) == "1000000001" and bits[-1] == 1 and len(bits) == 10

    f = BytesIO()
    words = WordArray(file=f, bytes_per_word=2, number_of_words=3)
    words[2] = b"zz"
    f.seek(0)
    again = WordArray(file=f)
    assert list(again) == [b"\0\0", b"\0\0", b"zz"] and again.get_bytes_per_word() == 2

    ints = IntArray(number_of_ints=4, maximum_int=1000)
    ints[1] = 999
    assert ints.get(1) == 999 and ints.get(0) is None and ints.get(9, "none") == "none"
    assert list(ints.items()) == [(1, 999)] and len(ints) == 4
    with pytest.raises(ValueError):
        ints[0] = 70000
    assert int8_to_str(ints.get_blank_value()).lstrip(b"\0") == b"\xff\xff"

    numbers = IntSet(size=8)
    numbers.add(3)
    numbers.add(100)
    assert 3 in numbers and 100 in numbers and 4 not in numbers and 10**6 not in numbers
    numbers.discard(3)
    assert 3 not in numbers


def test_logger_writes_bare_messages_to_stderr(tmp_path):
    done = run_python(textwrap.dedent("""
        import io, logging
        from durus.logger import direct_output, is_logging, log, logger
        assert logger.name == "durus" and is_logging(logging.INFO) and not is_logging(logging.DEBUG)
        log(logging.INFO, "hello %s", "there")
        log(logging.DEBUG, "not shown")
        out = io.StringIO()
        direct_output(out)
        log(logging.WARNING, "to the file")
        assert out.getvalue() == "to the file\\n", out.getvalue()
    """), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "hello there\n"


def test_file_reads_writes_and_locks(tmp_path):
    from durus.file import File

    temporary = File()
    temporary.write(b"abc")
    temporary.seek(1)
    assert temporary.read(1) == b"b" and len(temporary) == 3 and temporary.is_temporary()
    temporary.close()

    path = str(tmp_path / "data")
    f = File(path)
    f.write(b"0123")
    assert f.has_lock and not f.is_readonly() and f.get_name() == path
    other = File(path)
    with pytest.raises(OSError):
        other.write(b"x")  # the first File holds the lock
    other.close()
    f.seek(2)
    f.truncate()
    f.rename(str(tmp_path / "moved"))
    f.seek_end()
    assert f.tell() == 2
    f.close()
    reader = File(str(tmp_path / "moved"), readonly=True)
    assert reader.read() == b"01" and reader.is_readonly()
    reader.close()
    with pytest.raises(OSError):
        File(str(tmp_path / "missing"), readonly=True)


def test_connection_base_object_dictionary_and_status_names():
    from durus.connection import ObjectDictionary
    from durus.persistent import ConnectionBase, Persistent, PersistentBase
    from durus.storage_server import STATUS_INVALID, STATUS_KEYERROR, STATUS_OKAY

    assert ConnectionBase().transaction_serial == 1
    assert issubclass(Persistent, PersistentBase)
    assert (STATUS_OKAY, STATUS_KEYERROR, STATUS_INVALID) == (b"O", b"K", b"I")

    d = ObjectDictionary()
    x, y = Persistent(), Persistent()
    d["x"], d["y"] = x, y
    assert len(d) == 2 and d.get("x") is x and "y" in d
    del d["y"]
    assert "y" not in d and len(d) == 1 and list(d) == ["x"]
    del x  # the only strong reference: the entry dies with it
    assert d.get("x") is None and len(d) == 0 and list(d) == []


# -- Durus 4.3's own test modules import with our durus ----------------------

# The modules of Durus 4.3's test/ folder (imported there as durus.test.<name>).
DURUS43_TEST_MODULES = [
    "stress", "utest_btree", "utest_client_storage", "utest_connection", "utest_file", "utest_file_storage",
    "utest_persistent", "utest_persistent_dict", "utest_persistent_list", "utest_persistent_set",
    "utest_serialize", "utest_shelf", "utest_storage", "utest_storage_server", "utest_utils",
]
# A stand-in for sancho.utest (which 4.3's tests import and PyPI does not
# have for Python 3): UTest() runs each public method with _pre/_post around it.
SANCHO_UTEST = '''
import inspect

def raises(exception, function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except exception as error:
        return error
    raise AssertionError("%s not raised" % exception.__name__)

class UTest:
    def __init__(self):
        failures = []
        for name, method in inspect.getmembers(self, inspect.ismethod):
            if name.startswith("_"):
                continue
            getattr(self, "_pre", lambda: None)()
            try:
                method()
            except Exception as error:
                failures.append("%s.%s: %r" % (type(self).__name__, name, error))
            finally:
                getattr(self, "_post", lambda: None)()
        if failures:
            raise AssertionError("\\n".join(failures))
'''


def _durus43_test_folder(cache: Path) -> Path | None:
    """4.3's test/ folder: $DURUS43_SOURCE, else /tmp/d43/durus-4.3, else its sdist from PyPI (cached)."""
    for candidate in (os.environ.get("DURUS43_SOURCE"), "/tmp/d43/durus-4.3", REPO / ".cache" / "durus-4.3"):
        if candidate and (Path(candidate) / "test" / "utest_utils.py").exists():
            return Path(candidate) / "test"
    download = cache / "sdist"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           "--dest", str(download), "durus==4.3"], capture_output=True, text=True, timeout=300)
    sdists = sorted(download.glob("*.tar.gz"))
    if done.returncode != 0 or not sdists:
        return None
    target = REPO / ".cache" / "durus-4.3"
    with tarfile.open(sdists[0]) as archive:
        members = []
        for member in archive.getmembers():
            top, _, rest = member.name.partition("/")  # the sdist's top folder: Durus-4.3 or durus-4.3
            if rest.startswith("test/"):
                member.name = rest
                members.append(member)
        archive.extractall(target, members=members, filter="data")
    return target / "test"


@pytest.fixture(scope="module")
def durus43_tests(tmp_path_factory) -> Path:
    """A folder for PYTHONPATH with the sancho stand-in, and ext/test: 4.3's tests, to add to durus.__path__."""
    root = tmp_path_factory.mktemp("durus43_tests")
    source = _durus43_test_folder(root)
    if source is None:
        pytest.skip("needs Durus 4.3's test/ folder: set DURUS43_SOURCE or let pip download durus==4.3")
    shutil.copytree(source, root / "ext" / "test")
    (root / "sancho").mkdir()
    (root / "sancho" / "__init__.py").write_text("")
    (root / "sancho" / "utest.py").write_text(SANCHO_UTEST)
    return root


def _in_durus43_layout(root: Path, code: str) -> str:
    return (f"import durus, os\nassert os.path.dirname(durus.__file__) == {str(REPO / 'durus')!r}\n"
            f"durus.__path__.append({str(root / 'ext')!r})\n" + textwrap.dedent(code))


@pytest.mark.parametrize("module", DURUS43_TEST_MODULES)
def test_durus43_test_module_imports(durus43_tests, module, tmp_path):
    done = run_python(_in_durus43_layout(durus43_tests, f"import durus.test.{module}"), tmp_path,
                      [durus43_tests, REPO])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module, classes", [
    ("utest_utils", ["UtilTest", "ByteArrayTest", "WordArrayTest", "IntArrayTest", "BitArrayTest", "IntSetTest",
                     "ByteTest"]),
    ("utest_file", None),
    ("utest_connection", ["TestObjectDictionary"]),
])
def test_durus43_tests_of_these_names_pass(durus43_tests, module, classes, tmp_path):
    """4.3's own tests of durus.utils, durus.file and ObjectDictionary, run on ours."""
    done = run_python(_in_durus43_layout(durus43_tests, f"""
        import durus.test.{module} as tests
        names = {classes!r}
        if names is None:
            names = [n for n, c in vars(tests).items() if isinstance(c, type) and issubclass(c, tests.UTest)
                     and c is not tests.UTest]
        ran = [getattr(tests, n)() for n in names if hasattr(tests, n)]
        assert ran, "no test classes"
    """), tmp_path, [durus43_tests, REPO])
    assert done.returncode == 0, done.stderr


# Names Durus 4.3 programs import from these modules, which ours must have
# too, of the same kind: module -> names.  ``durus.utils.all_bytes`` (4.3's
# table behind ``Byte``, an implementation detail) is the one name 4.3
# defines in these modules that ours leaves out; see DURUS43_ONLY.
DURUS43_NAMES = {
    "durus.logger": ["direct_output", "is_logging", "log", "logger"],
    "durus.utils": [
        "BitArray", "Byte", "all_bytes", "ByteArray", "BytesIO", "IntArray", "IntSet", "Pickler", "ShortRead", "TRACE",
        "Unpickler", "WordArray", "as_bytes", "byte_string", "bytearray", "bytes", "dumps",
        "empty_byte_string", "int4_to_str", "int8_to_str", "iteritems", "join_bytes", "loads", "next", "read",
        "read_int4", "read_int4_str", "read_int8", "read_int8_str", "str_to_int4", "str_to_int8", "write",
        "write_all", "write_int4", "write_int4_str", "write_int8", "write_int8_str", "xrange",
    ],
    "durus.persistent": ["ConnectionBase"],
    "durus.connection": ["ObjectDictionary"],
    "durus.storage_server": ["STATUS_OKAY", "STATUS_KEYERROR", "STATUS_INVALID"],
    "durus.file": ["File"],
}
DURUS43_ONLY: dict[str, set[str]] = {}

# Run by both interpreters: import each name, print what kind of thing it
# is (class, function, a constant's repr, or another object's type), and
# for the modules whose every name is listed, what else 4.3 defines there.
_NAME_KINDS = r"""
import importlib, inspect, json, sys, types
wanted = json.loads(sys.stdin.read())
kinds = {}
defined = {}
for module_name, names in wanted.items():
    module = importlib.import_module(module_name)
    for name in names:
        try:
            value = getattr(module, name)
        except AttributeError:
            kinds[f"{module_name}.{name}"] = None
            continue
        if inspect.isclass(value):
            kind = ["class"]
        elif callable(value):
            kind = ["function"]
        elif isinstance(value, (bool, int, float, str, bytes, tuple, type(None))):
            kind = ["constant", repr(value)]
        else:
            kind = ["object", type(value).__module__ + "." + type(value).__qualname__]
        kinds[f"{module_name}.{name}"] = kind
    # The names the module defines itself: not modules, not classes or
    # functions of other modules (builtins aliased under their own name,
    # such as ``bytes``, count), not names taken from a module it imports.
    imported = [value for value in vars(module).values() if isinstance(value, types.ModuleType)]
    imported += [importlib.import_module(value.__module__) for value in vars(module).values()
                 if getattr(value, "__module__", None) in sys.modules]
    defined[module_name] = sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", module_name) in (module_name, "builtins")
        and not any(getattr(other, name, None) is value for other in imported if other is not module
                    and other.__name__ != "builtins")
    )
print(json.dumps({"kinds": kinds, "defined": defined}))
"""


@pytest.mark.compat
def test_durus43_names_import_from_both_packages():
    """Each name of DURUS43_NAMES imports from the real Durus 4.3 (its own
    virtual environment) and from ours (this interpreter, the checkout
    first on the path), both in clean subprocesses, and is the same kind
    of thing: a class, a function, an equal constant, or an object of the
    same type (``logger`` is a ``logging.Logger``).
    """
    import json

    from durus43 import ReferenceEnvError, durus43_python
    from durus43 import run_python as run_reference

    try:
        reference = durus43_python()
    except ReferenceEnvError as error:
        pytest.fail(str(error), pytrace=False)
    stdin = json.dumps(DURUS43_NAMES)
    theirs = run_reference(reference, _NAME_KINDS, input=stdin, parse_json=True)
    ours = run_reference(sys.executable, _NAME_KINDS, pythonpath=[REPO], input=stdin, parse_json=True)
    where = run_reference(sys.executable, "import durus; print(durus.__file__)", pythonpath=[REPO])
    assert Path(where.strip()).parent == REPO / "durus"
    expected = [f"{module}.{name}" for module, names in DURUS43_NAMES.items() for name in names]
    assert sorted(theirs["kinds"]) == sorted(expected)
    assert [name for name in expected if theirs["kinds"][name] is None] == [], "not in Durus 4.3 itself"
    assert [name for name in expected if ours["kinds"][name] is None] == [], "missing from ours"
    different = {name: (theirs["kinds"][name], ours["kinds"][name])
                 for name in expected if theirs["kinds"][name] != ours["kinds"][name]}
    assert different == {}, "(Durus 4.3, ours)"
    # The whole-module lists are complete: 4.3 defines nothing else there.
    for module in ["durus.logger", "durus.utils", "durus.file"]:
        extra = set(theirs["defined"][module]) - set(DURUS43_NAMES[module]) - DURUS43_ONLY.get(module, set())
        assert extra == set(), f"{module}: 4.3 also defines {sorted(extra)}"

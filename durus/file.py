"""Durus 4.3's ``durus.file.File``, for Durus 4.3 programs: a binary file (or
an anonymous temporary one) that takes an exclusive lock before writing.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the lock is only noted, not taken.
    fcntl = None  # type: ignore[assignment]

__all__ = ["File"]


class File:
    """A binary file that locks itself (non-blocking, exclusive) before its first write, for Durus 4.3 programs.

    ``File()`` is a named temporary file (``kwargs`` go to NamedTemporaryFile);
    ``File(name)`` opens ``name`` for reading and writing, creating it unless
    ``readonly`` (then a missing file is an OSError).
    """

    def __init__(self, name: str | None = None, readonly: bool = False, **kwargs: Any) -> None:
        self.has_lock = False
        self._temporary = name is None
        if name is None:
            self.file: Any = tempfile.NamedTemporaryFile(**kwargs)
        elif readonly:
            if not os.path.exists(name):
                raise OSError(f"No {name!r} found.")
            self.file = open(name, "rb")
        else:
            self.file = open(name, "r+b" if os.path.exists(name) else "w+b")

    def get_name(self) -> str:
        return self.file.name

    def is_temporary(self) -> bool:
        return self._temporary

    def is_readonly(self) -> bool:
        return self.file.mode == "rb"

    def seek(self, n: int, whence: int = 0) -> None:
        self.file.seek(n, whence)

    def seek_end(self) -> None:
        self.file.seek(0, 2)

    def read(self, n: int | None = None) -> bytes:
        return self.file.read() if n is None else self.file.read(n)

    def tell(self) -> int:
        return self.file.tell()

    def stat(self) -> os.stat_result:
        return os.stat(self.get_name())

    def __len__(self) -> int:
        return self.stat().st_size

    def rename(self, name: str) -> None:
        """Move the (non-temporary) file to ``name``, replacing what is there, and keep it open and locked."""
        if name == self.get_name():
            return
        assert not self.is_temporary(), "a temporary file cannot be renamed"
        self.obtain_lock()
        self.close()
        os.replace(self.file.name, name)
        self.file = open(name, "r+b")
        self.obtain_lock()

    def obtain_lock(self) -> None:
        """Take the exclusive lock unless held already; OSError at once if another process holds it."""
        assert not self.is_readonly(), "a read-only file is never locked"
        if not self.has_lock:
            if fcntl is not None:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.has_lock = True

    def release_lock(self) -> None:
        if self.has_lock:
            if fcntl is not None:
                fcntl.flock(self.file, fcntl.LOCK_UN)
            self.has_lock = False

    def write(self, s: bytes) -> None:
        self.obtain_lock()
        self.file.write(s)
        self.file.flush()

    def truncate(self) -> None:
        self.obtain_lock()
        self.file.truncate()

    def close(self) -> None:
        self.release_lock()
        self.file.close()

    def flush(self) -> None:
        self.file.flush()

    def fsync(self) -> None:
        os.fsync(self.file.fileno())

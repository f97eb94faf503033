"""FileStorage2: reads files in Durus's older ``DFS20`` format.

Durus 3.7 wrote this format, and Durus 4.3 still reads and writes it.  It
is read here so that such a file can be opened, served read-only, and
copied into a current storage (``durus --copy OLD.durus NEW.durus``); this
class never writes one.  The layout (integers unsigned big-endian):

========  =====================================================================
offset    content
========  =====================================================================
0         ``DFS20\\0`` (6 bytes)
6         int8: the offset of the index
14        zero or more transactions, then the index, then more transactions
========  =====================================================================

The index is ``int8(length) + zlib(pickle(dict))``, the dict mapping each
oid to the offset of its record among the transactions before the index.
A transaction is a run of ``int4(len(record)) + record`` ended by
``int4(0)``; a record is the object record of :mod:`durus.record`.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from collections.abc import Iterable, Iterator

from durus.error import DamagedRecordError, DurusError, DurusKeyError
from durus.record import read_int4, read_int8
from durus.storage import InvalidationHandler, Storage, gen_reachable_records

__all__ = ["FileStorage2", "MAGIC"]

#: The first bytes of a DFS20 file.
MAGIC = b"DFS20\0"


class FileStorage2(Storage):
    """A DFS20 file, open for reading only.

    Instance attributes: ``filename``; ``readonly``, always True (a
    storage server serves it read-only); ``index``, oid -> offset of the
    record's length word.
    """

    def __init__(self, filename: str, readonly: bool = False, repair: bool = False) -> None:
        # ``readonly`` is accepted for the common signature: this class only
        # reads.  With ``repair`` a partial transaction at the end (a crash
        # mid-write) is left out instead of refused; the file is not changed.
        self.filename = os.fspath(filename)
        self.readonly = True
        self._file = open(self.filename, "rb")
        try:
            self.index = self._read_index(repair)
        except BaseException:
            self._file.close()
            raise

    def _read_index(self, repair: bool) -> dict[bytes, int]:
        data = self._file.read()
        if data[:len(MAGIC)] != MAGIC:
            raise DurusError(f"{self.filename} is not a DFS20 file (it does not start with DFS20\\0)")
        if len(data) < 22:
            raise DurusError(f"{self.filename} is too short for a DFS20 file ({len(data)} bytes)")
        index_offset = read_int8(data, 6)
        if index_offset + 8 > len(data):
            raise DurusError(f"{self.filename}: its index offset {index_offset} is past the end of the file")
        length = read_int8(data, index_offset)
        end = index_offset + 8 + length
        if end > len(data):
            raise DurusError(f"{self.filename}: the index at offset {index_offset} runs past the end of the file")
        index = _load_index(data[index_offset + 8:end], self.filename)
        for _, oids in _gen_transactions(data, end, self.filename, repair):
            index.update(oids)
        return index

    # -- reading -------------------------------------------------------------

    def load(self, oid: bytes) -> bytes:
        offset = self.index.get(oid)
        if offset is None:
            raise DurusKeyError(oid)
        file = self._file
        file.seek(offset)
        head = file.read(4)
        size = read_int4(head) if len(head) == 4 else 0
        record = file.read(size)
        if size < 12 or len(record) != size or record[:8] != oid:
            raise DamagedRecordError("its length word or oid does not match", oid, self.describe_record(oid))
        return record

    def bulk_load(self, oids: Iterable[bytes]) -> Iterator[bytes]:
        for oid in oids:
            yield self.load(oid)

    def describe_record(self, oid: bytes) -> str:
        """Where the record of ``oid`` is, for messages."""
        offset = self.index.get(oid)
        if offset is None:
            return f"no record in {self.filename}"
        return f"offset {offset} of {self.filename}"

    def gen_oid_record(
        self, start_oid: bytes | None = None, batch_size: int = 100
    ) -> Iterator[tuple[bytes, bytes]]:
        """Without ``start_oid`` every record of the index, by file offset."""
        if start_oid is not None:
            yield from gen_reachable_records(self, start_oid, batch_size)
            return
        for oid, _ in sorted(self.index.items(), key=lambda item: item[1]):
            yield oid, self.load(oid)

    def sync(self) -> list[bytes]:
        return []

    # -- what this class does not do -----------------------------------------

    def _refuse(self, action: str) -> DurusError:
        from durus.file_storage import ReadOnlyError

        return ReadOnlyError(
            f"cannot {action}: {self.filename} is an old DFS20 file, which is only read; "
            f"copy it to a current file first (durus --copy {self.filename} NEW_FILE)")

    def begin(self) -> None:
        raise self._refuse("commit")

    def store(self, oid: bytes, record: bytes) -> None:
        raise self._refuse("commit")

    def end(self, handle_invalidations: InvalidationHandler | None = None) -> None:
        raise self._refuse("commit")

    def new_oid(self) -> bytes:
        raise self._refuse("allocate oids")

    def pack(self) -> None:
        raise self._refuse("pack")

    def close(self) -> None:
        self._file.close()

    def __str__(self) -> str:
        return f"{type(self).__name__}({self.filename!r})"


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles the index, a dict of oids and ints, and nothing else: a
    file's pickle must not call arbitrary functions.  Python 2 wrote byte
    strings as ``str`` and Python 3 under protocol 2 as ``_codecs.encode``.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"the index may not refer to {module}.{name}")


def _load_index(compressed: bytes, filename: str) -> dict[bytes, int]:
    try:
        raw = _IndexUnpickler(io.BytesIO(zlib.decompress(compressed)), encoding="latin1").load()
    except Exception as error:
        raise DurusError(f"{filename}: its index cannot be read ({error})") from None
    if not isinstance(raw, dict):
        raise DurusError(f"{filename}: its index is a {type(raw).__name__}, not a dict")
    index = {}
    for oid, offset in raw.items():
        if isinstance(oid, str):
            oid = oid.encode("latin1")
        if not isinstance(oid, bytes) or len(oid) != 8 or not isinstance(offset, int):
            raise DurusError(f"{filename}: its index holds {oid!r}: {offset!r}, not an oid and an offset")
        index[oid] = offset
    return index


def _gen_transactions(data: bytes, position: int, filename: str, repair: bool) -> Iterator[tuple[int, dict]]:
    """``(offset, {oid: record offset})`` of each whole transaction from
    ``position`` to the end of ``data``.
    """
    while position < len(data):
        start = position
        oids = {}
        while True:
            size = read_int4(data, position) if position + 4 <= len(data) else -1
            if size == 0:
                position += 4
                break
            if size < 12 or position + 4 + size > len(data):
                if repair:
                    return
                raise DurusError(
                    f"{filename}: a partial or damaged transaction at offset {start} "
                    "(a crash mid-write?); open it with repair=True to leave it out")
            oids[data[position + 4:position + 12]] = position
            position += 4 + size
        yield start, oids

"""Serialization: persistent objects to record data and back.

Record data is the pickle (protocol 2) of the object's class followed by the
pickle of its state.  Inside the state, a reference to another persistent
object is the persistent id ``(oid, class)``, so a reference can become a
ghost of the right class without loading its record.

The state pickle is stored as a zlib stream, as Durus 4.3 stores it.  Running
deflate on a small pickle costs many times what pickling it does (zlib sets
up a fresh compressor each call) and saves a few bytes, so a state under
``COMPRESS_THRESHOLD`` bytes goes into the stream as one stored block: the
very bytes ``zlib.compress(state, 0)`` gives, framed here at the cost of an
Adler-32.  Readers tell a zlib stream from a plain pickle by the first byte
(``0x78`` for the default window, ``0x80`` for a protocol-2 pickle) and read
both.

A record that cannot be read raises :class:`~durus.error.DamagedRecordError`,
saying which part failed: the class pickle, the zlib stream (its checksum or
its framing) or the state pickle.  The reader seldom knows the record's oid;
the caller names it with ``error.for_record(oid, record_location(storage,
oid))``.  :func:`inspect_data` reads record data the same way while
importing nothing, for ``durus --check``; :func:`inspect_state` reads a
state pickle so, for the shelf's check of a file's last record.
"""

from __future__ import annotations

import pickle
import pickletools
import struct
import zlib
from io import BytesIO
from pickle import UnpicklingError
from pickle import loads as _loads
from typing import TYPE_CHECKING, Any, Callable

from durus import schema
from durus.error import DamagedRecordError, DurusError
from durus.persistent import PersistentObject, real_class
from durus.record import pack_record, split_oids, unpack_record
from durus.speedups import speedups

if TYPE_CHECKING:
    from durus.connection import Connection
    from durus.object_cache import ObjectCache

__all__ = [
    "ObjectReader",
    "ObjectWriter",
    "inspect_data",
    "inspect_state",
    "load_pickle",
    "record_location",
    "state_pickle",
    "pack_record",
    "split_oids",
    "unpack_record",
]

PICKLE_PROTOCOL = 2
_dumps = pickle.dumps
COMPRESS_THRESHOLD = 1024
_CLASS_PICKLE_TAIL = b"q\x00."  # BINPUT 0, STOP: how a protocol-2 class pickle ends

_class_pickles: dict[type, bytes] = {}
_classes_by_pickle: dict[bytes, type] = {}
_class_memos: dict[type, Any] = {}


def class_pickle(cls: type) -> bytes:
    """The protocol-2 pickle of ``cls``, as every record of its instances begins."""
    try:
        return _class_pickles[cls]
    except KeyError:
        _class_pickles[cls] = pickled = pickle.dumps(cls, PICKLE_PROTOCOL)
        return pickled


def class_memo(cls: type) -> Any:
    """An unpickler memo holding ``cls`` at index 0, to assign to ``Unpickler.memo``.

    Assigning a dict to the C unpickler's memo loses its entries in Python
    3.11 (the entries go to the memo being replaced); assigning another
    unpickler's memo proxy copies them correctly.
    """
    try:
        return _class_memos[cls]
    except KeyError:
        unpickler = pickle.Unpickler(BytesIO(class_pickle(cls)))
        unpickler.load()
        _class_memos[cls] = memo = unpickler.memo
        return memo


# What unpickling raises for bytes that are not a good pickle.  What
# application code raises while its objects are rebuilt (ImportError or
# AttributeError for a class that is gone, say) is not damage and passes
# through as it is, as does any DurusError (a nested load's).
_UNPICKLING_ERRORS = (UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError)


def _unpickling_failed(part: str, error: BaseException) -> DamagedRecordError:
    return DamagedRecordError(f"{part} fails to unpickle ({type(error).__name__}: {error})")


def split_data(data: bytes) -> tuple[type, bytes]:
    """Split record data into the class and the (decompressed) state pickle;
    DamagedRecordError if either cannot be read.
    """
    cls, end = _read_class(data)
    return cls, state_pickle(data[end:])


def state_pickle(stored: bytes) -> bytes:
    """The state pickle from the bytes after the class pickle: decompressed
    if they are a zlib stream, as they are otherwise; DamagedRecordError if
    the stream fails to decompress.
    """
    return _decompress(stored) if stored[:1] == b"x" else stored


def load_pickle(unpickler: pickle.Unpickler, part: str) -> Any:
    """``unpickler.load()``, raising DamagedRecordError ("``part`` fails to
    unpickle") where the bytes are not a good pickle.
    """
    try:
        return unpickler.load()
    except DurusError:
        raise
    except _UNPICKLING_ERRORS as error:
        raise _unpickling_failed(part, error) from error


def _read_class(data: bytes) -> tuple[type, int]:
    """The class named by the class pickle at the start of ``data``, and
    where that pickle ends.
    """
    try:
        end = _class_pickle_end(data)
        prefix = data[:end]
        cls = _classes_by_pickle.get(prefix)
        if cls is not None:
            return cls, end
        try:
            cls = pickle.loads(prefix)
        except (ImportError, AttributeError):
            if not schema.has_renames():
                raise
            cls = _RenamingUnpickler(BytesIO(prefix)).load()
    except DurusError:
        raise
    except _UNPICKLING_ERRORS as error:
        raise _unpickling_failed("its class pickle", error) from error
    if not isinstance(cls, type):
        raise DamagedRecordError(f"its data does not start with a class pickle: {data[:60]!r}")
    _classes_by_pickle[prefix] = cls
    return cls, end


class _RenamingUnpickler(pickle.Unpickler):
    """An unpickler that finds a class whose name no longer imports under
    the name it was renamed from (:func:`durus.schema.rename_class`).

    Only a load that failed to import a class is tried again with it, so
    classes that import cost no registry lookup.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            renamed = schema.renamed_class(module, name)
            if renamed is None:
                raise
            return renamed


class _RenamingStateUnpickler(_RenamingUnpickler):
    """A state unpickler (see :class:`_StateUnpickler`) that finds renamed classes."""

    def __init__(self, state: bytes, connection: Connection, memo: Any) -> None:
        super().__init__(BytesIO(state))
        self.persistent_load = PersistentLoader(connection, connection._cache)
        self.memo = memo


def forget_classes() -> None:
    """Forget which class each class pickle names (the renames changed)."""
    _classes_by_pickle.clear()


def _decompress(state: bytes) -> bytes:
    # No pickle starts with 0x78: a stream that fails to decompress is damaged.
    try:
        return zlib.decompress(state)
    except zlib.error as error:
        raise DamagedRecordError(
            f"its state fails to decompress (zlib checksum or stream error: {error})") from error


def record_location(storage: object, oid: bytes) -> str | None:
    """Where ``storage`` keeps the record of ``oid``, as its
    ``describe_record(oid)`` says (a file storage names the file and byte
    offset), or None where it cannot say.  Only for error messages: it
    never raises.
    """
    describe = getattr(storage, "describe_record", None)
    if describe is None:
        return None
    try:
        return describe(oid)
    except Exception:
        return None


def extract_class_name(record: bytes) -> str:
    """The name of the class of the object in ``record`` (``"Item"``, without
    its module, as Durus 4.3 gives it), read from the class pickle without
    importing the class; ``"?"`` if the record has no readable class pickle.
    """
    data = unpack_record(record)[1]
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                return argument.partition(" ")[2]
            if opcode.name == "STOP":
                break
    except ValueError:
        pass
    return "?"


def _class_pickle_end(data: bytes) -> int:
    """Where the class pickle at the start of ``data`` ends."""
    if data[:3] == b"\x80\x02c":
        second_newline = data.find(b"\n", data.find(b"\n", 3) + 1)
        end = second_newline + 1 + len(_CLASS_PICKLE_TAIL)
        if second_newline > 0 and data[end - 3:end] == _CLASS_PICKLE_TAIL:
            return end
    # Any other form: let pickle find the end.
    stream = BytesIO(data)
    _RenamingUnpickler(stream).load()
    return stream.tell()


# A zlib header naming the default 32 KB window and the fastest level: the
# first byte, 0x78, is how readers (Durus 4.3's too) recognize compression.
_ZLIB_HEADER = b"\x78\x01"
_STORED_BLOCK_HEADER = _ZLIB_HEADER + b"\x01"  # then a final stored block
_stored_lengths = struct.Struct("<HH").pack
_adler32 = struct.Struct(">I").pack


def compress_state(pickled: bytes) -> bytes:
    """The stored form of a state pickle, a zlib stream (see the module docstring)."""
    size = len(pickled)
    if size < COMPRESS_THRESHOLD:
        return _STORED_BLOCK_HEADER + _stored_lengths(size, size ^ 0xFFFF) + pickled + _adler32(zlib.adler32(pickled))
    # A state is a few KB at most, so setting up zlib's default tables costs
    # more than deflating it.  Level 1, a small hash table and a window no
    # larger than the state (which loses no match) make it two to three
    # times faster; the raw deflate stream is framed by hand, under the
    # header above (a decoder with the larger window reads it all the same).
    window_bits = max(9, min(15, (size - 1).bit_length()))
    compressor = zlib.compressobj(1, zlib.DEFLATED, -window_bits, 4)
    deflated = compressor.compress(pickled) + compressor.flush()
    return _ZLIB_HEADER + deflated + _adler32(zlib.adler32(pickled))


_ATOMS = frozenset({str, int, float, bool, bytes, complex, type(None)})
_COLLECTIONS = frozenset({list, tuple, set, frozenset})


def holds_no_objects(value: Any, depth: int = 4) -> bool:
    """True if ``value`` is built of builtin atoms and containers only, no
    deeper than ``depth`` (so it holds no persistent object); False when
    unsure.

    Such a state pickles without the ``persistent_id`` hook, which costs a
    Python call for every object pickled: a set of 1,000 strings is 1,000
    calls with the hook and one fast C loop without it.
    """
    kind = type(value)
    if kind in _ATOMS:
        return True
    if depth == 0:
        return False
    if kind is dict:
        # Most states are an instance dict of atoms: two C loops decide.
        if _ATOMS.issuperset(map(type, value.values())) and _ATOMS.issuperset(map(type, value)):
            return True
        return _all_hold_no_objects(value, depth) and _all_hold_no_objects(value.values(), depth)
    if kind in _COLLECTIONS:
        return _all_hold_no_objects(value, depth)
    return False


def _all_hold_no_objects(values: Any, depth: int) -> bool:
    if _ATOMS.issuperset(map(type, values)):
        return True
    return all(holds_no_objects(value, depth - 1) for value in values)


class _StatePickler(pickle.Pickler):
    """A pickler that writes persistent objects as ``(oid, class)`` ids,
    named through ``writer`` (an ObjectWriter).
    """

    def __init__(self, file: BytesIO, writer: ObjectWriter) -> None:
        super().__init__(file, PICKLE_PROTOCOL)
        self.persistent_id = PersistentIdentifier(writer.reference, PersistentObject, writer.connection, writer.refs,
                                                  writer.connection.new_oid, writer.new_objects)


def persistent_identifier(
    reference: Callable[[PersistentObject], tuple[bytes, type]], base: type, connection: Connection, refs: set[bytes],
    new_oid: Callable[[], bytes] | None = None, new_objects: list[PersistentObject] | None = None,
) -> Callable[[Any], tuple[bytes, type] | None]:
    """The ``persistent_id`` of a connection's pickler, which asks it of
    every object in a state: an instance of ``base`` is pickled as its
    ``reference()``, anything else by value.  (The C version does what
    ``reference()`` does for an object stored through ``connection`` itself,
    adding its oid to ``refs``, and, given ``new_oid`` and ``new_objects``,
    for a new object too: named with ``new_oid()`` and appended to
    ``new_objects``.)
    """

    def persistent_id(obj: Any) -> tuple[bytes, type] | None:
        if isinstance(obj, base):
            return reference(obj)
        return None

    return persistent_id


PersistentIdentifier = persistent_identifier if speedups is None else speedups.PersistentIdentifier


class ObjectWriter:
    """Turns objects into record data for one connection's commits.

    Instance attributes:

    - ``connection``: the Connection whose ``new_oid`` names new objects.
    - ``new_objects``: persistent objects first met (and given an oid) while
      pickling; the commit must store them too.
    - ``refs``: oids referred to by the state being pickled.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.new_objects: list[PersistentObject] = []
        self.refs: set[bytes] = set()
        self._buffer = BytesIO()
        self._pickler = _StatePickler(self._buffer, self)

    def reference(self, obj: PersistentObject) -> tuple[bytes, type]:
        """The persistent id of ``obj``, giving it an oid if it is new."""
        oid = obj._p_oid
        if oid is None:
            oid = self.connection.new_oid()
            object.__setattr__(obj, "_p_oid", oid)
            object.__setattr__(obj, "_p_connection", self.connection)
            self.new_objects.append(obj)
        elif obj._p_connection is not self.connection:
            raise ValueError(
                f"{obj!r} belongs to another connection; an object can be stored "
                "through one connection only"
            )
        self.refs.add(oid)
        return oid, real_class(type(obj))

    def get_state(self, obj: PersistentObject) -> tuple[bytes, bytes]:
        """``(data, refs)`` of the record for ``obj``."""
        cls = real_class(type(obj))
        state = cls.__getstate__(obj)
        if holds_no_objects(state):
            # No references to find: the C pickler in one call, no hook.
            return class_pickle(cls) + compress_state(_dumps(state, PICKLE_PROTOCOL)), b""
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        refs = self.refs
        refs.clear()
        pickler = self._pickler
        pickler.clear_memo()
        pickler.dump(state)
        data = class_pickle(cls) + compress_state(buffer.getvalue())
        refs.discard(obj._p_oid)
        return data, b"".join(sorted(refs))

    def get_record(self, obj: PersistentObject) -> bytes:
        data, refs = self.get_state(obj)
        return pack_record(obj._p_oid, data, refs)


class _StateSource:
    """A file over one bytes object, for an unpickler that is reused.

    An unpickler reading a file makes a method call per opcode, which makes
    it four times slower than ``pickle.loads``, unless the file can
    ``peek``: then it takes everything at once and reads from its buffer.
    Pointing the source at the next state lets one unpickler serve every
    load, saving its construction too.

    Instance attributes: ``data``, the bytes; ``position``, how far read.
    """

    __slots__ = ("data", "position")

    def __init__(self) -> None:
        self.data = b""
        self.position = 0

    def peek(self, size: int = 0) -> bytes:
        return self.data[self.position:] if self.position else self.data

    def read(self, size: int = -1) -> bytes:
        start = self.position
        end = len(self.data) if size < 0 else min(start + size, len(self.data))
        self.position = end
        return self.data[start:end]

    def readinto(self, buffer: Any) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def readline(self, size: int = -1) -> bytes:
        end = self.data.find(b"\n", self.position)
        return self.read(-1 if end < 0 else end + 1 - self.position)


class _StateUnpickler(pickle.Unpickler):
    """An unpickler that turns ``(oid, class)`` ids into the objects of
    ``connection``'s cache.

    Instance attributes: ``source``, the _StateSource it reads from.
    """

    def __init__(self, connection: Connection) -> None:
        self.source = _StateSource()
        super().__init__(self.source)
        self.persistent_load = PersistentLoader(connection, connection._cache)


def persistent_loader(connection: Connection, cache: ObjectCache) -> Callable[[Any], PersistentObject]:
    """The ``persistent_load`` of a connection's unpickler: an ``(oid,
    class)`` id becomes the connection's object (see
    ``Connection.get_instance``), a bare oid what ``get()`` gives.  (The C
    version does what ``get_instance`` does itself, reading ``cache``.)
    """
    get_instance = connection.get_instance

    def persistent_load(pid: Any) -> PersistentObject:
        if type(pid) is tuple:
            oid, cls = pid
            return get_instance(oid, cls)
        return connection.get(pid)

    return persistent_load


PersistentLoader = persistent_loader if speedups is None else speedups.PersistentLoader


class ObjectReader:
    """Turns record data into states, making ghosts for the references.

    Instance attributes:

    - ``connection``: the Connection whose cache supplies referenced objects.
    - ``load_count``: how many states this reader has unpickled.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.load_count = 0
        self._unpickler = _StateUnpickler(connection)
        self._busy = False

    def get_class(self, data: bytes) -> type:
        """The class of the object in record ``data`` (its state is not read)."""
        return _read_class(data)[0]

    def get_state(self, data: bytes, cls: type | None = None, refers: bool = True) -> Any:
        """The state in ``data``, its references resolved through the cache.

        ``cls``, when the caller knows the object's class, saves parsing the
        class pickle when the record starts with the usual one.  ``refers``
        False says the record lists no references, so the state (most
        likely) holds no persistent ids and a plain ``pickle.loads`` can
        read it, at half the cost.  What that cannot read (a Durus 4.3 state
        naming its class by memo, or a persistent id after all) is read as
        any other state.

        Raises DamagedRecordError, naming neither oid nor location (the
        caller adds them), if the class pickle, the zlib stream or the state
        pickle is damaged.
        """
        prefix = None if cls is None else (_class_pickles.get(cls) or class_pickle(cls))
        if prefix is not None and data.startswith(prefix):
            state = data[len(prefix):]
            if state[:1] == b"x":
                state = _decompress(state)
        else:
            cls, state = split_data(data)
        self.load_count += 1
        if not refers:
            try:
                return _loads(state)
            except (UnpicklingError, ImportError, AttributeError):
                pass  # read below, where a damaged state (or a renamed class) is handled
            except DurusError:
                raise
            except _UNPICKLING_ERRORS as error:
                raise _unpickling_failed("its state pickle", error) from error
        if self._busy:
            # Unpickling made something load another object (a __hash__ or
            # __setstate__ that reads a ghost, say): use a fresh unpickler.
            unpickler = _StateUnpickler(self.connection)
        else:
            unpickler = self._unpickler
        source = unpickler.source
        source.data = state
        source.position = 0
        # Durus 4.3 pickles class and state with one pickler, so its state
        # pickles may refer back to the class as memo entry 0.
        unpickler.memo = _class_memos.get(cls) or class_memo(cls)
        busy, self._busy = self._busy, True
        try:
            return unpickler.load()
        except BaseException as error:
            # A load that stops midway leaves the unpickler's stack and
            # marks behind, which would spoil its next load.
            if unpickler is self._unpickler:
                self._unpickler = _StateUnpickler(self.connection)
            if isinstance(error, DurusError):
                raise
            if isinstance(error, _UNPICKLING_ERRORS):
                raise _unpickling_failed("its state pickle", error) from error
            if not isinstance(error, (ImportError, AttributeError)) or not schema.has_renames():
                raise
            renaming = _RenamingStateUnpickler(state, self.connection, _class_memos.get(cls) or class_memo(cls))
            return load_pickle(renaming, "its state pickle")
        finally:
            # The memo would keep what the state holds alive; the source
            # keeps only the state's bytes, till the next load.
            unpickler.memo.clear()
            self._busy = busy

    def get_state_pickle(self, data: bytes) -> bytes:
        """The decompressed state pickle, unpickled by no one; DamagedRecordError
        if the class pickle or the zlib stream is damaged.
        """
        return split_data(data)[1]


# -- reading record data without importing anything ------------------------


class _StandIn:
    """What an unpickled instance of any class becomes: it takes whatever
    the pickle gives it.  Each class name gets a subclass (see
    :meth:`_Inspector.find_class`).
    """

    pickled_name = ""  # module.name

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _Reference:
    """What a persistent id becomes."""

    __slots__ = ("oid",)

    def __init__(self, oid: bytes) -> None:
        self.oid = oid


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as a protocol-2 pickle of bytes calls it (an oid
    is such bytes), for the text encodings only.
    """
    if type(text) is not str or encoding.lower().replace("-", "").replace("_", "") not in _TEXT_ENCODINGS:
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} to {encoding!r}")
    return text.encode(encoding)


_TEXT_ENCODINGS = frozenset({"latin1", "iso88591", "ascii", "utf8"})
# The only callables a state may reach: how protocol 2 pickles bytes.
_REAL = {("_codecs", "encode"): _encode, ("__builtin__", "bytes"): bytes, ("builtins", "bytes"): bytes}


class _Inspector(pickle.Unpickler):
    """An unpickler that imports nothing: a class is a stand-in named after
    it (bytes, which protocol 2 pickles through ``_codecs.encode``, are
    real), a persistent id (``(oid, class)`` or a bare oid) is noted in
    ``referred`` and becomes a :class:`_Reference`.
    """

    def __init__(self, file: BytesIO, stand_ins: dict[tuple[str, str], type]) -> None:
        super().__init__(file)
        self.stand_ins = stand_ins
        self.referred: set[bytes] = set()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        real = _REAL.get(key)
        if real is not None:
            return real
        stand_in = self.stand_ins.get(key)
        if stand_in is None:
            stand_in = type("StandIn", (_StandIn,), {"pickled_name": f"{module}.{name}"})
            self.stand_ins[key] = stand_in
        return stand_in

    def persistent_load(self, pid: Any) -> _Reference:
        if type(pid) is tuple and len(pid) == 2 and _is_stand_in(pid[1]):
            oid = pid[0]
        else:
            oid = pid
        if type(oid) is not bytes or len(oid) != 8:
            raise pickle.UnpicklingError(f"a persistent id is neither (oid, class) nor an oid: {pid!r:.80}")
        self.referred.add(oid)
        return _Reference(oid)


def _is_stand_in(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, _StandIn)


def inspect_data(data: bytes, stand_ins: dict[tuple[str, str], type] | None = None) -> tuple[str, set[bytes]]:
    """The class name (``module.name``) of record ``data`` and the oids of
    the persistent ids in its state, read as ObjectReader reads a record
    but importing nothing (for checkers: ``durus --check``);
    DamagedRecordError, as ObjectReader raises it, if a part cannot be read.
    ``stand_ins`` caches the stand-in classes across calls.
    """
    stand_ins = {} if stand_ins is None else stand_ins
    stream = BytesIO(data)
    class_reader = _Inspector(stream, stand_ins)
    cls = load_pickle(class_reader, "its class pickle")
    if not _is_stand_in(cls):
        raise DamagedRecordError(f"its data does not start with a class pickle: {data[:60]!r}")
    referred = inspect_state(state_pickle(data[stream.tell():]), stand_ins, class_reader.memo)
    return cls.pickled_name, referred


def inspect_state(
    state: bytes, stand_ins: dict[tuple[str, str], type] | None = None, class_memo: Any = None
) -> set[bytes]:
    """The oids of the persistent ids in ``state``, a state pickle (already
    decompressed), read as :func:`inspect_data` reads it, importing nothing;
    DamagedRecordError if it cannot be read.  ``class_memo`` is the memo of
    the unpickler that read the record's class pickle, as a Durus 4.3 state
    may name its class as memo entry 0; without it, entry 0 is a stand-in.
    """
    reader = _Inspector(BytesIO(state), {} if stand_ins is None else stand_ins)
    reader.memo = {0: _StandIn} if class_memo is None else class_memo
    load_pickle(reader, "its state pickle")
    return reader.referred

"""Records written byte by byte, as Durus 4.3 (or a damaged file) has them."""

from __future__ import annotations

import io
import pickle
import zlib

from durus.record import pack_record
from durus.storage import MemoryStorage
from tests.models import Item


class ReferringPickler(pickle.Pickler):
    """Pickles an Item inside a state as the usual ``(oid, class)`` id."""

    def persistent_id(self, obj):
        return (obj._p_oid, Item) if isinstance(obj, Item) else None


def store_raw(
    storage: MemoryStorage,
    oid: bytes,
    cls: type,
    state: object,
    refs: bytes = b"",
    pickler_class: type[pickle.Pickler] = ReferringPickler,
) -> bytes:
    """Store a record pickled as Durus 4.3 does (class and state by one
    pickler, so the state may name the class through the memo), listing
    ``refs``; its state pickle.
    """
    stream = io.BytesIO()
    pickler = pickler_class(stream, 2)
    pickler.dump(cls)
    class_end = stream.tell()
    pickler.dump(state)
    pickled = stream.getvalue()
    data = pickled[:class_end] + zlib.compress(pickled[class_end:])
    storage.begin()
    storage.store(oid, pack_record(oid, data, refs))
    storage.end()
    return pickled[class_end:]

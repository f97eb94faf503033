"""What PersistentDict and PersistentSet share: reads recorded by key, changes merged by key.

Both keep a plain container in one slot (``data``, ``s``), record the keys
or members a transaction looked up in ``_p_reads`` (:mod:`durus.reads`),
and resolve a conflict by merging the plain containers (:mod:`durus.merge`)
when nothing this transaction read was changed by the committed state.
:class:`KeyedContainer` holds that logic once; each subclass names its slot
and its merge function.  The reads stay in the subclasses (``len``,
truth, ``in``, ``d[key]``, and ``_whole`` for iterations), reading their
slot directly: they are the hot path, where reading a slot by a name held
in the class, or one more call, costs a tenth more instructions (measured
with callgrind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from durus.persistent import PersistentObject
from durus.reads import check_key_reads, check_other_attributes, settle_reads


class KeyedContainer(PersistentObject):
    """A persistent object whose state is one plain container, read and merged by key."""

    __slots__ = ()

    #: The slot holding the plain container (the key of the state).
    _contents_name: ClassVar[str]
    #: Merges three states of the plain container: old, committed, mine.
    _merge_contents: ClassVar[Callable[[Any, Any, Any], Any]]

    def __setstate__(self, state: Any) -> None:
        PersistentObject.__setstate__(self, state)
        settle_reads(self)

    def _whole(self) -> Any:
        """The plain container, recording that all of it is read."""
        raise NotImplementedError  # each subclass reads its own slot: a hot path

    def clear(self) -> None:
        contents = self._whole()
        if contents:
            self._p_note_change()
            contents.clear()

    def copy(self) -> Any:
        """A new, unsaved container of the same class with the same contents."""
        return self.__class__(self._whole())

    __copy__ = copy

    # -- conflict resolution ------------------------------------------------

    def _p_resolve_conflict(
        self,
        old_state: dict[str, Any],
        committed_state: dict[str, Any],
        my_state: dict[str, Any],
    ) -> dict[str, Any]:
        """Merge concurrent changes to different keys or members; the same
        one changed on both sides is a conflict.

        Refused when a key this transaction looked up was changed by the
        committed state, or anything else it read (iteration, ``len``, ...:
        the whole container); other attributes of a subclass merge only
        when the committed state left them all alone.
        """
        name = type(self)._contents_name
        check_key_reads(self._p_reads, old_state[name], committed_state[name])
        merged = check_other_attributes(old_state, committed_state, my_state, name)
        merged[name] = type(self)._merge_contents(old_state[name], committed_state[name], my_state[name])
        return merged

    def _p_check_reads(self, old_state: dict[str, Any], committed_state: dict[str, Any]) -> None:
        """Raise ConflictError unless what this transaction read (it changed
        nothing) reads the same in ``committed_state``.
        """
        name = type(self)._contents_name
        check_key_reads(self._p_reads, old_state[name], committed_state[name])
        check_other_attributes(old_state, committed_state, old_state, name)

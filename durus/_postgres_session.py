"""One client's session with PostgreSQL: connecting with the settings every
part of :class:`~durus.postgres_storage.PostgresStorage` relies on, and
reconnecting when the session is lost.

Nothing here knows about records or commits; the schema, the commit, the
oid allocator and the pack each talk to PostgreSQL through a session.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

import psycopg
from psycopg.conninfo import conninfo_to_dict

from durus.error import DurusError

log = logging.getLogger("durus.postgres_storage")

#: First half of every advisory lock key of this package ("durus" in ASCII);
#: the second half names the purpose.
LOCK_CLASS = 0x64757275


class PostgresStorageError(DurusError):
    """PostgreSQL cannot be reached, or its database is not one this storage
    can use (no schema and ``create=False``, a schema of a newer version).
    """


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<an unparsable DSN>"
    params.pop("password", None)
    return " ".join(f"{key}={value}" for key, value in params.items())


def int_array(numbers: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (psycopg's list adaptation
    inspects every item; a literal costs one join).
    """
    return "{" + ",".join(map(str, numbers)) + "}"


class PostgresSession:
    """A psycopg connection in autocommit mode, durable commits, and a
    cursor reused for the small queries.

    - ``dsn``: where it connects (again, after a loss);
    - ``readonly``: the session refuses writes in PostgreSQL too;
    - ``conn``: the psycopg connection (replaced by :meth:`reconnect`);
    - ``on_reconnect``: called after a new session replaced a lost one
      (what the old session held, row locks and advisory locks, is gone);
    - ``server_started``: when the PostgreSQL server of the first session
      started; ``server_restarted``: a later session found it started
      again since (after a crash, transaction ids that never reached the
      disk may be handed out again, so snapshots taken before it no longer
      say which rows are news).
    """

    def __init__(self, dsn: str, *, readonly: bool = False,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.dsn = dsn
        self.readonly = readonly
        self.on_reconnect = on_reconnect
        self.conn = self._connect()
        self._cursor = self.conn.cursor()  # reused: a cursor per query costs
        self._copy: contextlib.ExitStack | None = None  # a COPY ... FROM STDIN under way
        self._copy_writer: psycopg.Copy | None = None
        self.server_started = self._server_start_time()
        self.server_restarted = False

    def _server_start_time(self) -> object:
        return self.conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True)
        except psycopg.Error as error:
            raise PostgresStorageError(
                f"cannot connect to PostgreSQL ({describe_dsn(self.dsn)}): {str(error).strip()}") from None
        # Durable when a commit returns, whatever the server's default.
        conn.execute("SET synchronous_commit = on")
        # Rows a conflict's resolution holds come free even if the client
        # never returns (the session ends; the next call reconnects).
        conn.execute("SET idle_in_transaction_session_timeout = '10s'")
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def query(self, sql: str, params: tuple | None = None, prepare: bool | None = None) -> psycopg.Cursor:
        """Run one statement that changes nothing, reconnecting once if
        the session was lost (a server restart, an idle timeout).
        """
        self._leave_copy()
        try:
            return self._cursor.execute(sql, params, prepare=prepare)
        except psycopg.OperationalError as error:
            if not self.conn.broken and not self.conn.closed:
                raise
            log.warning("PostgreSQL session lost (%s); reconnecting", str(error).strip())
        self.reconnect()
        self.check_not_restarted()
        return self._cursor.execute(sql, params, prepare=prepare)

    def reconnect_if_lost(self) -> None:
        """Reconnect now if the session is known to be lost (a statement
        already failed on it), so that the next one is not sent into it.
        """
        if self.conn.broken or self.conn.closed:
            log.warning("PostgreSQL session lost; reconnecting")
            self.reconnect()
            self.check_not_restarted()

    def check_not_restarted(self) -> None:
        """PostgresStorageError if the server restarted since the first
        session: a snapshot from before can no longer say which rows are
        news (see ``server_restarted``), so its client must start afresh.
        """
        if self.server_restarted:
            raise PostgresStorageError(
                f"the PostgreSQL server ({describe_dsn(self.dsn)}) restarted since this storage's snapshot "
                "was taken: close it and open a new PostgresStorage and Connection")

    def execute(self, sql: str, params: tuple | None = None, prepare: bool | None = None) -> psycopg.Cursor:
        """Run one statement as it is, without reconnecting (a commit must
        know whether it was sent on the session that broke).
        """
        self._leave_copy()
        return self.conn.execute(sql, params, prepare=prepare)

    def copy_in(self, sql: str) -> psycopg.Copy:
        """Start ``sql``, a ``COPY ... FROM STDIN``, and return what to
        write its rows to.  It stays under way across calls until
        :meth:`end_copy`, which every other statement of the session calls
        first (a session does one thing at a time).
        """
        self.end_copy()
        stack = contextlib.ExitStack()
        copy = stack.enter_context(self.conn.cursor().copy(sql))
        self._copy, self._copy_writer = stack, copy
        return copy

    def copy_under_way(self) -> psycopg.Copy | None:
        """What to write the rows of the COPY under way to; None if none is."""
        return self._copy_writer if self._copy is not None else None

    def _leave_copy(self) -> None:
        """Before another statement: finish the COPY under way; if its rows
        failed, end the transaction they were in, so that the statement
        runs (their writer finds them gone when it looks).
        """
        if self._copy is not None:
            try:
                self.end_copy()
            except psycopg.OperationalError:
                pass  # the statement meets the lost session too, and deals with it
            except psycopg.Error:
                self.rollback_if_open()

    def end_copy(self) -> None:
        """Finish the COPY under way, if any; the server's error about its
        rows (a unique violation, say) is raised here.
        """
        stack, self._copy = self._copy, None
        if stack is not None:
            stack.close()

    def fail_copy(self) -> None:
        """Give up the COPY under way, if any, without raising: the
        server drops its rows (and fails the transaction it was in).
        """
        stack, self._copy = self._copy, None
        if stack is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                stack.__exit__(RuntimeError, RuntimeError("copy given up"), None)

    def reconnect(self) -> None:
        """A new session in place of the old one."""
        self._copy = None  # went with the old session
        with contextlib.suppress(psycopg.Error):
            self.conn.close()
        self.conn = self._connect()
        self._cursor = self.conn.cursor()
        if self._server_start_time() != self.server_started:
            self.server_restarted = True
        if self.on_reconnect is not None:
            self.on_reconnect()

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def rollback_if_open(self) -> None:
        """End an explicit transaction left open, giving up its row locks;
        a lost session is left for the next query to replace.
        """
        self.fail_copy()
        if not self.conn.closed and self.in_transaction():
            with contextlib.suppress(psycopg.OperationalError):
                self.conn.execute("ROLLBACK")

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        self.fail_copy()
        if not self.conn.closed:
            self.conn.close()

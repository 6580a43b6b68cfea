"""The web app's connection pool: opened in the process that uses it, failing as 503.

gunicorn forks workers from a master; a pool opened before the fork would share sockets
between processes. The pool is therefore created on first use and re-created if the
process id changed since. Waiting for a connection is bounded (DB_POOL_TIMEOUT), and
every way of not getting a working connection becomes DatabaseUnavailable.
"""

import atexit
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from webhook.core.errors import DatabaseUnavailable
from webhook.database.connect import dead_peer_options, first_line, mask_url
from webhook.database.migrations import SCHEMA_MISSING

T = TypeVar("T")


class Database:
    """A lazily opened, fork-aware pool of autocommit connections."""

    def __init__(
        self, url: str, *, min_size: int, max_size: int, timeout: float, prepare: bool = True
    ) -> None:
        self.url = url
        # prepare_threshold None: never prepare (a pooler in transaction mode); 5 is psycopg's default.
        self._connect_options = {
            "autocommit": True,
            "connect_timeout": 5,
            "prepare_threshold": 5 if prepare else None,
            **dead_peer_options(url),
        }
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    def pool(self) -> ConnectionPool:
        """The open pool of this process."""
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ConnectionPool(
                    self.url,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    kwargs=self._connect_options,
                    open=False,
                    name="webhook",
                )
                self._pool.open(wait=False)
                self._pid = os.getpid()
            return self._pool

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A connection from the pool; DatabaseUnavailable if none comes in time."""
        try:
            with self.pool().connection(timeout=timeout) as conn:
                try:
                    yield conn
                except psycopg.errors.ReadOnlySqlTransaction:
                    self.renew_sessions()
                    raise
        except PoolTimeout:
            raise DatabaseUnavailable(
                f"no database connection within {timeout or self._timeout:g}s ({mask_url(self.url)})"
            ) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"database error: {first_line(exc)}") from None
        except psycopg.errors.ReadOnlySqlTransaction:
            # Supabase's read-only mode (a full disk), or a standby after a failover: no
            # write can succeed until it ends, so Stripe should send the event again.
            raise DatabaseUnavailable("the database accepts no writes (read-only)") from None
        except SCHEMA_MISSING as exc:
            # Started before its migrations ran: unavailable until they do (503, and
            # Stripe sends the event again), not an error of the event.
            raise DatabaseUnavailable(
                f"the database lacks this version's schema ({first_line(exc)}); run migrations"
            ) from None

    @contextmanager
    def briefly(
        self, seconds: float, *, statement_seconds: float | None = None
    ) -> Iterator[psycopg.Connection]:
        """A connection for a monitor's reads (/readyz, /metrics), in a transaction whose
        lock waits give up after `seconds`, and its statements after `statement_seconds`
        (default: `seconds`).

        Behind a migration's lock on the inbox those reads would otherwise hold a pooled
        connection each for as long as it runs, probe after probe, until deliveries find
        the pool empty. Giving up is DatabaseUnavailable, like not getting a connection.
        """
        statement_seconds = statement_seconds or seconds
        with self.connection(timeout=seconds) as conn:
            try:
                with conn.transaction():
                    conn.execute(
                        "select set_config('lock_timeout', %s, true),"
                        " set_config('statement_timeout', %s, true)",
                        (f"{round(seconds * 1000)}ms", f"{round(statement_seconds * 1000)}ms"),
                    )
                    yield conn
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                raise DatabaseUnavailable(f"no answer in time ({first_line(exc)})") from None

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run `work` on a pooled connection, once more on a fresh one if the first was dead.

        A database restart leaves broken connections in the pool; `work` is transactional,
        so trying again on another connection cannot apply anything twice.
        """
        for attempt in (1, 2):
            with self.connection() as conn:
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if attempt == 2 or not conn.broken:
                        raise
            # The connection died under us (say, a database restart): once more on another.
        raise DatabaseUnavailable("database connection lost twice")

    def renew_sessions(self) -> None:
        """Replace every pooled connection (those lent out when they come back).

        Called when the database turned out read-only: a session keeps the read-only
        default it started with when it was set per database or role, so only new
        sessions see writes come back; the pool's would otherwise answer "read-only" until
        each happened to be given up.
        """
        if self._pool is not None and self._pid == os.getpid():
            self._pool.drain()

    def in_use(self) -> int:
        """Connections currently lent out (for /metrics)."""
        if self._pool is None or self._pid != os.getpid():
            return 0
        stats = self._pool.get_stats()
        return stats.get("pool_size", 0) - stats.get("pool_available", 0)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

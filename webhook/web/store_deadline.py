"""Cancelling an insert that outlives its deadline, for the threaded workers' store.

On the ASGI edge a timer on the event loop answers a stalled insert's deliveries 503 while
the insert carries on (loop_store.py). A threaded worker's request thread is itself the
one waiting in psycopg, so nothing could answer it; and a lock or statement timeout set by
the insert's own transaction would cost every insert a second round trip (measured: a
quarter to a third of the threaded worker's rate), because the insert takes the inbox's
lock while it is planned, before any setting it carries applies.

So one watchdog thread per process keeps the deadline of each insert on its way and, once
one passes, asks PostgreSQL to cancel it (libpq's cancel request, which poolers forward).
The insert then fails with QueryCanceled, an OperationalError: the pool reports the
database unavailable and the deliveries get 503, with nothing stored late. A cancel can
race with the statement's end and land on whatever the session runs next, so a session
that was sent one is closed rather than returned to the pool for another request.
"""

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator

import psycopg

log = logging.getLogger(__name__)

# How long the watchdog waits for PostgreSQL to take a cancel request.
CANCEL_TIMEOUT_SECONDS = 5.0


class StoreDeadlines:
    """Deadlines for the inserts of one process, `seconds` from when each starts."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._changed = threading.Condition()
        self._watched: dict[int, tuple[float, psycopg.Connection]] = {}
        self._cancelled: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        # Whether the watchdog waits with no deadline to wake it. Deadlines only grow (each
        # is `seconds` after its insert began), so a new one needs the watchdog woken only
        # then: under load it wakes about once per `seconds`, not once per insert.
        self._idle = False

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection) -> Iterator[None]:
        """Cancel what `conn` runs inside this block once it passes the deadline."""
        token = next(self._tokens)
        with self._changed:
            self._start_watchdog()
            self._watched[token] = (time.monotonic() + self._seconds, conn)
            if self._idle:
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                self._watched.pop(token, None)
                cancelled = token in self._cancelled
                self._cancelled.discard(token)
            if cancelled:
                conn.close()

    def _start_watchdog(self) -> None:
        """Start the watchdog in this process (a forked worker starts its own)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="store-deadlines", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for token, (deadline, conn) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[token]
                        self._cancelled.add(token)
                        self._cancel(conn)
                upcoming = [deadline for deadline, _ in self._watched.values()]
                wait = max(0.0, min(upcoming) - time.monotonic()) if upcoming else None
                self._idle = wait is None
                self._changed.wait(timeout=wait)

    def _cancel(self, conn: psycopg.Connection) -> None:
        log.warning(
            "an insert into the inbox took longer than %g s; cancelling it (503)", self._seconds
        )
        try:
            conn.cancel_safe(timeout=CANCEL_TIMEOUT_SECONDS)
        except Exception as exc:  # it did not reach PostgreSQL; the session is closed anyway
            log.warning("the cancel request failed: %s", type(exc).__name__)

"""Work each web worker does besides answering requests: today, the application's links.

The application writes `public.customer.stripe_customer_id` from its own processes; the
column's trigger records a link request and this thread applies it within about a second
(POLL_SECONDS), so the customer's plan follows without any further event. Polling keeps it
independent of LISTEN/NOTIFY, which Supabase's transaction pooler does not carry, and an
idle poll is one indexed query on an empty partial index.

It runs in every gunicorn worker (started from the gunicorn config's post_worker_init), so
`make dev`, the Procfile's web line and a one-process deployment need nothing else; several
workers and hosts share the work through SKIP LOCKED. While the database is unreachable it
backs off, up to MAX_BACKOFF_SECONDS, and resumes by itself. It borrows one pooled
connection for the moment of each poll.
"""

import logging
import threading

import psycopg

from webhook import application_links
from webhook.errors import DatabaseUnavailable
from webhook.pool import Database

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


class BackgroundWork:
    """A daemon thread that applies pending link requests until stopped."""

    def __init__(
        self,
        database: Database,
        entitled_statuses: frozenset[str],
        *,
        lock_timeout_ms: int = 5000,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._database = database
        self._statuses = entitled_statuses
        self._lock_timeout_ms = lock_timeout_ms
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning: str | None = None

    def start(self) -> None:
        """Start the thread (once per process)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="webhook-background", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to finish its current request and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> int:
        """Apply what is pending now; return how many requests were settled."""
        with self._database.connection() as conn:
            return application_links.apply_pending(
                conn, self._statuses, lock_timeout_ms=self._lock_timeout_ms
            )

    def _run(self) -> None:
        backoff = self._poll_seconds
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff, self._last_warning = self._poll_seconds, None
            except (DatabaseUnavailable, psycopg.OperationalError) as exc:
                self._warn_once(f"link requests: database unavailable ({exc}); retrying")
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception:  # never let the thread die: the next poll may succeed
                log.exception("link requests: unexpected error; retrying")
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self._stop.wait(backoff)

    def _warn_once(self, message: str) -> None:
        """Log a repeated warning once, not once per poll."""
        if message != self._last_warning:
            self._last_warning = message
            log.warning("%s", message)

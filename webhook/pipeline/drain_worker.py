"""Keep draining: the loop that runs in each web worker, or as `python -m webhook drain`.

Each cycle applies a batch of received events (drain.py) and the application's pending
link requests (rules/application_links.py), on a connection of its own, so a drain never takes
a connection a request is waiting for. It wakes at once when its own process has stored an
event (wake()), and otherwise polls every POLL_SECONDS, which picks up events stored by
other processes or hosts and batches a dead drain left behind. No NOTIFY: it would take a
cluster-wide lock at every commit, and LISTEN does not work through a transaction pooler.

While the database is unreachable, or lacks a migration this code relies on (a version
started before `migrate` ran), the loop backs off, up to MAX_BACKOFF_SECONDS, and resumes
by itself; a deadlock or a lock timeout just retries the batch (a link request that
waits in vain, for a lock or a stalled statement, pauses the link requests instead).
stop() lets the batch in hand commit (or, if the process is killed, its transaction rolls
back and the events return to the queue), and is final: a delivery stored during the
worker's shutdown does not start the drain again.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence

import psycopg

from webhook.core.errors import ProjectError, SchemaBehind
from webhook.core.logs import log_unexpected
from webhook.database import migrations
from webhook.database.connect import dead_peer_options, first_line, mask_url
from webhook.pipeline.drain import BATCH_EVENTS, Applied, drain_batch, queued
from webhook.pipeline.processor import ProcessingRules
from webhook.rules import application_links
from webhook.stripe.payloads import Event

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 30.0
LINK_REQUESTS_PER_CYCLE = 100
# A link request whose customer another transaction holds (the application's own) waits at
# most this long, then link requests rest for LINK_REQUESTS_PAUSE_SECONDS: the request stays
# pending, and the drain's batches do not queue behind a lock wait cycle after cycle.
LINK_REQUEST_LOCK_TIMEOUT_MS = 500
# Likewise for a link request's statement that runs this long (a settling request changes
# one customer's rows, in milliseconds; one that takes seconds is stalled, by a trigger of
# the application's or the disk, and would hold up the batches behind it).
LINK_REQUEST_STATEMENT_TIMEOUT_MS = 2000
LINK_REQUESTS_PAUSE_SECONDS = 10.0
# Parsed events kept for this process's drain: at most this many, for at most this long
# (another process's drain may take an event; its entry must not outlive that). A drain
# takes its own process's events within a batch or two (tens of milliseconds); every
# entry kept longer is a parsed payload of a few hundred objects (some 25 kB) that the
# worker holds and the garbage collector walks. Measured at 3,600 events/s on two
# workers: keeping them saves about 5% of the workers' CPU against decoding every stored
# payload, and 500 for 0.25 s keeps that with 17 MiB less per worker than 2,000 for 1 s.
KNOWN_EVENTS_LIMIT = 500
KNOWN_EVENTS_SECONDS = 0.25
# What a link request that waited in vain raises: a lock it did not get, a deadlock it
# was chosen to break, a statement cancelled at its timeout.
LINK_REQUEST_WAITS = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.QueryCanceled,
)
# until_empty's pause between rounds that found everything left busy elsewhere.
UNTIL_EMPTY_RETRY_SECONDS = 0.1
# After a wake-up, how long to let more deliveries arrive before claiming a batch.
GATHER_SECONDS = 0.025


class DrainWorker:
    """Drains the queue and applies link requests until stopped."""

    def __init__(
        self,
        url: str,
        rules: ProcessingRules,
        *,
        prepare: bool = True,
        batch_size: int = BATCH_EVENTS,
        poll_seconds: float = POLL_SECONDS,
        on_applied: Callable[[Sequence[Applied]], None] = lambda _applied: None,
    ) -> None:
        self._url = url
        self._rules = rules
        self._prepare = prepare
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._on_applied = on_applied
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one cycle at a time (the thread, or a caller)
        self._starting = threading.Lock()
        self._stopped_for_good = False  # stop() was called: start() does nothing any more
        self._last_warning: str | None = None
        self._link_requests_paused_until = 0.0
        # Events this process stored and parsed, until its drain applies them (bounded).
        self._known: dict[str, Event] = {}  # insertion order: oldest first
        self._known_since: dict[str, float] = {}
        # wake() adds from request threads or the event loop while the drain's thread reads
        # and forgets: one of them at a time.
        self._known_lock = threading.Lock()

    # -- control --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread (once per process; later calls do nothing, and
        so do calls after stop())."""
        with self._starting:
            if self._stopped_for_good:
                return
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self.run, name="webhook-drain", daemon=True)
                self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self, event: Event | None = None) -> None:
        """An event was stored in this process: drain now rather than at the next poll.

        Handing over the parsed event spares the drain decoding its payload again (if
        another process's drain takes it, that one reads the stored payload).
        """
        if event is not None and len(self._known) < KNOWN_EVENTS_LIMIT:
            with self._known_lock:
                self._known[event.id] = event
                self._known_since[event.id] = time.monotonic()
        self._wake.set()

    def request_stop(self) -> None:
        """Ask the loop to stop after the batch in hand (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, then stop for good; close the connection."""
        with self._starting:
            self._stopped_for_good = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            self._close()

    # -- work -----------------------------------------------------------------------------

    def run(self) -> None:
        """The loop; returns once stop() is called."""
        backoff = 0.0
        while not self._stop.is_set():
            try:
                busy = self.cycle()
                if self._last_warning is not None:
                    # Paired with the warning that said why it waited, at the same level.
                    log.warning("drain: resumed")
                backoff, self._last_warning = 0.0, None
            except SchemaBehind as exc:
                # A new version started before its migrations ran (no release step): applying
                # events against the old schema could write what it no longer expects.
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                self._warn(f"drain: {exc}; waiting")
                self._stop.wait(backoff)
                continue
            except psycopg.errors.ReadOnlySqlTransaction:
                # Supabase's read-only mode or a standby after a failover: wait it out, on
                # a new connection each time (a session keeps the read-only default it
                # started with when the setting was made per database or role).
                with self._lock:
                    self._close()
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                self._warn("drain: the database accepts no writes (read-only); retrying")
                self._stop.wait(backoff)
                continue
            except psycopg.OperationalError as exc:
                broken = self._conn is None or self._conn.broken
                if broken:
                    with self._lock:
                        self._close()
                    backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                    self._warn(f"drain: database unavailable ({first_line(exc)}); retrying")
                else:  # a deadlock or a lock timeout: the batch was rolled back, try again
                    backoff = 0.05
                    log.info("drain: %s; retrying the batch", first_line(exc))
                self._stop.wait(backoff)
                continue
            except Exception:  # never let the loop die; the next cycle may succeed
                log_unexpected(log, "drain: unexpected error; retrying")
                with self._lock:
                    self._close()
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF_SECONDS)
                self._stop.wait(backoff)
                continue
            if not busy:
                self._wake.wait(self._poll_seconds)
                self._wake.clear()
                # Let a few more deliveries arrive: one batch of many costs much less
                # than many batches of one, for a few milliseconds of latency.
                self._stop.wait(GATHER_SECONDS)
        with self._lock:
            self._close()

    def cycle(self) -> bool:
        """One batch and the pending link requests; whether more may be waiting."""
        applied, links, _ = self._round()
        return len(applied) == self._batch_size or links == LINK_REQUESTS_PER_CYCLE

    def until_empty(self, timeout: float = 60.0) -> int:
        """Cycle until nothing is left; return how many events were applied (tests, CLI).

        Raises ProjectError if events or link requests still wait after `timeout` seconds
        (their customers stayed busy, locked by other transactions).
        """
        total = 0
        deadline = time.monotonic() + timeout
        while True:
            applied, links, waiting = self._round(look_at_queue=True)
            total += len(applied)
            if not applied and not links and not waiting:
                return total
            if time.monotonic() > deadline:
                raise ProjectError(
                    f"events or link requests still wait after {timeout:g}s: their customers"
                    " are locked by other transactions"
                )
            if not applied and not links:
                time.sleep(UNTIL_EMPTY_RETRY_SECONDS)  # busy elsewhere: look again soon

    def _round(self, *, look_at_queue: bool = False) -> tuple[list[Applied], int, bool]:
        """A batch, then the pending link requests: what was applied, how many requests
        were settled, and (with `look_at_queue`, when nothing was applied) whether events
        or link requests still wait. The batch has committed before the requests are tried: its events are
        logged and counted even when the requests fail."""
        applied: list[Applied] = []
        try:
            with self._lock:
                conn = self._connection()
                applied = self._drain_batch(conn)
                links = self._apply_link_requests(conn)
                waiting = (
                    look_at_queue
                    and not applied
                    and (queued(conn) or application_links.pending_count(conn) > 0)
                )
        finally:
            if applied:
                self._on_applied(applied)
        return applied, links, waiting

    def _apply_link_requests(self, conn: psycopg.Connection) -> int:
        """Up to LINK_REQUESTS_PER_CYCLE pending link requests; none while they rest after
        one waited for a lock in vain (see LINK_REQUEST_LOCK_TIMEOUT_MS)."""
        if time.monotonic() < self._link_requests_paused_until:
            return 0
        try:
            return application_links.apply_pending(
                conn,
                self._rules.entitled_statuses,
                limit=LINK_REQUESTS_PER_CYCLE,
                lock_timeout_ms=min(self._rules.lock_timeout_ms, LINK_REQUEST_LOCK_TIMEOUT_MS),
                statement_timeout_ms=min(
                    self._rules.statement_timeout_ms, LINK_REQUEST_STATEMENT_TIMEOUT_MS
                ),
            )
        except LINK_REQUEST_WAITS as exc:
            self._link_requests_paused_until = time.monotonic() + LINK_REQUESTS_PAUSE_SECONDS
            log.info(
                "drain: a link request waited in vain (%s); link requests resume in %gs",
                first_line(exc),
                LINK_REQUESTS_PAUSE_SECONDS,
            )
            return 0

    def _drain_batch(self, conn: psycopg.Connection) -> list[Applied]:
        # drain_batch only looks entries up, which is safe while wake() adds some.
        applied = drain_batch(conn, self._rules, limit=self._batch_size, known=self._known)
        cutoff = time.monotonic() - KNOWN_EVENTS_SECONDS
        with self._known_lock:
            for event in applied:
                self._known.pop(event.event_id, None)
                self._known_since.pop(event.event_id, None)
            # Older entries: other drains took those events. Oldest first, so only the
            # expired head is visited.
            while self._known_since:
                event_id, since = next(iter(self._known_since.items()))
                if since >= cutoff:
                    break  # the rest are newer
                del self._known_since[event_id]
                self._known.pop(event_id, None)
        return applied

    # -- connection -----------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close()
            try:
                self._conn = psycopg.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=5,
                    prepare_threshold=5 if self._prepare else None,
                    application_name="webhook-drain",
                    **dead_peer_options(self._url),
                )
            except psycopg.OperationalError as exc:
                raise psycopg.OperationalError(
                    f"cannot reach the database at {mask_url(self._url)}: {first_line(exc)}"
                ) from None
            waiting = migrations.pending(self._conn)
            if waiting:
                self._close()
                raise SchemaBehind(
                    f"{len(waiting)} migration(s) pending ({waiting[0].path.name} first);"
                    " run `python -m webhook migrate`"
                )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _warn(self, message: str) -> None:
        if message != self._last_warning:
            self._last_warning = message
            log.warning("%s", message)

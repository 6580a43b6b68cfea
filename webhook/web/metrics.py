"""Prometheus metrics for GET /metrics.

Under gunicorn each worker counts on its own; with PROMETHEUS_MULTIPROC_DIR set (the
gunicorn config sets it) the counts of all workers, live and dead, are added up at scrape
time. Some figures are read from the database at scrape time instead of being counted: the
age of the oldest failed event, how many events wait in each status (`received` is the
queue), and the queue's lag, the age of its oldest event. Labels are event
types and fixed words only; no ids, no customer data.
"""

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from webhook.core.errors import DatabaseUnavailable
from webhook.database.pool import Database
from webhook.pipeline.drain import Applied

EVENTS = Counter(
    "webhook_events",
    "Stripe events applied, by event type and outcome (processed, ignored, failed), and"
    " redeliveries of settled events (outcome duplicate).",
    ["type", "outcome"],
)
RECEIVED = Counter(
    "webhook_events_received", "New Stripe events stored by the endpoint, by event type.", ["type"]
)
APPLY_DELAY_SECONDS = Histogram(
    "webhook_received_to_applied_seconds",
    "Time from storing an event to applying it (queued mode), in seconds.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
SIGNATURE_FAILURES = Counter(
    "webhook_signature_failures", "Requests rejected before storing, by reason.", ["reason"]
)
DATABASE_UNAVAILABLE = Counter(
    "webhook_database_unavailable", "Requests answered 503 because the database was unavailable."
)
PROCESSING_SECONDS = Histogram(
    "webhook_processing_seconds",
    "Time to store and apply one event, in seconds.",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
POOL_IN_USE = Gauge(
    "webhook_db_pool_connections_in_use",
    "Database connections lent out by the workers' pools.",
    multiprocess_mode="livesum",
)

CONTENT_TYPE = CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

# prometheus_client picks file-backed (multiprocess) or in-memory values when it is first
# imported; the scrape must read them the same way, whatever the environment says later.
MULTIPROCESS = values.ValueClass is not values.MutexValue


class _InboxCollector(Collector):
    """Figures read from the inbox at scrape time."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            # Counting a queue of millions takes a while (about 0.25 s for 1,000,000):
            # the statements get longer than a lock wait, within a scrape's usual 10 s.
            with self.database.briefly(2.0, statement_seconds=8.0) as conn:
                oldest = conn.execute(
                    "select coalesce(extract(epoch from now() - min(received_at)), 0)"
                    " from webhook_private.events where status = 'failed'"
                ).fetchone()[0]
                waiting = conn.execute(
                    "select status, count(*) from webhook_private.events"
                    " where status in ('failed', 'received') group by status"
                ).fetchall()
                lag = queue_lag_seconds(conn)
        except DatabaseUnavailable:
            return
        yield GaugeMetricFamily(
            "webhook_oldest_failed_event_age_seconds",
            "Age of the oldest event still failed (0 when none is).",
            value=float(oldest),
        )
        family = GaugeMetricFamily(
            "webhook_inbox_events",
            "Events in the inbox by status (failed, received).",
            labels=["status"],
        )
        counts = dict(waiting)
        for status in ("failed", "received"):
            family.add_metric([status], counts.get(status, 0))
        yield family
        yield GaugeMetricFamily(
            "webhook_queue_lag_seconds",
            "Age of the oldest stored event not applied yet (0 when the queue is empty).",
            value=lag,
        )


def queue_lag_seconds(conn: psycopg.Connection) -> float:
    """How long the oldest received event has waited (0 when none waits)."""
    row = conn.execute(
        "select coalesce(extract(epoch from now() - min(received_at)), 0)"
        " from webhook_private.events where status = 'received'"
    ).fetchone()
    return float(row[0]) if row else 0.0


def observe_applied(applied: Sequence[Applied]) -> None:
    """Count what a drain applied: outcomes by type, and how long each event waited."""
    for event in applied:
        EVENTS.labels(event.event_type, event.outcome.status).inc()
        APPLY_DELAY_SECONDS.observe(event.waited_seconds)


def serve_in_background(
    database: Database, host: str, port: int, renderer: Callable[[Database], bytes]
) -> Callable[[], None]:
    """Serve GET /metrics (what `renderer` gives) on host:port from a daemon thread, for a
    process without the web app (`python -m webhook drain --metrics-port`); returns the
    function that stops it. Raises OSError if the port cannot be bound."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") != "GET":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: GET /metrics\n"]
        try:
            body = renderer(database)
        except Exception as exc:  # one log line and a 500, never a traceback on stderr
            log.warning("metrics: a scrape failed: %s", exc)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"metrics unavailable\n"]
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]
        )
        return [body]

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *_args: object) -> None:  # scrapes are not worth a log line
            pass

    class _OneLineErrors(WSGIServer):
        def handle_error(self, request: object, client_address: object) -> None:
            # A connection that broke (the scraper went away): one line, no traceback.
            log.warning("metrics: a scrape failed: %s", sys.exc_info()[1])

    server = make_server(host, port, app, server_class=_OneLineErrors, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="drain-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def render_drain(database: Database) -> bytes:
    """What a drain of its own has to show: what it applied (by type and outcome, and how
    long each waited), its process, and the inbox figures; not the request metrics, which
    only a web process counts. With PROMETHEUS_MULTIPROC_DIR set, whatever the folder holds
    (a folder shared with web workers on the same host adds theirs up)."""

    def drain_only() -> CollectorRegistry:
        registry = CollectorRegistry()
        registry.register(EVENTS)
        registry.register(APPLY_DELAY_SECONDS)
        ProcessCollector(registry=registry)
        return registry

    return _exposition(database, drain_only)


def render(database: Database) -> bytes:
    """The exposition text: counted metrics (all workers) plus the inbox figures."""
    POOL_IN_USE.set(database.in_use())
    return _exposition(database, lambda: REGISTRY)


def _exposition(database: Database, in_memory: Callable[[], CollectorRegistry]) -> bytes:
    """Counted metrics (from the multiprocess folder, else `in_memory()`) and the inbox's."""
    if MULTIPROCESS:
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = in_memory()
    inbox = CollectorRegistry()
    inbox.register(_InboxCollector(database))
    return generate_latest(counted) + generate_latest(inbox)

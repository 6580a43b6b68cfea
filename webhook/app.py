"""The Flask app: POST /webhook, GET /healthz, GET /readyz, GET /metrics.

The webhook view is thin and has three outcomes: 400 for a request that is not a valid,
signed, current Stripe event (nothing is written), 200 once the event is durably stored
(whatever the processing outcome, duplicates and unhandled types included), and 503 when
the database cannot do its part right now, so that Stripe retries. Nothing answers with a
traceback.

By default (WEBHOOK_APPLY=queued) storing is all the request does: one insert, no lock
waited for, no handler; the worker's drain (drain_worker.py) applies the event moments
later. With WEBHOOK_APPLY=inline the request applies it too, and the 200 carries its
outcome.
"""

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from webhook import inbox, metrics, migrations
from webhook.config import Settings, load_settings, use_prepared_statements
from webhook.db import resolve_database_url
from webhook.drain import Applied
from webhook.drain_worker import DrainWorker
from webhook.errors import DatabaseUnavailable
from webhook.logs import configure_event_log, log_applied, log_result
from webhook.pool import Database
from webhook.processor import ProcessingRules, process_delivery
from webhook.signature import SignatureError, SignatureVerifier
from webhook.stripe_objects import Event, PayloadError, parse_event

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = "5"
READINESS_TIMEOUT_SECONDS = 2.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """Everything the views need, built once from the settings."""

    settings: Settings
    verifier: SignatureVerifier
    database: Database
    rules: ProcessingRules
    # Started by the gunicorn config in each worker (see gunicorn_config.post_worker_init).
    drain: DrainWorker

    def close(self) -> None:
        """Stop the drain and close the pool (tests; gunicorn's exit handlers otherwise)."""
        self.drain.stop()
        self.database.close()


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from the environment, with `config` overriding variables (tests).

    Refuses to build (ConfigError) when the configuration is incomplete, so a deployment
    with a missing secret fails at start-up rather than at the first delivery.
    """
    settings = load_settings({**os.environ, **(config or {})})
    database_url = resolve_database_url(settings.database_url)
    prepare = use_prepared_statements(settings.prepared_statements, database_url)
    database = Database(
        database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        prepare=prepare,
    )
    rules = ProcessingRules(
        entitled_statuses=settings.entitled_statuses,
        stripe_api_key=settings.stripe_api_key,
        stripe_api_base=settings.stripe_api_base,
        lock_timeout_ms=settings.lock_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
    )
    service = Service(
        settings=settings,
        verifier=SignatureVerifier(settings.webhook_secrets, settings.tolerance_seconds),
        database=database,
        rules=rules,
        drain=DrainWorker(
            database_url,
            rules,
            prepare=prepare,
            batch_size=settings.drain_batch_size,
            on_applied=observe_applied,
        ),
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["webhook"] = service
    configure_event_log()
    _register_routes(app, service)
    _register_errors(app)
    return app


def _register_routes(app: Flask, service: Service) -> None:
    @app.post("/webhook")
    def receive_event() -> tuple[Response, int]:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            _discard_body(request.environ)
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        payload = request.get_data(cache=False)
        try:
            service.verifier.verify(payload, request.headers.get("Stripe-Signature"))
        except SignatureError as exc:
            metrics.SIGNATURE_FAILURES.labels(exc.code).inc()
            return _error(400, str(exc))
        try:
            text = payload.decode("utf-8")  # verified above to be UTF-8
            event = parse_event(_decode_json(text), text)
        except PayloadError as exc:
            metrics.SIGNATURE_FAILURES.labels("not_an_event").inc()
            return _error(400, str(exc))
        if service.settings.apply_mode == "inline":
            return _apply_inline(service, event)
        return _store_queued(service, event)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(
            metrics.render(service.database), mimetype=None, content_type=metrics.CONTENT_TYPE
        )

    @app.get("/healthz")
    def health() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz")
    def readiness() -> tuple[Response, int]:
        try:
            with service.database.connection(timeout=READINESS_TIMEOUT_SECONDS) as conn:
                waiting = [m.path.name for m in migrations.pending(conn)]
                lag = metrics.queue_lag_seconds(conn) if not waiting else 0.0
        except DatabaseUnavailable as exc:
            return jsonify({"status": "unavailable", "reason": str(exc)}), 503
        if waiting:
            reason = f"migrations pending: {', '.join(waiting)}"
            return jsonify({"status": "unavailable", "reason": reason}), 503
        # A lag is shown, never a reason to leave the load balancer: that would only make
        # the queue longer.
        return jsonify({"status": "ready", "queue_lag_seconds": round(lag, 3)}), 200


def _apply_inline(service: Service, event: Event) -> tuple[Response, int]:
    """WEBHOOK_APPLY=inline: store and apply in the request; 200 means applied."""
    try:
        result = service.database.run(lambda conn: process_delivery(conn, event, service.rules))
    finally:
        metrics.POOL_IN_USE.set(service.database.in_use())
    log_result(result)
    outcome = "duplicate" if result.duplicate else result.outcome.status
    if not result.duplicate:
        metrics.RECEIVED.labels(event.type).inc()
    metrics.EVENTS.labels(event.type, outcome).inc()
    metrics.PROCESSING_SECONDS.observe(result.duration_ms / 1000)
    return _received(event, result.outcome.status, result.duplicate)


def _store_queued(service: Service, event: Event) -> tuple[Response, int]:
    """WEBHOOK_APPLY=queued (the default): store the event, wake the drain, answer."""
    started = time.perf_counter()
    try:
        stored = service.database.run(lambda conn: inbox.receive(conn, event))
    finally:
        metrics.POOL_IN_USE.set(service.database.in_use())
    if service.settings.web_drain and not service.drain.running:
        service.drain.start()  # any WSGI server; gunicorn's config starts it at boot already
    if stored.new or stored.status == "received":
        service.drain.wake()
    if stored.new:
        metrics.RECEIVED.labels(event.type).inc()
    else:
        metrics.EVENTS.labels(event.type, "duplicate").inc()
    metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)
    return _received(event, stored.status, not stored.new)


def _received(event: Event, status: str, duplicate: bool) -> tuple[Response, int]:
    body = {"received": True, "id": event.id, "status": status, "duplicate": duplicate}
    return jsonify(body), 200


def observe_applied(applied: Sequence[Applied]) -> None:
    """What a drain applied: the log line and the metrics of each event."""
    log_applied(applied)
    metrics.observe_applied(applied)


def _register_errors(app: Flask) -> None:
    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(exc: DatabaseUnavailable) -> tuple[Response, int]:
        log.warning("database unavailable: %s", exc)
        metrics.DATABASE_UNAVAILABLE.inc()
        response, status = _error(503, "database unavailable, retry later")
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        reasons = {413: f"body larger than {MAX_BODY_BYTES} bytes"}
        response, status = _error(status, reasons.get(status, exc.name.lower()))
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return _error(500, "internal error")


# An oversized body is read and thrown away up to this much, so that the client, still
# sending, receives the 413 instead of a reset connection; beyond it, the server just closes.
DISCARD_LIMIT_BYTES = 4 * MAX_BODY_BYTES


def _discard_body(environ: Mapping[str, object]) -> None:
    """Read an oversized body to its end (within DISCARD_LIMIT_BYTES) without keeping it."""
    stream = environ.get("wsgi.input")
    remaining = min(int(str(environ.get("CONTENT_LENGTH") or 0)), DISCARD_LIMIT_BYTES)
    while remaining > 0 and stream is not None:
        chunk = stream.read(min(remaining, 64 * 1024))  # type: ignore[attr-defined]
        if not chunk:
            return
        remaining -= len(chunk)


def _decode_json(payload: str) -> object:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        raise PayloadError("body is not valid JSON") from None
    if _MAY_HOLD_UNSTORABLE.search(payload):
        _check_storable(document)
    return document


# NUL and lone surrogates can only reach a decoded document through these escapes (JSON
# forbids raw control characters, and the body was decoded as strict UTF-8), so a body
# without them needs no walk. A match may still be harmless, such as an escaped backslash
# before "u0000" or a valid surrogate pair: the walk decides.
_MAY_HOLD_UNSTORABLE = re.compile(r"\\u(?:0000|d[89a-f])", re.IGNORECASE)


def _check_storable(value: object) -> None:
    """Refuse strings PostgreSQL cannot store: NUL characters and lone UTF-16 surrogates.

    Both are valid JSON (as \\u0000 and \\ud800) and Stripe never sends them, but jsonb
    rejects them, so they get a clear 400 here instead of failing in the database.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise PayloadError(
                    "body contains a NUL character (\\u0000), which cannot be stored"
                )
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise PayloadError(
                        "body contains a lone UTF-16 surrogate, which cannot be stored"
                    ) from None


def _error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify({"error": reason}), status

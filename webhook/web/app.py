"""The Flask app: POST /webhook, GET /healthz, GET /readyz, GET /metrics.

What a delivery gets is decided in delivery.py: 400 for a request that is not a valid,
signed, current Stripe event (nothing is written), 200 once the event is durably stored,
503 when the database cannot do its part right now. POST /webhook is answered by a thin
WSGI layer in front of Flask (FastWebhook) and, for what that leaves, by the Flask route;
both call delivery.handle. Nothing answers with a traceback.
"""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import psycopg
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from webhook.core.config import load_settings, use_prepared_statements
from webhook.core.errors import DatabaseUnavailable
from webhook.core.logs import configure_service_log, log_unexpected
from webhook.database import migrations
from webhook.database.connect import resolve_database_url
from webhook.database.pool import Database
from webhook.pipeline.drain import Applied
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.event_log import configure_event_log, log_applied
from webhook.pipeline.processor import ProcessingRules
from webhook.stripe.signature import SignatureVerifier
from webhook.web import delivery, metrics
from webhook.web.grouped_store import GroupedStore
from webhook.web.service import Service
from webhook.web.store_deadline import StoreDeadlines

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

MAX_BODY_BYTES = 1024 * 1024
READINESS_TIMEOUT_SECONDS = 2.0

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from the environment, with `config` overriding variables (tests).

    Refuses to build (ConfigError) when the configuration is incomplete, so a deployment
    with a missing secret fails at start-up rather than at the first delivery.
    """
    settings = load_settings({**os.environ, **(config or {})})
    configure_service_log(settings.log_level)
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
        # The threaded workers' bound on a stalled database (the ASGI edge has its own).
        store=GroupedStore(
            database,
            settings.store_group_size,
            deadlines=StoreDeadlines(settings.store_timeout_ms / 1000),
        ),
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
    app.wsgi_app = FastWebhook(app.wsgi_app, service)  # type: ignore[method-assign]
    return app


def _register_routes(app: Flask, service: Service) -> None:
    @app.post("/webhook")
    def receive_event() -> Response:
        """What the fast path leaves: too large a body, no Content-Length."""
        too_large = delivery.error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            _discard_body(request.environ)
            return _respond(too_large)
        # Without a length (a chunked body), read one byte past the limit to tell a body
        # of exactly the limit from a longer one, which would otherwise arrive cut short.
        payload = request.environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
        if len(payload) > MAX_BODY_BYTES:
            return _respond(too_large)
        return _respond(delivery.handle(service, payload, request.headers.get("Stripe-Signature")))

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
            with service.database.briefly(READINESS_TIMEOUT_SECONDS) as conn:
                waiting = [m.path.name for m in migrations.pending(conn)]
                lag = metrics.queue_lag_seconds(conn) if not waiting else 0.0
                writable = _accepts_writes(conn)
                if not writable:  # the next probe asks on new connections
                    service.database.renew_sessions()
        except DatabaseUnavailable as exc:
            # The reason is the log's: anyone may ask /readyz, and the database's address
            # and user are not theirs to know.
            log.warning("readiness: %s", exc)
            return jsonify({"status": "unavailable", "reason": "database unavailable"}), 503
        if waiting:
            reason = f"migrations pending: {', '.join(waiting)}"
            return jsonify({"status": "unavailable", "reason": reason}), 503
        if not writable:  # every delivery would get 503: take this instance out meanwhile
            return jsonify({"status": "unavailable", "reason": "database is read-only"}), 503
        # A lag is shown, never a reason to leave the load balancer: that would only make
        # the queue longer.
        return jsonify({"status": "ready", "queue_lag_seconds": round(lag, 3)}), 200


def observe_applied(applied: Sequence[Applied]) -> None:
    """What a drain applied: the log line and the metrics of each event."""
    log_applied(applied)
    metrics.observe_applied(applied)


def _register_errors(app: Flask) -> None:
    @app.errorhandler(DatabaseUnavailable)
    def database_unavailable(exc: DatabaseUnavailable) -> Response:
        return _respond(delivery.database_unavailable(exc))

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
        log_unexpected(log, "unexpected error")
        return _error(500, "internal error")


def _accepts_writes(conn: psycopg.Connection) -> bool:
    """Whether a transaction here may write: not in Supabase's read-only mode (set when its
    disk fills) nor on a standby (after a failover to one)."""
    row = conn.execute("select current_setting('transaction_read_only')").fetchone()
    return row is not None and row[0] == "off"


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


def _error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify({"error": reason}), status


def _respond(answer: delivery.Answer) -> Response:
    response = jsonify(answer.body)
    response.status_code = answer.status
    response.headers.update(answer.headers)
    return response


class FastWebhook:
    """WSGI middleware: POST /webhook with a body of known, acceptable size, answered
    straight from delivery.handle; everything else goes to the Flask app.

    The same decisions as the Flask route (it calls the same function); the framework's
    request and response machinery is skipped for the one endpoint under load.
    """

    def __init__(self, app: "WSGIApplication", service: Service) -> None:
        self.app = app
        self.service = service

    def __call__(self, environ: "WSGIEnvironment", start_response: "StartResponse"):
        if environ.get("PATH_INFO") != "/webhook" or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return self.app(environ, start_response)
        if not 0 <= length <= MAX_BODY_BYTES:
            return self.app(environ, start_response)
        try:
            payload = environ["wsgi.input"].read(length)
            answer = delivery.handle(self.service, payload, environ.get("HTTP_STRIPE_SIGNATURE"))
        except Exception:
            log_unexpected(log, "unexpected error")
            answer = delivery.error(500, "internal error")
        body = json.dumps(answer.body, separators=(",", ":")).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(
            f"{answer.status} {_REASONS.get(answer.status, '')}",
            headers + list(answer.headers.items()),
        )
        return [body]


_REASONS = {200: "OK", 400: "BAD REQUEST", 500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}

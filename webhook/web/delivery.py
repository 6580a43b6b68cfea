"""POST /webhook without the web framework: verify, decode, store (or apply), answer.

The one place that decides what a delivery gets. Kept free of Flask and of any server so
that every way the endpoint is served takes the same decisions: the ASGI edge that
gunicorn runs in production (asgi.py: read, then its own store, then stored), the WSGI
fast path in front of Flask (app.py: handle), and the Flask route that takes what the
fast path leaves (a body too large, no Content-Length).

Three outcomes: 400 for a request that is not a valid, signed, current Stripe event
(nothing is written), 200 once the event is durably stored, and 503 when the database
cannot do its part right now, so that Stripe retries. By default (WEBHOOK_APPLY=queued)
storing is all the request does: one insert, no lock waited for, no handler; the worker's
drain applies the event moments later. With WEBHOOK_APPLY=inline the request applies it
too, and the 200 carries its outcome.
"""

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from webhook.core import json_decode
from webhook.core.errors import DatabaseUnavailable
from webhook.pipeline.event_log import log_result
from webhook.pipeline.inbox import Stored
from webhook.pipeline.processor import process_delivery
from webhook.stripe.payloads import Event, PayloadError, parse_event
from webhook.stripe.signature import SignatureError
from webhook.web import metrics
from webhook.web.service import Service

RETRY_AFTER_SECONDS = "5"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What to send back: status, JSON body, extra headers."""

    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)


def handle(service: Service, payload: bytes, signature: str | None) -> Answer:
    """The answer to one delivery of `payload` signed with `signature` (a WSGI request
    thread's whole part; the ASGI edge runs the same steps around its own store)."""
    checked = read(service, payload, signature)
    if isinstance(checked, Answer):
        return checked
    try:
        if service.settings.apply_mode == "inline":
            return apply_inline(service, checked)
        started = time.perf_counter()
        return stored(service, checked, service.store.receive(checked), started)
    except DatabaseUnavailable as exc:
        return database_unavailable(exc)
    finally:
        metrics.POOL_IN_USE.set(service.database.in_use())


def read(service: Service, payload: bytes, signature: str | None) -> Event | Answer:
    """The verified, decoded event; or the 400 for a request that is not one."""
    try:
        service.verifier.verify(payload, signature)
    except SignatureError as exc:
        metrics.SIGNATURE_FAILURES.labels(exc.code).inc()
        return error(400, str(exc))
    try:
        text = payload.decode("utf-8")  # verified above to be UTF-8
        return parse_event(decode_json(text), text)
    except PayloadError as exc:
        metrics.SIGNATURE_FAILURES.labels("not_an_event").inc()
        return error(400, str(exc))


# While the database is out, every delivery is answered 503: one log line per reason per
# this many seconds, with how many got that reason meanwhile, instead of one per request.
OUTAGE_LOG_SECONDS = 10.0


# Reasons remembered at most (their texts may vary, with a server's own error message).
OUTAGE_LOG_REASONS = 64


class _OutageLog:
    """The 503s' log lines, thinned out per reason (request threads and the event loop
    share it): each reason's first 503 is logged, later ones within OUTAGE_LOG_SECONDS are
    counted, and the count goes on that reason's next line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, tuple[float, int]] = {}  # reason -> (logged at, unlogged)

    def warn(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            logged_at, unlogged = self._reasons.get(reason, (float("-inf"), 0))
            if now - logged_at < OUTAGE_LOG_SECONDS:
                self._reasons[reason] = (logged_at, unlogged + 1)
                return
            self._reasons.pop(reason, None)
            if len(self._reasons) >= OUTAGE_LOG_REASONS:  # forget the longest unlogged
                del self._reasons[next(iter(self._reasons))]
            self._reasons[reason] = (now, 0)
        more = f" ({unlogged} more with this reason since its last line)" if unlogged else ""
        log.warning("database unavailable: %s%s", reason, more)


_outage_log = _OutageLog()


def database_unavailable(exc: DatabaseUnavailable) -> Answer:
    _outage_log.warn(str(exc))
    metrics.DATABASE_UNAVAILABLE.inc()
    return error(503, "database unavailable, retry later", {"Retry-After": RETRY_AFTER_SECONDS})


def error(status: int, reason: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"error": reason}, headers or {})


def apply_inline(service: Service, event: Event) -> Answer:
    """WEBHOOK_APPLY=inline: store and apply in the request; 200 means applied."""
    result = service.database.run(lambda conn: process_delivery(conn, event, service.rules))
    log_result(result)
    outcome = "duplicate" if result.duplicate else result.outcome.status
    if not result.duplicate:
        metrics.RECEIVED.labels(event.type).inc()
    metrics.EVENTS.labels(event.type, outcome).inc()
    metrics.PROCESSING_SECONDS.observe(result.duration_ms / 1000)
    return _received(event, result.outcome.status, result.duplicate)


def stored(service: Service, event: Event, row: Stored, started: float) -> Answer:
    """WEBHOOK_APPLY=queued (the default), once the event is in the inbox: wake the drain,
    count, answer. `started` is when storing began (time.perf_counter)."""
    if service.settings.web_drain and not service.drain.running:
        service.drain.start()  # any server; gunicorn's config starts it at boot already
    if row.new:
        service.drain.wake(event)
    elif row.status == "received":
        # A redelivery of an event still queued: the drain applies what was stored, never
        # this request's body (the same event as Stripe signed it, but the stored payload
        # is what `events show` and `replay` use).
        service.drain.wake()
    if row.new:
        metrics.RECEIVED.labels(event.type).inc()
    else:
        metrics.EVENTS.labels(event.type, "duplicate").inc()
    metrics.PROCESSING_SECONDS.observe(time.perf_counter() - started)
    return _received(event, row.status, not row.new)


def _received(event: Event, status: str, duplicate: bool) -> Answer:
    return Answer(200, {"received": True, "id": event.id, "status": status, "duplicate": duplicate})


def decode_json(payload: str) -> object:
    try:
        document = json_decode.loads(payload)
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
    """Refuse strings PostgreSQL cannot read back: NUL characters and lone UTF-16 surrogates.

    Both are valid JSON (as \\u0000 and \\ud800) and Stripe never sends them, but
    PostgreSQL cannot turn them into text: a stored payload holding one would fail every
    ->> and ::jsonb on it. They get a clear 400 here instead.
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

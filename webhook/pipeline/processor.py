"""Apply one event: store it, run its handler, record the outcome, all in one transaction.

Three results only, which the web layer maps to status codes: the event is stored with an
outcome (200, even when that outcome is `failed`), the request was bad (400), or the
database could not do its part right now (503, and Stripe retries).
"""

import logging
import time
from dataclasses import dataclass, field

import psycopg

from webhook.pipeline import inbox
from webhook.pipeline.handlers import Context, Outcome, handler_for
from webhook.rules.accounts import ApplyError
from webhook.stripe.payloads import Event, PayloadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessingRules:
    """The configuration a handler may consult."""

    entitled_statuses: frozenset[str]
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 15000


@dataclass(frozen=True)
class Result:
    """What happened to one delivery."""

    event: Event
    outcome: Outcome
    duplicate: bool
    duration_ms: float


def process_delivery(conn: psycopg.Connection, event: Event, rules: ProcessingRules) -> Result:
    """Store and apply a delivery; a redelivery of a settled event changes nothing.

    `conn` must be in autocommit mode; this function owns the transactions. It runs in
    pipeline mode: statements whose results are not needed yet travel together, so a
    subscription event costs four round trips. If applying fails for a data reason, the
    transaction is rolled back and a second one stores the event as failed, so a failed
    event leaves only its inbox row. A redelivery of a failed event tries it again, so
    fixing the data and resending it from the Stripe dashboard works as well as `replay`.
    """
    started = time.perf_counter()
    try:
        with conn.pipeline(), conn.transaction():
            stored = inbox.store(conn, event, **_limits(rules))
            if stored.settled:
                return _result(event, Outcome(stored.status), started, duplicate=True)
            outcome = run_handler(conn, event, rules)
            inbox.record(conn, event.id, outcome, "delivery", _elapsed_ms(started))
        return _result(event, outcome, started)
    except Exception as exc:
        failure = as_failure(exc, event)
    with conn.pipeline(), conn.transaction():
        stored = inbox.store(conn, event, **_limits(rules))
        if stored.settled:  # another delivery applied it meanwhile
            return _result(event, Outcome(stored.status), started, duplicate=True)
        inbox.record(conn, event.id, failure, "delivery", _elapsed_ms(started))
    return _result(event, failure, started)


def run_handler(conn: psycopg.Connection, event: Event, rules: ProcessingRules) -> Outcome:
    """The event type's handler, or `ignored` for a type this service does not handle."""
    handler = handler_for(event)
    if handler is None:
        return Outcome.ignored()
    context = Context(
        conn, event, rules.entitled_statuses, rules.stripe_api_key, rules.stripe_api_base
    )
    return handler(context)


def as_failure(exc: Exception, event: Event) -> Outcome:
    """The failed outcome for an error while applying; re-raise what means "retry later"."""
    if isinstance(exc, ApplyError | PayloadError):
        return Outcome.failed(str(exc))
    if isinstance(exc, psycopg.OperationalError):
        raise exc  # connection lost, lock or statement timeout, deadlock: Stripe retries
    if isinstance(exc, psycopg.Error):
        return Outcome.failed(f"the database refused the change: {exc.diag.message_primary}")
    log.error("handler for %s failed on event %s", event.type, event.id, exc_info=exc)
    return Outcome.failed(f"internal error while applying the event ({type(exc).__name__})")


def _limits(rules: ProcessingRules) -> dict[str, int]:
    return {
        "lock_timeout_ms": rules.lock_timeout_ms,
        "statement_timeout_ms": rules.statement_timeout_ms,
    }


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _result(event: Event, outcome: Outcome, started: float, *, duplicate: bool = False) -> Result:
    return Result(event, outcome, duplicate=duplicate, duration_ms=_elapsed_ms(started))

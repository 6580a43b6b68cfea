"""Apply one event: store it, run its handler, record the outcome, all in one transaction.

Three results only, which the web layer maps to status codes: the event is stored with an
outcome (200, even when that outcome is `failed`), the request was bad (400), or the
database could not do its part right now (503, and Stripe retries). A handler's data
error rolls back to a savepoint, so a failed event leaves only its inbox row behind.
"""

import logging
import time
from dataclasses import dataclass, field

import psycopg

from webhook import inbox
from webhook.accounts import ApplyError
from webhook.handlers import HANDLERS, Context, Outcome
from webhook.stripe_objects import Event, PayloadError

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

    `conn` must be in autocommit mode; this function owns the transaction. A redelivery of
    a failed event tries it again, so fixing the data and resending it from the Stripe
    dashboard works as well as `replay`.
    """
    started = time.perf_counter()
    with conn.transaction():
        _limit_waiting(conn, rules)
        stored = inbox.store(conn, event)
        if stored.settled:
            elapsed = (time.perf_counter() - started) * 1000
            return Result(event, Outcome(stored.status), duplicate=True, duration_ms=elapsed)
        outcome = apply(conn, event, rules, trigger="delivery", started=started)
    elapsed = (time.perf_counter() - started) * 1000
    return Result(event, outcome, duplicate=False, duration_ms=elapsed)


def _limit_waiting(conn: psycopg.Connection, rules: ProcessingRules) -> None:
    """Bound lock and statement waits for this transaction only (safe behind a pooler)."""
    conn.execute(
        "select set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{rules.lock_timeout_ms}ms", f"{rules.statement_timeout_ms}ms"),
    )


def apply(
    conn: psycopg.Connection,
    event: Event,
    rules: ProcessingRules,
    *,
    trigger: str,
    started: float | None = None,
) -> Outcome:
    """Run the event's handler inside the caller's transaction and record the outcome."""
    started = time.perf_counter() if started is None else started
    conn.execute("select set_config('webhook.source', %s, true)", (f"stripe:{event.id}",))
    handler = HANDLERS.get(event.type)
    if handler is None:
        outcome = Outcome.ignored()
    else:
        context = Context(
            conn, event, rules.entitled_statuses, rules.stripe_api_key, rules.stripe_api_base
        )
        try:
            with conn.transaction():
                outcome = handler(context)
        except (ApplyError, PayloadError) as exc:
            outcome = Outcome.failed(str(exc))
        except psycopg.OperationalError:
            raise  # connection lost, lock or statement timeout, deadlock: retry later
        except psycopg.Error as exc:
            outcome = Outcome.failed(f"the database refused the change: {exc.diag.message_primary}")
        except Exception as exc:
            log.exception("handler for %s failed on event %s", event.type, event.id)
            outcome = Outcome.failed(
                f"internal error while applying the event ({type(exc).__name__})"
            )
    inbox.record(conn, event.id, outcome, trigger, (time.perf_counter() - started) * 1000)
    return outcome

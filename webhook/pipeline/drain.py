"""The drain: apply stored (`received`) events in batches, one transaction per batch.

A batch is claimed with `FOR NO KEY UPDATE SKIP LOCKED` inside the transaction that
applies it, so any number of drains, in any number of processes and hosts, share the
queue without taking an event twice, and a drain killed mid-batch returns its events to
the queue by itself (its transaction is rolled back). Within the batch:

- the Stripe customers of all its events are locked first, without waiting: an event
  whose Stripe customer another transaction holds (another drain's batch, a delivery in
  inline mode, a sync page) is left in the queue for the next batch; then, the same way,
  the rows of the customers they are linked to: an event whose customer's row another
  transaction holds (the application's own, a `consume_resources` call, an operator's
  open session) is left in the queue too. Drains do not wait on each other, and a busy
  customer does not hold up the events behind it;
- subscription events go through the batch engine of `replay` (subscription_batch), which
  decides them in memory with the handler's rules and writes the net result;
- types without a handler are settled as `ignored` in the same statement that records
  every outcome;
- the rest (checkout, failed payments, customers, catalog, and subscription events the
  batch engine leaves) go through their handlers one by one, each in a savepoint, so an
  event that fails, or whose handler raises, is `failed` with its reason and never stops
  the events behind it. A handler may still have to wait for a row the batch could not
  lock ahead (the customer a checkout is about to link): if it waits longer than the lock
  timeout, or is chosen to break a deadlock, its savepoint is rolled back and the event,
  with the rest of its Stripe customer's in this batch, stays in the queue;
- paid invoices come last, decided together by renewal_batch, the rule the invoice
  handler applies to one event (after the batch's other events: its checkouts have
  linked their customers, its `customer.deleted` unlinked them), and go one by one
  through the handler if the database refuses that batch's writes.

Events in one batch are applied in an order of the drain's choosing: the mirror, the links
and the resets are order-safe, so the result is the one any delivery order gives.
"""

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from webhook.core import json_decode
from webhook.pipeline import renewal_batch, subscription_batch
from webhook.pipeline.handlers import handler_for
from webhook.pipeline.handlers.base import Outcome
from webhook.pipeline.processor import ProcessingRules, as_failure, run_handler
from webhook.pipeline.renewal_batch import Renewal
from webhook.pipeline.replay_result import ReplayResult
from webhook.pipeline.subscription_batch import Candidate
from webhook.stripe.payloads import Event, PayloadError, parse_event

log = logging.getLogger(__name__)

BATCH_EVENTS = 200
DEFERRED_PAUSE_SECONDS = 0.02


@dataclass(frozen=True)
class Applied:
    """One drained event: what it did, and how long it waited in the queue."""

    event_id: str
    event_type: str
    outcome: Outcome
    waited_seconds: float


# `passed` holds Stripe customers whose events this batch claimed already and left queued
# (busy elsewhere): claimed again, they would fill the batch once more.
_CLAIM = """
select e.id, e.payload::text, e.received_at, extract(epoch from now() - e.received_at),
       e.stripe_customer_id
  from webhook_private.events e
 where e.status = 'received' and e.payload is not null
   and (e.stripe_customer_id is null or e.stripe_customer_id <> all(%(passed)s::text[]))
 order by e.received_at, e.id
 limit %(limit)s
   for no key update skip locked
"""

# Chosen events (a catch-up's), in the order Stripe created them.
_CLAIM_ONLY = """
select e.id, e.payload::text, e.received_at, extract(epoch from now() - e.received_at),
       e.stripe_customer_id
  from webhook_private.events e
 where e.id = any(%(only)s::text[]) and e.status = 'received' and e.payload is not null
   and (e.stripe_customer_id is null or e.stripe_customer_id <> all(%(passed)s::text[]))
 order by e.stripe_created, e.id
 limit %(limit)s
   for no key update skip locked
"""

# How many times a batch claims again when every event it claimed was left queued.
CLAIMS_PER_BATCH = 3


def drain_batch(
    conn: psycopg.Connection,
    rules: ProcessingRules,
    *,
    limit: int = BATCH_EVENTS,
    only: Sequence[str] | None = None,
    trigger: str = "delivery",
    known: Mapping[str, Event] | None = None,
) -> list[Applied]:
    """Claim up to `limit` received events and apply them; [] when none could be.

    When every event of a full claim stays queued (their customers busy elsewhere), the
    batch claims again past those Stripe customers, up to CLAIMS_PER_BATCH claims in all.

    [] means the queue is empty, or every claimed event's Stripe customer was busy (then
    after a short pause, so a caller that loops does not spin). `conn` must be in
    autocommit mode. A lost connection or a statement timeout rolls the whole batch back
    (its events stay queued) and is raised; so does a lock wait given up outside an
    event's handler (claiming, recording). One given up inside a handler leaves that
    event, and its Stripe customer's others in the batch, queued (LOCK_WAITS_GIVEN_UP).
    `only` restricts the claim to these event ids (a catch-up applying what it stored;
    `trigger` then names it).
    `known` holds events this process stored and parsed already (the request had to):
    their stored payload is not decoded again.
    """
    started = time.perf_counter()
    with conn.transaction():
        # synchronous_commit off: the batch's commit does not wait for its WAL to reach the
        # disk. Safe here, unlike for storing a delivery: if a crash loses the commit, the
        # events' statuses go with it, they are `received` again, and the next drain
        # applies them (the same result: applying is order-safe and idempotent).
        conn.execute(
            "select set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
            " set_config('synchronous_commit', 'off', true), set_config('webhook.source', '', true),"
            " set_config('plan_cache_mode', 'force_custom_plan', true)",
            (f"{rules.lock_timeout_ms}ms", f"{rules.statement_timeout_ms}ms"),
        )
        query = _CLAIM if only is None else _CLAIM_ONLY
        passed: list[str] = []
        waited: dict[str, float] = {}
        for _ in range(CLAIMS_PER_BATCH):
            rows = conn.execute(
                query,
                {
                    "only": list(only) if only is not None else None,
                    "limit": limit,
                    "passed": passed,
                },
            ).fetchall()
            waited.update((row[0], float(row[3])) for row in rows)
            results = _apply(conn, rows, rules, known or {}) if rows else []
            # A full claim whose every event stayed queued: the queue's head is all busy
            # customers. Claim past them, or the batches behind would never be reached.
            if results or len(rows) < limit:
                break
            more = sorted({row[4] for row in rows if row[4] is not None} - set(passed))
            if not more:
                break
            passed += more
        if not waited:
            return []
        if results:
            elapsed_ms = (time.perf_counter() - started) * 1000
            subscription_batch.record_outcomes(conn, results, elapsed_ms / len(results), trigger)
    if not results:
        time.sleep(DEFERRED_PAUSE_SECONDS)  # every event's customer was busy: let them finish
    return [Applied(r.event_id, r.event_type, r.outcome, waited[r.event_id]) for r in results]


def queued(conn: psycopg.Connection) -> bool:
    """Whether any event waits to be applied."""
    row = conn.execute(
        "select exists (select from webhook_private.events where status = 'received'"
        " and payload is not null)"
    ).fetchone()
    return bool(row and row[0])


def drain_until_empty(
    conn: psycopg.Connection,
    rules: ProcessingRules,
    *,
    limit: int = BATCH_EVENTS,
    on_applied: Callable[[Sequence[Applied]], None] = lambda _applied: None,
) -> int:
    """Apply batches until the queue is empty; return how many events were applied."""
    total = 0
    while True:
        applied = drain_batch(conn, rules, limit=limit)
        if not applied and not queued(conn):
            return total
        on_applied(applied)
        total += len(applied)


def _apply(
    conn: psycopg.Connection,
    rows: list[tuple[str, str, datetime, float, str | None]],
    rules: ProcessingRules,
    known: Mapping[str, Event],
) -> list[ReplayResult]:
    results: list[ReplayResult] = []
    events: list[Event] = []
    for event_id, payload, *_ in rows:
        cached = known.get(event_id)
        if cached is not None:
            events.append(cached)
            continue
        try:
            events.append(parse_event(_decoded(payload), payload))
        except PayloadError as exc:  # stored by an older version, or by hand
            results.append(
                _result(event_id, "unknown", Outcome.failed(f"stored event is unusable: {exc}"))
            )
    busy = _busy_customers(conn, {c for e in events if (c := e.stripe_customer)})
    events = [e for e in events if e.stripe_customer not in busy]
    # Only the events a handler applies lock their customer's row: the others change nothing.
    applied = {e.id for e in events if handler_for(e) is not None}
    held = _held_elsewhere(
        conn, {c for e in events if e.id in applied and (c := e.stripe_customer)}
    )
    events = [e for e in events if e.id not in applied or e.stripe_customer not in held]
    ignored = [e for e in events if e.id not in applied]
    handled = [e for e in events if e.id in applied]
    candidates: list[Candidate] = []
    one_by_one: list[Event] = []
    for event in handled:
        candidate = subscription_batch.candidate_for(event, rules)
        if candidate is None:
            one_by_one.append(event)
        else:
            candidates.append(candidate)
    batched = _apply_batch(conn, candidates, rules)
    results.extend(batched)
    done = {r.event_id for r in batched}
    one_by_one.extend(c.event for c in candidates if c.event.id not in done)
    results.extend(_result(e.id, e.type, Outcome.ignored()) for e in ignored)
    renewals: list[Renewal] = []
    waiting: set[str | None] = set()  # Stripe customers whose events wait for a lock
    for event in one_by_one:
        renewal = renewal_batch.renewal_for(event)
        if renewal is None:
            results.extend(_apply_one_unless_waiting(conn, event, rules, waiting))
        else:
            renewals.append(renewal)
    renewed = _apply_renewals(conn, renewals)
    results.extend(renewed)
    done = {r.event_id for r in renewed}
    for renewal in renewals:
        if renewal.event.id not in done:
            results.extend(_apply_one_unless_waiting(conn, renewal.event, rules, waiting))
    return results


def _apply_one_unless_waiting(
    conn: psycopg.Connection, event: Event, rules: ProcessingRules, waiting: set[str | None]
) -> list[ReplayResult]:
    """[the event's result], or [] when it stays queued: its Stripe customer's earlier
    event in this batch waited for a lock in vain, or this one does."""
    if event.stripe_customer in waiting:
        return []
    result = _apply_one(conn, event, rules)
    if result is None:
        waiting.add(event.stripe_customer)
        return []
    return [result]


def _decoded(payload: str) -> object:
    try:
        return json_decode.loads(payload)
    except ValueError:
        return None  # parse_event then says it is not an event


def _apply_batch(
    conn: psycopg.Connection, candidates: list[Candidate], rules: ProcessingRules
) -> list[ReplayResult]:
    """The batch engine over the subscription events, in a savepoint; [] if it refuses."""
    return _in_savepoint(
        conn, "batch engine", len(candidates),
        lambda: subscription_batch.apply_candidates(conn, candidates, rules),
    )  # fmt: skip


def _apply_renewals(conn: psycopg.Connection, renewals: list[Renewal]) -> list[ReplayResult]:
    """The paid invoices through renewal_batch, in a savepoint; [] if it refuses."""
    return _in_savepoint(
        conn, "renewal batch", len(renewals), lambda: renewal_batch.apply_renewals(conn, renewals)
    )


def _in_savepoint(
    conn: psycopg.Connection, name: str, count: int, apply: Callable[[], list[ReplayResult]]
) -> list[ReplayResult]:
    """Run one of the batch paths in a savepoint; [] when there is nothing or it refuses.

    A write the database refuses, or a fault of the path, rolls the savepoint back and
    leaves every one of these events to the handlers, which find the one that fails. A
    lost connection or a timeout is raised: the whole batch goes back to the queue.
    """
    if not count:
        return []
    try:
        with conn.transaction():
            return apply()
    except LOCK_WAITS_GIVEN_UP:
        return []  # the handlers find which events wait, and leave those queued
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        return []
    except Exception:
        log.exception("drain: the %s failed; applying %d events one by one", name, count)
        return []


def _apply_one(
    conn: psycopg.Connection, event: Event, rules: ProcessingRules
) -> ReplayResult | None:
    """One event through its handler, in a savepoint: its failure is its own. None when it
    waited for a lock in vain: rolled back, it stays queued, and the batch goes on."""
    try:
        with conn.transaction():
            conn.execute("select set_config('webhook.source', %s, true)", (f"stripe:{event.id}",))
            outcome = run_handler(conn, event, rules)
    except LOCK_WAITS_GIVEN_UP:
        log.info("drain: event %s waits for a lock; left in the queue", event.id)
        return None
    except Exception as exc:
        outcome = as_failure(exc, event)  # re-raises what means "retry later"
    return _result(event.id, event.type, outcome)


def _result(event_id: str, event_type: str, outcome: Outcome) -> ReplayResult:
    return ReplayResult(event_id, event_type, outcome, None, None)


# A lock wait that ran out (lock_timeout) or broke a deadlock: inside a savepoint, only
# the event (or the batch path) that waited is rolled back. Everything else that means
# "retry later" (a lost connection, a statement timeout) still rolls the batch back.
LOCK_WAITS_GIVEN_UP = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)

# The rows of the customers these Stripe customers are linked to, locked in uuid order
# (the order every writer of them takes) without waiting; the Stripe customers whose
# customer's row another transaction holds.
_HELD_ELSEWHERE = """
with owner as (
  select l.stripe_customer_id, l.customer_uuid
    from webhook_private.customer_links l
   where l.stripe_customer_id = any(%(ids)s::text[]) and l.customer_uuid is not null
), locked as materialized (
  select c.uuid from public.customer c
   where c.uuid in (select customer_uuid from owner)
   order by c.uuid
     for update skip locked
)
select o.stripe_customer_id from owner o
 where o.customer_uuid not in (select uuid from locked)
"""


def _held_elsewhere(conn: psycopg.Connection, stripe_customers: set[str]) -> set[str]:
    """Lock the rows of these Stripe customers' customers if they are free; return the
    Stripe customers whose customer's row another transaction holds."""
    if not stripe_customers:
        return set()
    rows = conn.execute(_HELD_ELSEWHERE, {"ids": sorted(stripe_customers)}).fetchall()
    return {stripe_customer for (stripe_customer,) in rows}


def _busy_customers(conn: psycopg.Connection, stripe_customers: set[str]) -> set[str]:
    """Take each Stripe customer's lock if it is free; return those another holds."""
    if not stripe_customers:
        return set()
    rows = conn.execute(
        "select s, pg_try_advisory_xact_lock(hashtextextended('stripe-customer:' || s, 0))"
        " from unnest(%s::text[]) with ordinality as t(s, n) order by n",
        (sorted(stripe_customers),),
    ).fetchall()
    return {stripe_customer for stripe_customer, locked in rows if not locked}

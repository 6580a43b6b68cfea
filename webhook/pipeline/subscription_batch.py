"""Replaying a backlog of subscription events in batches, with the result of one-by-one replay.

The backlog this is for: a price had no plan, every subscription event for it failed, the
plan is added, and `replay --failed` runs over thousands of events. One event at a time
costs about fourteen statements (some 3 ms of client and server time); here a run of up to
BATCH_EVENTS subscription events is read, decided and written in a dozen statements in one
transaction.

Deciding happens in Python, event by event in the order given, on an in-memory copy of the
rows the per-event handler reads (the Stripe customers' links, the customers' mirrored
subscriptions, their plans, the catalogue), under the same locks. The same order key
decides whether the mirror row changes and the same entitlement rule decides the plan; an
event whose customer's plan cannot be decided fails, keeps the mirror row and leaves the
plan alone, as the handler does. Only the net result is written. tests/pipeline/test_replay_batch.py
replays the same random histories both ways and compares every row.

One difference from one-by-one replay, on purpose: a customer whose plan moves several
times within a batch gets only the last move (one audit row, one resource reset), or, when
the plan comes back to where it started, the last move away and the move back. The plans
in between were never in force; the resources end as one by one.

A run stops at the first event this path does not cover, and the caller applies that
event through the per-event path: another type, a repeated id, a payload that does not
parse, a subscription whose metadata names a customer (linking has its own rules), and,
with STRIPE_API_KEY set, a full tie with the stored state (which asks Stripe).
"""

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from webhook.pipeline.audit_rows import update_naming_audit_rows
from webhook.pipeline.handlers.base import Outcome, unknown_prices_message
from webhook.pipeline.handlers.subscriptions import readable_state
from webhook.pipeline.processor import ProcessingRules
from webhook.pipeline.replay_result import ReplayResult
from webhook.rules import accounts, mirror
from webhook.rules.entitlement import PlanCatalog, entitled_plan
from webhook.rules.ordering import is_full_tie, subscription_order_key
from webhook.stripe.payloads import (
    Event,
    PayloadError,
    SubscriptionState,
    metadata_customer_uuid,
    parse_event,
    timestamp,
)

BATCH_EVENTS = 1000

log = logging.getLogger(__name__)

SUBSCRIPTION_TYPES = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.trial_will_end",
    }
)


@dataclass(frozen=True)
class _Mirrored:
    """A subscription mirror row, as far as ordering and the entitlement rule need it."""

    id: str
    stripe_customer_id: str
    status: str
    price_ids: tuple[str, ...]
    product_ids: tuple[str | None, ...]
    order_key: tuple[int, ...]
    event_id: str


@dataclass(frozen=True)
class Candidate:
    """A parsed subscription event waiting to be decided."""

    event: Event
    state: SubscriptionState
    key: tuple[int, ...]


class _Snapshot:
    """The rows the handler would read for a run of events, locked, held in memory."""

    def __init__(
        self,
        owners: dict[str, uuid.UUID | None],
        plans_now: dict[uuid.UUID, int | None],
        subscriptions: list[_Mirrored],
        owned: list[tuple[str, uuid.UUID]],
        catalog: PlanCatalog,
    ) -> None:
        self.owners = owners
        self.plans_now = plans_now
        self.plans_at_start = dict(plans_now)
        self.catalog = catalog
        self.subscriptions = {sub.id: sub for sub in subscriptions}
        self._owner_of_stripe_customer = dict(owned)
        self._by_owner: dict[uuid.UUID, dict[str, _Mirrored]] = {}
        for sub in subscriptions:
            self._index(sub)
        self.changed: dict[str, tuple[_Mirrored, SubscriptionState]] = {}
        # Per customer, each plan change the events made, in order: (event id, new plan).
        self.plan_moves: dict[uuid.UUID, list[tuple[str, int | None]]] = {}

    def plan_writes(self) -> tuple[list[tuple[uuid.UUID, int | None, str]], ...]:
        """The plan updates that give each customer the one-by-one result, in two rounds.

        A customer whose plan ends elsewhere gets one change, to the last plan. One whose
        plan came back to where it started gets the last move away and the move back: one
        by one, that return fired the plan trigger and reset the resources, and so must
        the batch. Each write names the event that made that move.
        """
        first, last = [], []
        for owner, moves in self.plan_moves.items():
            if moves[-1][1] == self.plans_at_start[owner]:
                away_event, away_plan = moves[-2]
                first.append((owner, away_plan, away_event))
            last.append((owner, moves[-1][1], moves[-1][0]))
        return first, last

    def owner_subscriptions(self, owner: uuid.UUID, replacing: _Mirrored | None) -> list[_Mirrored]:
        """The owner's linked subscriptions as the rule would read them, with `replacing` in."""
        subs = dict(self._by_owner.get(owner, {}))
        if replacing is not None:
            subs.pop(replacing.id, None)
            if self._owner_of_stripe_customer.get(replacing.stripe_customer_id) == owner:
                subs[replacing.id] = replacing
        return list(subs.values())

    def keep(self, row: _Mirrored, state: SubscriptionState) -> None:
        """Put a decided event's state in the mirror (in memory; written at the end)."""
        previous = self.subscriptions.get(row.id)
        if previous is not None:
            owner = self._owner_of_stripe_customer.get(previous.stripe_customer_id)
            if owner is not None:
                self._by_owner.get(owner, {}).pop(row.id, None)
        self.subscriptions[row.id] = row
        self._index(row)
        self.changed[row.id] = (row, state)

    def _index(self, sub: _Mirrored) -> None:
        owner = self._owner_of_stripe_customer.get(sub.stripe_customer_id)
        if owner is not None:
            self._by_owner.setdefault(owner, {})[sub.id] = sub


def replay_subscription_run(
    conn: psycopg.Connection,
    event_ids: Sequence[str],
    rules: ProcessingRules,
    *,
    dry_run: bool,
    trigger: str = "replay",
) -> list[ReplayResult] | None:
    """Apply the longest prefix of `event_ids` this path covers, in one transaction.

    Returns the results of the events applied, in order (possibly none: the first event
    needs the per-event path), or None when the database refused a write or this path
    failed, in which case nothing was kept and the caller replays these events one by one
    (which also finds the event the database refused). A lost connection or a timeout is
    raised, as for a delivery.
    """
    started = time.perf_counter()
    try:
        with conn.transaction(force_rollback=dry_run):
            candidates = _claim(conn, event_ids, rules)
            if not candidates:
                return []
            results = apply_candidates(conn, candidates, rules)
            if results:
                elapsed_ms = (time.perf_counter() - started) * 1000
                record_outcomes(conn, results, elapsed_ms / len(results), trigger)
            return results
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        return None
    except Exception:  # a fault of this path must not stop a replay the per-event path can do
        log.exception("batch replay failed; replaying these %d events one by one", len(event_ids))
        return None


def apply_candidates(
    conn: psycopg.Connection, candidates: list[Candidate], rules: ProcessingRules
) -> list[ReplayResult]:
    """Decide and write the longest prefix of `candidates` this path covers, in the
    caller's transaction; their outcomes are the caller's to record (record_outcomes).
    The audit rows the plan writes make name their events (audit_rows).
    """
    snapshot = _read(conn, candidates)
    results = _decide(candidates, snapshot, rules)
    if results:
        _write(conn, snapshot)
    return results


def record_outcomes(
    conn: psycopg.Connection, results: Sequence[ReplayResult], ms_each: float, trigger: str
) -> None:
    """Each event's status and error, and an attempt row each, in one statement."""
    conn.execute(
        _RECORD_OUTCOMES,
        {
            "ids": [r.event_id for r in results],
            "statuses": [r.outcome.status for r in results],
            "errors": [r.outcome.error for r in results],
            "ms": round(ms_each, 3),
            "trigger": trigger,
        },
    )


def _claim(
    conn: psycopg.Connection, event_ids: Sequence[str], rules: ProcessingRules
) -> list[Candidate]:
    """Lock the stored events (in id order) and parse the prefix this path covers."""
    # Custom plans: a generic plan cannot see that the arrays hold a thousand ids, and
    # picks nested loops that make each batch slower than the last.
    conn.execute(
        "select set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('synchronous_commit', 'off', true), set_config('webhook.source', '', true),"
        " set_config('plan_cache_mode', 'force_custom_plan', true)",
        (f"{rules.lock_timeout_ms}ms", f"{rules.statement_timeout_ms}ms"),
    )
    payloads = dict(
        conn.execute(
            "select id, payload from webhook_private.events where id = any(%s) order by id"
            " for update",
            (list(event_ids),),
        ).fetchall()
    )
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for event_id in event_ids:
        event = _parsed(payloads.get(event_id))
        candidate = candidate_for(event, rules) if event is not None else None
        if candidate is None or event_id in seen or candidate.event.id != event_id:
            break
        seen.add(event_id)
        candidates.append(candidate)
    return candidates


def _parsed(payload: Any) -> Event | None:
    if payload is None:
        return None
    try:
        return parse_event(payload)
    except PayloadError:
        return None


def candidate_for(event: Event, rules: ProcessingRules) -> Candidate | None:
    """The event as this path takes it, if it is a subscription event this path covers."""
    try:
        if event.type not in SUBSCRIPTION_TYPES or metadata_customer_uuid(event.object):
            return None
        state = readable_state(event.object, rules.entitled_statuses)
        for moment in (state.current_period_end, state.cancel_at, state.ended_at):
            timestamp(moment)  # the handler fails on an out-of-range one before anything else
    except PayloadError:
        return None
    key = tuple(subscription_order_key(event.created, event.type, state))
    return Candidate(event, state, key)


def _read(conn: psycopg.Connection, candidates: list[Candidate]) -> _Snapshot:
    """Take the handler's locks for every event of the run and read what it would read.

    Advisory locks on the Stripe customers in one sorted order, then the customers' rows
    in uuid order (as `accounts` does), then the mirror and the catalogue.
    """
    stripe_customers = sorted({c.state.customer for c in candidates})
    conn.execute(
        "select pg_advisory_xact_lock(hashtextextended('stripe-customer:' || s, 0))"
        " from unnest(%s::text[]) with ordinality as t(s, n) order by n",
        (stripe_customers,),
    )
    owners: dict[str, uuid.UUID | None] = dict.fromkeys(stripe_customers)
    owners.update(
        conn.execute(
            "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
            " where stripe_customer_id = any(%s)",
            (stripe_customers,),
        ).fetchall()
    )
    customers = sorted({owner for owner in owners.values() if owner is not None})
    plans_now = dict(
        conn.execute(
            "select uuid, plan_id from public.customer where uuid = any(%s) order by uuid"
            " for update",
            (customers,),
        ).fetchall()
    )
    owned = conn.execute(
        "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
        " where customer_uuid = any(%s)",
        (customers,),
    ).fetchall()
    rows = conn.execute(
        """
        select s.id, s.stripe_customer_id, s.status, s.price_ids, s.product_ids, s.order_key,
               s.event_id
          from webhook_private.subscriptions s
         where s.id = any(%s)
            or s.stripe_customer_id = any(%s)
        """,
        (
            sorted({c.state.id for c in candidates}),
            sorted({stripe_id for stripe_id, _ in owned} | set(stripe_customers)),
        ),
    ).fetchall()
    return _Snapshot(
        owners,
        plans_now,
        [_Mirrored(r[0], r[1], r[2], tuple(r[3]), tuple(r[4]), tuple(r[5]), r[6]) for r in rows],
        owned,
        accounts.read_catalog(conn),
    )


def _decide(
    candidates: list[Candidate], snapshot: _Snapshot, rules: ProcessingRules
) -> list[ReplayResult]:
    """Each event's outcome, in order, as the handler would reach it; the snapshot follows."""
    results: list[ReplayResult] = []
    for candidate in candidates:
        event, state = candidate.event, candidate.state
        stored = snapshot.subscriptions.get(state.id)
        if (
            rules.stripe_api_key
            and stored is not None
            and is_full_tie(list(stored.order_key), list(candidate.key))
            and stored.event_id != event.id
        ):
            break  # the handler would ask Stripe which state is current
        newer = stored is None or (candidate.key, event.id) > (stored.order_key, stored.event_id)
        row = (
            _Mirrored(
                state.id,
                state.customer,
                state.status,
                state.price_ids,
                state.product_ids,
                candidate.key,
                event.id,
            )
            if newer
            else None
        )
        owner = snapshot.owners.get(state.customer)
        outcome, before, after = _outcome(snapshot, owner, row, rules)
        handler_raised = owner is not None and owner not in snapshot.plans_now
        if row is not None and not handler_raised:
            snapshot.keep(row, state)
        if owner is not None and outcome.status == "processed" and before != after:
            snapshot.plans_now[owner] = after
            snapshot.plan_moves.setdefault(owner, []).append((event.id, after))
        results.append(ReplayResult(event.id, event.type, outcome, before, after))
    return results


def _outcome(
    snapshot: _Snapshot, owner: uuid.UUID | None, row: _Mirrored | None, rules: ProcessingRules
) -> tuple[Outcome, int | None, int | None]:
    """The outcome and the owner's plan before and after, as the handler would find them.

    A plan that cannot be decided (a granting price with no plan) fails the event but keeps
    the mirror row, as the handler does: the mirror says what Stripe says, the plan waits.
    """
    if owner is None:
        return Outcome.processed(), None, None
    if owner not in snapshot.plans_now:  # the handler raises, and its writes roll back
        return Outcome.failed(f"no customer with uuid {owner}"), None, None
    entitlement = entitled_plan(
        snapshot.owner_subscriptions(owner, row), snapshot.catalog, rules.entitled_statuses
    )
    current = snapshot.plans_now[owner]
    if not entitlement.decided:
        return Outcome.failed(unknown_prices_message(entitlement), owner), current, current
    return Outcome.processed(owner), current, entitlement.plan_id


def _write(conn: psycopg.Connection, snapshot: _Snapshot) -> None:
    """Write the net result: mirror rows, changed plans (with their audit source)."""
    if snapshot.changed:
        mirror.upsert_many(
            conn,
            [
                mirror.row(state, row.order_key, row.event_id)
                for row, state in snapshot.changed.values()
            ],
        )
    for writes in snapshot.plan_writes():
        if writes:
            _write_plans(conn, writes)


def _write_plans(conn: psycopg.Connection, writes: list[tuple[uuid.UUID, int | None, str]]) -> None:
    """Set the plans; the triggers reset resources and write audit rows, each naming its event.

    The `= any` beside a join to unnest lets the planner see which rows an update touches
    and use the index, instead of hashing the whole table on every batch.
    """
    customers = [owner for owner, _, _ in writes]
    update_naming_audit_rows(
        conn,
        "update public.customer c set plan_id = v.plan_id"
        " from unnest(%s::uuid[], %s::bigint[]) as v(uuid, plan_id)"
        " where c.uuid = v.uuid and c.uuid = any(%s::uuid[])",
        (customers, [plan for _, plan, _ in writes], customers),
        {owner: event_id for owner, _, event_id in writes},
    )


_RECORD_OUTCOMES = """
with outcome as (
  select * from unnest(%(ids)s::text[], %(statuses)s::text[], %(errors)s::text[])
           as o(id, status, error)
), attempt as (
  insert into webhook_private.event_attempts (event_id, trigger, outcome, error, duration_ms)
  select o.id, %(trigger)s, o.status, o.error, %(ms)s from outcome o
)
update webhook_private.events e
   set status = o.status, error = o.error, attempts = e.attempts + 1, processed_at = now()
  from outcome o
 where e.id = o.id and e.id = any(%(ids)s::text[])
"""

"""Applying subscription events: the one place that decides them, for one event or many.

Every path applies a `customer.subscription.*` event here: the handler (a delivery in
inline mode, a one-by-one replay, the drain's fallback) as a batch of one (apply_one), the
drain and `replay` as runs of up to BATCH_EVENTS (apply_candidates). A run costs about a
dozen statements in one transaction, about what a single event costs; the backlog this was
first written for is `replay --failed` over thousands of events once a missing plan is
added.

Deciding happens in Python, event by event in the order given, on an in-memory copy of the
rows the decision needs (the Stripe customers' links, the customers' mirrored
subscriptions, their plans, the catalogue), read under the locks every writer of those rows
takes. The order key (rules/ordering.py) decides whether the mirror row changes; when it
cannot (a full tie) and STRIPE_API_KEY is set, Stripe's current state of the subscription
settles it; the entitlement rule (rules/entitlement.py) decides the plan of every customer
the event affects. An event whose customer's plan cannot be decided fails, keeps the
mirror row and leaves the plan alone; one that names a customer that does not exist fails
and changes nothing. Only the net result is written. tests/pipeline/test_replay_batch.py
replays the same random histories in runs and one event at a time, and compares every row.

One difference between a run and the same events one at a time, on purpose: a customer
whose plan moves several times within a run gets only the last move (one audit row, one
resource reset), or, when the plan comes back to where it started, the last move away
and the move back. The plans in between were never in force; the resources end alike.

A run stops at the first event it does not take, and the caller applies that one through
its handler: another type, a repeated id, a payload that does not parse, or a subscription
whose metadata names a customer. Linking has its own rules (rules/accounts.py): the
handler makes the link first and then applies the event here as a batch of one, with the
customers the link affected.
"""

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from webhook.pipeline.audit_rows import update_naming_audit_rows
from webhook.pipeline.handlers.base import Outcome, unknown_prices_message
from webhook.pipeline.replay_result import ReplayResult
from webhook.rules import accounts, mirror
from webhook.rules.accounts import ApplyError
from webhook.rules.entitlement import PlanCatalog, entitled_plan
from webhook.rules.ordering import is_full_tie, subscription_order_key
from webhook.stripe.payloads import (
    NO_READABLE_ITEMS,
    Event,
    PayloadError,
    SubscriptionState,
    metadata_customer_uuid,
    parse_event,
    subscription_state,
    timestamp,
)
from webhook.stripe.refetch import fetch_subscription

BATCH_EVENTS = 1000

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from webhook.pipeline.processor import ProcessingRules


class DecisionRules(Protocol):
    """The settings deciding reads: ProcessingRules, and a handler's Context, both have them."""

    @property
    def entitled_statuses(self) -> frozenset[str]: ...

    @property
    def stripe_api_key(self) -> str | None: ...

    @property
    def stripe_api_base(self) -> str | None: ...


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
    """A parsed subscription event waiting to be decided.

    `linked`: the customers a link made from the event's metadata affected (the new owner
    of its Stripe customer, and the previous one); their plans are decided with it.
    """

    event: Event
    state: SubscriptionState
    key: tuple[int, ...]
    linked: frozenset[uuid.UUID] = frozenset()


class _Snapshot:
    """The rows deciding a run of events needs, read under their locks, held in memory."""

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
        # Mirror rows to write: the row, its state, and whether it came from Stripe's API
        # to settle a full tie (written even where its key does not beat the stored one).
        self.changed: dict[str, tuple[_Mirrored, SubscriptionState, bool]] = {}
        # Per customer, each plan change the events made, in order: (event id, new plan).
        self.plan_moves: dict[uuid.UUID, list[tuple[str, int | None]]] = {}
        # Events that change nothing at all, and why (a customer that does not exist).
        self.refused: dict[str, Exception] = {}

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

    def keep(self, row: _Mirrored, state: SubscriptionState, fetched: bool) -> None:
        """Put a decided event's state in the mirror (in memory; written at the end)."""
        previous = self.subscriptions.get(row.id)
        if previous is not None:
            owner = self._owner_of_stripe_customer.get(previous.stripe_customer_id)
            if owner is not None:
                self._by_owner.get(owner, {}).pop(row.id, None)
        self.subscriptions[row.id] = row
        self._index(row)
        self.changed[row.id] = (row, state, fetched)

    def _index(self, sub: _Mirrored) -> None:
        owner = self._owner_of_stripe_customer.get(sub.stripe_customer_id)
        if owner is not None:
            self._by_owner.setdefault(owner, {})[sub.id] = sub


def replay_subscription_run(
    conn: psycopg.Connection,
    event_ids: Sequence[str],
    rules: "ProcessingRules",
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
    conn: psycopg.Connection, candidates: list[Candidate], rules: DecisionRules
) -> list[ReplayResult]:
    """Decide and write `candidates`, in the caller's transaction; their outcomes are the
    caller's to record (record_outcomes). The audit rows the plan writes make name their
    events (audit_rows).
    """
    snapshot = _read(conn, candidates)
    results = _decide(candidates, snapshot, rules)
    if results:
        _write(conn, snapshot)
    return results


def apply_one(conn: psycopg.Connection, candidate: Candidate, rules: DecisionRules) -> Outcome:
    """Apply one event, in the caller's transaction: what its handler does.

    Raises the error of an event that must change nothing (ApplyError for a customer that
    does not exist, PayloadError for an unreadable state from Stripe's API), so that the
    caller rolls back what it wrote for the event first (a link). The caller names the
    transaction after the event (`webhook.source`), as every path that applies one does,
    and the audit rows of a plan change carry that name.
    """
    snapshot = _read(conn, [candidate])
    [result] = _decide([candidate], snapshot, rules)
    refused = snapshot.refused.get(candidate.event.id)
    if refused is not None:
        raise refused
    _write(conn, snapshot, one_event=True)
    return result.outcome


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
    conn: psycopg.Connection, event_ids: Sequence[str], rules: "ProcessingRules"
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


def candidate_for(event: Event, rules: DecisionRules) -> Candidate | None:
    """The event as a run takes it: a subscription event of the platform's own (not a
    connected account's) whose metadata links no customer and whose state can be applied
    (the handler fails the others with their reason, and ignores a connected account's)."""
    if event.type not in SUBSCRIPTION_TYPES or event.account is not None:
        return None
    try:
        if metadata_customer_uuid(event.object):
            return None
        return candidate(event, rules)
    except PayloadError:
        return None


def candidate(event: Event, rules: DecisionRules) -> Candidate:
    """A subscription event ready to decide; PayloadError when its state cannot be applied."""
    state = applicable_state(event.object, rules.entitled_statuses)
    return Candidate(event, state, tuple(subscription_order_key(event.created, event.type, state)))


def applicable_state(
    subscription: Mapping[str, Any], entitled: frozenset[str]
) -> SubscriptionState:
    """The subscription's state, refused (PayloadError) when it cannot be applied: when it
    would grant but names no price at all, or carries a moment outside the database's range.

    A state that grants but names no price would take the plan of a paying customer away
    (or grant nothing to a new one) because of a payload this service cannot read. A state
    that grants nothing anyway (canceled, unpaid, ...) needs no price and is kept.
    """
    state = subscription_state(subscription)
    if not state.price_ids and state.status in entitled:
        raise PayloadError(
            f"subscription {state.id} ({state.status}) has {NO_READABLE_ITEMS}; nothing was applied"
        )
    for moment in (state.current_period_end, state.cancel_at, state.ended_at):
        timestamp(moment)  # raises PayloadError for one the database cannot store
    return state


def _read(conn: psycopg.Connection, candidates: list[Candidate]) -> _Snapshot:
    """Take the locks every writer of these rows takes, and read what deciding needs.

    Advisory locks on the Stripe customers in one sorted order, then the customers' rows
    in uuid order (as `accounts` does), then the mirror and the catalogue. Statements are
    sent before the answers they do not depend on are read: in pipeline mode (a delivery
    applied inline) they travel three round trips in all.
    """
    stripe_customers = sorted({c.state.customer for c in candidates})
    linked = {customer for c in candidates for customer in c.linked}
    conn.execute(
        "select pg_advisory_xact_lock(hashtextextended('stripe-customer:' || s, 0))"
        " from unnest(%s::text[]) with ordinality as t(s, n) order by n",
        (stripe_customers,),
    )
    links = conn.execute(
        "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
        " where stripe_customer_id = any(%s)",
        (stripe_customers,),
    )
    owners: dict[str, uuid.UUID | None] = dict.fromkeys(stripe_customers)
    owners.update(links.fetchall())
    customers = sorted({owner for owner in owners.values() if owner is not None} | linked)
    locked = conn.execute(
        "select uuid, plan_id from public.customer where uuid = any(%s) order by uuid for update",
        (customers,),
    )
    # Read after the rows are locked (each statement takes its own snapshot), so a plan
    # recomputed by a transaction that held them is seen.
    owned_links = conn.execute(
        "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
        " where customer_uuid = any(%s)",
        (customers,),
    )
    catalog = conn.execute(accounts.CATALOG_QUERY)
    plans_now = dict(locked.fetchall())
    owned = owned_links.fetchall()
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
        PlanCatalog.from_plans(catalog.fetchall()),
    )


def _decide(
    candidates: list[Candidate], snapshot: _Snapshot, rules: DecisionRules
) -> list[ReplayResult]:
    """Each event's outcome, in order, on the snapshot, which follows the decisions."""
    results: list[ReplayResult] = []
    for candidate in candidates:
        event = candidate.event
        try:
            stored = snapshot.subscriptions.get(candidate.state.id)
            state, event_id, fetched = _settled_state(candidate, stored, rules)
            newer = (
                fetched
                or stored is None
                or (candidate.key, event_id) > (stored.order_key, stored.event_id)
            )
            row = (
                _Mirrored(state.id, state.customer, state.status, state.price_ids,
                          state.product_ids, candidate.key, event_id)
                if newer
                else None
            )  # fmt: skip
            owner = snapshot.owners.get(state.customer)
            affected = sorted(({owner} if owner is not None else set()) | candidate.linked)
            outcome, moves = _outcome(snapshot, affected, row, rules)
        except (ApplyError, PayloadError) as exc:  # the event changes nothing at all
            snapshot.refused[event.id] = exc
            results.append(ReplayResult(event.id, event.type, Outcome.failed(str(exc)), None, None))
            continue
        if row is not None:
            snapshot.keep(row, state, fetched)
        primary = outcome.customer
        before = snapshot.plans_now.get(primary) if primary is not None else None
        for customer, plan in moves:
            if plan != snapshot.plans_now[customer]:
                snapshot.plans_now[customer] = plan
                snapshot.plan_moves.setdefault(customer, []).append((event.id, plan))
        after = snapshot.plans_now.get(primary) if primary is not None else None
        results.append(ReplayResult(event.id, event.type, outcome, before, after))
    return results


def _settled_state(
    candidate: Candidate, stored: _Mirrored | None, rules: DecisionRules
) -> tuple[SubscriptionState, str, bool]:
    """The state to keep for the event, the event id to keep with it, and whether it came
    from Stripe's API.

    When the stored state ties the event's on the whole order key (only the event ids
    differ) and an API key is set, Stripe's current state beats both; it is kept with the
    larger event id, so that a redelivery of either event cannot win the tie afterwards.
    If Stripe cannot be asked, the event ids break the tie.
    """
    event, state = candidate.event, candidate.state
    if (
        not rules.stripe_api_key
        or stored is None
        or stored.event_id == event.id
        or not is_full_tie(list(stored.order_key), list(candidate.key))
    ):
        return state, event.id, False
    current = fetch_subscription(rules.stripe_api_key, state.id, rules.stripe_api_base)
    if current is None:
        return state, event.id, False
    return applicable_state(current, rules.entitled_statuses), max(stored.event_id, event.id), True


def _outcome(
    snapshot: _Snapshot, affected: list[uuid.UUID], row: _Mirrored | None, rules: DecisionRules
) -> tuple[Outcome, list[tuple[uuid.UUID, int | None]]]:
    """The outcome, and each affected customer's entitled plan, in uuid order.

    A plan that cannot be decided (a granting price with no plan) fails the event and
    stops there: the mirror row is kept, that plan and the ones after it are left alone;
    the mirror says what Stripe says, the plan waits. A customer that does not exist
    raises ApplyError: the event then changes nothing.
    """
    moves: list[tuple[uuid.UUID, int | None]] = []
    for customer in affected:
        if customer not in snapshot.plans_now:
            raise ApplyError(f"no customer with uuid {customer}")
        entitlement = entitled_plan(
            snapshot.owner_subscriptions(customer, row), snapshot.catalog, rules.entitled_statuses
        )
        if not entitlement.decided:
            return Outcome.failed(unknown_prices_message(entitlement), customer), moves
        moves.append((customer, entitlement.plan_id))
    return Outcome.processed(affected[0] if affected else None), moves


def _write(conn: psycopg.Connection, snapshot: _Snapshot, *, one_event: bool = False) -> None:
    """Write the net result: mirror rows, changed plans (with their audit source).

    With `one_event`, the caller has named the transaction after its event
    (`webhook.source`), so the audit rows need no map of their own.
    """
    for from_stripe in (False, True):
        rows = [
            mirror.row(state, row.order_key, row.event_id)
            for row, state, fetched in snapshot.changed.values()
            if fetched is from_stripe
        ]
        if rows:
            mirror.send_many(conn, rows, replace=from_stripe)
    for writes in snapshot.plan_writes():
        if writes:
            _write_plans(conn, writes, one_event)


_SET_PLANS = (
    "update public.customer c set plan_id = v.plan_id"
    " from unnest(%s::uuid[], %s::bigint[]) as v(uuid, plan_id)"
    " where c.uuid = v.uuid and c.uuid = any(%s::uuid[])"
)


def _write_plans(
    conn: psycopg.Connection, writes: list[tuple[uuid.UUID, int | None, str]], one_event: bool
) -> None:
    """Set the plans; the triggers reset resources and write audit rows, each naming its event.

    The `= any` beside a join to unnest lets the planner see which rows an update touches
    and use the index, instead of hashing the whole table on every batch.
    """
    customers = [owner for owner, _, _ in writes]
    params = (customers, [plan for _, plan, _ in writes], customers)
    if one_event:
        conn.execute(_SET_PLANS, params)
        return
    update_naming_audit_rows(
        conn, _SET_PLANS, params, {owner: event_id for owner, _, event_id in writes}
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

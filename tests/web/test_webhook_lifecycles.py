"""Ordering, idempotency and concurrency of whole subscription lifecycles.

Stripe does not order events, redelivers them, and stamps them with whole seconds. The
requirement: the same set of events, delivered in any order, any number of times,
concurrently, ends in the same rows as delivered once in order, a subscription's mirror
never moves back to an older state, and no audit row is ever written twice.

Each scenario below is one realistic history for one user, Stripe customer and
subscription(s), built in Stripe's order, with the plan the user must hold after each
event when the history is delivered in that order. A test delivers it in order in its
own database, keeps the result, then resets the processor's state and delivers the same
signed events again: redelivered, shuffled, duplicated and shuffled, concurrently.
"""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from flask import Flask
from stripe_events import (
    API_VERSIONS,
    DAY,
    MONTH,
    Delivery,
    EventFactory,
    lifecycle,
)
from webhook_support import SECRET, StripeSender, build_app, customer_state, outcome_rows

RENEWAL_TYPES = ("invoice.paid", "invoice.payment_succeeded")
PRO_RESOURCES = {"api_calls": 5000, "storage_gb": 50}

# -------------------------------------------------------------------------------------------
# The scenario library
# -------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """An in-order history: each delivery with the plan (by name) the user holds after it."""

    name: str
    steps: list[tuple[Delivery, str | None]]
    # Subscription id -> (status, price ids) the mirror ends with.
    final_mirror: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    @property
    def deliveries(self) -> list[Delivery]:
        return [delivery for delivery, _ in self.steps]

    @property
    def final_plan(self) -> str | None:
        return self.steps[-1][1]

    def renewal_invoices(self) -> dict[str, str]:
        """Event id -> invoice id, for the events that may reset resources."""
        return {
            d.id: d.object["id"]
            for d in self.deliveries
            if d.type in RENEWAL_TYPES and d.object.get("billing_reason") == "subscription_cycle"
        }


class Script:
    """Builds one scenario's events with a factory, recording the expected plan per step."""

    def __init__(self, name: str, f: EventFactory, user_id: str, customer: str) -> None:
        self.name = name
        self.f = f
        self.user_id = user_id
        self.customer = customer
        self.steps: list[tuple[Delivery, str | None]] = []
        self.final_mirror: dict[str, tuple[str, list[str]]] = {}

    def at(self, when: int) -> Script:
        """Move Stripe's clock (never backwards)."""
        self.f.clock = max(self.f.clock, when)
        return self

    def add(self, delivery: Delivery, plan: str | None) -> Delivery:
        self.steps.append((delivery, plan))
        return delivery

    def checkout(self, sub_id: str, plan: str | None, **kwargs: Any) -> Delivery:
        return self.add(
            self.f.checkout_completed(
                customer=self.customer,
                subscription=sub_id,
                client_reference_id=self.user_id,
                metadata={"user_id": self.user_id},
                **kwargs,
            ),
            plan,
        )

    def sub(
        self,
        type: str,
        sub_id: str,
        status: str,
        prices: Sequence[str],
        period: tuple[int, int],
        plan: str | None,
        *,
        link_by_metadata: bool = False,
        **kwargs: Any,
    ) -> Delivery:
        meta = {"user_id": self.user_id}
        if link_by_metadata:
            meta["customer_uuid"] = self.user_id  # created through the API, not Checkout
        return self.add(
            self.f.subscription(
                f"customer.subscription.{type}",
                sub_id=sub_id,
                customer=self.customer,
                status=status,
                price_ids=tuple(prices),
                period_start=period[0],
                period_end=period[1],
                metadata=meta,
                **kwargs,
            ),
            plan,
        )

    def invoice(
        self,
        type: str,
        invoice_id: str,
        sub_id: str,
        reason: str,
        prices: Sequence[str],
        period: tuple[int, int],
        plan: str | None,
    ) -> Delivery:
        return self.add(
            self.f.invoice(
                type,
                invoice_id=invoice_id,
                customer=self.customer,
                subscription=sub_id,
                billing_reason=reason,
                price_ids=tuple(prices),
                period_start=period[0],
                period_end=period[1],
            ),
            plan,
        )

    def first_invoice_paid(
        self, sub_id: str, prices: Sequence[str], period: tuple[int, int], plan: str | None
    ) -> Delivery:
        """invoice.paid for a subscription's first invoice (never resets anything)."""
        invoice_id = self.f.new_id("in_")
        return self.invoice(
            "invoice.paid", invoice_id, sub_id, "subscription_create", prices, period, plan
        )

    def renewal_paid(
        self, invoice_id: str, sub_id: str, prices: Sequence[str], period: tuple[int, int], plan
    ) -> None:
        """invoice.paid and invoice.payment_succeeded for one renewal invoice."""
        for type_ in RENEWAL_TYPES:
            self.invoice(type_, invoice_id, sub_id, "subscription_cycle", prices, period, plan)

    def done(self, **final_mirror: tuple[str, list[str]]) -> Scenario:
        return Scenario(self.name, self.steps, final_mirror)


def scenario_lifecycle(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """stripe_events.lifecycle: sign-up (incomplete then active in one second), upgrade,
    renewal, cancel at period end, deletion."""
    deliveries = lifecycle(f, user_id=user_id, customer=customer, sub_id=customer + "_sub")
    plans = [None, None, "Basic", "Basic", "Pro", "Pro", "Pro", "Pro", "Pro", None]
    assert [d.type for d in deliveries][-1] == "customer.subscription.deleted"
    assert len(deliveries) == len(plans)
    return Scenario(
        "lifecycle",
        list(zip(deliveries, plans, strict=True)),
        {customer + "_sub": ("canceled", ["price_pro"])},
    )


def scenario_downgrade(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """Pro, then down to Basic a few days later; the renewal keeps Basic."""
    s, sub = Script("downgrade", f, user_id, customer), customer + "_sub"
    t0 = f.clock
    p0, p1, p2 = t0, t0 + MONTH, t0 + 2 * MONTH
    s.checkout(sub, None)
    s.at(t0 + 2).sub("created", sub, "active", ["price_pro"], (p0, p1), "Pro")
    s.first_invoice_paid(sub, ["price_pro"], (p0, p1), "Pro")
    s.at(t0 + 5 * DAY)
    old = f.items_list(sub_id=sub, price_ids=["price_pro"], period_start=p0, period_end=p1)
    s.sub(
        "updated", sub, "active", ["price_basic"], (p0, p1), "Basic",
        previous_attributes={"items": old},
    )  # fmt: skip
    s.at(p1 + 3600).renewal_paid(f.new_id("in_"), sub, ["price_basic"], (p1, p2), "Basic")
    s.at(p1 + 3601).sub("updated", sub, "active", ["price_basic"], (p1, p2), "Basic")
    return s.done(**{sub: ("active", ["price_basic"])})


def scenario_trial(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """A 14-day trial grants Pro at once; it becomes active (and renews) when the trial ends."""
    s, sub = Script("trial", f, user_id, customer), customer + "_sub"
    t0 = f.clock
    trial_end = t0 + 14 * DAY
    s.checkout(sub, None, payment_status="no_payment_required")
    s.at(t0 + 1).sub("created", sub, "trialing", ["price_pro"], (t0, trial_end), "Pro")
    s.first_invoice_paid(sub, ["price_pro"], (t0, trial_end), "Pro")
    s.at(trial_end - 3 * DAY).sub(
        "trial_will_end", sub, "trialing", ["price_pro"], (t0, trial_end), "Pro"
    )
    # The trial ends: the period rolls and the first real invoice is paid in the same second.
    s.at(trial_end)
    s.sub(
        "updated", sub, "active", ["price_pro"], (trial_end, trial_end + MONTH), "Pro",
        previous_attributes={"status": "trialing"},
    )  # fmt: skip
    s.renewal_paid(f.new_id("in_"), sub, ["price_pro"], (trial_end, trial_end + MONTH), "Pro")
    return s.done(**{sub: ("active", ["price_pro"])})


def scenario_incomplete_then_active(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """Created through the API (linked by customer metadata): the first payment needs 3-D
    Secure, fails, and succeeds ten minutes later."""
    s, sub = Script("incomplete_then_active", f, user_id, customer), customer + "_sub"
    t0 = f.clock
    p = (t0, t0 + MONTH)
    first = f.new_id("in_")
    s.add(
        f.customer(
            "customer.created",
            customer_id=customer,
            metadata={"customer_uuid": user_id},
            created=t0 - 5,
        ),
        None,
    )
    s.sub("created", sub, "incomplete", ["price_pro"], p, None, link_by_metadata=True)
    s.invoice("invoice.payment_failed", first, sub, "subscription_create", ["price_pro"], p, None)
    s.at(t0 + 600)
    s.invoice("invoice.paid", first, sub, "subscription_create", ["price_pro"], p, None)
    s.sub(
        "updated", sub, "active", ["price_pro"], p, "Pro",
        link_by_metadata=True, previous_attributes={"status": "incomplete"},
    )  # fmt: skip
    return s.done(**{sub: ("active", ["price_pro"])})


def _past_due(s: Script, sub: str) -> tuple[int, int, str]:
    """Basic, renewed; the renewal payment fails and the subscription goes past_due."""
    f, basic = s.f, ["price_basic"]
    t0 = f.clock
    p0, p1, p2 = t0, t0 + MONTH, t0 + 2 * MONTH
    s.checkout(sub, None)
    s.at(t0 + 2).sub("created", sub, "active", basic, (p0, p1), "Basic")
    s.first_invoice_paid(sub, basic, (p0, p1), "Basic")
    s.at(p1).sub("updated", sub, "active", basic, (p1, p2), "Basic")  # the period rolls
    renewal = f.new_id("in_")
    s.at(p1 + 3600)
    s.invoice(
        "invoice.payment_failed", renewal, sub, "subscription_cycle", basic, (p1, p2), "Basic"
    )
    s.sub(
        "updated", sub, "past_due", basic, (p1, p2), "Basic",  # a grace period
        previous_attributes={"status": "active"},
    )  # fmt: skip
    return p1, p2, renewal


def scenario_past_due_recovers(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """past_due keeps the plan; the retry three days later pays and the status is active."""
    s, sub = Script("past_due_recovers", f, user_id, customer), customer + "_sub"
    p1, p2, renewal = _past_due(s, sub)
    s.at(p1 + 3 * DAY).renewal_paid(renewal, sub, ["price_basic"], (p1, p2), "Basic")
    s.sub(
        "updated", sub, "active", ["price_basic"], (p1, p2), "Basic",
        previous_attributes={"status": "past_due"},
    )  # fmt: skip
    return s.done(**{sub: ("active", ["price_basic"])})


def scenario_past_due_unpaid(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """past_due keeps the plan; every retry fails and the subscription ends unpaid: no plan."""
    s, sub = Script("past_due_unpaid", f, user_id, customer), customer + "_sub"
    p1, p2, renewal = _past_due(s, sub)
    basic = ["price_basic"]
    for days in (3, 5):
        s.at(p1 + days * DAY)
        s.invoice(
            "invoice.payment_failed", renewal, sub, "subscription_cycle", basic, (p1, p2), "Basic"
        )
    s.at(p1 + 7 * DAY).sub(
        "updated", sub, "unpaid", basic, (p1, p2), None,
        previous_attributes={"status": "past_due"},
    )  # fmt: skip
    return s.done(**{sub: ("unpaid", ["price_basic"])})


def scenario_subscription_before_checkout(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """Everything about the subscription arrives before the checkout that links the user."""
    s, sub = Script("subscription_before_checkout", f, user_id, customer), customer + "_sub"
    t0 = f.clock
    p = (t0, t0 + MONTH)
    s.add(f.customer("customer.created", customer_id=customer, created=t0 - 1), None)  # no link
    s.sub("created", sub, "incomplete", ["price_enterprise"], p, None)
    s.sub(
        "updated", sub, "active", ["price_enterprise"], p, None,
        previous_attributes={"status": "incomplete"},
    )  # fmt: skip
    s.add(f.other("charge.succeeded"), None)
    s.first_invoice_paid(sub, ["price_enterprise"], p, None)
    s.at(t0 + 1).checkout(sub, "Enterprise")
    return s.done(**{sub: ("active", ["price_enterprise"])})


def scenario_cancel_at_period_end(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """Cancelling at period end keeps the plan until Stripe deletes the subscription."""
    s, sub = Script("cancel_at_period_end", f, user_id, customer), customer + "_sub"
    t0 = f.clock
    p = (t0, t0 + MONTH)
    s.checkout(sub, None)
    s.at(t0 + 2).sub("created", sub, "active", ["price_pro"], p, "Pro")
    s.at(t0 + 10 * DAY).sub(
        "updated", sub, "active", ["price_pro"], p, "Pro",
        cancel_at_period_end=True,
        previous_attributes={"cancel_at": None, "cancel_at_period_end": False, "canceled_at": None},
    )  # fmt: skip
    s.at(p[1] + 2).sub(
        "deleted", sub, "canceled", ["price_pro"], p, None, cancel_at_period_end=True
    )
    return s.done(**{sub: ("canceled", ["price_pro"])})


def scenario_second_subscription(f: EventFactory, user_id: str, customer: str) -> Scenario:
    """Basic through Checkout, then Enterprise through the API: the higher price wins until the
    Enterprise subscription is cancelled (at period end, then deleted)."""
    s = Script("second_subscription", f, user_id, customer)
    basic, ent = customer + "_basic", customer + "_ent"
    t0 = f.clock
    s.checkout(basic, None)
    s.at(t0 + 2).sub("created", basic, "active", ["price_basic"], (t0, t0 + MONTH), "Basic")
    t1 = s.at(t0 + DAY).f.clock
    pe = (t1, t1 + MONTH)
    s.sub("created", ent, "active", ["price_enterprise"], pe, "Enterprise", link_by_metadata=True)
    s.first_invoice_paid(ent, ["price_enterprise"], pe, "Enterprise")
    s.at(t1 + 5 * DAY).sub(
        "updated", ent, "active", ["price_enterprise"], pe, "Enterprise",
        link_by_metadata=True, cancel_at_period_end=True,
        previous_attributes={"cancel_at_period_end": False},
    )  # fmt: skip
    s.at(pe[1] + 1).sub(
        "deleted", ent, "canceled", ["price_enterprise"], pe, "Basic",
        link_by_metadata=True, cancel_at_period_end=True,
    )  # fmt: skip
    return s.done(**{basic: ("active", ["price_basic"]), ent: ("canceled", ["price_enterprise"])})


ScenarioBuilder = Callable[[EventFactory, str, str], Scenario]

SCENARIOS: dict[str, ScenarioBuilder] = {
    "lifecycle": scenario_lifecycle,
    "downgrade": scenario_downgrade,
    "trial": scenario_trial,
    "incomplete_then_active": scenario_incomplete_then_active,
    "past_due_recovers": scenario_past_due_recovers,
    "past_due_unpaid": scenario_past_due_unpaid,
    "subscription_before_checkout": scenario_subscription_before_checkout,
    "cancel_at_period_end": scenario_cancel_at_period_end,
    "second_subscription": scenario_second_subscription,
}


def build(name: str, api_version: str, user: uuid.UUID) -> Scenario:
    factory = EventFactory(api_version, seed=sorted(SCENARIOS).index(name))
    return SCENARIOS[name](factory, str(user), f"cus_{name}_{factory.new_id('', 8)}")


# -------------------------------------------------------------------------------------------
# Helpers: resetting, snapshots, invariants
# -------------------------------------------------------------------------------------------


def reset(conn: psycopg.Connection) -> None:
    """Forget everything the processor did, so the same events can be delivered again."""
    state_tables = (
        "webhook_private.events, webhook_private.event_attempts, webhook_private.subscriptions,"
        " webhook_private.customer_links, webhook_private.resource_resets,"
        " webhook_private.catalog_versions, public.audit_logs"
    )
    conn.execute(f"truncate {state_tables}")
    with conn.transaction():
        # The processor's own kind of write: not an application link (see migration 007).
        conn.execute("select set_config('webhook.writing_links', 'on', true)")
        conn.execute("update public.customer set plan_id = null, stripe_customer_id = null")
    conn.execute("truncate public.audit_logs")  # the update above wrote plan_change rows


def all_audit(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select customer_uuid, action, old_value, new_value, source from public.audit_logs"
        " order by id"
    ).fetchall()


def plan_name(conn: psycopg.Connection, user: uuid.UUID, plans: dict[str, int]) -> str | None:
    plan_id = customer_state(conn, user)["plan_id"]
    names = {v: k for k, v in plans.items()}
    return None if plan_id is None else names[plan_id]


def mirror_positions(conn: psycopg.Connection) -> dict[str, tuple[list[int], str]]:
    rows = conn.execute("select id, order_key, event_id from webhook_private.subscriptions")
    return {sub_id: (list(key), event_id) for sub_id, key, event_id in rows}


def check_mirror_never_moves_back(
    before: dict[str, tuple[list[int], str]], after: dict[str, tuple[list[int], str]]
) -> None:
    for sub_id, position in before.items():
        assert sub_id in after, f"subscription {sub_id} left the mirror"
        assert after[sub_id] >= position, f"{sub_id} moved back from {position} to {after[sub_id]}"


def check_invariants(conn: psycopg.Connection, scenario: Scenario, sent: Counter[str]) -> None:
    """What must hold after any delivery of the scenario's events, in any order."""
    inbox = {
        event_id: (status, deliveries, attempts)
        for event_id, status, deliveries, attempts in conn.execute(
            "select id, status, deliveries, attempts from webhook_private.events"
        )
    }
    assert set(inbox) == set(sent), "the inbox holds exactly the events sent"
    for event_id, (status, deliveries, attempts) in inbox.items():
        assert deliveries == sent[event_id], (event_id, deliveries, sent[event_id])
        assert status in ("processed", "ignored"), (event_id, status)
        assert attempts == 1, f"{event_id} was applied {attempts} times"
    per_event = conn.execute(
        "select event_id, count(*) from webhook_private.event_attempts group by 1"
    ).fetchall()
    assert dict(per_event) == dict.fromkeys(sent, 1), "every event applied exactly once"

    audit = all_audit(conn)
    for _customer, action, old, new, source in audit:
        assert source is not None and source.removeprefix("stripe:") in sent, source
        if action == "plan_change":
            assert old is not None, "customers exist before any event"
            assert old["plan_id"] != new["plan_id"], f"no-op plan change {old} -> {new}"
    by_event = Counter((customer, action, source) for customer, action, _, _, source in audit)
    assert all(n == 1 for n in by_event.values()), f"an event wrote a row twice: {by_event}"

    renewals = scenario.renewal_invoices()
    resets = Counter(
        renewals.get(source.removeprefix("stripe:"), f"not a renewal: {source}")
        for _, action, _, _, source in audit
        if action == "resource_reset"
    )
    assert all(inv in renewals.values() for inv in resets), resets
    assert all(n == 1 for n in resets.values()), f"an invoice reset twice: {resets}"
    for invoice_id, event_id in conn.execute(
        "select invoice_id, event_id from webhook_private.resource_resets"
    ):
        assert renewals.get(event_id) == invoice_id, (invoice_id, event_id)


def deliver_sequentially(
    conn: psycopg.Connection, stripe: StripeSender, deliveries: Iterable[Delivery]
) -> Counter[str]:
    """Post one by one, checking after each that no subscription's mirror moved back."""
    sent: Counter[str] = Counter()
    position = mirror_positions(conn)
    for delivery in deliveries:
        stripe.send_all([delivery])
        sent[delivery.id] += 1
        now = mirror_positions(conn)
        check_mirror_never_moves_back(position, now)
        position = now
    return sent


def post_concurrently(app: Flask, deliveries: Sequence[Delivery], threads: int = 8) -> list[int]:
    """Post every delivery through its own test client, `threads` at a time, then let the
    app's drain apply the queue; the status codes."""
    local = threading.local()
    start = threading.Barrier(min(threads, len(deliveries)))

    def post(delivery: Delivery) -> int:
        if not hasattr(local, "client"):
            local.client = app.test_client()
            start.wait(timeout=30)  # every worker ready before the first request
        response = local.client.post(
            "/webhook", data=delivery.body, headers=delivery.headers(SECRET)
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=threads) as pool:
        statuses = list(pool.map(post, deliveries))
    app.extensions["webhook"].drain.until_empty()
    return statuses


def mirror_summary(conn: psycopg.Connection) -> dict[str, tuple[str, list[str]]]:
    rows = conn.execute("select id, status, price_ids from webhook_private.subscriptions")
    return {sub_id: (status, list(prices)) for sub_id, status, prices in rows}


@dataclass
class InOrder:
    """The state after delivering a scenario once, in order."""

    rows: dict[str, Any]
    audit: list[tuple[Any, ...]]


def deliver_in_order(conn, stripe, plans, user, scenario: Scenario) -> InOrder:
    """Deliver once in Stripe's order, checking the plan after every event; the result."""
    sent: Counter[str] = Counter()
    position = mirror_positions(conn)
    for index, (delivery, plan) in enumerate(scenario.steps):
        stripe.send_all([delivery])
        sent[delivery.id] += 1
        assert plan_name(conn, user, plans) == plan, (
            f"after step {index} ({delivery.type}) the plan should be {plan}"
        )
        now = mirror_positions(conn)
        check_mirror_never_moves_back(position, now)
        position = now
    assert mirror_summary(conn) == scenario.final_mirror
    check_invariants(conn, scenario, sent)
    return InOrder(outcome_rows(conn), all_audit(conn))


def shuffled(deliveries: Sequence[Delivery], seed: int, copies: int = 1) -> list[Delivery]:
    out = [d for d in deliveries for _ in range(copies)]
    random.Random(seed).shuffle(out)
    return out


# -------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------


@pytest.fixture(params=["queued", "inline"])
def either_mode(request: pytest.FixtureRequest, db_url: str) -> Iterator[StripeSender]:
    """A sender to the app in each WEBHOOK_APPLY mode (queued: drained after each post)."""
    application = build_app(db_url, WEBHOOK_APPLY=request.param)
    yield StripeSender(application.test_client())
    application.extensions["webhook"].close()


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_any_order_any_number_of_times_ends_in_the_in_order_state(
    name, api_version, conn, plans, user, either_mode
) -> None:
    stripe = either_mode
    scenario = build(name, api_version, user)
    events = scenario.deliveries
    expected = deliver_in_order(conn, stripe, plans, user, scenario)
    assert expected.rows["customers"][0][1] == (
        plans[scenario.final_plan] if scenario.final_plan else None
    )

    # Redelivered in order (each event twice in a row, then the whole history once more):
    # not one more audit row, not one changed row.
    for label, order in (
        ("each event twice in a row", [d for d in events for _ in range(2)]),
        ("the whole history twice", events + events),
    ):
        reset(conn)
        sent = deliver_sequentially(conn, stripe, order)
        check_invariants(conn, scenario, sent)
        assert outcome_rows(conn) == expected.rows, label
        assert all_audit(conn) == expected.audit, label

    # Reversed, shuffled, and shuffled with every event delivered twice or three times.
    runs = [("reversed", events[::-1])]
    runs += [(f"shuffled seed {seed}", shuffled(events, seed)) for seed in range(3)]
    runs += [(f"twice, shuffled seed {seed}", shuffled(events, seed, 2)) for seed in (10, 11)]
    runs += [("three times, shuffled", shuffled(events, 20, 3))]
    for label, order in runs:
        reset(conn)
        sent = deliver_sequentially(conn, stripe, order)
        check_invariants(conn, scenario, sent)
        assert outcome_rows(conn) == expected.rows, label
        assert mirror_summary(conn) == scenario.final_mirror, label


def test_the_scenarios_cover_both_shapes_and_distinct_ids(make_user) -> None:
    """The library itself: every scenario builds in both API shapes with unique event ids."""
    seen: set[str] = set()
    for name, api_version in itertools.product(SCENARIOS, API_VERSIONS):
        scenario = build(name, api_version, make_user())
        ids = [d.id for d in scenario.deliveries]
        assert len(set(ids)) == len(ids)
        assert not seen & set(ids)
        seen |= set(ids)
        assert {d.event["api_version"] for d in scenario.deliveries} == {api_version}
        created = [d.event["created"] for d in scenario.deliveries if "subscription." in d.type]
        assert created == sorted(created), f"{name}: subscription events out of Stripe's order"


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("name", ["lifecycle", "second_subscription", "past_due_unpaid"])
def test_concurrent_duplicated_shuffled_delivery_ends_in_the_in_order_state(
    name, api_version, conn, plans, user, stripe, app
) -> None:
    scenario = build(name, api_version, user)
    expected = deliver_in_order(conn, stripe, plans, user, scenario)

    for seed in (1, 2):
        reset(conn)
        order = shuffled(scenario.deliveries, seed, copies=2)
        statuses = post_concurrently(app, order, threads=8)
        assert statuses == [200] * len(order)
        check_invariants(conn, scenario, Counter(d.id for d in order))
        assert outcome_rows(conn) == expected.rows, f"seed {seed}"


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_one_event_posted_fifty_times_at_once_is_stored_and_applied_once(
    api_version, conn, plans, user, stripe, app
) -> None:
    f = EventFactory(api_version, seed=7)
    customer, sub = f"cus_storm_{f.new_id('', 8)}", f"sub_storm_{f.new_id('', 8)}"
    checkout = f.checkout_completed(
        customer=customer, subscription=sub, client_reference_id=str(user)
    )
    stripe.send_all([checkout])
    assert customer_state(conn, user)["plan_id"] is None
    f.tick(2)
    created = f.subscription(
        "customer.subscription.created", sub_id=sub, customer=customer, status="active"
    )

    statuses = post_concurrently(app, [created] * 50, threads=8)

    assert statuses == [200] * 50
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    status, deliveries, attempts = conn.execute(
        "select status, deliveries, attempts from webhook_private.events where id = %s",
        (created.id,),
    ).fetchone()
    assert (status, deliveries, attempts) == ("processed", 50, 1)
    attempt_rows = conn.execute(
        "select outcome from webhook_private.event_attempts where event_id = %s", (created.id,)
    ).fetchall()
    assert attempt_rows == [("processed",)]
    changes = conn.execute(
        "select old_value->'plan_id', new_value->'plan_id', source from public.audit_logs"
        " where action = 'plan_change'"
    ).fetchall()
    assert changes == [(None, plans["Pro"], f"stripe:{created.id}")]


# -- the renewal reset --------------------------------------------------------------------------


def consume(conn: psycopg.Connection, user: uuid.UUID, amount: int = 100) -> None:
    conn.execute("select public.consume_resources(%s, 'api_calls', %s)", (user, amount))


def resets(conn: psycopg.Connection, user: uuid.UUID) -> list[str]:
    """The sources of the user's resource_reset audit rows, oldest first."""
    rows = conn.execute(
        "select source from public.audit_logs where customer_uuid = %s"
        " and action = 'resource_reset' order by id",
        (user,),
    )
    return [source for (source,) in rows]


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("first", RENEWAL_TYPES)
def test_the_renewal_resets_resources_once_per_invoice(
    first, api_version, conn, plans, user, stripe
) -> None:
    f = EventFactory(api_version, seed=3)
    customer, sub = f"cus_renew_{f.new_id('', 8)}", f"sub_renew_{f.new_id('', 8)}"
    p0 = f.clock
    p1, p2, p3 = p0 + MONTH, p0 + 2 * MONTH, p0 + 3 * MONTH
    stripe.send_all(
        [
            f.checkout_completed(customer=customer, subscription=sub, client_reference_id=str(user)),
            f.subscription(
                "customer.subscription.created", sub_id=sub, customer=customer, status="active",
                price_ids=["price_pro"], period_start=p0, period_end=p1,
            ),
        ]
    )  # fmt: skip
    full = customer_state(conn, user)
    assert full["plan_id"] == plans["Pro"]
    assert full["remaining_resources"] == full["plan_resources"] == PRO_RESOURCES

    def renewal_pair(invoice_id: str, period: tuple[int, int]) -> dict[str, Delivery]:
        return {
            type_: f.invoice(
                type_, invoice_id=invoice_id, customer=customer, subscription=sub,
                billing_reason="subscription_cycle", price_ids=["price_pro"],
                period_start=period[0], period_end=period[1],
            )
            for type_ in RENEWAL_TYPES
        }  # fmt: skip

    # The renewal for p1..p2: both events, each twice, `first` first.
    consume(conn, user)
    consume(conn, user)
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4800
    f.clock = p1 + 3600
    renewal = renewal_pair(f.new_id("in_"), (p1, p2))
    second = next(t for t in RENEWAL_TYPES if t != first)
    responses = stripe.send_all([renewal[first], renewal[second], renewal[first], renewal[second]])
    assert [r.get_json()["duplicate"] for r in responses] == [False, False, True, True]
    state = customer_state(conn, user)
    assert state["remaining_resources"] == state["plan_resources"] == PRO_RESOURCES
    assert resets(conn, user) == [f"stripe:{renewal[first].id}"]
    assert conn.execute(
        "select invoice_id, event_id from webhook_private.resource_resets"
    ).fetchall() == [(renewal[first].object["id"], renewal[first].id)]

    # Another event about the same invoice (a new event id) after more consumption: no reset.
    consume(conn, user, 250)
    f.tick(60)
    again = f.invoice(
        "invoice.paid", invoice_id=renewal[first].object["id"], customer=customer,
        subscription=sub, billing_reason="subscription_cycle", price_ids=["price_pro"],
        period_start=p1, period_end=p2,
    )  # fmt: skip
    stripe.send_all([again])
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4750
    assert len(resets(conn, user)) == 1

    # An older invoice (the previous period) arriving late never resets.
    older = renewal_pair(f.new_id("in_"), (p0, p1))
    stripe.send_all([older[first], older[second], older[first]])
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4750
    assert len(resets(conn, user)) == 1
    assert {
        row[0]
        for row in conn.execute(
            "select status from webhook_private.events where id = any(%s)",
            ([d.id for d in older.values()],),
        )
    } == {"ignored"}

    # The next renewal does.
    f.clock = p2 + 3600
    newer = renewal_pair(f.new_id("in_"), (p2, p3))
    stripe.send_all([newer[second], newer[first], newer[second]])
    state = customer_state(conn, user)
    assert state["remaining_resources"] == PRO_RESOURCES
    assert resets(conn, user) == [f"stripe:{renewal[first].id}", f"stripe:{newer[second].id}"]
    invoices = conn.execute(
        "select invoice_id from webhook_private.resource_resets order by period_start"
    ).fetchall()
    assert invoices == [(renewal[first].object["id"],), (newer[second].object["id"],)]


# -- known order dependence of the customer links ------------------------------------------------


def two_stripe_customers(f: EventFactory, user_id: str) -> tuple[Scenario, str, str]:
    """Basic through one Checkout, Enterprise a day later through a second Checkout that
    created a new Stripe customer (Stripe's default): one user, two Stripe customers."""
    first = Script("first", f, user_id, "cus_first_" + f.new_id("", 8))
    t0 = f.clock
    first.checkout("sub_first", None)
    first.at(t0 + 2).sub(
        "created", "sub_first", "active", ["price_basic"], (t0, t0 + MONTH), "Basic"
    )
    second = Script("second", f, user_id, "cus_second_" + f.new_id("", 8))
    t1 = second.at(t0 + DAY).f.clock
    second.checkout("sub_second", "Basic")
    second.at(t1 + 2).sub(
        "created", "sub_second", "active", ["price_enterprise"], (t1, t1 + MONTH), "Enterprise"
    )
    scenario = Scenario(
        "two_stripe_customers",
        first.steps + second.steps,
        {"sub_first": ("active", ["price_basic"]), "sub_second": ("active", ["price_enterprise"])},
    )
    return scenario, first.customer, second.customer


def without_stripe_customer_id(rows: dict[str, Any]) -> dict[str, Any]:
    customers = [(uuid_, plan, *rest) for uuid_, plan, _, *rest in rows["customers"]]
    return {**rows, "customers": customers}


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_two_stripe_customers_for_one_user_give_the_same_plan_in_any_order(
    api_version, conn, plans, user, stripe
) -> None:
    scenario, _, _ = two_stripe_customers(EventFactory(api_version, seed=5), str(user))
    expected = deliver_in_order(conn, stripe, plans, user, scenario)
    assert len(expected.rows["links"]) == 2
    events = scenario.deliveries
    for label, order in (("reversed", events[::-1]), ("shuffled", shuffled(events, 4, 2))):
        reset(conn)
        sent = deliver_sequentially(conn, stripe, order)
        check_invariants(conn, scenario, sent)
        assert plan_name(conn, user, plans) == "Enterprise", label
        assert without_stripe_customer_id(outcome_rows(conn)) == without_stripe_customer_id(
            expected.rows
        ), label


def test_two_stripe_customers_show_the_same_stripe_customer_id_in_any_order(
    conn, plans, user, stripe
) -> None:
    scenario, _, second = two_stripe_customers(EventFactory(seed=5), str(user))
    stripe.send_all(scenario.deliveries)
    assert customer_state(conn, user)["stripe_customer_id"] == second  # in order: the newest
    reset(conn)
    stripe.send_all(scenario.deliveries[::-1])  # the newer Checkout arrives first
    assert customer_state(conn, user)["stripe_customer_id"] == second


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_a_deleted_stripe_customer_stays_unlinked_in_any_order(
    api_version, conn, plans, user, stripe
) -> None:
    f = EventFactory(api_version, seed=6)
    s = Script("customer_deleted", f, str(user), "cus_deleted_" + f.new_id("", 8))
    sub = s.customer + "_sub"
    t0 = f.clock
    s.checkout(sub, None)
    s.at(t0 + 2).sub("created", sub, "active", ["price_pro"], (t0, t0 + MONTH), "Pro")
    # The account is closed: Stripe cancels the subscription and deletes the customer.
    s.at(t0 + 3 * DAY).sub("deleted", sub, "canceled", ["price_pro"], (t0, t0 + MONTH), None)
    s.add(f.customer("customer.deleted", customer_id=s.customer), None)
    scenario = s.done(**{sub: ("canceled", ["price_pro"])})
    expected = deliver_in_order(conn, stripe, plans, user, scenario)
    assert expected.rows["links"] == []
    assert customer_state(conn, user)["stripe_customer_id"] is None

    reset(conn)
    deliver_sequentially(conn, stripe, scenario.deliveries[::-1])
    assert plan_name(conn, user, plans) is None  # the plan is right either way
    # The late checkout must not link the deleted Stripe customer again.
    assert outcome_rows(conn) == expected.rows

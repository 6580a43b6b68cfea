"""Add-ons (webhook_private.add_ons): prices sold beside a plan that grant none.

A customer often pays for an add-on on a subscription of its own (a monthly storage pack
beside a yearly plan). Without the add-on listed, its subscription is a granting one with
no plan price, which the rule reads as a configuration gap: the plan freezes, whatever
happens to the plan's own subscription. Listed, the add-on's subscription grants nothing
and its renewals leave the plan's allowance alone. Every history here is applied three
ways (one by one in Stripe's order, queued in one batch, queued one at a time) in both
payload shapes, and must end the same.
"""

import uuid
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner
from stripe_events import API_VERSIONS, MONTH, Delivery, EventFactory

from webhook.cli import cli
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline import inbox
from webhook.pipeline.drain import drain_until_empty
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.pipeline.reconcile import reconcile
from webhook.stripe.payloads import parse_event

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
STORAGE = "price_storage_monthly"  # an add-on's price, on the product prod_storage


def one_by_one(db: psycopg.Connection, deliveries: list[Delivery]) -> None:
    """Inline mode as Stripe would deliver them in order."""
    for delivery in sorted(deliveries, key=lambda d: d.event["created"]):
        process_delivery(db, parse_event(delivery.event, delivery.body.decode()), RULES)


def queued(db: psycopg.Connection, deliveries: list[Delivery]) -> None:
    """Stored in the order given, then drained (one batch)."""
    for delivery in deliveries:
        inbox.receive(db, parse_event(delivery.event, delivery.body.decode()))
    drain_until_empty(db, RULES)


def queued_apart(db: psycopg.Connection, deliveries: list[Delivery]) -> None:
    """Each drained before the next arrives."""
    for delivery in deliveries:
        queued(db, [delivery])


WAYS: dict[str, Callable[[psycopg.Connection, list[Delivery]], None]] = {
    "one_by_one": one_by_one,
    "queued": queued,
    "queued_apart": queued_apart,
}


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    f = EventFactory(request.param)
    f.known_price(STORAGE, product="prod_storage", unit_amount=500)
    return f


def add_on(db: psycopg.Connection, *, price: str | None = None, product: str | None = None):
    db.execute(
        "insert into webhook_private.add_ons (stripe_price_id, stripe_product_id, description)"
        " values (%s, %s, 'storage pack')",
        (price, product),
    )


def plan_of(db: psycopg.Connection, user: uuid.UUID) -> int | None:
    return db.execute("select plan_id from public.customer where uuid = %s", (user,)).fetchone()[0]


def subscription(f: EventFactory, kind: str, sub_id: str, status: str, price: str, at: int):
    return f.subscription(
        f"customer.subscription.{kind}", sub_id=sub_id, customer="cus_1", status=status,
        price_ids=[price], created=at, period_start=at,
    )  # fmt: skip


def pro_and_storage(f: EventFactory, user: uuid.UUID, *, storage_first: bool) -> list[Delivery]:
    """Checkout, Pro and a storage subscription (in either order), then Pro cancelled."""
    t = f.clock
    first, second = ("sub_storage", STORAGE), ("sub_pro", "price_pro")
    if not storage_first:
        first, second = second, first
    return [
        f.checkout_completed(customer="cus_1", subscription=None,
                             client_reference_id=str(user), created=t),
        subscription(f, "created", first[0], "active", first[1], t + 1),
        subscription(f, "created", second[0], "active", second[1], t + 2),
        subscription(f, "deleted", "sub_pro", "canceled", "price_pro", t + 3),
    ]  # fmt: skip


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("named_by", ["price", "product"])
def test_a_listed_add_on_neither_keeps_a_cancelled_plan_nor_blocks_a_paid_one(
    conn, db_url, plans, make_user, factory, way, named_by
) -> None:
    add_on(conn, **{named_by: STORAGE if named_by == "price" else "prod_storage"})
    user = make_user()
    history = pro_and_storage(factory, user, storage_first=True)
    WAYS[way](conn, history[:3])  # the storage pack first, then Pro
    assert plan_of(conn, user) == plans["Pro"]
    WAYS[way](conn, history[3:])  # Pro cancelled, the storage pack runs on
    assert plan_of(conn, user) is None
    statuses = conn.execute("select distinct status from webhook_private.events").fetchall()
    assert statuses == [("processed",)]
    doctor = CliRunner().invoke(
        cli, ["--database-url", db_url, "doctor"], env={"STRIPE_WEBHOOK_SECRET": "whsec_x"}
    )
    assert "ok   live subscriptions whose prices match no plan: 0" in doctor.output


def test_with_the_add_on_listed_any_order_and_either_mode_ends_alike(
    conn, twin, plans, make_user, factory
) -> None:
    """The review's case: the cancellation delivered before the add-on's creation, through
    the queue, against the same events one by one in order."""
    twin.execute(  # `plans` gave conn its plans; the twin needs Pro
        "insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)"
        " values ('Pro', 19.99, '{\"api_calls\": 5000}', 'price_pro', 'prod_pro')"
    )
    for db in (conn, twin):
        add_on(db, price=STORAGE)
    user = make_user()
    twin.execute("insert into auth.users (id, email) values (%s, 'u@x.test')", (user,))
    checkout, pro, storage, cancel = pro_and_storage(factory, user, storage_first=False)
    one_by_one(twin, [checkout, pro, storage, cancel])
    queued(conn, [checkout, pro])
    queued(conn, [cancel])
    queued(conn, [storage])
    assert plan_of(conn, user) is None
    assert plan_of(twin, user) is None
    queued_together = [checkout, pro, storage, cancel]
    conn.execute("truncate webhook_private.events cascade")
    queued(conn, list(reversed(queued_together)))  # the same events again, newest first
    assert plan_of(conn, user) is None


@pytest.mark.parametrize("way", WAYS)
def test_an_unlisted_add_on_is_reported_and_listing_it_then_reconciling_repairs_the_plan(
    conn, plans, make_user, factory, way
) -> None:
    user = make_user()
    history = pro_and_storage(factory, user, storage_first=False)
    WAYS[way](conn, history)
    # The gap: the storage pack's price has no plan, so the plan is left as the history
    # before it set it (Pro one by one; none when the whole history is one batch, which
    # links the customer after the cancellation), and the events that met it fail.
    errors = conn.execute(
        "select error from webhook_private.events where status = 'failed'"
    ).fetchall()
    assert errors and all(STORAGE in e and "webhook_private.add_ons" in e for (e,) in errors)
    add_on(conn, product="prod_storage")
    reconcile(conn, DEFAULT_ENTITLED_STATUSES)
    assert plan_of(conn, user) is None


def renewal(f: EventFactory, invoice: str, sub_id: str, prices: list[str], at: int) -> Delivery:
    return f.invoice(
        "invoice.paid", invoice_id=invoice, customer="cus_1", subscription=sub_id,
        billing_reason="subscription_cycle", price_ids=prices, period_start=at,
        period_end=at + MONTH, created=at,
    )  # fmt: skip


def remaining(db: psycopg.Connection, user: uuid.UUID) -> dict:
    return db.execute(
        "select remaining_resources from public.customer where uuid = %s", (user,)
    ).fetchone()[0]


@pytest.mark.parametrize("way", WAYS)
def test_an_add_on_renewal_leaves_the_plans_allowance_alone(
    conn, plans, make_user, factory, way
) -> None:
    add_on(conn, price=STORAGE)
    user = make_user()
    t = factory.clock
    WAYS[way](conn, [
        factory.checkout_completed(customer="cus_1", subscription=None,
                                   client_reference_id=str(user), created=t),
        subscription(factory, "created", "sub_pro", "active", "price_pro", t + 1),
        subscription(factory, "created", "sub_storage", "active", STORAGE, t + 2),
    ])  # fmt: skip
    conn.execute(
        "update public.customer set remaining_resources = '{\"api_calls\": 7}' where uuid = %s",
        (user,),
    )
    mid_month = t + 15 * 86_400
    WAYS[way](conn, [renewal(factory, "in_storage", "sub_storage", [STORAGE], mid_month)])
    assert remaining(conn, user) == {"api_calls": 7}
    # The plan's own renewal still resets it, and so does an invoice billing both.
    WAYS[way](conn, [renewal(factory, "in_pro", "sub_pro", ["price_pro"], t + MONTH)])
    assert remaining(conn, user)["api_calls"] == 5000
    conn.execute(
        "update public.customer set remaining_resources = '{\"api_calls\": 7}' where uuid = %s",
        (user,),
    )
    both = renewal(factory, "in_both", "sub_pro", ["price_pro", STORAGE], t + 2 * MONTH)
    WAYS[way](conn, [both])
    assert remaining(conn, user)["api_calls"] == 5000
    outcomes = dict(
        conn.execute(
            "select event_id, outcome from webhook_private.event_attempts a"
            " join webhook_private.events e on e.id = a.event_id"
            " where e.type = 'invoice.paid'"
        ).fetchall()
    )
    assert sorted(outcomes.values()) == ["ignored", "processed", "processed"]


def test_the_add_on_list_names_one_price_or_one_product(conn) -> None:
    for price, product in ((None, None), ("price_x", "prod_x")):
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            add_on(conn, price=price, product=product)
    add_on(conn, price="price_x")
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        add_on(conn, price="price_x")


def test_an_invoice_cut_short_is_not_taken_for_add_ons_only(conn, plans, make_user) -> None:
    """Stripe puts up to ten lines in an event; behind `lines.has_more` there may be the
    plan's line, so such an invoice renews the allowance as any other."""
    factory = EventFactory()
    factory.known_price(STORAGE, product="prod_storage", unit_amount=500)
    add_on(conn, price=STORAGE)
    user = make_user()
    t = factory.clock
    one_by_one(conn, [
        factory.checkout_completed(customer="cus_1", subscription=None,
                                   client_reference_id=str(user), created=t),
        subscription(factory, "created", "sub_pro", "active", "price_pro", t + 1),
    ])  # fmt: skip
    conn.execute(
        "update public.customer set remaining_resources = '{\"api_calls\": 7}' where uuid = %s",
        (user,),
    )
    cut = renewal(factory, "in_long", "sub_pro", [STORAGE], t + MONTH).event
    cut["data"]["object"]["lines"]["has_more"] = True
    queued(conn, [Delivery.from_event(cut)])
    assert remaining(conn, user)["api_calls"] == 5000

"""Each handled event type, in the pre-basil and the basil-and-later payload shapes."""

import uuid
from decimal import Decimal

import psycopg
import pytest
from stripe_events import API_VERSIONS, DAY, MONTH, EventFactory
from webhook_support import StripeSender, audit_rows, customer_state, event_status

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline.processor import ProcessingRules
from webhook.pipeline.reconcile import reconcile
from webhook.pipeline.replay import replay_event
from webhook.rules import application_links

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param)


def subscribe(
    stripe: StripeSender,
    factory: EventFactory,
    user: uuid.UUID,
    *,
    status: str = "active",
    price: str = "price_pro",
    customer: str = "cus_1",
    sub_id: str = "sub_1",
) -> None:
    """Checkout, then the subscription in the given state."""
    stripe.send_all(
        [
            factory.checkout_completed(
                customer=customer, subscription=sub_id, client_reference_id=str(user)
            ),
            factory.subscription(
                "customer.subscription.created",
                sub_id=sub_id,
                customer=customer,
                status=status,
                price_ids=[price],
            ),
        ]
    )


def update(stripe, factory, status: str, price: str = "price_pro", **extra) -> str:
    factory.tick(60)
    delivery = factory.subscription(
        "customer.subscription.updated",
        sub_id="sub_1",
        customer="cus_1",
        status=status,
        price_ids=[price],
        **extra,
    )
    stripe.send_all([delivery])
    return delivery.id


# --- checkout ---------------------------------------------------------------------------


def test_checkout_links_the_customer(conn, plans, user, stripe, factory) -> None:
    delivery = factory.checkout_completed(
        customer="cus_9", subscription="sub_9", client_reference_id=str(user)
    )
    stripe.send_all([delivery])
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_9"
    assert customer_state(conn, user)["plan_id"] is None
    assert event_status(conn, delivery.id) == ("processed", None)


def test_checkout_falls_back_to_metadata_customer_uuid(conn, plans, user, stripe, factory) -> None:
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_9",
                subscription=None,
                client_reference_id=None,
                metadata={"customer_uuid": str(user)},
            )
        ]
    )
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_9"


@pytest.mark.parametrize(
    ("reference", "problem"),
    [(None, "is missing"), ("gina@example.com", "is not a customer uuid")],
)
def test_a_checkout_without_a_usable_reference_fails_saying_which(
    conn, plans, stripe, factory, reference, problem
) -> None:
    delivery = factory.checkout_completed(customer="cus_9", subscription=None,
                                          client_reference_id=reference)  # fmt: skip
    stripe.send_all([delivery])
    status, error = event_status(conn, delivery.id)
    assert status == "failed"
    assert error.startswith(f"checkout session's customer reference {problem}: ")
    assert "gina" not in error  # the reference is never quoted: it may be an e-mail address


@pytest.mark.parametrize("linked_by", ["application", "earlier_checkout"])
def test_a_checkout_without_a_reference_for_a_linked_stripe_customer_applies(
    conn, plans, user, stripe, factory, linked_by
) -> None:
    """The application linked the Stripe customer itself (or a first checkout did), then
    sent them through Checkout again without a reference: nothing is missing. It used to
    end `failed`, counted by /metrics and doctor, and never cleared by a replay."""
    if linked_by == "application":
        conn.execute("update public.customer set stripe_customer_id = 'cus_9' where uuid = %s",
                     (user,))  # fmt: skip
        application_links.apply_pending(conn, frozenset(DEFAULT_ENTITLED_STATUSES))
    else:
        stripe.send_all([factory.checkout_completed(customer="cus_9", subscription=None,
                                                    client_reference_id=str(user))])  # fmt: skip
    factory.tick(5)
    again = factory.checkout_completed(customer="cus_9", subscription="sub_9",
                                       client_reference_id=None)  # fmt: skip
    created = factory.subscription("customer.subscription.created", sub_id="sub_9",
                                   customer="cus_9", status="active")  # fmt: skip
    stripe.send_all([created, again])
    assert event_status(conn, again.id) == ("processed", None)
    state = customer_state(conn, user)
    assert (state["stripe_customer_id"], state["plan_id"]) == ("cus_9", plans["Pro"])


def test_async_payment_succeeded_links_too(conn, plans, user, stripe, factory) -> None:
    delivery = factory.checkout_completed(
        customer="cus_9", subscription=None, client_reference_id=str(user), async_event=True
    )
    assert delivery.type == "checkout.session.async_payment_succeeded"
    stripe.send_all([delivery])
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_9"


def test_checkout_applies_a_subscription_that_arrived_first(
    conn, plans, user, stripe, factory
) -> None:
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.created",
                sub_id="sub_1",
                customer="cus_1",
                status="active",
                price_ids=["price_pro"],
            )
        ]
    )
    assert customer_state(conn, user)["plan_id"] is None
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_1", subscription="sub_1", client_reference_id=str(user)
            )
        ]
    )
    state = customer_state(conn, user)
    assert state["plan_id"] == plans["Pro"]
    assert state["remaining_resources"] == {"api_calls": 5000, "storage_gb": 50}


def test_checkout_without_a_reference_fails_but_is_acknowledged(
    conn, plans, stripe, factory
) -> None:
    delivery = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id="not-a-uuid"
    )
    response = stripe.send(delivery)
    assert response.status_code == 200
    status, error = event_status(conn, delivery.id)
    assert status == "failed"
    assert "client_reference_id" in error


def test_checkout_for_an_unknown_customer_fails_and_writes_nothing_else(
    conn, plans, stripe, factory
) -> None:
    delivery = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(uuid.uuid4())
    )
    stripe.send_all([delivery])
    status, error = event_status(conn, delivery.id)
    assert status == "failed"
    assert "no customer" in error
    assert conn.execute("select count(*) from webhook_private.customer_links").fetchone()[0] == 0


def test_payment_mode_checkout_is_ignored(conn, user, stripe, factory) -> None:
    delivery = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(user), mode="payment"
    )
    stripe.send_all([delivery])
    assert event_status(conn, delivery.id)[0] == "ignored"
    assert customer_state(conn, user)["stripe_customer_id"] is None


# --- subscriptions ----------------------------------------------------------------------


def test_a_new_subscription_sets_the_plan_and_its_resources(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    state = customer_state(conn, user)
    assert state["plan_id"] == plans["Pro"]
    assert (
        state["plan_resources"]
        == state["remaining_resources"]
        == {"api_calls": 5000, "storage_gb": 50}
    )
    assert [row[0] for row in audit_rows(conn, user)] == ["plan_change"]


def test_upgrade_downgrade_and_deletion(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user, price="price_basic")
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    update(stripe, factory, "active", price="price_enterprise")
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    update(stripe, factory, "active", price="price_basic")
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    factory.tick(60)
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.deleted", sub_id="sub_1", customer="cus_1", status="canceled"
            )
        ]
    )
    state = customer_state(conn, user)
    assert state["plan_id"] is None
    assert state["remaining_resources"] is None
    changes = [row[2]["plan_id"] for row in audit_rows(conn, user) if row[0] == "plan_change"]
    assert changes == [plans["Basic"], plans["Enterprise"], plans["Basic"], None]


@pytest.mark.parametrize(
    ("status", "keeps_plan"),
    [
        ("trialing", True),
        ("past_due", True),
        ("unpaid", False),
        ("paused", False),
        ("incomplete_expired", False),
        ("canceled", False),
    ],
)
def test_status_changes_follow_the_entitlement_rule(
    conn, plans, user, stripe, factory, status, keeps_plan
) -> None:
    subscribe(stripe, factory, user)
    update(stripe, factory, status)
    assert customer_state(conn, user)["plan_id"] == (plans["Pro"] if keeps_plan else None)


def test_incomplete_grants_nothing_until_active(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user, status="incomplete")
    assert customer_state(conn, user)["plan_id"] is None
    update(stripe, factory, "active")
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_paused_then_resumed(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user, status="trialing")
    factory.tick(60)
    paused = factory.subscription(
        "customer.subscription.paused",
        sub_id="sub_1",
        customer="cus_1",
        status="paused",
        price_ids=["price_pro"],
    )
    stripe.send_all([paused])
    assert customer_state(conn, user)["plan_id"] is None
    factory.tick(60)
    resumed = factory.subscription(
        "customer.subscription.resumed",
        sub_id="sub_1",
        customer="cus_1",
        status="active",
        price_ids=["price_pro"],
    )
    stripe.send_all([resumed])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_cancel_at_period_end_keeps_the_plan_until_the_subscription_ends(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    update(stripe, factory, "active", cancel_at_period_end=True)
    mirror = conn.execute(
        "select cancel_at_period_end, cancel_at is not null from webhook_private.subscriptions"
    ).fetchone()
    assert mirror == (True, True)
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    factory.tick(MONTH)
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.deleted", sub_id="sub_1", customer="cus_1", status="canceled"
            )
        ]
    )
    assert customer_state(conn, user)["plan_id"] is None


def test_subscription_metadata_links_the_customer(conn, plans, user, stripe, factory) -> None:
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.created",
                sub_id="sub_1",
                customer="cus_7",
                status="active",
                price_ids=["price_basic"],
                metadata={"customer_uuid": str(user)},
            )
        ]
    )
    state = customer_state(conn, user)
    assert (state["stripe_customer_id"], state["plan_id"]) == ("cus_7", plans["Basic"])


def test_the_period_end_is_read_from_either_shape(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user)
    end = conn.execute(
        "select extract(epoch from current_period_end)::bigint from webhook_private.subscriptions"
    ).fetchone()[0]
    assert end > factory.clock


def test_the_most_expensive_of_two_subscriptions_wins(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user, price="price_basic")
    factory.tick(60)
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.created",
                sub_id="sub_2",
                customer="cus_1",
                status="active",
                price_ids=["price_enterprise"],
            )
        ]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    factory.tick(60)
    stripe.send_all(
        [
            factory.subscription(
                "customer.subscription.deleted", sub_id="sub_2", customer="cus_1", status="canceled"
            )
        ]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]


def test_an_older_event_never_moves_the_mirror_back(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user)
    factory.tick(60)
    stale = factory.subscription(
        "customer.subscription.updated",
        sub_id="sub_1",
        customer="cus_1",
        status="past_due",
        price_ids=["price_pro"],
    )
    factory.tick(60)
    fresh = factory.subscription(
        "customer.subscription.deleted", sub_id="sub_1", customer="cus_1", status="canceled"
    )
    stripe.send_all([fresh, stale])
    assert (
        conn.execute("select status from webhook_private.subscriptions").fetchone()[0] == "canceled"
    )
    assert customer_state(conn, user)["plan_id"] is None


def test_a_price_without_a_plan_fails_keeps_the_plan_and_reconcile_fixes_it(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user, price="price_basic")
    event_id = update(stripe, factory, "active", price="price_team")
    status, error = event_status(conn, event_id)
    assert status == "failed"
    assert "price_team" in error
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    team = conn.execute(
        "insert into public.plans (name, price, resources, stripe_price_id)"
        " values ('Team', 29.00, '{\"api_calls\": 9000}', 'price_team') returning id"
    ).fetchone()[0]
    dry = reconcile(conn, RULES.entitled_statuses, dry_run=True)
    assert dry.changes == [(user, plans["Basic"], team)]
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    report = reconcile(conn, RULES.entitled_statuses)
    assert report.changes == [(user, plans["Basic"], team)]
    assert customer_state(conn, user)["remaining_resources"] == {"api_calls": 9000}


def test_replaying_a_failed_event_applies_it_once_the_data_is_fixed(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user, price="price_basic")
    event_id = update(stripe, factory, "active", price="price_team")
    conn.execute(
        "insert into public.plans (name, price, resources, stripe_price_id)"
        " values ('Team', 29.00, '{\"api_calls\": 9000}', 'price_team')"
    )
    dry = replay_event(conn, event_id, RULES, dry_run=True)
    assert dry.outcome.status == "processed"
    assert dry.plan_before == plans["Basic"] != dry.plan_after
    assert event_status(conn, event_id)[0] == "failed"
    result = replay_event(conn, event_id, RULES)
    assert result.outcome.status == "processed"
    assert event_status(conn, event_id) == ("processed", None)
    assert customer_state(conn, user)["remaining_resources"] == {"api_calls": 9000}
    attempts = conn.execute(
        "select trigger, outcome from webhook_private.event_attempts where event_id = %s order by id",
        (event_id,),
    ).fetchall()
    assert attempts == [("delivery", "failed"), ("replay", "processed")]


# --- invoices ---------------------------------------------------------------------------


def renewal(factory: EventFactory, event_type: str, invoice_id: str, period_start: int):
    return factory.invoice(
        event_type,
        invoice_id=invoice_id,
        customer="cus_1",
        subscription="sub_1",
        billing_reason="subscription_cycle",
        price_ids=["price_pro"],
        period_start=period_start,
        period_end=period_start + MONTH,
    )


def consume(conn: psycopg.Connection, user: uuid.UUID, amount: int) -> None:
    conn.execute("select public.consume_resources(%s, 'api_calls', %s)", (user, amount))


def test_a_paid_renewal_resets_resources_once_per_invoice(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    consume(conn, user, 1200)
    start = factory.clock + MONTH
    factory.tick(MONTH)
    stripe.send_all([renewal(factory, "invoice.paid", "in_2", start)])
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 5000
    consume(conn, user, 10)
    stripe.send_all([renewal(factory, "invoice.payment_succeeded", "in_2", start)])
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4990
    assert [row[0] for row in audit_rows(conn, user)].count("resource_reset") == 1


def test_an_older_invoice_never_resets_after_a_newer_one(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    start = factory.clock
    factory.tick(2 * MONTH)
    stripe.send_all([renewal(factory, "invoice.paid", "in_3", start + 2 * MONTH)])
    consume(conn, user, 100)
    stripe.send_all([renewal(factory, "invoice.paid", "in_2", start + MONTH)])
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4900


def test_a_first_invoice_does_not_reset(conn, plans, user, stripe, factory) -> None:
    subscribe(stripe, factory, user)
    consume(conn, user, 100)
    first = factory.invoice(
        "invoice.paid",
        invoice_id="in_1",
        customer="cus_1",
        subscription="sub_1",
        billing_reason="subscription_create",
        period_start=factory.clock,
        period_end=factory.clock + MONTH,
    )
    stripe.send_all([first])
    assert event_status(conn, first.id)[0] == "ignored"
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 4900


def test_a_failed_payment_is_recorded_without_changing_the_plan(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    factory.tick(MONTH)
    failed = factory.invoice(
        "invoice.payment_failed",
        invoice_id="in_2",
        customer="cus_1",
        subscription="sub_1",
        period_start=factory.clock,
        period_end=factory.clock + MONTH,
    )
    stripe.send_all([failed])
    rows = audit_rows(conn, user)
    assert [row[0] for row in rows] == ["plan_change", "payment_failed"]
    assert rows[-1][2]["invoice"] == "in_2"
    assert rows[-1][2]["subscription"] == "sub_1"
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


# --- customers --------------------------------------------------------------------------


def test_customer_metadata_links(conn, plans, user, stripe, factory) -> None:
    stripe.send_all(
        [
            factory.customer(
                "customer.created", customer_id="cus_5", metadata={"customer_uuid": str(user)}
            )
        ]
    )
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_5"


@pytest.mark.parametrize("link_first", [True, False])
def test_customer_metadata_links_before_or_after_the_subscription(
    conn, plans, user, stripe, factory, link_first
) -> None:
    link = factory.customer(
        "customer.updated", customer_id="cus_5", metadata={"customer_uuid": str(user)}
    )
    subscription = factory.subscription(
        "customer.subscription.created", sub_id="sub_5", customer="cus_5", status="active",
        price_ids=["price_pro"],
    )  # fmt: skip
    stripe.send_all([link, subscription] if link_first else [subscription, link])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_a_customer_without_metadata_is_ignored(conn, stripe, factory) -> None:
    delivery = factory.customer("customer.updated", customer_id="cus_5")
    stripe.send_all([delivery])
    assert event_status(conn, delivery.id)[0] == "ignored"


def test_deleting_the_stripe_customer_clears_the_link_and_the_plan(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user)
    factory.tick(DAY)
    stripe.send_all([factory.customer("customer.deleted", customer_id="cus_1")])
    state = customer_state(conn, user)
    assert (state["stripe_customer_id"], state["plan_id"]) == (None, None)


def test_a_second_stripe_customer_keeps_granting_after_the_first_is_deleted(
    conn, plans, user, stripe, factory
) -> None:
    subscribe(stripe, factory, user, price="price_pro", customer="cus_1", sub_id="sub_1")
    factory.tick(DAY)
    subscribe(stripe, factory, user, price="price_basic", customer="cus_2", sub_id="sub_2")
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_2"
    factory.tick(DAY)
    stripe.send_all([factory.customer("customer.deleted", customer_id="cus_1")])
    state = customer_state(conn, user)
    assert (state["stripe_customer_id"], state["plan_id"]) == ("cus_2", plans["Basic"])


# --- catalog ----------------------------------------------------------------------------


def plan_row(conn: psycopg.Connection, plan_id: int) -> tuple:
    return conn.execute(
        "select price, price_currency, active from public.plans where id = %s", (plan_id,)
    ).fetchone()


def test_price_updates_keep_the_plan_in_step(conn, plans, stripe, factory) -> None:
    stripe.send_all(
        [factory.price("price.updated", price_id="price_pro", unit_amount=2499, currency="usd")]
    )
    assert plan_row(conn, plans["Pro"]) == (Decimal("24.99"), "usd", True)
    factory.tick(60)
    stripe.send_all(
        [
            factory.price(
                "price.updated",
                price_id="price_pro",
                unit_amount=2499,
                currency="usd",
                active=False,
            )
        ]
    )
    assert plan_row(conn, plans["Pro"])[2] is False


@pytest.mark.parametrize("currency", ["kwd", "bhd", "jod", "omr", "tnd"])
def test_three_decimal_currencies_are_divided_by_a_thousand(
    conn, plans, stripe, factory, currency
) -> None:
    """5.120 KWD is 5120 fils in Stripe's amounts; it was stored as 51.20."""
    stripe.send_all([factory.price("price.updated", price_id="price_basic", unit_amount=5120,
                                   currency=currency)])  # fmt: skip
    assert plan_row(conn, plans["Basic"])[:2] == (Decimal("5.12"), currency)


def test_zero_decimal_currencies_are_not_divided(conn, plans, stripe, factory) -> None:
    stripe.send_all(
        [factory.price("price.updated", price_id="price_basic", unit_amount=1200, currency="jpy")]
    )
    assert plan_row(conn, plans["Basic"])[:2] == (1200, "jpy")


def test_a_late_older_price_event_does_not_overwrite_a_newer_one(
    conn, plans, stripe, factory
) -> None:
    older = factory.price("price.updated", price_id="price_pro", unit_amount=1000)
    factory.tick(60)
    newer = factory.price("price.updated", price_id="price_pro", unit_amount=3000)
    stripe.send_all([newer, older])
    assert float(plan_row(conn, plans["Pro"])[0]) == 30.0
    assert event_status(conn, older.id)[0] == "ignored"


def test_a_price_with_no_plan_never_becomes_one(conn, plans, stripe, factory) -> None:
    delivery = factory.price("price.created", price_id="price_unheard_of", unit_amount=500)
    stripe.send_all([delivery])
    assert event_status(conn, delivery.id)[0] == "ignored"
    assert conn.execute("select count(*) from public.plans").fetchone()[0] == 3


def test_deleting_a_price_or_archiving_a_product_deactivates_the_plan(
    conn, plans, stripe, factory
) -> None:
    stripe.send_all([factory.price("price.deleted", price_id="price_basic", active=False)])
    assert plan_row(conn, plans["Basic"])[2] is False
    stripe.send_all([factory.product("product.updated", product_id="prod_pro", active=False)])
    assert plan_row(conn, plans["Pro"])[2] is False
    stripe.send_all([factory.product("product.deleted", product_id="prod_enterprise")])
    assert plan_row(conn, plans["Enterprise"])[2] is False

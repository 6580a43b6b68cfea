"""Every payload vintage of a subscription, from the top-level `plan` of 2015 to endive.

Each vintage is rendered by the event factory the way Stripe renders that API version (see
webhook/fixtures/ and README, "Payload vintages") and posted through the app.
"""

import json
import uuid

import pytest
from stripe_events import (
    MONTH,
    PLANS_WITH_PRODUCTS_API,
    VINTAGE_API_VERSIONS,
    Delivery,
    EventFactory,
)
from webhook_support import customer_state, event_status

from webhook.stripe.payloads import invoice_subscription_prices

PRODUCTLESS = [v for v in VINTAGE_API_VERSIONS if v < PLANS_WITH_PRODUCTS_API]
WITH_PRODUCTS = [v for v in VINTAGE_API_VERSIONS if v >= PLANS_WITH_PRODUCTS_API]


def subscription(factory: EventFactory, type_: str, price: str = "price_pro", **extra) -> Delivery:
    return factory.subscription(
        type_,
        sub_id="sub_1",
        customer="cus_1",
        status=extra.pop("status", "active"),
        price_ids=[price],
        **extra,
    )


def checkout(factory: EventFactory, user: uuid.UUID) -> Delivery:
    return factory.checkout_completed(
        customer="cus_1", subscription="sub_1", client_reference_id=str(user)
    )


@pytest.mark.parametrize("api_version", VINTAGE_API_VERSIONS)
def test_a_whole_lifecycle_in_each_vintage(conn, plans, user, stripe, api_version) -> None:
    factory = EventFactory(api_version)
    start = factory.clock
    stripe.send_all(
        [checkout(factory, user), subscription(factory, "customer.subscription.created")]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]

    factory.tick(60)
    renewal = factory.invoice(
        "invoice.paid",
        invoice_id="in_renewal",
        customer="cus_1",
        subscription="sub_1",
        price_ids=["price_pro"],
        period_start=start + MONTH,
        period_end=start + 2 * MONTH,
    )
    conn.execute(
        "update public.customer set remaining_resources = '{\"api_calls\": 1}' where uuid = %s",
        (user,),
    )
    stripe.send_all([renewal])
    assert event_status(conn, renewal.id) == ("processed", None)
    assert customer_state(conn, user)["remaining_resources"]["api_calls"] == 5000

    factory.tick(60)
    upgrade = subscription(factory, "customer.subscription.updated", "price_enterprise")
    stripe.send_all([upgrade])
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]

    factory.tick(60)
    stripe.send_all(
        [
            subscription(
                factory,
                "customer.subscription.updated",
                "price_enterprise",
                cancel_at_period_end=True,
            )
        ]
    )
    cancel = conn.execute(
        "select cancel_at_period_end, current_period_end is not null"
        " from webhook_private.subscriptions"
    ).fetchone()
    assert cancel == (True, True)
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]

    factory.tick(60)
    stripe.send_all([subscription(factory, "customer.subscription.deleted", "price_enterprise")])
    assert customer_state(conn, user)["plan_id"] is None


@pytest.mark.parametrize("api_version", WITH_PRODUCTS)
def test_plans_by_product_in_every_vintage_that_names_products(
    conn, plans, user, stripe, api_version
) -> None:
    factory = EventFactory(api_version)
    factory.known_price("price_pro_yearly", product="prod_pro")
    stripe.send_all(
        [
            checkout(factory, user),
            subscription(factory, "customer.subscription.created", "price_pro_yearly"),
        ]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


@pytest.mark.parametrize("api_version", PRODUCTLESS)
def test_before_plans_had_products_only_the_plan_id_can_match(
    conn, plans, user, stripe, api_version
) -> None:
    """Plans of these versions name no product, so a product-only plan cannot be found."""
    factory = EventFactory(api_version)
    factory.known_price("price_pro_yearly", product="prod_pro")
    created = subscription(factory, "customer.subscription.created", "price_pro_yearly")
    stripe.send_all([checkout(factory, user), created])
    status, error = event_status(conn, created.id)
    assert status == "failed" and "price_pro_yearly" in error
    conn.execute("update public.plans set stripe_plan_id = 'price_pro_yearly' where name = 'Pro'")
    stripe.send_all([subscription(factory, "customer.subscription.updated", "price_pro_yearly")])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def strip_prices(delivery: Delivery) -> Delivery:
    """The same event with every price and plan removed from its subscription."""
    event = json.loads(delivery.body)
    obj = event["data"]["object"]
    obj.pop("plan", None)
    for item in obj.get("items", {}).get("data", []):
        item.pop("price", None)
        item.pop("plan", None)
    return Delivery.from_event(event)


@pytest.mark.parametrize("api_version", VINTAGE_API_VERSIONS)
def test_a_granting_subscription_with_no_readable_item_fails_and_changes_nothing(
    conn, plans, user, stripe, api_version
) -> None:
    factory = EventFactory(api_version)
    stripe.send_all(
        [checkout(factory, user), subscription(factory, "customer.subscription.created")]
    )
    before = conn.execute("select * from webhook_private.subscriptions").fetchall()
    factory.tick(60)
    unreadable = strip_prices(subscription(factory, "customer.subscription.updated", "price_basic"))
    stripe.send_all([unreadable])
    status, error = event_status(conn, unreadable.id)
    assert status == "failed"
    assert "sub_1 (active) has no item with a price or a plan" in error
    assert "items.data[].price" in error and "items.data[].plan" in error
    assert conn.execute("select * from webhook_private.subscriptions").fetchall() == before
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_a_state_that_grants_nothing_needs_no_readable_item(conn, plans, user, stripe) -> None:
    factory = EventFactory(VINTAGE_API_VERSIONS[0])
    stripe.send_all(
        [checkout(factory, user), subscription(factory, "customer.subscription.created")]
    )
    factory.tick(60)
    ended = strip_prices(subscription(factory, "customer.subscription.deleted"))
    stripe.send_all([ended])
    assert event_status(conn, ended.id) == ("processed", None)
    assert customer_state(conn, user)["plan_id"] is None


def test_the_vintages_render_the_shapes_they_stand_for() -> None:
    """The factory's renderings, checked against what each vintage is documented to have."""
    shapes = {}
    for api_version in VINTAGE_API_VERSIONS:
        obj = subscription(EventFactory(api_version), "customer.subscription.created").object
        items = obj.get("items", {}).get("data", [])
        shapes[api_version] = (
            "items" in obj,
            "plan" in obj,
            bool(items) and "price" in items[0],
            bool(items) and "product" in items[0]["plan"],
            "current_period_end" in obj,
        )
    assert shapes == {
        "2015-10-16": (False, True, False, False, True),
        "2017-08-15": (True, True, False, False, True),
        "2019-05-16": (True, True, False, True, True),
        "2020-08-27": (True, False, True, True, True),
        "2024-06-20": (True, False, True, True, True),
        "2025-03-31.basil": (True, False, True, True, False),
        "2026-09-30.endive": (True, False, True, True, False),
    }


@pytest.mark.parametrize("api_version", VINTAGE_API_VERSIONS)
def test_an_invoice_names_its_subscription_lines_prices_in_each_vintage(api_version) -> None:
    """What the renewal rule reads to tell an add-on's invoice from a plan's: each
    subscription line's price (and its product, once plans had products); a one-off invoice
    item's line is no subscription line."""
    factory = EventFactory(api_version)
    factory.known_price("price_storage", product="prod_storage", unit_amount=500)
    start = factory.clock
    invoice = factory.invoice(
        "invoice.paid", invoice_id="in_1", customer="cus_1", subscription="sub_1",
        billing_reason="subscription_cycle", price_ids=["price_pro", "price_storage"],
        period_start=start, period_end=start + MONTH,
    ).event["data"]["object"]  # fmt: skip
    products = api_version >= PLANS_WITH_PRODUCTS_API
    assert invoice_subscription_prices(invoice) == {
        "price_pro": "prod_pro" if products else None,
        "price_storage": "prod_storage" if products else None,
    }
    one_off = invoice["lines"]["data"][1]
    if "parent" in one_off:
        one_off["parent"]["type"] = "invoice_item_details"
    else:
        one_off["type"] = "invoiceitem"
    assert list(invoice_subscription_prices(invoice)) == ["price_pro"]

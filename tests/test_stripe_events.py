"""The event builder itself: signatures the SDK accepts and payloads in each version's shape.

The webhook tests trust these events to look like Stripe's; these checks pin the shape facts
from STRIPE-PAYLOADS.md so a wrong builder fails here rather than as a confusing handler bug.
"""

import json
import time

import pytest
import stripe
from stripe_events import (
    API_VERSIONS,
    BASIL_API,
    ENDIVE_API,
    OLD_API,
    Delivery,
    EventFactory,
    lifecycle,
    sign,
)

SECRET = "whsec_test_primary"
OLD_SECRET = "whsec_test_rolled_out"
ALL_VERSIONS = (OLD_API, BASIL_API, ENDIVE_API)


def verify(body: bytes, header: str, secret: str) -> bool:
    return stripe.WebhookSignature.verify_header(body, header, secret, tolerance=300)


def construct(delivery: Delivery) -> stripe.Event:
    """Parse the exact body the way the SDK would, without a network call."""
    return stripe.Event.construct_from(json.loads(delivery.body), "sk_test")


def all_builders(f: EventFactory) -> list[Delivery]:
    """One delivery from every builder, for checks that apply to all of them."""
    return [
        f.checkout_completed(customer="cus_1", subscription="sub_1", client_reference_id="u1"),
        f.checkout_completed(
            customer="cus_1",
            subscription="sub_1",
            client_reference_id="u1",
            async_event=True,
        ),
        f.subscription(
            "customer.subscription.created", sub_id="sub_1", customer="cus_1", status="active"
        ),
        f.subscription(
            "customer.subscription.deleted", sub_id="sub_1", customer="cus_1", status="canceled"
        ),
        f.invoice(
            "invoice.paid",
            invoice_id="in_1",
            customer="cus_1",
            subscription="sub_1",
            period_start=f.clock,
            period_end=f.clock + 30 * 86400,
        ),
        f.invoice(
            "invoice.payment_failed",
            invoice_id="in_2",
            customer="cus_1",
            subscription="sub_1",
            period_start=f.clock,
            period_end=f.clock + 30 * 86400,
        ),
        f.customer("customer.updated", customer_id="cus_1"),
        f.price("price.updated", price_id="price_pro"),
        f.product("product.updated", product_id="prod_pro"),
        f.other(),
        f.other("payment_intent.succeeded"),
        f.other("balance.available"),
    ]


# -- signatures ---------------------------------------------------------------------------------


def test_sign_verifies_with_the_sdk() -> None:
    d = EventFactory().other()
    assert verify(d.body, sign(d.body, SECRET), SECRET)
    assert verify(d.body, d.headers(SECRET)["Stripe-Signature"], SECRET)
    assert stripe.Webhook.construct_event(d.body, d.headers(SECRET)["Stripe-Signature"], SECRET)


def test_header_format() -> None:
    header = sign(b"{}", SECRET, 1_790_000_000, extra_secrets=[OLD_SECRET])
    parts = header.split(",")
    assert parts[0] == "t=1790000000"
    assert [p[:3] for p in parts[1:]] == ["v1=", "v1="]
    assert all(len(p) == 3 + 64 and p[3:] == p[3:].lower() for p in parts[1:])


def test_each_secret_of_a_roll_verifies_alone() -> None:
    d = EventFactory().other()
    header = d.headers(SECRET, extra_secrets=[OLD_SECRET])["Stripe-Signature"]
    assert verify(d.body, header, SECRET)
    assert verify(d.body, header, OLD_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        verify(d.body, header, "whsec_someone_else")


def test_one_changed_byte_fails() -> None:
    d = EventFactory().other()
    header = sign(d.body, SECRET)
    i = d.body.index(b'"livemode":false') + len(b'"livemode":')
    tampered = d.body[:i] + b"t" + d.body[i + 1 :]
    assert len(tampered) == len(d.body) and tampered != d.body
    with pytest.raises(stripe.SignatureVerificationError, match="No signatures found matching"):
        verify(tampered, header, SECRET)


def test_old_timestamp_is_outside_tolerance() -> None:
    d = EventFactory().other()
    header = d.headers(SECRET, timestamp=int(time.time()) - 301)["Stripe-Signature"]
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        verify(d.body, header, SECRET)


def test_headers() -> None:
    d = EventFactory().other()
    headers = d.headers(SECRET, timestamp=123)
    assert headers == {
        "Stripe-Signature": sign(d.body, SECRET, 123),
        "Content-Type": "application/json",
    }


# -- envelope and ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", ALL_VERSIONS)
def test_every_builder_parses_with_the_sdk(api_version: str) -> None:
    f = EventFactory(api_version)
    for d in all_builders(f):
        assert d.body == json.dumps(d.event, separators=(",", ":")).encode()
        event = construct(d)
        assert isinstance(event, stripe.Event)
        assert event.id == d.id and event.type == d.type
        assert event.api_version == api_version
        assert event.data.object.object == d.event["data"]["object"]["object"]
        # Decimal fields (unit_amount_decimal) come back as Decimal; everything else round-trips.
        assert json.loads(json.dumps(event.to_dict(), default=str)) == d.event
        assert (
            stripe.Webhook.construct_event(d.body, d.headers(SECRET)["Stripe-Signature"], SECRET).id
            == d.id
        )


def test_envelope_fields() -> None:
    f = EventFactory(OLD_API, start=1_700_000_000)
    d = f.envelope("x.y", {"id": "x_1", "object": "x"})
    e = d.event
    assert list(e) == [
        "id",
        "object",
        "api_version",
        "created",
        "data",
        "livemode",
        "pending_webhooks",
        "request",
        "type",
    ]
    assert e["id"].startswith("evt_") and len(e["id"]) == 4 + 24 and e["id"][4:].isalnum()
    assert e["object"] == "event" and e["api_version"] == OLD_API
    assert e["created"] == 1_700_000_000
    assert e["livemode"] is False and e["pending_webhooks"] == 1
    assert e["request"] == {"id": None, "idempotency_key": None}
    assert e["data"] == {"object": {"id": "x_1", "object": "x"}}
    with_prev = f.envelope("x.y", {}, previous_attributes={"a": 1}, created=5, event_id="evt_x")
    assert with_prev.event["data"]["previous_attributes"] == {"a": 1}
    assert with_prev.event["created"] == 5 and with_prev.id == "evt_x"


def test_clock() -> None:
    f = EventFactory(start=100)
    assert f.other().event["created"] == 100
    assert f.tick() == 101 and f.tick(60) == 161
    assert f.other().event["created"] == 161
    assert f.other(created=7).event["created"] == 7


def test_ids_reproducible_by_seed_yet_unique_across_factories() -> None:
    a, b, c = EventFactory(seed=1), EventFactory(seed=1), EventFactory(seed=2)
    ida, idb, idc = a.other().id, b.other().id, c.other().id
    assert len({ida, idb, idc}) == 3
    assert ida[4:20] == idb[4:20] != idc[4:20]  # the seeded part matches
    ids = {a.other().id for _ in range(500)}
    assert len(ids) == 500


# -- shapes per API version ---------------------------------------------------------------------


def sub_event(f: EventFactory, **kw) -> Delivery:
    return f.subscription(
        "customer.subscription.updated",
        sub_id="sub_1",
        customer="cus_1",
        status="active",
        period_start=1_000,
        period_end=2_000,
        **kw,
    )


def test_old_subscription_has_periods_on_the_subscription() -> None:
    sub = sub_event(EventFactory(OLD_API)).object
    assert (sub["current_period_start"], sub["current_period_end"]) == (1_000, 2_000)
    item = sub["items"]["data"][0]
    assert "current_period_end" not in item and "current_period_start" not in item
    assert "billing_mode" not in sub


@pytest.mark.parametrize("api_version", [BASIL_API, ENDIVE_API])
def test_basil_subscription_has_periods_on_items(api_version: str) -> None:
    sub = sub_event(EventFactory(api_version), price_ids=("price_basic", "price_pro")).object
    assert "current_period_end" not in sub and "current_period_start" not in sub
    items = sub["items"]["data"]
    assert [(i["current_period_start"], i["current_period_end"]) for i in items] == [
        (1_000, 2_000),
        (1_000, 2_000),
    ]
    assert (
        construct(sub_event(EventFactory(api_version)))
        .data.object["items"]
        .data[0]["current_period_end"]
        == 2_000
    )


@pytest.mark.parametrize("api_version", ALL_VERSIONS)
def test_subscription_items_carry_full_prices(api_version: str) -> None:
    f = EventFactory(api_version)
    sub = sub_event(f, price_ids=("price_basic", "price_pro")).object
    prices = [i["price"] for i in sub["items"]["data"]]
    assert [p["id"] for p in prices] == ["price_basic", "price_pro"]
    for p in prices:
        assert p["object"] == "price"
        assert p["product"].startswith("prod_") and p["currency"] == "eur"
        assert isinstance(p["unit_amount"], int)
        assert p["recurring"]["interval"] == "month"
        assert p["lookup_key"]
        assert ("aggregate_usage" in p["recurring"]) is (api_version == OLD_API)
    assert all(i["id"].startswith("si_") for i in sub["items"]["data"])
    again = sub_event(f, price_ids=("price_pro",)).object
    assert again["items"]["data"][0]["id"] == sub["items"]["data"][0]["id"]  # stable slot


def test_subscription_defaults_and_cancellation() -> None:
    f = EventFactory(OLD_API, start=5_000)
    sub = f.subscription(
        "customer.subscription.created", sub_id="s", customer="c", status="trialing"
    ).object
    assert sub["current_period_start"] == 5_000
    assert sub["current_period_end"] == 5_000 + 30 * 86_400
    assert sub["cancel_at_period_end"] is False and sub["cancel_at"] is None
    assert sub["canceled_at"] is None and sub["ended_at"] is None

    f.tick(10)
    cancel = f.subscription(
        "customer.subscription.updated",
        sub_id="s",
        customer="c",
        status="active",
        cancel_at_period_end=True,
    ).object
    assert cancel["cancel_at_period_end"] is True
    assert cancel["cancel_at"] == cancel["current_period_end"]
    assert cancel["canceled_at"] == 5_010

    f.tick(99)
    gone = f.subscription(
        "customer.subscription.deleted",
        sub_id="s",
        customer="c",
        status="active",
        metadata={"user_id": "u"},
    ).object
    assert gone["status"] == "canceled"
    assert gone["ended_at"] == 5_109 and gone["canceled_at"] == 5_010
    assert gone["metadata"] == {"user_id": "u"}


def invoice_event(f: EventFactory, type_: str = "invoice.paid", **kw) -> Delivery:
    kw.setdefault("billing_reason", "subscription_cycle")
    return f.invoice(
        type_,
        invoice_id="in_1",
        customer="cus_1",
        subscription="sub_1",
        price_ids=("price_pro",),
        period_start=10_000,
        period_end=20_000,
        **kw,
    )


def test_old_invoice_shape() -> None:
    inv = invoice_event(EventFactory(OLD_API)).object
    assert inv["subscription"] == "sub_1"
    assert "parent" not in inv
    assert inv["paid"] is True and inv["status"] == "paid"
    assert inv["payment_intent"].startswith("pi_") and inv["charge"].startswith("ch_")
    line = inv["lines"]["data"][0]
    assert line["price"]["id"] == "price_pro" and line["price"]["object"] == "price"
    assert line["subscription_item"].startswith("si_") and line["type"] == "subscription"
    assert "pricing" not in line
    assert line["period"] == {"start": 10_000, "end": 20_000}
    assert inv["customer_email"] == "ana@example.com"


@pytest.mark.parametrize("api_version", [BASIL_API, ENDIVE_API])
def test_basil_invoice_shape(api_version: str) -> None:
    d = invoice_event(EventFactory(api_version))
    inv = d.object
    assert "subscription" not in inv
    assert inv["parent"]["type"] == "subscription_details"
    assert inv["parent"]["subscription_details"]["subscription"] == "sub_1"
    for gone in ("paid", "payment_intent", "charge"):
        assert gone not in inv
    assert inv["status"] == "paid"
    line = inv["lines"]["data"][0]
    assert "price" not in line
    assert line["pricing"]["price_details"]["price"] == "price_pro"
    details = line["parent"]["subscription_item_details"]
    assert details["subscription"] == "sub_1" and details["subscription_item"].startswith("si_")
    assert line["period"] == {"start": 10_000, "end": 20_000}
    assert inv["customer_email"] == "ana@example.com"
    parsed = construct(d).data.object
    assert parsed.parent.subscription_details.subscription == "sub_1"


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_invoice_period_is_in_arrears(api_version: str) -> None:
    f = EventFactory(api_version)
    cycle = invoice_event(f).object
    assert (cycle["period_start"], cycle["period_end"]) == (0, 10_000)
    first = invoice_event(f, billing_reason="subscription_create").object
    assert first["period_start"] == first["period_end"] == 10_000


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_failed_invoice(api_version: str) -> None:
    inv = invoice_event(EventFactory(api_version), "invoice.payment_failed").object
    assert inv["status"] == "open" and inv["amount_paid"] == 0
    assert inv["attempt_count"] == 1 and inv["next_payment_attempt"] > inv["created"]
    if api_version == OLD_API:
        assert inv["paid"] is False


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_redelivered_invoice_keeps_its_ids(api_version: str) -> None:
    f = EventFactory(api_version)
    paid = invoice_event(f, "invoice.paid")
    succeeded = invoice_event(f, "invoice.payment_succeeded")
    assert paid.id != succeeded.id
    assert paid.object["lines"] == succeeded.object["lines"]


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_checkout(api_version: str) -> None:
    f = EventFactory(api_version)
    d = f.checkout_completed(
        customer="cus_1", subscription="sub_1", client_reference_id="user_1", metadata={"a": "b"}
    )
    s = d.object
    assert d.type == "checkout.session.completed"
    assert s["id"].startswith("cs_test_") and s["object"] == "checkout.session"
    assert (s["customer"], s["subscription"], s["client_reference_id"]) == (
        "cus_1",
        "sub_1",
        "user_1",
    )
    assert s["mode"] == "subscription" and s["payment_status"] == "paid"
    assert s["status"] == "complete" and s["metadata"] == {"a": "b"}
    assert s["customer_details"]["email"] == "ana@example.com"
    assert s["ui_mode"] == ("hosted" if api_version == OLD_API else "hosted_page")
    pay = f.checkout_completed(
        customer="cus_1",
        subscription=None,
        client_reference_id=None,
        mode="payment",
        payment_status="unpaid",
        async_event=True,
    )
    assert pay.type == "checkout.session.async_payment_succeeded"
    assert pay.object["subscription"] is None and pay.object["payment_intent"].startswith("pi_")
    assert pay.object["payment_status"] == "unpaid"


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_catalog_and_customer(api_version: str) -> None:
    f = EventFactory(api_version)
    price = f.price(
        "price.updated", price_id="price_x", product="prod_x", unit_amount=None, active=False
    ).object
    assert (price["id"], price["product"], price["active"]) == ("price_x", "prod_x", False)
    assert price["unit_amount"] is None and price["unit_amount_decimal"] is None
    assert ("aggregate_usage" in price["recurring"]) is (api_version == OLD_API)
    # A subscription on that price now shows what the price event announced.
    item_price = sub_event(f, price_ids=("price_x",)).object["items"]["data"][0]["price"]
    assert item_price["product"] == "prod_x" and item_price["active"] is False

    product = f.product("product.deleted", product_id="prod_x", name="X", active=False).object
    assert (product["id"], product["name"], product["active"]) == ("prod_x", "X", False)

    cus = f.customer(
        "customer.deleted", customer_id="cus_9", email="bo@example.com", metadata={"user_id": "u9"}
    ).object
    assert (cus["id"], cus["email"], cus["metadata"]) == (
        "cus_9",
        "bo@example.com",
        {"user_id": "u9"},
    )
    inv = f.invoice(
        "invoice.paid",
        invoice_id="in_9",
        customer="cus_9",
        subscription=None,
        billing_reason="manual",
        period_start=1,
        period_end=2,
    ).object
    assert inv["customer_email"] == "bo@example.com"


def test_other_is_not_a_handled_type() -> None:
    d = EventFactory().other()
    assert d.type == "charge.succeeded" and d.object["object"] == "charge"
    assert d.object["id"].startswith("ch_")


# -- lifecycle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_lifecycle(api_version: str) -> None:
    f = EventFactory(api_version)
    events = lifecycle(f, user_id="user_42")
    created = [d.event["created"] for d in events]
    assert created == sorted(created)
    assert len({d.id for d in events}) == len(events)
    assert [d.type for d in events] == [
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "invoice.paid",
        "customer.subscription.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ]
    checkout, created_, activated, first, upgrade, renew, renew2, rolled, cancel, deleted = events
    assert checkout.object["client_reference_id"] == "user_42"
    assert created_.event["created"] == activated.event["created"]
    assert (created_.object["status"], activated.object["status"]) == ("incomplete", "active")
    assert created_.object["items"]["data"][0]["price"]["id"] == "price_basic"
    assert first.object["billing_reason"] == "subscription_create"
    assert checkout.object["invoice"] == first.object["id"] == created_.object["latest_invoice"]
    assert upgrade.object["items"]["data"][0]["price"]["id"] == "price_pro"
    prev_items = upgrade.event["data"]["previous_attributes"]["items"]["data"]
    assert prev_items[0]["price"]["id"] == "price_basic"
    assert renew.object["billing_reason"] == renew2.object["billing_reason"] == "subscription_cycle"
    assert renew.object["id"] == renew2.object["id"] == rolled.object["latest_invoice"]
    assert cancel.object["cancel_at_period_end"] is True
    assert deleted.object["status"] == "canceled" and deleted.object["ended_at"]
    # Days pass between steps, not just seconds.
    assert deleted.event["created"] - checkout.event["created"] > 50 * 86_400
    for d in events:
        construct(d)

    def period(d: Delivery) -> tuple[int, int]:
        sub = d.object
        src = sub["items"]["data"][0] if f.basil else sub
        return src["current_period_start"], src["current_period_end"]

    line_period = renew.object["lines"]["data"][0]["period"]
    assert period(rolled) == (line_period["start"], line_period["end"])
    assert period(upgrade)[1] == period(rolled)[0]
    assert period(deleted) == period(rolled)
    assert deleted.object["cancel_at"] == period(rolled)[1] <= deleted.event["created"]

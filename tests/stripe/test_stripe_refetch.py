"""A tie the events cannot break is settled by asking Stripe (STRIPE_API_KEY set).

Stripe's API is played by the stand-in (tests/stripe_standin.py), which serves the
subscription as Stripe would; the stripe library reaches it through STRIPE_API_BASE.
"""

import pytest
from stripe_events import EventFactory
from stripe_standin import API_KEY, StripeStandIn
from webhook_support import StripeSender, build_app


def asked(standin: StripeStandIn) -> list[str]:
    return [entry.path for entry in standin.answered()]


def tied_pair(factory: EventFactory):
    """Cancel and un-cancel in one second: same status, period and type, so a full tie."""
    common = {
        "sub_id": "sub_1",
        "customer": "cus_1",
        "status": "active",
        "price_ids": ["price_pro"],
    }
    start = factory.clock
    cancel = factory.subscription(
        "customer.subscription.updated", cancel_at_period_end=True, period_start=start, **common
    )
    keep = factory.subscription(
        "customer.subscription.updated", cancel_at_period_end=False, period_start=start, **common
    )
    assert cancel.event["created"] == keep.event["created"]
    return cancel, keep


def mirror(conn) -> tuple:
    return conn.execute(
        "select cancel_at_period_end, event_id from webhook_private.subscriptions where id = 'sub_1'"
    ).fetchone()


@pytest.mark.parametrize("reverse", [False, True])
def test_a_full_tie_takes_stripes_current_state(db_url, conn, plans, standin, reverse) -> None:
    factory = EventFactory()
    cancel, keep = tied_pair(factory)
    standin.add("subscription", [cancel.event["data"]["object"]])
    app = build_app(db_url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=standin.url)
    try:
        order = [keep, cancel] if reverse else [cancel, keep]
        StripeSender(app.test_client()).send_all(order)
        StripeSender(app.test_client()).send_all(order)  # redeliveries change nothing
    finally:
        app.extensions["webhook"].close()
    assert mirror(conn)[0] is True
    assert asked(standin) == ["/v1/subscriptions/sub_1"]


def test_without_an_api_key_the_tie_breaks_the_same_way_in_any_order(db_url, conn, plans) -> None:
    results = set()
    for reverse in (False, True):
        conn.execute("truncate webhook_private.events, webhook_private.subscriptions cascade")
        factory = EventFactory(seed=7)
        cancel, keep = tied_pair(factory)
        app = build_app(db_url)
        try:
            StripeSender(app.test_client()).send_all([keep, cancel] if reverse else [cancel, keep])
        finally:
            app.extensions["webhook"].close()
        expected = max([cancel, keep], key=lambda d: d.id)
        assert mirror(conn) == (
            expected.event["data"]["object"]["cancel_at_period_end"],
            expected.id,
        )
        results.add(mirror(conn)[0])
    assert len(results) == 1


def test_a_failed_lookup_falls_back_to_the_tie_break(db_url, conn, plans, standin) -> None:
    factory = EventFactory()
    cancel, keep = tied_pair(factory)
    app = build_app(db_url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=standin.url)
    try:
        StripeSender(app.test_client()).send_all([cancel, keep])
    finally:
        app.extensions["webhook"].close()
    expected = max([cancel, keep], key=lambda d: d.id)
    assert mirror(conn)[1] == expected.id
    assert asked(standin) == ["/v1/subscriptions/sub_1"]

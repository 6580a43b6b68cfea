"""Events of a connected account (Stripe Connect) are stored and ignored.

A Connect endpoint receives its connected accounts' events, test mode included, with
`account` set. Their customers and subscriptions are those accounts' own: before, a
connected account's checkout linked the platform's customer named in its reference and
its subscription gave them a plan.
"""

import copy

import pytest
from apply_ways import WAYS
from stripe_events import API_VERSIONS, MONTH, Delivery, EventFactory
from webhook_support import customer_state, event_status


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param)


def of_account(delivery: Delivery, account: str = "acct_1Connected") -> Delivery:
    event = copy.deepcopy(delivery.event)
    event["account"] = account
    return Delivery.from_event(event)


@pytest.mark.parametrize("way", WAYS)
def test_a_connected_accounts_sign_up_links_and_grants_nothing(
    conn, plans, user, factory, way
) -> None:
    sign_up = [
        factory.checkout_completed(customer="cus_conn", subscription="sub_conn",
                                   client_reference_id=str(user)),
        factory.subscription("customer.subscription.created", sub_id="sub_conn",
                             customer="cus_conn", status="active", price_ids=["price_pro"]),
        factory.invoice("invoice.paid", invoice_id="in_conn", customer="cus_conn",
                        subscription="sub_conn", period_start=factory.clock,
                        period_end=factory.clock + MONTH),
    ]  # fmt: skip
    connected = [of_account(d) for d in sign_up]
    WAYS[way](conn, connected)
    state = customer_state(conn, user)
    assert (state["stripe_customer_id"], state["plan_id"]) == (None, None)
    assert {event_status(conn, d.id) for d in connected} == {("ignored", None)}
    mirrored = conn.execute("select count(*) from webhook_private.subscriptions").fetchone()
    assert mirrored == (0,)


@pytest.mark.parametrize("way", WAYS)
def test_the_platforms_own_events_still_apply_beside_them(conn, plans, user, factory, way) -> None:
    sign_up = [
        factory.checkout_completed(customer="cus_1", subscription="sub_1",
                                   client_reference_id=str(user)),
        factory.subscription("customer.subscription.created", sub_id="sub_1", customer="cus_1",
                             status="active", price_ids=["price_pro"]),
    ]  # fmt: skip
    cancel = factory.subscription(
        "customer.subscription.deleted", sub_id="sub_1", customer="cus_1", status="canceled"
    )
    WAYS[way](conn, [*sign_up, of_account(cancel)])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]

"""The subscription ordering key: newest state wins, whatever the delivery order."""

import itertools
import time

import pytest
from apply_ways import WAYS
from stripe_events import API_VERSIONS, DAY, MONTH, EventFactory
from webhook_support import customer_state

from webhook.rules.ordering import fetched_order_key, subscription_order_key
from webhook.stripe.payloads import SubscriptionState


def state(status: str, period_end: int = 2000) -> SubscriptionState:
    return SubscriptionState(
        "sub_1", "cus_1", status, ("price_pro",), ("prod_pro",), period_end, False, None, None, {}
    )


def key(created: int, event_type: str, status: str, period_end: int = 2000) -> list[int]:
    return subscription_order_key(created, event_type, state(status, period_end))


def test_a_later_second_is_newer() -> None:
    assert key(101, "customer.subscription.updated", "past_due") > key(
        100, "customer.subscription.updated", "active"
    )


def test_on_a_tie_a_terminal_state_wins() -> None:
    canceled = key(100, "customer.subscription.updated", "canceled")
    active = key(100, "customer.subscription.updated", "active")
    assert canceled > active
    assert key(100, "customer.subscription.updated", "incomplete_expired") > key(
        100, "customer.subscription.updated", "incomplete"
    )


def test_created_and_updated_in_the_same_second_order_by_type() -> None:
    created = key(100, "customer.subscription.created", "incomplete")
    updated = key(100, "customer.subscription.updated", "active")
    assert updated > created


def test_a_renewal_in_the_same_second_is_newer_than_the_old_period() -> None:
    old = key(100, "customer.subscription.updated", "active", period_end=2000)
    renewed = key(100, "customer.subscription.updated", "active", period_end=4000)
    assert renewed > old


def test_the_maximum_is_the_same_in_every_delivery_order() -> None:
    keys = [
        key(100, "customer.subscription.created", "incomplete"),
        key(100, "customer.subscription.updated", "active"),
        key(105, "customer.subscription.updated", "active", period_end=4000),
        key(110, "customer.subscription.deleted", "canceled", period_end=4000),
    ]
    winners = set()
    for order in itertools.permutations(keys):
        best = None
        for k in order:
            if best is None or k > best:
                best = k
        winners.add(tuple(best))
    assert winners == {tuple(keys[-1])}


def state_in(period_start: int, period_end: int) -> SubscriptionState:
    return SubscriptionState(
        "sub_1", "cus_1", "active", ("price_pro",), ("prod_pro",), period_end, False, None,
        None, {}, current_period_start=period_start,
    )  # fmt: skip


def test_a_new_period_that_ends_sooner_is_newer_in_the_same_second() -> None:
    """Yearly to monthly restarts the cycle now: the start moves on, the end moves back."""
    year = key_of(100, state_in(0, 365 * DAY))
    month = key_of(100, state_in(40 * DAY, 70 * DAY))
    assert month > year


def test_within_one_period_the_later_end_is_newer() -> None:
    """A trial extended within its period: the same start, a later end."""
    assert key_of(100, state_in(0, 14 * DAY)) > key_of(100, state_in(0, 7 * DAY))


def test_a_state_read_by_sync_keeps_its_place_among_events() -> None:
    fetched = fetched_order_key(100, state_in(40 * DAY, 70 * DAY))
    assert key_of(99, state_in(50 * DAY, 80 * DAY)) < fetched < key_of(100, state_in(0, 1))
    assert len(fetched) == len(key_of(100, state_in(0, 1)))


def key_of(created: int, subscription: SubscriptionState) -> list[int]:
    return subscription_order_key(created, "customer.subscription.updated", subscription)


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param, start=int(time.time()) - 3600)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("reverse", [False, True], ids=["in_order", "reversed"])
def test_a_switch_to_a_shorter_period_in_the_same_second_as_an_update_stands(
    conn, plans, user, factory, way, reverse
) -> None:
    """Pro yearly; 40 days on, within one second, the application tags the subscription
    (still the year) and switches it to Basic monthly (a month from now, inside the year).
    Basic, whichever arrives first; before, the year's later end kept Pro."""
    t0 = factory.clock
    WAYS[way](conn, [
        factory.checkout_completed(customer="cus_1", subscription="sub_1",
                                   client_reference_id=str(user)),
        factory.subscription("customer.subscription.created", sub_id="sub_1", customer="cus_1",
                             status="active", price_ids=["price_pro"], period_start=t0,
                             period_end=t0 + 365 * DAY),
    ])  # fmt: skip
    factory.tick(40 * DAY)
    t1 = factory.clock
    tagged = factory.subscription(
        "customer.subscription.updated", sub_id="sub_1", customer="cus_1", status="active",
        price_ids=["price_pro"], period_start=t0, period_end=t0 + 365 * DAY,
        metadata={"tag": "1"}, previous_attributes={"metadata": {"tag": None}},
    )  # fmt: skip
    switched = factory.subscription(
        "customer.subscription.updated", sub_id="sub_1", customer="cus_1", status="active",
        price_ids=["price_basic"], period_start=t1, period_end=t1 + MONTH, metadata={"tag": "1"},
    )  # fmt: skip
    assert tagged.event["created"] == switched.event["created"]
    pair = [tagged, switched]
    WAYS[way](conn, pair[::-1] if reverse else pair)
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]

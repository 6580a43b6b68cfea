"""The subscription ordering key: newest state wins, whatever the delivery order."""

import itertools

from webhook.rules.ordering import subscription_order_key
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

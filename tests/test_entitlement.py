"""The entitlement rule: statuses and prices in, plan out."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from webhook.entitlement import PlanPrice, entitled_plan

PLANS = {
    "price_basic": PlanPrice(1, Decimal("9.99")),
    "price_pro": PlanPrice(2, Decimal("19.99")),
    "price_pro_yearly": PlanPrice(4, Decimal("19.99")),
    "price_ent": PlanPrice(3, Decimal("49.99")),
}


@dataclass(frozen=True)
class Sub:
    status: str
    price_ids: tuple[str, ...]


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_granting_statuses_give_the_plan_of_the_price(status: str) -> None:
    assert entitled_plan([Sub(status, ("price_pro",))], PLANS).plan_id == 2


@pytest.mark.parametrize(
    "status", ["incomplete", "incomplete_expired", "unpaid", "canceled", "paused"]
)
def test_other_statuses_grant_nothing(status: str) -> None:
    result = entitled_plan([Sub(status, ("price_pro",))], PLANS)
    assert result.plan_id is None
    assert result.decided


def test_no_subscriptions_means_no_plan() -> None:
    assert entitled_plan([], PLANS).plan_id is None


def test_the_most_expensive_granting_plan_wins() -> None:
    subs = [
        Sub("active", ("price_basic",)),
        Sub("trialing", ("price_ent",)),
        Sub("canceled", ("price_pro",)),
    ]
    assert entitled_plan(subs, PLANS).plan_id == 3


def test_equal_prices_pick_the_lower_plan_id_whatever_the_order() -> None:
    one = entitled_plan(
        [Sub("active", ("price_pro_yearly",)), Sub("active", ("price_pro",))], PLANS
    )
    two = entitled_plan(
        [Sub("active", ("price_pro",)), Sub("active", ("price_pro_yearly",))], PLANS
    )
    assert one.plan_id == two.plan_id == 2


def test_add_on_items_without_a_plan_are_ignored() -> None:
    result = entitled_plan([Sub("active", ("price_seats", "price_basic"))], PLANS)
    assert result.plan_id == 1
    assert result.decided


def test_a_granting_subscription_with_no_known_price_leaves_the_decision_open() -> None:
    result = entitled_plan([Sub("active", ("price_new",)), Sub("active", ("price_basic",))], PLANS)
    assert not result.decided
    assert result.unknown_prices == ("price_new",)


def test_unknown_prices_of_non_granting_subscriptions_do_not_matter() -> None:
    result = entitled_plan(
        [Sub("canceled", ("price_new",)), Sub("active", ("price_basic",))], PLANS
    )
    assert result.decided
    assert result.plan_id == 1


def test_statuses_are_configurable() -> None:
    subs = [Sub("past_due", ("price_pro",))]
    assert entitled_plan(subs, PLANS, entitled_statuses={"active"}).plan_id is None
    assert entitled_plan([Sub("unpaid", ("price_pro",))], PLANS, {"active", "unpaid"}).plan_id == 2

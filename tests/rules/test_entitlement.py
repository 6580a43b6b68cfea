"""The entitlement rule: statuses and prices (or their products) in, plan out."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from webhook.rules.entitlement import ADD_ON, Entitlement, PlanCatalog, PlanPrice, entitled_plan

PLANS = PlanCatalog(
    {
        "price_basic": PlanPrice(1, Decimal("9.99")),
        "price_pro": PlanPrice(2, Decimal("19.99")),
        "price_pro_yearly": PlanPrice(4, Decimal("19.99")),
        "price_ent": PlanPrice(3, Decimal("49.99")),
    },
    {"prod_pro": PlanPrice(2, Decimal("19.99")), "prod_team": PlanPrice(5, Decimal("99"))},
)


@dataclass(frozen=True)
class Sub:
    status: str
    price_ids: tuple[str, ...]
    product_ids: tuple[str | None, ...] = ()


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


def test_a_price_with_no_plan_of_its_own_grants_its_products_plan() -> None:
    monthly = entitled_plan([Sub("active", ("price_team_m",), ("prod_team",))], PLANS)
    yearly_usd = entitled_plan([Sub("active", ("price_team_y_usd",), ("prod_team",))], PLANS)
    assert monthly.plan_id == yearly_usd.plan_id == 5


def test_the_exact_price_wins_over_the_product() -> None:
    # price_basic belongs to prod_pro here, but the Basic plan names that very price.
    assert entitled_plan([Sub("active", ("price_basic",), ("prod_pro",))], PLANS).plan_id == 1


def test_a_price_of_an_unknown_product_is_unknown() -> None:
    result = entitled_plan([Sub("active", ("price_x",), ("prod_x",))], PLANS)
    assert not result.decided
    assert result.unknown_prices == ("price_x",)


def test_states_mirrored_without_products_still_match_by_price() -> None:
    # Rows written before products were kept have fewer product ids than prices.
    assert entitled_plan([Sub("active", ("price_seats", "price_pro"), ())], PLANS).plan_id == 2


def test_the_catalog_prefers_the_price_id_over_a_legacy_plan_id() -> None:
    catalog = PlanCatalog.from_plans(
        [
            (7, Decimal("5"), None, "gold", None),  # a legacy Stripe plan id
            (8, Decimal("6"), "gold", None, None),  # the same id as a price id
            (9, Decimal("7"), None, "silver", "prod_silver"),
        ]
    )
    assert catalog.classify("gold", None) == PlanPrice(8, Decimal("6"))
    assert catalog.classify("silver", None) == PlanPrice(9, Decimal("7"))
    assert catalog.classify("price_other", "prod_silver") == PlanPrice(9, Decimal("7"))


def catalog_with_add_ons() -> PlanCatalog:
    """Plans and add-ons as accounts.CATALOG_QUERY reads them (add-ons have no plan id)."""
    return PlanCatalog.from_plans(
        [
            (2, Decimal("19.99"), "price_pro", None, "prod_pro"),
            (5, Decimal("99"), None, None, "prod_team"),
            (None, None, "price_storage", None, None),
            (None, None, None, None, "prod_seats"),
            (None, None, "price_team_seat", None, None),  # a price of a plan's product
            (None, None, "price_pro", None, None),  # named by a plan too: the plan wins
        ]
    )


def test_the_more_specific_name_wins_and_a_plan_over_an_add_on() -> None:
    catalog = catalog_with_add_ons()
    assert catalog.classify("price_pro", "prod_pro") == PlanPrice(2, Decimal("19.99"))
    assert catalog.classify("price_storage", "prod_pro") is ADD_ON  # add-on price > plan product
    assert catalog.classify("price_team_seat", "prod_team") is ADD_ON
    assert catalog.classify("price_team_monthly", "prod_team") == PlanPrice(5, Decimal("99"))
    assert catalog.classify("price_seat_eur", "prod_seats") is ADD_ON
    assert catalog.classify("price_unknown", "prod_unknown") is None


def test_a_subscription_of_add_ons_only_grants_nothing_and_is_no_gap() -> None:
    catalog = catalog_with_add_ons()
    add_ons_only = Sub("active", ("price_storage", "price_seat"), (None, "prod_seats"))
    assert entitled_plan([add_ons_only], catalog) == Entitlement(plan_id=None)
    with_plan = [add_ons_only, Sub("active", ("price_pro",), ("prod_pro",))]
    assert entitled_plan(with_plan, catalog) == Entitlement(plan_id=2)


def test_a_gap_names_only_the_prices_nobody_described() -> None:
    sub = Sub("active", ("price_storage", "price_new"), (None, "prod_new"))
    result = entitled_plan([sub], catalog_with_add_ons())
    assert result.unknown_prices == ("price_new",)

"""The entitlement rule: which plan a customer's subscriptions give them. No I/O.

A subscription grants while its status is one of the entitled statuses (by default
active, trialing, and past_due as a grace period; configurable through
ENTITLED_STATUSES). A subscription scheduled to cancel at period end is still `active`
until Stripe ends it, so it keeps granting until then. Among everything granted, the
customer gets the most expensive plan; with nothing granted, no plan.

Each item grants the plan that names its price (`stripe_price_id`, or `stripe_plan_id`
for a legacy Stripe plan, whose id Stripe accepts as a price id); failing that, the plan
that names the price's product (`stripe_product_id`), so the monthly, yearly and
per-currency prices of one product all grant one plan. The exact price wins.

Items whose price is not a plan (seats, metered add-ons) are ignored as long as another
item of the same subscription is a plan. A granting subscription none of whose prices is
a plan is a configuration gap, not a reason to take a paying customer's plan away: the
rule then reports those prices and the caller leaves the plan as it is until a plan for
one of them exists. Prices listed as add-ons (webhook_private.add_ons, by price or by
product) are known to grant nothing: they are never such a gap, so a subscription of
add-ons only grants nothing and is otherwise ignored.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from webhook.core.config import DEFAULT_ENTITLED_STATUSES


class GrantingSubscription(Protocol):
    """What the rule needs to know of a subscription.

    `product_ids[i]` is the product of `price_ids[i]`, or None (or missing, for states
    mirrored before products were kept) when the payload did not say.
    """

    status: str
    price_ids: tuple[str, ...]
    product_ids: tuple[str | None, ...]


@dataclass(frozen=True)
class PlanPrice:
    """A plan as seen through the Stripe price or product that sells it."""

    plan_id: int
    price: Decimal


class AddOn:
    """What an add-on's price grants: nothing, knowingly (see PlanCatalog.classify)."""

    def __repr__(self) -> str:
        return "ADD_ON"


ADD_ON = AddOn()

# A catalog row: (plan id, plan price, price id, legacy plan id, product id); an add-on's
# row has no plan id and no plan price.
CatalogRow = tuple[int | None, Decimal | None, str | None, str | None, str | None]


@dataclass(frozen=True)
class PlanCatalog:
    """The plans, keyed the two ways an item can name one, and the add-ons."""

    by_price: Mapping[str, PlanPrice] = field(default_factory=dict)
    by_product: Mapping[str, PlanPrice] = field(default_factory=dict)
    add_on_prices: frozenset[str] = frozenset()
    add_on_products: frozenset[str] = frozenset()

    @classmethod
    def from_plans(cls, rows: Iterable[CatalogRow]) -> "PlanCatalog":
        """The catalog of `public.plans` rows and `webhook_private.add_ons` rows (see
        CatalogRow; accounts.CATALOG_QUERY reads both).

        A price id that one plan names as `stripe_price_id` and another as `stripe_plan_id`
        goes to the first: the current Prices API name wins over the legacy one.
        """
        legacy: dict[str, PlanPrice] = {}
        by_price: dict[str, PlanPrice] = {}
        by_product: dict[str, PlanPrice] = {}
        add_on_prices: set[str] = set()
        add_on_products: set[str] = set()
        for plan_id, price, price_id, legacy_plan_id, product_id in rows:
            if plan_id is None or price is None:
                add_on_prices.update([price_id] if price_id else [])
                add_on_products.update([product_id] if product_id else [])
                continue
            plan = PlanPrice(plan_id, price)
            if price_id:
                by_price[price_id] = plan
            if legacy_plan_id:
                legacy[legacy_plan_id] = plan
            if product_id:
                by_product[product_id] = plan
        return cls(
            {**legacy, **by_price},
            by_product,
            frozenset(add_on_prices),
            frozenset(add_on_products),
        )

    def classify(self, price_id: str, product_id: str | None) -> PlanPrice | AddOn | None:
        """What an item with this price grants: a plan, ADD_ON (knowingly nothing), or None
        (a price nobody has described yet).

        The more specific name wins, and a plan over an add-on of the same name: a plan's
        exact price, an add-on's price, a plan's product, an add-on's product.
        """
        plan = self.by_price.get(price_id)
        if plan is not None:
            return plan
        if price_id in self.add_on_prices:
            return ADD_ON
        if product_id is not None:
            plan = self.by_product.get(product_id)
            if plan is not None:
                return plan
            if product_id in self.add_on_products:
                return ADD_ON
        return None


@dataclass(frozen=True)
class Entitlement:
    """The rule's answer: the plan to set, or the prices that stop it from deciding."""

    plan_id: int | None
    unknown_prices: tuple[str, ...] = ()

    @property
    def decided(self) -> bool:
        return not self.unknown_prices


def entitled_plan(
    subscriptions: Iterable[GrantingSubscription],
    catalog: PlanCatalog,
    entitled_statuses: Iterable[str] = DEFAULT_ENTITLED_STATUSES,
) -> Entitlement:
    """The plan the subscriptions grant, or the unknown prices if any granting one has one."""
    granting = frozenset(entitled_statuses)
    best: PlanPrice | None = None
    unknown: list[str] = []
    for sub in subscriptions:
        if sub.status not in granting or not sub.price_ids:
            continue
        products = tuple(sub.product_ids) + (None,) * (len(sub.price_ids) - len(sub.product_ids))
        plans: list[PlanPrice] = []
        undescribed: list[str] = []
        for price_id, product_id in zip(sub.price_ids, products, strict=False):
            found = catalog.classify(price_id, product_id)
            if isinstance(found, PlanPrice):
                plans.append(found)
            elif found is None:
                undescribed.append(price_id)
        if not plans:
            unknown.extend(undescribed)  # nothing when every price is an add-on
        for plan in plans:
            if best is None or (plan.price, -plan.plan_id) > (best.price, -best.plan_id):
                best = plan
    if unknown:
        return Entitlement(plan_id=None, unknown_prices=tuple(sorted(set(unknown))))
    return Entitlement(plan_id=best.plan_id if best else None)

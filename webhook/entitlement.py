"""The entitlement rule: which plan a customer's subscriptions give them. No I/O.

A subscription grants while its status is one of the entitled statuses (by default
active, trialing, and past_due as a grace period; configurable through
ENTITLED_STATUSES). A subscription scheduled to cancel at period end is still `active`
until Stripe ends it, so it keeps granting until then. Among everything granted, the
customer gets the most expensive plan; with nothing granted, no plan.

Items whose price is not a plan (seats, metered add-ons) are ignored as long as another
item of the same subscription is a plan. A granting subscription none of whose prices is
a plan is a configuration gap, not a reason to take a paying customer's plan away: the
rule then reports those prices and the caller leaves the plan as it is until a plan for
one of them exists.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from webhook.config import DEFAULT_ENTITLED_STATUSES


class GrantingSubscription(Protocol):
    """What the rule needs to know of a subscription."""

    status: str
    price_ids: tuple[str, ...]


@dataclass(frozen=True)
class PlanPrice:
    """A plan as seen through the Stripe price that sells it."""

    plan_id: int
    price: Decimal


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
    plans_by_price: Mapping[str, PlanPrice],
    entitled_statuses: Iterable[str] = DEFAULT_ENTITLED_STATUSES,
) -> Entitlement:
    """The plan the subscriptions grant, or the unknown prices if any granting one has one."""
    granting = frozenset(entitled_statuses)
    best: PlanPrice | None = None
    unknown: list[str] = []
    for sub in subscriptions:
        if sub.status not in granting or not sub.price_ids:
            continue
        plans = [plans_by_price[p] for p in sub.price_ids if p in plans_by_price]
        if not plans:
            unknown.extend(sub.price_ids)
        for plan in plans:
            if best is None or (plan.price, -plan.plan_id) > (best.price, -best.plan_id):
                best = plan
    if unknown:
        return Entitlement(plan_id=None, unknown_prices=tuple(sorted(set(unknown))))
    return Entitlement(plan_id=best.plan_id if best else None)

"""What a handler receives and returns.

A handler applies one verified, stored event inside the delivery's transaction and says
how it went. It raises ApplyError or PayloadError when the event cannot be applied for a
data reason; the processor then rolls the handler's writes back and keeps the event as
failed, to be replayed once the data is fixed.
"""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from webhook.rules import accounts
from webhook.rules.entitlement import Entitlement
from webhook.stripe.payloads import Event


@dataclass(frozen=True)
class Context:
    """One event being applied, and where to apply it."""

    conn: psycopg.Connection
    event: Event
    entitled_statuses: frozenset[str]
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How applying an event went: processed, ignored (nothing to do) or failed."""

    status: str
    customer: uuid.UUID | None = None
    error: str | None = None

    @classmethod
    def processed(cls, customer: uuid.UUID | None = None) -> "Outcome":
        return cls("processed", customer)

    @classmethod
    def ignored(cls, customer: uuid.UUID | None = None) -> "Outcome":
        return cls("ignored", customer)

    @classmethod
    def failed(cls, error: str, customer: uuid.UUID | None = None) -> "Outcome":
        return cls("failed", customer, error)


def recompute_all(ctx: Context, customers: Iterable[uuid.UUID]) -> Outcome:
    """Recompute each customer's plan; fail (keeping what was stored) on unknown prices."""
    primary: uuid.UUID | None = None
    for customer in sorted(customers):
        entitlement = accounts.recompute_plan(ctx.conn, customer, ctx.entitled_statuses)
        primary = primary or customer
        if not entitlement.decided:
            return Outcome.failed(unknown_prices_message(entitlement), customer)
    return Outcome.processed(primary)


def unknown_prices_message(entitlement: Entitlement) -> str:
    """Why an event failed when a granting subscription's prices have no plan."""
    prices = ", ".join(entitlement.unknown_prices)
    return (
        f"no plan has stripe_price_id (or stripe_plan_id) {prices}, nor the stripe_product_id"
        " of its product; the customer's plan was left as it was. Add the plan (or, for a"
        " price that grants no plan, a row of webhook_private.add_ons), then run"
        " `python -m webhook reconcile` and `python -m webhook replay --failed`"
    )

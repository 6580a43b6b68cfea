"""Paid renewals: the one place their rule is decided, for one event or a whole batch.

At the start of a month most of the queue is renewals: for each subscription an
`invoice.paid` and an `invoice.payment_succeeded` for the same invoice. A drain hands a
whole batch of them here; the invoice handler (handlers/invoices.py) hands one. Either
way they are decided in memory, in the order given, and written in four statements:

- an invoice that is not a `subscription_cycle` renewal is ignored without a lookup;
- an invoice without an id or a customer fails (before any lookup);
- an invoice whose Stripe customer is not linked is ignored (linking assigns the plan
  with its full resources later);
- a linked one whose service period is no readable timestamp fails;
- one whose subscription lines bill only add-ons (webhook_private.add_ons) is ignored: it
  renews extra storage or seats, not the plan, whose allowance stays as it is;
- a renewal claims its reset once per invoice, and only when its period starts after the
  customer's last reset; a claimed reset puts the customer's resources back to the plan's.

Each claimed reset names its event; the customer's `resource_reset` audit row names the
first event that changed the balance.
tests/pipeline/test_renewal_batch.py checks that a batch ends where its events one at a
time end, and tests/pipeline/test_webhook_events.py the rule itself.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import psycopg

from webhook.pipeline.audit_rows import update_naming_audit_rows
from webhook.pipeline.handlers.base import Outcome
from webhook.pipeline.replay_result import ReplayResult
from webhook.rules import accounts
from webhook.rules.entitlement import ADD_ON, PlanCatalog
from webhook.stripe.payloads import (
    Event,
    PayloadError,
    expandable_id,
    invoice_service_period_start,
    invoice_subscription_id,
    invoice_subscription_prices,
    timestamp,
)

RENEWAL_TYPES = frozenset({"invoice.paid", "invoice.payment_succeeded"})


@dataclass(frozen=True)
class Renewal:
    """A paid-invoice event as the rule reads it; `stripe_customer` is None when it is no
    cycle renewal or has no customer."""

    event: Event
    stripe_customer: str | None
    invoice_id: str | None = None
    subscription_id: str | None = None
    period_start: datetime | None = None
    # Why it cannot be applied: no id or no customer (whoever it belongs to), or a service
    # period that is no timestamp (which matters only once the customer is linked).
    unreadable: str | None = None
    unreadable_period: str | None = None
    # (price, product) of each subscription line; empty when the event holds only some of
    # the invoice's lines (`lines.has_more`), which then cannot be known to be add-ons only.
    line_prices: tuple[tuple[str, str | None], ...] = ()


NO_ID_OR_CUSTOMER = "invoice has no id or no customer"


def renewal_for(event: Event) -> Renewal | None:
    """The event as this rule reads it; None for a type it does not decide."""
    if event.type not in RENEWAL_TYPES:
        return None
    invoice = event.object
    if invoice.get("billing_reason") != "subscription_cycle":
        return Renewal(event, None)
    stripe_customer = expandable_id(invoice.get("customer"))
    if stripe_customer is None or event.object_id is None:
        return Renewal(event, None, unreadable=NO_ID_OR_CUSTOMER)
    lines = invoice.get("lines")
    complete = not (isinstance(lines, dict) and lines.get("has_more") is True)
    renewal = Renewal(
        event,
        stripe_customer,
        event.object_id,
        invoice_subscription_id(invoice),
        line_prices=tuple(invoice_subscription_prices(invoice).items()) if complete else (),
    )
    try:
        period_start = timestamp(invoice_service_period_start(invoice) or event.created)
    except PayloadError as exc:
        return replace(renewal, unreadable_period=str(exc))
    return replace(renewal, period_start=period_start)


def apply_renewals(conn: psycopg.Connection, renewals: Sequence[Renewal]) -> list[ReplayResult]:
    """Decide and write `renewals`, in the caller's transaction, in the order given.

    The outcomes are the caller's to record. The audit rows the resets write name the
    first event of each customer (audit_rows).
    """
    cycles = [r for r in renewals if r.stripe_customer is not None]
    owners = _owners(conn, sorted({r.stripe_customer for r in cycles if r.stripe_customer}))
    customers = sorted({owner for owner in owners.values()})
    reset_invoices, last_start = _resets(conn, customers, [r.invoice_id for r in cycles])
    # Only a renewal whose invoice names its lines' prices can be one of add-ons alone.
    priced = customers and any(r.line_prices for r in cycles)
    catalog = accounts.read_catalog(conn) if priced else PlanCatalog()
    results: list[ReplayResult] = []
    claimed: list[tuple[Renewal, uuid.UUID]] = []
    for renewal in renewals:
        owner = owners.get(renewal.stripe_customer) if renewal.stripe_customer else None
        if renewal.unreadable:
            outcome = Outcome.failed(renewal.unreadable)
        elif owner is None:
            outcome = Outcome.ignored()
        elif renewal.unreadable_period:
            outcome = Outcome.failed(renewal.unreadable_period)
        elif not _renews_the_plan(renewal, catalog, reset_invoices, last_start.get(owner)):
            outcome = Outcome.ignored(owner)
        else:
            reset_invoices.add(renewal.invoice_id)
            last_start[owner] = renewal.period_start
            claimed.append((renewal, owner))
            outcome = Outcome.processed(owner)
        results.append(ReplayResult(renewal.event.id, renewal.event.type, outcome, None, None))
    if claimed:
        _write(conn, claimed)
    return results


def _renews_the_plan(
    renewal: Renewal, catalog: PlanCatalog, reset_invoices: set[str | None], last: datetime | None
) -> bool:
    """Whether the renewal claims a reset: its invoice bills more than add-ons (a plan, or a
    price nobody has described), was not reset yet, and starts after the last reset."""
    add_ons_only = bool(renewal.line_prices) and all(
        catalog.classify(price, product) is ADD_ON for price, product in renewal.line_prices
    )
    return not add_ons_only and renewal.invoice_id not in reset_invoices and _after(renewal, last)


def _after(renewal: Renewal, last: datetime | None) -> bool:
    return last is None or (renewal.period_start is not None and renewal.period_start > last)


def _owners(conn: psycopg.Connection, stripe_customers: list[str]) -> dict[str | None, uuid.UUID]:
    """Take each Stripe customer's lock (held already in a drain) and find its owner; a
    Stripe customer deleted in Stripe (its link kept without an owner) has none."""
    if not stripe_customers:
        return {}
    conn.execute(
        "select pg_advisory_xact_lock(hashtextextended('stripe-customer:' || s, 0))"
        " from unnest(%s::text[]) with ordinality as t(s, n) order by n",
        (stripe_customers,),
    )
    return dict(
        conn.execute(
            "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
            " where stripe_customer_id = any(%s) and customer_uuid is not null",
            (stripe_customers,),
        ).fetchall()
    )


def _resets(
    conn: psycopg.Connection, customers: list[uuid.UUID], invoices: list[str | None]
) -> tuple[set[str | None], dict[uuid.UUID, datetime]]:
    """Invoices already reset (for anyone), and each customer's latest reset period."""
    if not customers:
        return set(), {}
    rows = conn.execute(
        "select invoice_id from webhook_private.resource_resets where invoice_id = any(%s)",
        ([i for i in invoices if i is not None],),
    ).fetchall()
    latest = conn.execute(
        "select customer_uuid, max(period_start) from webhook_private.resource_resets"
        " where customer_uuid = any(%s) group by customer_uuid",
        (customers,),
    ).fetchall()
    return {row[0] for row in rows}, dict(latest)


def _write(conn: psycopg.Connection, claimed: list[tuple[Renewal, uuid.UUID]]) -> None:
    """The claimed resets, the resources put back, and the audit rows named."""
    conn.execute(
        """
        insert into webhook_private.resource_resets
          (invoice_id, customer_uuid, subscription_id, period_start, event_id)
        select * from unnest(%s::text[], %s::uuid[], %s::text[], %s::timestamptz[], %s::text[])
        """,
        (
            [r.invoice_id for r, _ in claimed],
            [owner for _, owner in claimed],
            [r.subscription_id for r, _ in claimed],
            [r.period_start for r, _ in claimed],
            [r.event.id for r, _ in claimed],
        ),
    )
    first_event: dict[uuid.UUID, str] = {}
    for renewal, owner in claimed:
        first_event.setdefault(owner, renewal.event.id)
    customers = sorted(first_event)
    conn.execute(
        "select 1 from public.customer where uuid = any(%s) order by uuid for update",
        (customers,),
    )
    update_naming_audit_rows(
        conn,
        """
        update public.customer set remaining_resources = plan_resources
         where uuid = any(%s) and plan_id is not null
           and remaining_resources is distinct from plan_resources
        """,
        (customers,),
        first_event,
    )

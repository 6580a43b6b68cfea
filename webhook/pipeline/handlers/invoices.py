"""invoice.*: a paid renewal resets the customer's resources; a failed payment is recorded.

Stripe sends both invoice.paid and invoice.payment_succeeded for one renewal, and may send
each more than once. The reset is keyed by invoice id, so it happens once per invoice,
and never for an invoice whose period is not newer than the last reset's.
"""

import json

from webhook.pipeline.handlers.base import Context, Outcome
from webhook.rules import accounts
from webhook.stripe.payloads import (
    PayloadError,
    expandable_id,
    invoice_service_period_start,
    invoice_subscription_id,
    timestamp,
)


def handle_invoice_paid(ctx: Context) -> Outcome:
    invoice = ctx.event.object
    if invoice.get("billing_reason") != "subscription_cycle":
        return Outcome.ignored()
    stripe_customer, invoice_id = _ids(ctx)
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    customer = accounts.linked_customer(ctx.conn, stripe_customer)
    if customer is None:
        # Nothing to reset yet: linking later assigns the plan with its full resources.
        return Outcome.ignored()
    period_start = invoice_service_period_start(invoice) or ctx.event.created
    claimed = ctx.conn.execute(
        """
        insert into webhook_private.resource_resets
          (invoice_id, customer_uuid, subscription_id, period_start, event_id)
        select %(invoice)s, %(customer)s, %(subscription)s, %(start)s, %(event)s
         where not exists (
           select from webhook_private.resource_resets r
            where r.customer_uuid = %(customer)s
              and (r.invoice_id = %(invoice)s or r.period_start >= %(start)s))
        on conflict (invoice_id) do nothing
        returning 1
        """,
        {
            "invoice": invoice_id,
            "customer": customer,
            "subscription": invoice_subscription_id(invoice),
            "start": timestamp(period_start),
            "event": ctx.event.id,
        },
    ).fetchone()
    if claimed is None:
        return Outcome.ignored(customer)
    ctx.conn.execute(
        """
        update public.customer set remaining_resources = plan_resources
         where uuid = %s and plan_id is not null
           and remaining_resources is distinct from plan_resources
        """,
        (customer,),
    )
    return Outcome.processed(customer)


def handle_payment_failed(ctx: Context) -> Outcome:
    invoice = ctx.event.object
    stripe_customer, invoice_id = _ids(ctx)
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    customer = accounts.linked_customer(ctx.conn, stripe_customer)
    if customer is None:
        return Outcome.ignored()
    details = {
        "invoice": invoice_id,
        "subscription": invoice_subscription_id(invoice),
        "billing_reason": invoice.get("billing_reason"),
        "amount_due": invoice.get("amount_due"),
        "currency": invoice.get("currency"),
        "attempt_count": invoice.get("attempt_count"),
        "next_payment_attempt": invoice.get("next_payment_attempt"),
    }
    ctx.conn.execute(
        "insert into public.audit_logs (customer_uuid, action, new_value, source)"
        " values (%s, 'payment_failed', %s::jsonb, %s)",
        (customer, json.dumps(details), f"stripe:{ctx.event.id}"),
    )
    return Outcome.processed(customer)


def _ids(ctx: Context) -> tuple[str, str]:
    stripe_customer = expandable_id(ctx.event.object.get("customer"))
    invoice_id = ctx.event.object_id
    if stripe_customer is None or invoice_id is None:
        raise PayloadError("invoice has no id or no customer")
    return stripe_customer, invoice_id

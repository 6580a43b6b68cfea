"""invoice.*: a paid renewal resets the customer's resources; a failed payment is recorded.

Stripe sends both invoice.paid and invoice.payment_succeeded for one renewal, and may send
each more than once. The reset is keyed by invoice id, so it happens once per invoice,
and never for an invoice whose period is not newer than the last reset's. That rule is
decided in one place, renewal_batch, for a drain's whole batch or, here, for one event.
"""

import json

from webhook.pipeline import renewal_batch
from webhook.pipeline.handlers.base import Context, Outcome
from webhook.rules import accounts
from webhook.stripe.payloads import PayloadError, expandable_id, invoice_subscription_id


def handle_invoice_paid(ctx: Context) -> Outcome:
    renewal = renewal_batch.renewal_for(ctx.event)
    assert renewal is not None, "registered for the renewal types only"
    (result,) = renewal_batch.apply_renewals(ctx.conn, [renewal])
    return result.outcome


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
        raise PayloadError(renewal_batch.NO_ID_OR_CUSTOMER)
    return stripe_customer, invoice_id

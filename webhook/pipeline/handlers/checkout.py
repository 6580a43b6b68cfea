"""checkout.session.completed / async_payment_succeeded: link the buyer to our customer.

`client_reference_id` is our customer's uuid (set it when creating the session), with
`metadata.customer_uuid` as the fallback. The plan itself comes from the subscription,
which may already be in the mirror; recomputing after linking applies it at once.
"""

from webhook.pipeline.handlers.base import Context, Outcome, recompute_all
from webhook.rules import accounts
from webhook.rules.accounts import ApplyError
from webhook.stripe.payloads import customer_uuid_from, expandable_id


def handle_checkout(ctx: Context) -> Outcome:
    session = ctx.event.object
    if session.get("mode") != "subscription":
        return Outcome.ignored()
    metadata = session.get("metadata") if isinstance(session.get("metadata"), dict) else {}
    references = (session.get("client_reference_id"), metadata.get("customer_uuid"))
    customer = customer_uuid_from(*references)
    stripe_customer = expandable_id(session.get("customer"))
    if customer is None:
        given = any(isinstance(r, str) and r.strip() for r in references)
        if not given and stripe_customer is not None:
            # A checkout for a Stripe customer the application linked itself (or an earlier
            # checkout did) needs no reference: the link stands, the plan is recomputed.
            accounts.lock_stripe_customer(ctx.conn, stripe_customer)
            linked = accounts.linked_customer(ctx.conn, stripe_customer)
            if linked is not None:
                return recompute_all(ctx, [linked])
        # The reference itself is not quoted: it may be anything, an e-mail address too.
        problem = "is not a customer uuid" if given else "is missing"
        raise ApplyError(
            f"checkout session's customer reference {problem}: set client_reference_id (or"
            " metadata.customer_uuid) to the customer's uuid when creating the session"
        )
    if stripe_customer is None:
        raise ApplyError("checkout session has no Stripe customer to link")
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    affected = accounts.link(ctx.conn, stripe_customer, customer, ctx.event.id, ctx.event.created)
    return recompute_all(ctx, affected)

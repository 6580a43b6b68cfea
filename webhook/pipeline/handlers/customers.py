"""customer.created / updated / deleted: links by metadata, and unlinking on deletion."""

from webhook.pipeline.handlers.base import Context, Outcome, recompute_all
from webhook.rules import accounts
from webhook.stripe.payloads import metadata_customer_uuid, sets_customer_uuid


def handle_customer(ctx: Context) -> Outcome:
    stripe_customer = ctx.event.object_id
    customer = metadata_customer_uuid(ctx.event.object)
    if stripe_customer is None or customer is None:
        return Outcome.ignored()
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    affected = accounts.link(
        ctx.conn, stripe_customer, customer, ctx.event.id, ctx.event.created,
        restated=not sets_customer_uuid(ctx.event),
    )  # fmt: skip
    return recompute_all(ctx, affected)


def handle_customer_deleted(ctx: Context) -> Outcome:
    """Clear the link and the plan it granted (another linked Stripe customer may still grant one)."""
    stripe_customer = ctx.event.object_id
    if stripe_customer is None:
        return Outcome.ignored()
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    former_owner = accounts.unlink(ctx.conn, stripe_customer, ctx.event.created)
    if former_owner is None:
        return Outcome.ignored()
    return recompute_all(ctx, [former_owner])

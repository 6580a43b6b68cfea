"""price.* / product.*: keep existing plans in step with the Stripe catalog.

Only plans that already carry the price's (or product's) id are touched; a price with no
plan is ignored, never turned into a plan. A price event updates the plan that names the
price in `stripe_price_id` or, for a legacy Stripe plan, `stripe_plan_id`; it leaves a
plan that only names the price's product alone, because that product has other prices
(monthly and yearly, one per currency) and the plan's price is the operator's choice.
Product events set `active` of the plan whose `stripe_product_id` matches. An archived or
deleted price keeps granting to its existing subscribers in Stripe, so `plans.active`
only says whether it is for sale.
"""

from webhook.pipeline.handlers.base import Context, Outcome
from webhook.stripe.payloads import price_amount


def handle_price(ctx: Context) -> Outcome:
    price = ctx.event.object
    price_id = ctx.event.object_id
    if price_id is None or not _has_plan(ctx, "price", price_id):
        return Outcome.ignored()
    if not _is_newest(ctx, price_id):
        return Outcome.ignored()
    currency = price.get("currency") if isinstance(price.get("currency"), str) else None
    amount = price_amount(price.get("unit_amount"), currency) if currency else None
    active = ctx.event.type != "price.deleted" and bool(price.get("active"))
    ctx.conn.execute(
        """
        update public.plans
           set price = coalesce(%s, price), price_currency = coalesce(%s, price_currency),
               active = %s
         where (stripe_price_id = %s or (stripe_plan_id = %s and stripe_price_id is null))
           and (price, price_currency, active) is distinct from
               (coalesce(%s, price), coalesce(%s, price_currency), %s)
        """,
        (
            amount,
            currency and currency.lower(),
            active,
            price_id,
            price_id,
            amount,
            currency and currency.lower(),
            active,
        ),
    )
    return Outcome.processed()


def handle_product(ctx: Context) -> Outcome:
    product_id = ctx.event.object_id
    if product_id is None or not _has_plan(ctx, "product", product_id):
        return Outcome.ignored()
    if not _is_newest(ctx, product_id):
        return Outcome.ignored()
    active = ctx.event.type != "product.deleted" and bool(ctx.event.object.get("active"))
    ctx.conn.execute(
        "update public.plans set active = %s where stripe_product_id = %s and active is distinct from %s",
        (active, product_id, active),
    )
    return Outcome.processed()


def _has_plan(ctx: Context, kind: str, stripe_id: str) -> bool:
    query = {
        "price": "select 1 from public.plans where stripe_price_id = %(id)s or stripe_plan_id = %(id)s",
        "product": "select 1 from public.plans where stripe_product_id = %(id)s",
    }[kind]
    return ctx.conn.execute(query, {"id": stripe_id}).fetchone() is not None


def _is_newest(ctx: Context, object_id: str) -> bool:
    """Record this event as the newest for the object, unless a newer one was applied."""
    row = ctx.conn.execute(
        """
        insert into webhook_private.catalog_versions as v (object_id, stripe_created, event_id)
        values (%s, to_timestamp(%s), %s)
        on conflict (object_id) do update
          set stripe_created = excluded.stripe_created, event_id = excluded.event_id
          where excluded.stripe_created >= v.stripe_created
        returning 1
        """,
        (object_id, ctx.event.created, ctx.event.id),
    ).fetchone()
    return row is not None

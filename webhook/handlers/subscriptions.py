"""customer.subscription.*: keep the mirror current, then recompute the customer's plan.

A subscription whose Stripe customer is not linked yet (the subscription event beat the
checkout event) is kept in the mirror and applied the moment the link arrives.
"""

import json

from webhook import accounts
from webhook.handlers.base import Context, Outcome, recompute_all
from webhook.ordering import subscription_order_key
from webhook.stripe_objects import metadata_customer_uuid, subscription_state, timestamp


def handle_subscription(ctx: Context) -> Outcome:
    state = subscription_state(ctx.event.object)
    accounts.lock_stripe_customer(ctx.conn, state.customer)
    key = subscription_order_key(ctx.event.created, ctx.event.type, state)
    ctx.conn.execute(
        """
        insert into webhook_private.subscriptions as s
          (id, stripe_customer_id, status, price_ids, current_period_end, cancel_at_period_end,
           cancel_at, ended_at, metadata, order_key, event_id, updated_at)
        values (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, now())
        on conflict (id) do update
          set stripe_customer_id = excluded.stripe_customer_id, status = excluded.status,
              price_ids = excluded.price_ids, current_period_end = excluded.current_period_end,
              cancel_at_period_end = excluded.cancel_at_period_end,
              cancel_at = excluded.cancel_at, ended_at = excluded.ended_at,
              metadata = excluded.metadata, order_key = excluded.order_key,
              event_id = excluded.event_id, updated_at = now()
          where (excluded.order_key, excluded.event_id) > (s.order_key, s.event_id)
        """,
        (
            state.id,
            state.customer,
            state.status,
            list(state.price_ids),
            timestamp(state.current_period_end),
            state.cancel_at_period_end,
            timestamp(state.cancel_at),
            timestamp(state.ended_at),
            json.dumps(dict(state.metadata)),
            key,
            ctx.event.id,
        ),
    )
    affected = set()
    if (customer := metadata_customer_uuid(ctx.event.object)) is not None:
        affected |= accounts.link(ctx.conn, state.customer, customer, ctx.event.id)
    elif (customer := accounts.linked_customer(ctx.conn, state.customer)) is not None:
        affected.add(customer)
    if not affected:
        return Outcome.processed()
    return recompute_all(ctx, affected)

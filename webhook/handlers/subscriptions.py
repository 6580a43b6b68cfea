"""customer.subscription.*: keep the mirror current, then recompute the customer's plan.

A subscription whose Stripe customer is not linked yet (the subscription event beat the
checkout event) is kept in the mirror and applied the moment the link arrives.
"""

import json

import psycopg

from webhook import accounts
from webhook.handlers.base import Context, Outcome, recompute_all
from webhook.ordering import is_full_tie, subscription_order_key
from webhook.stripe_api import fetch_subscription
from webhook.stripe_objects import (
    SubscriptionState,
    metadata_customer_uuid,
    subscription_state,
    timestamp,
)

# The conflict clause every write to the mirror shares (this handler's upsert, and batch
# replay's): a state replaces the stored one only if its order key is greater, with the
# event id compared byte by byte (as Python compares strings), whatever the collation.
MIRROR_ON_CONFLICT = """
on conflict (id) do update
  set stripe_customer_id = excluded.stripe_customer_id, status = excluded.status,
      price_ids = excluded.price_ids, current_period_end = excluded.current_period_end,
      cancel_at_period_end = excluded.cancel_at_period_end,
      cancel_at = excluded.cancel_at, ended_at = excluded.ended_at,
      metadata = excluded.metadata, order_key = excluded.order_key,
      event_id = excluded.event_id, updated_at = now()
"""
NEWER_STATE = """(excluded.order_key, excluded.event_id::text collate "C")
        > (s.order_key, s.event_id::text collate "C")"""

_UPSERT = f"""
insert into webhook_private.subscriptions as s
  (id, stripe_customer_id, status, price_ids, current_period_end, cancel_at_period_end,
   cancel_at, ended_at, metadata, order_key, event_id, updated_at)
values (%(id)s, %(customer)s, %(status)s, %(prices)s, %(period_end)s, %(cancel_at_period_end)s,
        %(cancel_at)s, %(ended_at)s, %(metadata)s::jsonb, %(key)s, %(event_id)s, now())
{MIRROR_ON_CONFLICT}
  where %(fetched)s or {NEWER_STATE}
"""


def handle_subscription(ctx: Context) -> Outcome:
    state = subscription_state(ctx.event.object)
    accounts.lock_stripe_customer(ctx.conn, state.customer)
    key = subscription_order_key(ctx.event.created, ctx.event.type, state)
    event_id, fetched = ctx.event.id, False
    stored = _stored_key(ctx.conn, state.id) if ctx.stripe_api_key else None
    if stored and is_full_tie(stored[0], key) and stored[1] != event_id and ctx.stripe_api_key:
        current = fetch_subscription(ctx.stripe_api_key, state.id, ctx.stripe_api_base)
        if current is not None:
            # Stripe's current state beats both tied events; keep the larger event id so a
            # redelivery of either one cannot win the tie afterwards.
            state, event_id, fetched = subscription_state(current), max(stored[1], event_id), True
    _upsert(ctx.conn, state, key, event_id, fetched)
    affected = set()
    if (customer := metadata_customer_uuid(ctx.event.object)) is not None:
        affected |= accounts.link(
            ctx.conn, state.customer, customer, ctx.event.id, ctx.event.created
        )
    elif (customer := accounts.linked_customer(ctx.conn, state.customer)) is not None:
        affected.add(customer)
    if not affected:
        return Outcome.processed()
    return recompute_all(ctx, affected)


def _stored_key(conn: psycopg.Connection, subscription_id: str) -> tuple[list[int], str] | None:
    row = conn.execute(
        "select order_key, event_id from webhook_private.subscriptions where id = %s for update",
        (subscription_id,),
    ).fetchone()
    return (list(row[0]), row[1]) if row else None


def _upsert(
    conn: psycopg.Connection, state: SubscriptionState, key: list[int], event_id: str, fetched: bool
) -> None:
    conn.execute(
        _UPSERT,
        {
            "id": state.id,
            "customer": state.customer,
            "status": state.status,
            "prices": list(state.price_ids),
            "period_end": timestamp(state.current_period_end),
            "cancel_at_period_end": state.cancel_at_period_end,
            "cancel_at": timestamp(state.cancel_at),
            "ended_at": timestamp(state.ended_at),
            "metadata": json.dumps(dict(state.metadata)),
            "key": key,
            "event_id": event_id,
            "fetched": fetched,
        },
    )

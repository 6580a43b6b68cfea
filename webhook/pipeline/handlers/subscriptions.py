"""customer.subscription.*: keep the mirror current, then recompute the customer's plan.

A subscription whose Stripe customer is not linked yet (the subscription event beat the
checkout event) is kept in the mirror and applied the moment the link arrives.
"""

import json
from collections.abc import Mapping
from typing import Any

import psycopg

from webhook.pipeline.handlers.base import Context, Outcome, recompute_all
from webhook.rules import accounts, mirror
from webhook.rules.ordering import is_full_tie, subscription_order_key
from webhook.stripe.payloads import (
    NO_READABLE_ITEMS,
    PayloadError,
    SubscriptionState,
    metadata_customer_uuid,
    subscription_state,
    timestamp,
)
from webhook.stripe.refetch import fetch_subscription

_UPSERT = f"""
insert into webhook_private.subscriptions as s ({mirror.COLUMNS})
values (%(id)s, %(customer)s, %(status)s, %(prices)s, %(products)s, %(period_end)s,
        %(cancel_at_period_end)s, %(cancel_at)s, %(ended_at)s, %(metadata)s::jsonb, %(key)s,
        %(event_id)s, now())
{mirror.ON_CONFLICT}
  where %(fetched)s or {mirror.NEWER_STATE}
"""


def handle_subscription(ctx: Context) -> Outcome:
    state = readable_state(ctx.event.object, ctx.entitled_statuses)
    accounts.lock_stripe_customer(ctx.conn, state.customer)
    key = subscription_order_key(ctx.event.created, ctx.event.type, state)
    event_id, fetched = ctx.event.id, False
    stored = _stored_key(ctx.conn, state.id) if ctx.stripe_api_key else None
    if stored and is_full_tie(stored[0], key) and stored[1] != event_id and ctx.stripe_api_key:
        current = fetch_subscription(ctx.stripe_api_key, state.id, ctx.stripe_api_base)
        if current is not None:
            # Stripe's current state beats both tied events; keep the larger event id so a
            # redelivery of either one cannot win the tie afterwards.
            state = readable_state(current, ctx.entitled_statuses)
            event_id, fetched = max(stored[1], event_id), True
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


def readable_state(subscription: Mapping[str, Any], entitled: frozenset[str]) -> SubscriptionState:
    """The subscription's state, refused when it would grant but names no price at all.

    Such a state cannot be applied: keeping it would take the plan of a paying customer
    away (or grant nothing to a new one) because of a payload this service cannot read.
    A state that grants nothing anyway (canceled, unpaid, ...) needs no price and is kept.
    """
    state = subscription_state(subscription)
    if not state.price_ids and state.status in entitled:
        raise PayloadError(
            f"subscription {state.id} ({state.status}) has {NO_READABLE_ITEMS}; nothing was applied"
        )
    return state


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
            "products": list(state.product_ids),
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

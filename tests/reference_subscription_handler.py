"""An independent statement of what a subscription event does, for tests only.

Production decides every subscription event in one place (webhook/pipeline/subscription_batch.py),
in Python, on rows it read. This module states the same rule the other way round, as the
per-event handler did before the two became one: read each row from the database as it is
needed, let the mirror's upsert judge which state is newer, recompute each affected
customer's plan with accounts.recompute_plan. tests/pipeline/test_subscription_reference.py
applies the same histories both ways and compares every row, so a change to the engine's
rule shows up as a difference from this one.
"""

import contextlib
import json
from collections.abc import Iterator

import psycopg

from webhook.pipeline import handlers
from webhook.pipeline.handlers.base import Context, Outcome, recompute_all
from webhook.pipeline.subscription_batch import SUBSCRIPTION_TYPES
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


@contextlib.contextmanager
def reference_handler() -> Iterator[None]:
    """Apply subscription events with this module's handler while the block runs."""
    saved = {name: handlers.HANDLERS[name] for name in SUBSCRIPTION_TYPES}
    handlers.HANDLERS.update(dict.fromkeys(SUBSCRIPTION_TYPES, handle_subscription))
    try:
        yield
    finally:
        handlers.HANDLERS.update(saved)


def handle_subscription(ctx: Context) -> Outcome:
    state = _state(ctx.event.object, ctx.entitled_statuses)
    accounts.lock_stripe_customer(ctx.conn, state.customer)
    key = subscription_order_key(ctx.event.created, ctx.event.type, state)
    event_id, fetched = ctx.event.id, False
    stored = _stored_key(ctx.conn, state.id) if ctx.stripe_api_key else None
    if stored and is_full_tie(stored[0], key) and stored[1] != event_id and ctx.stripe_api_key:
        current = fetch_subscription(ctx.stripe_api_key, state.id, ctx.stripe_api_base)
        if current is not None:
            state = _state(current, ctx.entitled_statuses)
            event_id, fetched = max(stored[1], event_id), True
    _upsert(ctx.conn, state, key, event_id, fetched)
    affected = set()
    if (customer := metadata_customer_uuid(ctx.event.object)) is not None:
        # A new customer_uuid only at the subscription's creation or when an update changed it.
        changed = (ctx.event.raw["data"].get("previous_attributes") or {}).get("metadata") or {}
        sets = ctx.event.type == "customer.subscription.created" or "customer_uuid" in changed
        affected |= accounts.link(
            ctx.conn, state.customer, customer, ctx.event.id, ctx.event.created,
            restated=not sets,
        )  # fmt: skip
    elif (customer := accounts.linked_customer(ctx.conn, state.customer)) is not None:
        affected.add(customer)
    if not affected:
        return Outcome.processed()
    return recompute_all(ctx, affected)


def _state(subscription, entitled: frozenset[str]) -> SubscriptionState:
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

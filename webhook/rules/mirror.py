"""The subscription mirror: the newest known state of each Stripe subscription.

Two writers share one rule, kept here: applied events (pipeline/subscription_batch.py) and
`sync`, which writes states fetched from Stripe's API. A state replaces the stored one
only if its order key is greater (see ordering.py), with the event id compared byte by
byte (as Python compares strings), whatever the database's collation. The one exception
is a state fetched to settle a full tie, which the caller has already judged newest.
"""

import json
from collections.abc import Sequence
from typing import Any

import psycopg

from webhook.stripe.payloads import SubscriptionState, timestamp

COLUMNS = """id, stripe_customer_id, status, price_ids, product_ids, current_period_end,
   cancel_at_period_end, cancel_at, ended_at, metadata, order_key, event_id, updated_at"""

ON_CONFLICT = """
on conflict (id) do update
  set stripe_customer_id = excluded.stripe_customer_id, status = excluded.status,
      price_ids = excluded.price_ids, product_ids = excluded.product_ids,
      current_period_end = excluded.current_period_end,
      cancel_at_period_end = excluded.cancel_at_period_end,
      cancel_at = excluded.cancel_at, ended_at = excluded.ended_at,
      metadata = excluded.metadata, order_key = excluded.order_key,
      event_id = excluded.event_id, updated_at = now()
"""
NEWER_STATE = """(excluded.order_key, excluded.event_id::text collate "C")
        > (s.order_key, s.event_id::text collate "C")"""

_RECORDS = """
select r.id, r.stripe_customer_id, r.status, r.price_ids, r.product_ids, r.current_period_end,
       r.cancel_at_period_end, r.cancel_at, r.ended_at, r.metadata, r.order_key, r.event_id, now()
  from jsonb_to_recordset(%s::jsonb) as r(
         id text, stripe_customer_id text, status text, price_ids text[], product_ids text[],
         current_period_end timestamptz, cancel_at_period_end boolean, cancel_at timestamptz,
         ended_at timestamptz, metadata jsonb, order_key bigint[], event_id text)
"""

# Many states in one statement, from a JSON array of row objects (see row()).
_UPSERT_MANY = f"""
insert into webhook_private.subscriptions as s ({COLUMNS})
{_RECORDS}
{ON_CONFLICT}
  where {NEWER_STATE}
returning s.id
"""
_REPLACE_MANY = f"""
insert into webhook_private.subscriptions as s ({COLUMNS})
{_RECORDS}
{ON_CONFLICT}
returning s.id
"""

# A dry run collects states in a temporary table of the mirror's shape, and merges them
# into the mirror at its end, inside the transaction it then rolls back.
_STAGING = "pg_temp.staged_subscriptions"
_CREATE_STAGING = """
create temporary table if not exists staged_subscriptions
  (like webhook_private.subscriptions including defaults including indexes) on commit drop
"""
_STAGE = f"insert into {_STAGING} ({COLUMNS}) {_RECORDS} on conflict (id) do nothing"
_MERGE_STAGED = f"""
insert into webhook_private.subscriptions as s ({COLUMNS})
select {COLUMNS} from {_STAGING}
{ON_CONFLICT}
  where {NEWER_STATE}
"""


def row(state: SubscriptionState, order_key: Sequence[int], event_id: str) -> dict[str, Any]:
    """One state as a mirror row for upsert_many."""
    return {
        "id": state.id,
        "stripe_customer_id": state.customer,
        "status": state.status,
        "price_ids": list(state.price_ids),
        "product_ids": list(state.product_ids),
        "current_period_end": _iso(state.current_period_end),
        "cancel_at_period_end": state.cancel_at_period_end,
        "cancel_at": _iso(state.cancel_at),
        "ended_at": _iso(state.ended_at),
        "metadata": dict(state.metadata),
        "order_key": list(order_key),
        "event_id": event_id,
    }


def upsert_many(
    conn: psycopg.Connection, rows: Sequence[dict[str, Any]], *, replace: bool = False
) -> set[str]:
    """Write the states that are newer than what the mirror holds; return their ids.

    With `replace`, every state is written: states fetched from Stripe's API to settle a
    full tie, which tie with the stored one on their key by construction. Rows must have
    distinct ids (one statement cannot update a row twice).
    """
    if not rows:
        return set()
    return {r[0] for r in send_many(conn, rows, replace=replace).fetchall()}


def send_many(
    conn: psycopg.Connection, rows: Sequence[dict[str, Any]], *, replace: bool = False
) -> psycopg.Cursor[Any]:
    """upsert_many without reading its answer: in pipeline mode the statement then travels
    with the ones after it (an error still surfaces, at the transaction's end at the latest)."""
    statement = _REPLACE_MANY if replace else _UPSERT_MANY
    return conn.execute(statement, (json.dumps(list(rows)),))


def stage(conn: psycopg.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Keep states aside for merge_staged (inside one transaction), writing no mirror row."""
    conn.execute(_CREATE_STAGING)
    if rows:
        conn.execute(_STAGE, (json.dumps(list(rows)),))


def merge_staged(conn: psycopg.Connection) -> None:
    """Write the staged states into the mirror by the usual rule (newer key wins)."""
    conn.execute(_CREATE_STAGING)
    conn.execute(_MERGE_STAGED)


def _iso(value: int | None) -> str | None:
    moment = timestamp(value)
    return moment.isoformat() if moment is not None else None

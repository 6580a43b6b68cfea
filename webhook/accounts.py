"""Links between Stripe customers and our customers, and putting the entitled plan in place.

Locking, so two workers or two hosts never interleave work on one customer:
- every event about a Stripe customer first takes a transaction advisory lock on its id;
- recomputing a plan locks the customer row before reading the subscriptions, so the
  second of two concurrent recomputations sees the first one's committed subscriptions.
Rows of two customers (moving a link) are locked in uuid order, so no deadlock.
"""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from webhook.entitlement import Entitlement, PlanPrice, entitled_plan
from webhook.errors import ProjectError


class ApplyError(ProjectError):
    """The event cannot be applied for a data reason (kept as failed, replayable)."""


@dataclass(frozen=True)
class MirroredSubscription:
    """A row of the subscription mirror, as the entitlement rule needs it."""

    id: str
    status: str
    price_ids: tuple[str, ...]


@dataclass(frozen=True)
class PlanUpdate:
    """The result of recomputing one customer's plan."""

    customer: uuid.UUID
    entitlement: Entitlement
    changed: bool
    previous_plan_id: int | None = None


def lock_stripe_customer(conn: psycopg.Connection, stripe_customer_id: str) -> None:
    """Serialise all work on one Stripe customer until the transaction ends."""
    conn.execute(
        "select pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"stripe-customer:{stripe_customer_id}",),
    )


def linked_customer(conn: psycopg.Connection, stripe_customer_id: str) -> uuid.UUID | None:
    """Our customer that owns this Stripe customer, if it is linked."""
    row = conn.execute(
        "select customer_uuid from webhook_private.customer_links where stripe_customer_id = %s",
        (stripe_customer_id,),
    ).fetchone()
    return row[0] if row else None


def link(
    conn: psycopg.Connection, stripe_customer_id: str, customer: uuid.UUID, event_id: str
) -> set[uuid.UUID]:
    """Make `customer` own `stripe_customer_id`; return the customers whose plan may change."""
    previous = linked_customer(conn, stripe_customer_id)
    affected = {customer} | ({previous} if previous else set())
    found = conn.execute(
        "select uuid from public.customer where uuid = any(%s) order by uuid for update",
        (sorted(affected),),
    ).fetchall()
    if customer not in {row[0] for row in found}:
        raise ApplyError(f"no customer with uuid {customer}; the reference in the event is unknown")
    if previous == customer:
        conn.execute(
            "update public.customer set stripe_customer_id = %s"
            " where uuid = %s and stripe_customer_id is null",
            (stripe_customer_id, customer),
        )
        return affected
    conn.execute(
        """
        insert into webhook_private.customer_links (stripe_customer_id, customer_uuid, linked_by_event)
        values (%s, %s, %s)
        on conflict (stripe_customer_id) do update
          set customer_uuid = excluded.customer_uuid, linked_at = now(),
              linked_by_event = excluded.linked_by_event
        """,
        (stripe_customer_id, customer, event_id),
    )
    if previous is not None:
        _show_latest_link(conn, previous)
    conn.execute(
        "update public.customer set stripe_customer_id = %s where uuid = %s"
        " and stripe_customer_id is distinct from %s",
        (stripe_customer_id, customer, stripe_customer_id),
    )
    return affected


def unlink(conn: psycopg.Connection, stripe_customer_id: str) -> uuid.UUID | None:
    """Forget a deleted Stripe customer; return the customer that owned it."""
    row = conn.execute(
        "delete from webhook_private.customer_links where stripe_customer_id = %s"
        " returning customer_uuid",
        (stripe_customer_id,),
    ).fetchone()
    if row is None:
        return None
    conn.execute("select 1 from public.customer where uuid = %s for update", (row[0],))
    _show_latest_link(conn, row[0])
    return row[0]


def _show_latest_link(conn: psycopg.Connection, customer: uuid.UUID) -> None:
    """customer.stripe_customer_id shows the most recently linked Stripe customer, or null."""
    conn.execute(
        """
        update public.customer c
           set stripe_customer_id = (
             select l.stripe_customer_id from webhook_private.customer_links l
              where l.customer_uuid = c.uuid order by l.linked_at desc, l.stripe_customer_id limit 1)
         where c.uuid = %s
        """,
        (customer,),
    )


def recompute_plan(
    conn: psycopg.Connection,
    customer: uuid.UUID,
    entitled_statuses: Iterable[str],
    *,
    write: bool = True,
) -> PlanUpdate:
    """Set the customer's plan to what their linked subscriptions grant.

    Writes only when the plan really changes, so the triggers (resource reset, audit row)
    fire once per change and never for a no-op. Leaves the plan alone when a granting
    subscription's price has no plan (see entitlement.py). With write=False it only says
    what it would do (`changed` then means "would change").
    """
    current = conn.execute(
        "select plan_id from public.customer where uuid = %s for update", (customer,)
    ).fetchone()
    if current is None:
        raise ApplyError(f"no customer with uuid {customer}")
    subscriptions = [
        MirroredSubscription(sub_id, status, tuple(prices))
        for sub_id, status, prices in conn.execute(
            """
            select s.id, s.status, s.price_ids
              from webhook_private.subscriptions s
              join webhook_private.customer_links l on l.stripe_customer_id = s.stripe_customer_id
             where l.customer_uuid = %s
            """,
            (customer,),
        )
    ]
    price_ids = sorted({p for sub in subscriptions for p in sub.price_ids})
    plans = {
        price_id: PlanPrice(plan_id, price)
        for price_id, plan_id, price in conn.execute(
            "select stripe_price_id, id, price from public.plans where stripe_price_id = any(%s)",
            (price_ids,),
        )
    }
    entitlement = entitled_plan(subscriptions, plans, entitled_statuses)
    previous = current[0]
    if not entitlement.decided or entitlement.plan_id == previous:
        return PlanUpdate(customer, entitlement, changed=False, previous_plan_id=previous)
    if write:
        conn.execute(
            "update public.customer set plan_id = %s where uuid = %s",
            (entitlement.plan_id, customer),
        )
    return PlanUpdate(customer, entitlement, changed=True, previous_plan_id=previous)

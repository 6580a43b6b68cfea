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
from datetime import datetime

import psycopg

from webhook.core.errors import ProjectError
from webhook.rules.entitlement import Entitlement, PlanCatalog, entitled_plan
from webhook.stripe.payloads import timestamp


class ApplyError(ProjectError):
    """The event cannot be applied for a data reason (kept as failed, replayable)."""


@dataclass(frozen=True)
class MirroredSubscription:
    """A row of the subscription mirror, as the entitlement rule needs it."""

    id: str
    status: str
    price_ids: tuple[str, ...]
    product_ids: tuple[str | None, ...]


def lock_stripe_customer(conn: psycopg.Connection, stripe_customer_id: str) -> None:
    """Serialise all work on one Stripe customer until the transaction ends."""
    conn.execute(
        "select pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"stripe-customer:{stripe_customer_id}",),
    )


def linked_customer(conn: psycopg.Connection, stripe_customer_id: str) -> uuid.UUID | None:
    """Our customer that owns this Stripe customer; None if unlinked or deleted."""
    row = conn.execute(
        "select customer_uuid from webhook_private.customer_links where stripe_customer_id = %s",
        (stripe_customer_id,),
    ).fetchone()
    return row[0] if row else None


def link(
    conn: psycopg.Connection,
    stripe_customer_id: str,
    customer: uuid.UUID,
    event_id: str,
    event_created: int | datetime,
    *,
    restated: bool = False,
) -> set[uuid.UUID]:
    """Make `customer` own `stripe_customer_id`; return the customers whose plan may change.

    The newest fact (an event by Stripe's `created`, the application's write by the moment
    it was made) decides who owns a Stripe customer, whatever the order they are applied
    in; a Stripe customer unlinked after `event_created` stays unlinked, and a deleted one
    is never linked again. `event_id` names what made the link (an event id, or
    `application`).

    A `restated` fact (metadata an event carries without changing it, or that sync reads;
    migration 018) ranks below every new one: it links a Stripe customer nothing else has
    linked, and replaces only an older restated link, never a link or a release made by a
    new fact, whatever their times. A release concerns the customer it released only: it
    stops their lesser facts, and a link to anyone else replaces it where that link
    outranks the one the release ended (so it ends as if the release had come later).

    Facts of equal standing (the same second, both new or both restated) are settled the
    same way in either order: between two links the greater `event_id` (byte order) wins,
    and a release wins over a link, as it does when it is applied after one.
    """
    existing = conn.execute(
        "select customer_uuid, event_created, deleted_at, restated, released_customer,"
        " coalesce(linked_by_event, ''), released_link_created, released_link_restated,"
        " coalesce(released_link_event, '')"
        " from webhook_private.customer_links where stripe_customer_id = %s for update",
        (stripe_customer_id,),
    ).fetchone()
    created = _moment(event_created)
    fact = _standing(restated, created, event_id)
    if existing is not None and existing[2] is not None:
        return set()  # the Stripe customer was deleted; nothing can link it any more
    if _stopped_by_a_release(conn, stripe_customer_id, customer, fact):
        return {existing[0]} if existing is not None and existing[0] is not None else set()
    # Released from someone else: the release says nothing of this customer, but the link
    # it ended still ranks against this fact, as it would had the release come later
    # (migration 021; a release made before it does not say, and ranks against nothing
    # here). A release made before migration 018 does not say whom it released either,
    # and ranks against every fact.
    replaces = (
        existing is not None
        and existing[0] is None
        and existing[4] is not None
        and existing[4] != customer
    )
    if replaces and (ended := _released_link(existing)) is not None and ended >= fact:
        return set()
    if (
        existing is not None
        and not replaces
        and existing[0] != customer
        and _outranks(existing, fact)
    ):
        # A lesser fact cannot take the link from its owner, or undo a greater release.
        return {existing[0]} if existing[0] is not None else set()
    previous = existing[0] if existing is not None else None
    affected = {customer} | ({previous} if previous else set())
    found = conn.execute(
        "select uuid from public.customer where uuid = any(%s) order by uuid for update",
        (sorted(affected),),
    ).fetchall()
    if customer not in {row[0] for row in found}:
        raise ApplyError(f"no customer with uuid {customer}; the reference in the event is unknown")
    # The link keeps the standing of the greater fact (the owner is the same, or the new
    # fact has just been found to outrank the old one), or takes the new fact's outright
    # when it replaces someone else's release.
    conn.execute(
        f"""
        insert into webhook_private.customer_links as l
          (stripe_customer_id, customer_uuid, event_created, linked_by_event, restated)
        values (%(id)s, %(customer)s, %(created)s, %(event)s, %(restated)s)
        on conflict (stripe_customer_id) do update
          set customer_uuid = excluded.customer_uuid,
              event_created = case when %(replaces)s or {_NEW_FACT_OUTRANKS}
                                   then excluded.event_created else l.event_created end,
              linked_by_event = case when %(replaces)s or {_NEW_FACT_OUTRANKS}
                                     then excluded.linked_by_event else l.linked_by_event end,
              restated = case when %(replaces)s then excluded.restated
                              else l.restated and excluded.restated end,
              released_customer = null, released_link_created = null,
              released_link_restated = null, released_link_event = null,
              linked_at = now()
        """,
        {"id": stripe_customer_id, "customer": customer, "created": created,
         "event": event_id, "restated": restated, "replaces": replaces},
    )  # fmt: skip
    if previous is not None and previous != customer:
        show_latest_link(conn, previous)  # first: stripe_customer_id is unique
    show_latest_link(conn, customer)
    return affected


# The upsert's test of `_outranks` for the owner's own facts: which one the row keeps.
_NEW_FACT_OUTRANKS = """(not excluded.restated, excluded.event_created,
                          coalesce(excluded.linked_by_event, '') collate "C")
                         > (not l.restated, l.event_created,
                            coalesce(l.linked_by_event, '') collate "C")"""


def _standing(restated: bool, moment: datetime, event_id: str) -> tuple[bool, datetime, str]:
    """How a link fact ranks: a new fact above a restated one, then the later, then (a
    tie within one second) the greater event id, so either order settles it alike."""
    return (not restated, moment, event_id)


def _stopped_by_a_release(
    conn: psycopg.Connection, stripe_customer_id: str, customer: uuid.UUID, fact: tuple
) -> bool:
    """Whether the application released `customer` from the Stripe customer as of a
    moment this fact is not newer than (or the fact is restated): such a fact never links
    them again, whoever holds the Stripe customer now (migration 021)."""
    row = conn.execute(
        "select released_at from webhook_private.customer_link_releases"
        " where stripe_customer_id = %s and customer_uuid = %s",
        (stripe_customer_id, customer),
    ).fetchone()
    return row is not None and (True, row[0]) >= fact[:2]


def _released_link(existing: tuple) -> tuple[bool, datetime, str] | None:
    """The standing of the link a release ended (a customer_links row as `link` reads
    it), or None where the row does not say (a release made before migration 021)."""
    created, restated, event_id = existing[6:9]
    return None if created is None else _standing(restated, created, event_id)


def _outranks(existing: tuple, fact: tuple[bool, datetime, str]) -> bool:
    """Whether the stored link or release (a customer_links row as `link` reads it)
    ranks above `fact`. A release ranks above a link of equal time and kind: applied
    after one, it releases it (see `release`), so applied before, it must hold."""
    owner, moment, _, restated, _, event_id = existing[:6]
    if owner is None:
        return (not restated, moment) >= fact[:2]
    return _standing(restated, moment, event_id) > fact


def release(
    conn: psycopg.Connection,
    stripe_customer_id: str,
    customer: uuid.UUID,
    as_of: datetime,
    reason: str,
) -> bool:
    """Unlink `stripe_customer_id` from `customer` as of a moment, if nothing newer linked it.

    Unlike a deletion this is not for good: a new fact later than `as_of` may link it
    again (a restated one may not). A release is a new fact: it undoes any restated link.
    The row keeps the standing of the link it ended, which still ranks against anyone
    else's facts (see `link`), and the release is remembered for this customer apart from
    the row, even where someone else holds the Stripe customer now: their facts up to
    `as_of` never link them to it again. Returns whether the link was released. The
    caller shows the customer's links afterwards.
    """
    conn.execute(
        """
        insert into webhook_private.customer_link_releases as r
          (stripe_customer_id, customer_uuid, released_at)
        values (%s, %s, %s)
        on conflict (stripe_customer_id, customer_uuid)
          do update set released_at = greatest(r.released_at, excluded.released_at)
        """,
        (stripe_customer_id, customer, as_of),
    )
    row = conn.execute(
        """
        update webhook_private.customer_links
           set customer_uuid = null, event_created = %(as_of)s, linked_by_event = %(reason)s,
               restated = false, released_customer = %(customer)s, linked_at = now(),
               released_link_created = event_created, released_link_restated = restated,
               released_link_event = linked_by_event
         where stripe_customer_id = %(id)s and customer_uuid = %(customer)s
           and (restated or event_created <= %(as_of)s)
        returning 1
        """,
        {"id": stripe_customer_id, "customer": customer, "as_of": as_of, "reason": reason},
    ).fetchone()
    return row is not None


def unlink(
    conn: psycopg.Connection, stripe_customer_id: str, event_created: int
) -> uuid.UUID | None:
    """Mark a Stripe customer deleted (for good); return the customer that owned it."""
    previous = linked_customer(conn, stripe_customer_id)
    if previous is not None:
        conn.execute("select 1 from public.customer where uuid = %s for update", (previous,))
    created = timestamp(event_created)
    conn.execute(
        """
        insert into webhook_private.customer_links as l
          (stripe_customer_id, customer_uuid, event_created, deleted_at)
        values (%s, null, %s, %s)
        on conflict (stripe_customer_id) do update
          set customer_uuid = null, deleted_at = excluded.deleted_at,
              event_created = greatest(l.event_created, excluded.event_created)
        """,
        (stripe_customer_id, created, created),
    )
    if previous is not None:
        show_latest_link(conn, previous)
    return previous


def show_latest_link(conn: psycopg.Connection, customer: uuid.UUID) -> None:
    """customer.stripe_customer_id shows its newest live Stripe customer (by event; links
    made by new facts before restated ones, as they rank), or null.

    This write is the service's own, not the application's: `webhook.writing_links` tells
    the column's trigger (migration 007) not to turn it into a link request.
    """
    conn.execute("select set_config('webhook.writing_links', 'on', true)")
    conn.execute(
        """
        update public.customer c
           set stripe_customer_id = latest.id
          from (select (select l.stripe_customer_id from webhook_private.customer_links l
                         where l.customer_uuid = %(c)s
                         order by l.restated, l.event_created desc, l.stripe_customer_id desc
                         limit 1) as id) latest
         where c.uuid = %(c)s and c.stripe_customer_id is distinct from latest.id
        """,
        {"c": customer},
    )


def _moment(value: int | datetime) -> datetime:
    """A Stripe `created` second or an exact moment, as a timestamptz parameter."""
    if isinstance(value, datetime):
        return value
    moment = timestamp(value)
    assert moment is not None
    return moment


Grants = dict[uuid.UUID, list[MirroredSubscription]]

# Every plan a Stripe price or product can name, and the add-ons (rows without a plan id:
# prices and products known to grant nothing); both tables are small, so they are read whole.
CATALOG_QUERY = """
select id, price, stripe_price_id, stripe_plan_id, stripe_product_id from public.plans
 where coalesce(stripe_price_id, stripe_plan_id, stripe_product_id) is not null
union all
select null, null, stripe_price_id, null, stripe_product_id from webhook_private.add_ons
"""


def read_catalog(conn: psycopg.Connection) -> PlanCatalog:
    """The plans that Stripe prices and products map to, and the add-ons."""
    return PlanCatalog.from_plans(conn.execute(CATALOG_QUERY).fetchall())


def read_grants(conn: psycopg.Connection, customers: list[uuid.UUID]) -> Grants:
    """Each customer's mirrored subscriptions, through their live links (one query)."""
    rows = conn.execute(
        """
        select l.customer_uuid, s.id, s.status, s.price_ids, s.product_ids
          from webhook_private.customer_links l
          join webhook_private.subscriptions s on s.stripe_customer_id = l.stripe_customer_id
         where l.customer_uuid = any(%s)
        """,
        (customers,),
    ).fetchall()
    grants: Grants = {}
    for owner, sub_id, status, prices, products in rows:
        grants.setdefault(owner, []).append(
            MirroredSubscription(sub_id, status, tuple(prices), tuple(products))
        )
    return grants


def recompute_plan(
    conn: psycopg.Connection,
    customer: uuid.UUID,
    entitled_statuses: Iterable[str],
) -> Entitlement:
    """Set the customer's plan to what their linked subscriptions grant.

    Writes only when the plan really changes, so the triggers (resource reset, audit row)
    fire once per change and never for a no-op. Leaves the plan alone when a granting
    subscription's price has no plan (see entitlement.py).
    """
    # Two statements, so the read gets a snapshot taken after the row lock is granted; in
    # pipeline mode they still share one round trip.
    locked = conn.execute(
        "select plan_id from public.customer where uuid = %s for update", (customer,)
    )
    catalog = conn.execute(CATALOG_QUERY)
    grants = read_grants(conn, [customer])
    current = locked.fetchone()
    if current is None:
        raise ApplyError(f"no customer with uuid {customer}")
    plans = PlanCatalog.from_plans(catalog.fetchall())
    entitlement = entitled_plan(grants.get(customer, []), plans, entitled_statuses)
    if not entitlement.decided or entitlement.plan_id == current[0]:
        return entitlement
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (entitlement.plan_id, customer)
    )
    return entitlement

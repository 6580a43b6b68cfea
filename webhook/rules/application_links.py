"""Links the application makes by writing `public.customer.stripe_customer_id`.

The column's trigger (migration 007) records each write by the application as a link
request; this module applies them, oldest first, each in its own short transaction:

- writing a Stripe customer id links it to the row, as of the moment of the write, exactly
  like a checkout's client_reference_id would; the id the write replaced, if it was linked
  to this row, is released as of the same moment;
- writing NULL releases every Stripe customer linked to the row: the application says
  this customer has none now;
- then the plans of everyone involved are recomputed through the usual rule and triggers.

"As of the moment" is what orders the application against events: an event created before
the write cannot undo it, a later one (a new checkout, a customer.deleted) can. Requests
are taken with SKIP LOCKED, so several processes can apply them side by side; the locks
are the events' own (advisory per Stripe customer in sorted order, then customer rows).
"""

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from webhook.rules import accounts
from webhook.rules.accounts import ApplyError

log = logging.getLogger(__name__)

# What the links this module makes and releases record as their cause.
LINKED_BY = "application"


@dataclass(frozen=True)
class LinkRequest:
    """One write of the application to customer.stripe_customer_id."""

    id: int
    customer: uuid.UUID
    previous: str | None
    stripe_customer_id: str | None
    requested_at: datetime


def pending_count(conn: psycopg.Connection) -> int:
    """How many requests wait to be applied."""
    row = conn.execute(
        "select count(*) from webhook_private.link_requests where status = 'pending'"
    ).fetchone()
    return row[0] if row else 0


def apply_pending(
    conn: psycopg.Connection,
    entitled_statuses: Iterable[str],
    *,
    limit: int = 1000,
    lock_timeout_ms: int = 5000,
    statement_timeout_ms: int = 15000,
    source: str = LINKED_BY,
    on_change: Callable[[tuple[uuid.UUID, int | None, int | None]], None] = lambda _change: None,
) -> int:
    """Apply up to `limit` pending requests; return how many were settled.

    Audit rows of the plan changes name `source`: the application, or the sync run that
    applied the request.

    `conn` must be in autocommit mode. A request that cannot be applied for a data reason
    is kept as failed with its error and never blocks the ones after it; a lost connection,
    a lock timeout or a statement timeout is raised, and the request stays pending for the
    next attempt.
    """
    statuses = frozenset(entitled_statuses)
    limits = (f"{lock_timeout_ms}ms", f"{statement_timeout_ms}ms")
    settled = 0
    while settled < limit:
        if not _apply_next(conn, statuses, limits, source, on_change):
            break
        settled += 1
    return settled


def _apply_next(
    conn: psycopg.Connection,
    statuses: frozenset[str],
    limits: tuple[str, str],
    source: str,
    on_change: Callable[[tuple[uuid.UUID, int | None, int | None]], None],
) -> bool:
    """Claim and apply the oldest unclaimed request; False when there is none.

    The limits (lock timeout, statement timeout) are set before the claim, in a statement
    of its own: the claim takes the table's lock while it is planned, so a limit set inside
    it would not bound a migration's lock on the requests.
    """
    with conn.transaction():
        conn.execute(
            "select set_config('webhook.source', %s, true), set_config('lock_timeout', %s, true),"
            " set_config('statement_timeout', %s, true)",
            (source, *limits),
        )
        row = conn.execute(
            """
            select id, customer_uuid, previous_stripe_customer_id, stripe_customer_id,
                   requested_at
              from webhook_private.link_requests
             where status = 'pending'
             order by id
             limit 1
               for update skip locked
            """
        ).fetchone()
        if row is None:
            return False
        request = LinkRequest(*row[:5])
        changes: list[tuple[uuid.UUID, int | None, int | None]] = []
        try:
            with conn.transaction():
                changes = apply(conn, request, statuses)
            status, error = "applied", None
        except psycopg.OperationalError:
            raise  # connection lost, lock or statement timeout: the request stays pending
        except (ApplyError, psycopg.Error) as exc:
            status, error = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("link request %s failed: %s", request.id, error)
        conn.execute(
            "update webhook_private.link_requests set status = %s, error = %s, applied_at = now()"
            " where id = %s",
            (status, error, request.id),
        )
    for change in changes:
        on_change(change)
    return True


def apply(
    conn: psycopg.Connection, request: LinkRequest, statuses: frozenset[str]
) -> list[tuple[uuid.UUID, int | None, int | None]]:
    """Apply one request inside the caller's transaction; return the plan changes it made."""
    customer, moment = request.customer, request.requested_at
    if request.stripe_customer_id is None:
        released = _live_links(conn, customer)
    else:
        replaced = request.previous
        released = [replaced] if replaced and replaced != request.stripe_customer_id else []
    involved = sorted({*released, request.stripe_customer_id} - {None})
    for stripe_id in involved:  # sorted, as every other taker of these locks does
        accounts.lock_stripe_customer(conn, stripe_id)
    affected: set[uuid.UUID] = {customer}
    if request.stripe_customer_id is not None:
        affected |= accounts.link(conn, request.stripe_customer_id, customer, LINKED_BY, moment)
    for stripe_id in released:
        accounts.release(conn, stripe_id, customer, moment, LINKED_BY)
    # The row the application wrote first: its value may be what another row would take.
    owners = [customer, *sorted(affected - {customer})]
    for owner in owners:
        accounts.show_latest_link(conn, owner)
    before = _plans(conn, affected)
    for owner in sorted(affected):
        accounts.recompute_plan(conn, owner, statuses)
    after = _plans(conn, affected)
    return [
        (owner, before[owner], after[owner])
        for owner in sorted(affected)
        if before[owner] != after[owner]
    ]


def _plans(conn: psycopg.Connection, customers: set[uuid.UUID]) -> dict[uuid.UUID, int | None]:
    rows = conn.execute(
        "select uuid, plan_id from public.customer where uuid = any(%s)", (sorted(customers),)
    ).fetchall()
    return {**dict.fromkeys(customers), **dict(rows)}


def _live_links(conn: psycopg.Connection, customer: uuid.UUID) -> list[str]:
    rows = conn.execute(
        "select stripe_customer_id from webhook_private.customer_links where customer_uuid = %s"
        " order by 1",
        (customer,),
    ).fetchall()
    return [r[0] for r in rows]

"""Recompute every linked customer's plan from the subscription mirror.

For after the plans change (a plan added for a price that had none, prices re-mapped) or
after ENTITLED_STATUSES changes. Each customer is recomputed in its own short transaction
under the same locks the webhook takes, so it is safe to run while events arrive.
Customers with no Stripe link are left alone: their plan was set by hand.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from webhook import accounts
from webhook.entitlement import entitled_plan

BATCH_SIZE = 1000


@dataclass
class ReconcileReport:
    """What reconcile found (and, unless dry-run, did)."""

    checked: int = 0
    changes: list[tuple[uuid.UUID, int | None, int | None]] = field(default_factory=list)
    undecided: list[tuple[uuid.UUID, tuple[str, ...]]] = field(default_factory=list)


def linked_customers(conn: psycopg.Connection) -> list[uuid.UUID]:
    """Every customer with at least one Stripe customer linked."""
    rows = conn.execute(
        "select distinct customer_uuid from webhook_private.customer_links"
        " where customer_uuid is not null order by 1"
    ).fetchall()
    return [row[0] for row in rows]


def reconcile(
    conn: psycopg.Connection,
    entitled_statuses: Iterable[str],
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    batch_size: int = BATCH_SIZE,
) -> ReconcileReport:
    """Recompute each linked customer's plan; `conn` must be in autocommit mode.

    Customers are taken a batch at a time: lock their rows (in uuid order, as the webhook
    does), read what their subscriptions grant in one query, and write the changed plans
    in one statement. The triggers still fire per changed row.
    """
    statuses = frozenset(entitled_statuses)
    report = ReconcileReport()
    customers = linked_customers(conn)
    for start in range(0, len(customers), batch_size):
        batch = customers[start : start + batch_size]
        with conn.transaction(force_rollback=dry_run):
            _reconcile_batch(conn, batch, statuses, report, write=not dry_run)
        report.checked += len(batch)
        progress(report.checked, len(customers))
    return report


def _reconcile_batch(
    conn: psycopg.Connection,
    batch: list[uuid.UUID],
    statuses: frozenset[str],
    report: ReconcileReport,
    *,
    write: bool,
) -> None:
    # Reconcile can be run again at will: its commits need not wait for the disk.
    conn.execute(
        "select set_config('synchronous_commit', 'off', true), set_config('webhook.source', 'reconcile', true)"
    )
    current = dict(
        conn.execute(
            "select uuid, plan_id from public.customer where uuid = any(%s) order by uuid for update",
            (batch,),
        ).fetchall()
    )
    grants = accounts.read_grants(conn, batch)
    changed: list[tuple[uuid.UUID, int | None]] = []
    for customer in batch:
        if customer not in current:
            continue
        subscriptions, plans = grants.get(customer, ([], {}))
        entitlement = entitled_plan(subscriptions, plans, statuses)
        if not entitlement.decided:
            report.undecided.append((customer, entitlement.unknown_prices))
        elif entitlement.plan_id != current[customer]:
            changed.append((customer, entitlement.plan_id))
            report.changes.append((customer, current[customer], entitlement.plan_id))
    if changed and write:
        conn.execute(
            """
            update public.customer c set plan_id = v.plan_id
              from unnest(%s::uuid[], %s::bigint[]) as v(uuid, plan_id)
             where c.uuid = v.uuid
            """,
            ([c for c, _ in changed], [p for _, p in changed]),
        )

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
) -> ReconcileReport:
    """Recompute each linked customer's plan; `conn` must be in autocommit mode."""
    statuses = frozenset(entitled_statuses)
    report = ReconcileReport()
    customers = linked_customers(conn)
    for index, customer in enumerate(customers, start=1):
        with conn.transaction(force_rollback=dry_run):
            update = accounts.recompute_plan(conn, customer, statuses, write=not dry_run)
        report.checked += 1
        if update.changed:
            report.changes.append((customer, update.previous_plan_id, update.entitlement.plan_id))
        if not update.entitlement.decided:
            report.undecided.append((customer, update.entitlement.unknown_prices))
        progress(index, len(customers))
    return report

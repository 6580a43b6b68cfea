"""Recompute every linked customer's plan from the subscription mirror.

For after the plans change (a plan added for a price that had none, prices re-mapped) or
after ENTITLED_STATUSES changes. Each customer is recomputed in its own short transaction
under the same locks the webhook takes, so it is safe to run while events arrive.
Customers with no Stripe link are left alone: their plan was set by hand.
"""

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psycopg

from webhook.rules import accounts
from webhook.rules.entitlement import entitled_plan

BATCH_SIZE = 1000


Change = tuple[uuid.UUID, int | None, int | None]


@dataclass
class ReconcileReport:
    """What reconcile found (and, unless dry-run, did).

    With `on_change`, each change is handed over as it is found instead of kept, so that a
    run over every customer of a large account holds no list of them.
    """

    checked: int = 0
    changes: list[Change] = field(default_factory=list)
    undecided: list[tuple[uuid.UUID, tuple[str, ...]]] = field(default_factory=list)
    changed: int = 0
    on_change: Callable[[Change], None] | None = None

    def record(self, change: Change) -> None:
        self.changed += 1
        if self.on_change is None:
            self.changes.append(change)
        else:
            self.on_change(change)


def count_linked_customers(conn: psycopg.Connection) -> int:
    """How many customers have at least one Stripe customer linked."""
    row = conn.execute(
        "select count(distinct customer_uuid) from webhook_private.customer_links"
        " where customer_uuid is not null"
    ).fetchone()
    return row[0] if row else 0


def linked_customer_batches(
    conn: psycopg.Connection, batch_size: int = BATCH_SIZE
) -> Iterator[list[uuid.UUID]]:
    """Every linked customer, in uuid order, a batch at a time (keyset paging, so memory
    stays flat however many customers there are)."""
    after: uuid.UUID | None = None
    while True:
        rows = conn.execute(
            "select distinct customer_uuid from webhook_private.customer_links"
            " where customer_uuid is not null and (%s::uuid is null or customer_uuid > %s)"
            " order by 1 limit %s",
            (after, after, batch_size),
        ).fetchall()
        if not rows:
            return
        yield [row[0] for row in rows]
        after = rows[-1][0]


def reconcile(
    conn: psycopg.Connection,
    entitled_statuses: Iterable[str],
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    batch_size: int = BATCH_SIZE,
    source: str = "reconcile",
    report: ReconcileReport | None = None,
) -> ReconcileReport:
    """Recompute each linked customer's plan; `conn` must be in autocommit mode.

    Customers are taken a batch at a time: lock their rows (in uuid order, as the webhook
    does), read what their subscriptions grant in one query, and write the changed plans
    in one statement. The triggers still fire per changed row, and their audit rows name
    `source`. A caller that is already in a transaction gets a savepoint per batch.
    """
    statuses = frozenset(entitled_statuses)
    report = report if report is not None else ReconcileReport()
    total = count_linked_customers(conn)
    for batch in linked_customer_batches(conn, batch_size):
        with conn.transaction(force_rollback=dry_run):
            reconcile_customers(conn, batch, statuses, report, write=not dry_run, source=source)
        report.checked += len(batch)
        progress(report.checked, max(total, report.checked))
    return report


def reconcile_customers(
    conn: psycopg.Connection,
    batch: list[uuid.UUID],
    statuses: frozenset[str],
    report: ReconcileReport,
    *,
    write: bool,
    source: str,
) -> None:
    """Recompute these customers' plans inside the caller's transaction."""
    # Reconcile can be run again at will: its commits need not wait for the disk.
    conn.execute(
        "select set_config('synchronous_commit', 'off', true), set_config('webhook.source', %s, true)",
        (source,),
    )
    current = dict(
        conn.execute(
            "select uuid, plan_id from public.customer where uuid = any(%s) order by uuid for update",
            (batch,),
        ).fetchall()
    )
    grants = accounts.read_grants(conn, batch)
    catalog = accounts.read_catalog(conn)
    changed: list[tuple[uuid.UUID, int | None]] = []
    for customer in batch:
        if customer not in current:
            continue
        entitlement = entitled_plan(grants.get(customer, []), catalog, statuses)
        if not entitlement.decided:
            report.undecided.append((customer, entitlement.unknown_prices))
        elif entitlement.plan_id != current[customer]:
            changed.append((customer, entitlement.plan_id))
            report.record((customer, current[customer], entitlement.plan_id))
    if changed and write:
        conn.execute(
            """
            update public.customer c set plan_id = v.plan_id
              from unnest(%s::uuid[], %s::bigint[]) as v(uuid, plan_id)
             where c.uuid = v.uuid
            """,
            ([c for c, _ in changed], [p for _, p in changed]),
        )

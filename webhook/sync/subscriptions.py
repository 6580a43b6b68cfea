"""`python -m webhook sync`: import every subscription from Stripe's API and repair plans.

For what the webhook never received: events before the service was installed, an outage
longer than Stripe's three days of retries, an endpoint Stripe disabled. Three phases, each
resumable (runs.py):

1. subscriptions: every subscription, `status=all` (without it Stripe hides canceled
   ones, and a missed cancellation could never be repaired), 100 per page, newest first.
   Each page is written in one transaction under the events' locks: the mirror takes each
   state by the usual rule, a fetched state being as of the moment its request was sent
   (ordering.fetched_order_key), so it beats the events created before and loses to those
   created after; `metadata.customer_uuid` links as restated metadata (accounts.link).
2. customers: only if some mirrored subscription's Stripe customer is still unlinked, the
   customers are listed for their `metadata.customer_uuid`, and those links are made.
3. plans: pending application links are applied, then every linked customer's plan is
   recomputed through the same rule and triggers as for an event; audit rows name the run
   (`sync:<id>`), and a customer whose plan is already right gets none.

With dry_run, everything happens in one transaction that is rolled back at the end; the
fetched states wait in a temporary table and reach the mirror only for the last step, so
the events' row locks are held for seconds, not for the whole run.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from webhook.pipeline.reconcile import Change, ReconcileReport, reconcile
from webhook.rules import accounts, application_links, mirror
from webhook.rules.accounts import ApplyError
from webhook.rules.ordering import fetched_order_key
from webhook.stripe.client import Page, StripeAPI, read_ahead
from webhook.stripe.payloads import (
    PayloadError,
    SubscriptionState,
    metadata_customer_uuid,
    subscription_state,
    timestamp,
)
from webhook.sync import runs

SUBSCRIPTIONS, CUSTOMERS, PLANS = "subscriptions", "customers", "plans"

# Mirror columns whose change is a change of what Stripe says (not of bookkeeping).
_CONTENT = (
    "stripe_customer_id, status, price_ids, product_ids, current_period_end,"
    " cancel_at_period_end, cancel_at, ended_at"
)


@dataclass
class SyncReport:
    """What a run read and changed (totals over every resumed part of the run)."""

    run_id: int = 0
    resumed: bool = False
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    plans: ReconcileReport = field(default_factory=ReconcileReport)
    unlinked: int = 0
    unlinked_live: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)


Progress = Callable[[str, int], None]


def sync_subscriptions(
    conn: psycopg.Connection,
    api: StripeAPI,
    entitled_statuses: Iterable[str],
    *,
    dry_run: bool = False,
    restart: bool = False,
    on_change: Callable[[Change], None] | None = None,
    progress: Progress = lambda _phase, _count: None,
    clock: Callable[[], float] = lambda: datetime.now(UTC).timestamp(),
) -> SyncReport:
    """Run (or continue) a full sync; `conn` must be in autocommit mode."""
    statuses = frozenset(entitled_statuses)
    report = SyncReport(dry_run=dry_run, plans=ReconcileReport(on_change=on_change))
    if dry_run:
        run = runs.Run(0, SUBSCRIPTIONS, SUBSCRIPTIONS, None, None)
        with conn.transaction(force_rollback=True):
            _run_phases(conn, api, run, statuses, report, progress, clock, dry_run=True)
        return report
    run = runs.start(conn, SUBSCRIPTIONS, SUBSCRIPTIONS, restart=restart)
    report.run_id, report.resumed = run.id, run.resumed
    try:
        _run_phases(conn, api, run, statuses, report, progress, clock, dry_run=False)
    except BaseException:
        runs.release(conn, run)
        raise
    runs.finish(conn, run)
    return report


def _run_phases(
    conn: psycopg.Connection,
    api: StripeAPI,
    run: runs.Run,
    statuses: frozenset[str],
    report: SyncReport,
    progress: Progress,
    clock: Callable[[], float],
    *,
    dry_run: bool,
) -> None:
    report.counts = run.counts
    if run.phase == SUBSCRIPTIONS:
        started = clock()
        pages = api.list_pages("/v1/subscriptions", [("status", "all")], run.cursor)
        for page in read_ahead(pages):
            with conn.transaction():
                _write_subscriptions(conn, run, page, statuses, dry_run=dry_run)
            progress(SUBSCRIPTIONS, run.counts.get("subscriptions_read", 0))
        report.seconds[SUBSCRIPTIONS] = clock() - started
        if dry_run:
            mirror.merge_staged(conn)
        _advance(conn, run, CUSTOMERS, dry_run)
    if run.phase == CUSTOMERS:
        started = clock()
        if _unlinked(conn)[0]:
            for page in read_ahead(api.list_pages("/v1/customers", [], run.cursor)):
                with conn.transaction():
                    _write_customers(conn, run, page, dry_run=dry_run)
                progress(CUSTOMERS, run.counts.get("customers_read", 0))
        report.seconds[CUSTOMERS] = clock() - started
        _advance(conn, run, PLANS, dry_run)
    if run.phase == PLANS:
        started = clock()
        source = run.source if not dry_run else "sync:dry-run"
        application_links.apply_pending(
            conn, statuses, source=source, on_change=report.plans.record
        )
        reconcile(
            conn,
            statuses,
            dry_run=dry_run,
            source=source,
            report=report.plans,
        )
        report.seconds[PLANS] = clock() - started
    report.unlinked, report.unlinked_live = _unlinked(conn, statuses)


def _advance(conn: psycopg.Connection, run: runs.Run, phase: str, dry_run: bool) -> None:
    if dry_run:
        run.phase, run.cursor = phase, None
    else:
        runs.advance(conn, run, phase)


def _write_subscriptions(
    conn: psycopg.Connection,
    run: runs.Run,
    page: Page,
    statuses: frozenset[str],
    *,
    dry_run: bool,
) -> None:
    """Mirror one page of subscriptions and make the links their metadata names."""
    conn.execute(
        "select set_config('webhook.source', %s, true), set_config('synchronous_commit', 'off', true)",
        (run.source,),
    )
    states: list[SubscriptionState] = []
    unreadable = 0
    for obj in page.data:
        try:
            state = subscription_state(obj)
            for moment in (state.current_period_end, state.cancel_at, state.ended_at):
                timestamp(moment)
        except PayloadError:
            unreadable += 1
            continue
        if not state.price_ids and state.status in statuses:
            unreadable += 1  # as for an event: a granting state that names no price
            continue
        states.append(state)
    fetched = int(page.requested_at)
    for stripe_id in sorted({s.customer for s in states}):
        accounts.lock_stripe_customer(conn, stripe_id)
    differs = _differing(conn, states)
    rows = [mirror.row(s, fetched_order_key(fetched, s), run.source) for s in states]
    if dry_run:
        mirror.stage(conn, rows)
        changed = len(differs)
    else:
        changed = len(differs & mirror.upsert_many(conn, rows))
    links, unknown = _link_by_metadata(conn, states, run.source, fetched)
    run.add(
        subscriptions_read=len(page.data),
        subscriptions_changed=changed,
        subscriptions_unreadable=unreadable,
        links_made=links,
        unknown_references=unknown,
    )
    if page.data:
        run.cursor = page.data[-1].get("id")
    if not dry_run:
        runs.save(conn, run)


def _differing(conn: psycopg.Connection, states: list[SubscriptionState]) -> set[str]:
    """The ids whose fetched state differs from the mirror's (or that it lacks)."""
    stored = {
        row[0]: row[1:]
        for row in conn.execute(
            f"select id, {_CONTENT} from webhook_private.subscriptions where id = any(%s)",
            ([s.id for s in states],),
        ).fetchall()
    }
    differing = set()
    for s in states:
        fetched = (
            s.customer,
            s.status,
            list(s.price_ids),
            list(s.product_ids),
            timestamp(s.current_period_end),
            s.cancel_at_period_end,
            timestamp(s.cancel_at),
            timestamp(s.ended_at),
        )
        if stored.get(s.id) != fetched:
            differing.add(s.id)
    return differing


def _link_by_metadata(
    conn: psycopg.Connection, states: list[SubscriptionState], source: str, fetched: int
) -> tuple[int, int]:
    """Links named by subscriptions' metadata.customer_uuid: (made, naming no customer)."""
    made = unknown = 0
    for state in states:
        customer = _metadata_uuid(state.metadata)
        if customer is None:
            continue
        made, unknown = _link(conn, state.customer, customer, source, fetched, made, unknown)
    return made, unknown


def _write_customers(conn: psycopg.Connection, run: runs.Run, page: Page, *, dry_run: bool) -> None:
    """Link the page's unlinked Stripe customers whose metadata names our customer."""
    named = {
        obj["id"]: customer
        for obj in page.data
        if isinstance(obj.get("id"), str) and (customer := metadata_customer_uuid(obj))
    }
    needed = [
        row[0]
        for row in conn.execute(
            """
            select distinct s.stripe_customer_id from webhook_private.subscriptions s
             where s.stripe_customer_id = any(%s)
               and not exists (select from webhook_private.customer_links l
                                where l.stripe_customer_id = s.stripe_customer_id
                                  and (l.customer_uuid is not null or l.deleted_at is not null))
             order by 1
            """,
            (list(named),),
        ).fetchall()
    ]
    made = unknown = 0
    for stripe_id in needed:
        accounts.lock_stripe_customer(conn, stripe_id)
        made, unknown = _link(
            conn, stripe_id, named[stripe_id], run.source, int(page.requested_at), made, unknown
        )
    run.add(customers_read=len(page.data), links_made=made, unknown_references=unknown)
    if page.data:
        run.cursor = page.data[-1].get("id")
    if not dry_run:
        runs.save(conn, run)


def _link(
    conn: psycopg.Connection,
    stripe_id: str,
    customer: uuid.UUID,
    source: str,
    fetched: int,
    made: int,
    unknown: int,
) -> tuple[int, int]:
    """One metadata link, as of the fetch; a uuid of no customer is counted, not fatal.

    Restated (accounts.link): sync reads the metadata as it is, not when it was set, so it
    links what nothing else has linked but never undoes a link a new fact made.
    """
    try:
        with conn.transaction():
            accounts.lock_stripe_customer(conn, stripe_id)
            accounts.link(conn, stripe_id, customer, source, fetched, restated=True)
            linked = accounts.linked_customer(conn, stripe_id) == customer
    except ApplyError:
        return made, unknown + 1
    return made + linked, unknown  # a link a new fact outranks is not made


def _metadata_uuid(metadata: dict[str, Any] | Any) -> uuid.UUID | None:
    return metadata_customer_uuid({"metadata": metadata})


def _unlinked(conn: psycopg.Connection, statuses: Iterable[str] = ()) -> tuple[int, int]:
    """Mirrored subscriptions whose Stripe customer no live link owns: (all, granting)."""
    row = conn.execute(
        """
        select count(*), count(*) filter (where s.status = any(%s))
          from webhook_private.subscriptions s
         where not exists (select from webhook_private.customer_links l
                            where l.stripe_customer_id = s.stripe_customer_id
                              and l.customer_uuid is not null)
        """,
        (list(statuses),),
    ).fetchone()
    return (row[0], row[1]) if row else (0, 0)

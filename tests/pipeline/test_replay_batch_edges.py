"""Batch replay vs one-by-one replay on targeted inputs (written in a review of subscription_batch).

Each scenario builds the same inbox in two databases (`conn`, `twin`), replays the same ids
with `replay_many` (batch path) in one and `replay_event` one by one in the other, and
compares what was reported and every row the processor owns. The last four found real
divergences in the first version of the batch path; they stay as regression tests.
"""

import json
from collections.abc import Callable, Sequence

import psycopg
from replay_histories import RULES, USERS, add_team_plan, owned_rows, prepare, reported
from stripe_events import MONTH, Delivery, EventFactory

from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.pipeline.replay import replay_event, replay_many
from webhook.stripe.payloads import parse_event

T0 = 1_790_000_000
U1, U2 = USERS[0], USERS[1]
UPDATED = "customer.subscription.updated"
Setup = Callable[[psycopg.Connection], None]


def link(factory: EventFactory, stripe_id: str, owner) -> Delivery:
    return factory.checkout_completed(
        customer=stripe_id, subscription=None, client_reference_id=str(owner), created=T0
    )


def sub(factory: EventFactory, sub_id: str, customer: str, status: str = "active", *,
        prices: Sequence[str] = ("price_pro",), at: int = 1, type_: str = UPDATED,
        period: int = 0, event_id: str | None = None, **kw) -> Delivery:  # fmt: skip
    d = factory.subscription(type_, sub_id=sub_id, customer=customer, status=status,
                             price_ids=list(prices), period_start=T0 + period,
                             created=T0 + at, **kw)  # fmt: skip
    if event_id is not None:
        d.event["id"] = event_id
        d = Delivery.from_event(d.event)
    return d


def apply(db: psycopg.Connection, deliveries: Sequence[Delivery]) -> None:
    for d in deliveries:
        process_delivery(db, parse_event(json.loads(d.body), d.body.decode()), RULES)


def compare(conn, twin, backlog: Sequence[Delivery], *, links: Sequence[Delivery] = (),
            applied: Sequence[Delivery] = (), setup: Setup | None = None,
            rules: ProcessingRules = RULES, ids: Sequence[str] | None = None,
            dry_run: bool = False) -> None:  # fmt: skip
    """Same inbox in both databases; batch in `conn`, one by one in `twin`; compare."""
    for db in (conn, twin):
        prepare(db, [*links, *backlog], backlog=True)
        apply(db, applied)
        if setup is not None:
            setup(db)
    assert owned_rows(conn) == owned_rows(twin)
    ids = list(ids if ids is not None else [d.id for d in backlog])
    batched = replay_many(conn, ids, rules, dry_run=dry_run)
    one_by_one = [replay_event(twin, event_id, rules, dry_run=dry_run) for event_id in ids]
    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)


def test_customer_with_two_stripe_customers(conn, twin, batched_events) -> None:
    f = EventFactory(seed=101)
    links = [link(f, "cus_a", U1), link(f, "cus_b", U1), link(f, "cus_c", U2)]
    backlog = [
        sub(f, "sub_a", "cus_a", prices=["price_basic"], at=1),
        sub(f, "sub_b", "cus_b", prices=["price_enterprise"], at=2),
        sub(f, "sub_c", "cus_c", prices=["price_pro"], at=2),
        sub(f, "sub_b", "cus_b", "canceled", prices=["price_enterprise"], at=3),
        sub(f, "sub_a", "cus_a", "past_due", prices=["price_team"], at=4),
        sub(f, "sub_b", "cus_b", "active", prices=["price_pro"], at=2),  # stale
    ]
    compare(conn, twin, backlog, links=links)
    assert batched_events["events"] == len(backlog)


def test_tombstoned_stripe_customer_then_subscription_events(conn, twin) -> None:
    f = EventFactory(seed=102)
    links = [link(f, "cus_a", U1), link(f, "cus_b", U1)]
    applied = [
        sub(f, "sub_a", "cus_a", prices=["price_enterprise"], at=1),
        sub(f, "sub_b", "cus_b", prices=["price_basic"], at=1),
        f.customer("customer.deleted", customer_id="cus_a", created=T0 + 2),
    ]
    backlog = [
        sub(f, "sub_a", "cus_a", prices=["price_enterprise"], at=3),
        sub(f, "sub_b", "cus_a", prices=["price_pro"], at=4),  # moves onto the tombstone
        sub(f, "sub_b", "cus_b", prices=["price_pro"], at=3),  # stale: stays on cus_a
        sub(f, "sub_x", "cus_b", prices=["price_basic"], at=5),
    ]
    compare(conn, twin, backlog, links=links, applied=applied)


def test_subscription_moving_between_stripe_customers(conn, twin) -> None:
    f = EventFactory(seed=103)
    links = [link(f, "cus_1", U1), link(f, "cus_2", U2), link(f, "cus_3", U1)]
    applied = [sub(f, "sub_1", "cus_1", prices=["price_enterprise"], at=1)]
    backlog = [
        sub(f, "sub_1", "cus_2", prices=["price_enterprise"], at=2),
        sub(f, "sub_9", "cus_1", prices=["price_basic"], at=3),
        sub(f, "sub_1", "cus_3", prices=["price_pro"], at=4),
        sub(f, "sub_1", "cus_unlinked", prices=["price_pro"], at=5),
        sub(f, "sub_9", "cus_3", prices=["price_basic"], at=6),
        sub(f, "sub_1", "cus_2", prices=["price_basic"], at=4),  # stale
        sub(f, "sub_5", "cus_nobody", prices=["price_pro"], at=1),  # never linked
        sub(f, "sub_5", "cus_1", prices=["price_enterprise"], at=3),
        sub(f, "sub_5", "cus_nobody", prices=["price_pro"], at=2),  # stale
    ]
    compare(conn, twin, backlog, links=links, applied=applied)


def test_no_items_empty_prices_and_unknown_statuses(conn, twin) -> None:
    f = EventFactory(seed=104)
    links = [link(f, "cus_1", U1), link(f, "cus_2", U2)]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=1),
        sub(f, "sub_1", "cus_1", prices=[], at=2),
        sub(f, "sub_2", "cus_2", "weird_status", prices=["price_team"], at=1),
        sub(f, "sub_2", "cus_2", "incomplete", prices=["price_team"], at=2),
        sub(f, "sub_1", "cus_1", "trialing", prices=["price_team"], at=3),  # fails: no plan
        sub(f, "sub_2", "cus_2", "unpaid", prices=["price_enterprise"], at=3),
    ]
    compare(conn, twin, backlog, links=links)


def test_entitled_statuses_override(conn, twin) -> None:
    f = EventFactory(seed=105)
    links = [link(f, "cus_1", U1), link(f, "cus_2", U2)]
    rules = ProcessingRules(entitled_statuses=frozenset({"unpaid", "paused", "canceled"}))
    backlog = [
        sub(f, "sub_1", "cus_1", "active", prices=["price_pro"], at=1),
        sub(f, "sub_1", "cus_1", "unpaid", prices=["price_pro"], at=2),
        sub(f, "sub_2", "cus_2", "paused", prices=["price_team"], at=1),
        sub(
            f, "sub_1", "cus_1", prices=["price_basic"], at=3, type_="customer.subscription.deleted"
        ),
        sub(f, "sub_2", "cus_2", "weird", prices=["price_basic"], at=2),
    ]
    compare(conn, twin, backlog, links=links, rules=rules)


def test_identical_created_ties(conn, twin) -> None:
    """Same second: terminal, period, type and status decide, then the event id."""
    f = EventFactory(seed=106)
    links = [link(f, "cus_1", U1)]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_basic"], at=1, event_id="evt_tie_0002"),
        sub(f, "sub_1", "cus_1", prices=["price_enterprise"], at=1, event_id="evt_tie_0001"),
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=1, event_id="evt_tie_0003"),
        sub(f, "sub_1", "cus_1", "trialing", prices=["price_basic"], at=1, period=MONTH),
        sub(f, "sub_1", "cus_1", "active", prices=["price_enterprise"], at=1, period=MONTH,
            type_="customer.subscription.created"),
        sub(f, "sub_1", "cus_1", "canceled", prices=["price_pro"], at=1),
        sub(f, "sub_1", "cus_1", "active", prices=["price_pro"], at=1, period=MONTH),
    ]  # fmt: skip
    compare(conn, twin, backlog, links=links)


def test_runs_split_by_invoices_checkouts_and_deletions(conn, twin, batched_events) -> None:
    f = EventFactory(seed=107)
    links = [link(f, "cus_1", U1)]
    late_link = f.checkout_completed(customer="cus_2", subscription="sub_2",
                                     client_reference_id=str(U1), created=T0 + 3)  # fmt: skip
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_basic"], at=1),
        sub(f, "sub_2", "cus_2", prices=["price_enterprise"], at=2),
        f.invoice("invoice.paid", invoice_id="in_1", customer="cus_1", subscription="sub_1",
                  price_ids=["price_basic"], period_start=T0 + MONTH, period_end=T0 + 2 * MONTH,
                  created=T0 + 3),
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=4),
        f.other("charge.succeeded", created=T0 + 4),
        sub(f, "sub_2", "cus_2", "past_due", prices=["price_enterprise"], at=5),
        f.customer("customer.deleted", customer_id="cus_2", created=T0 + 6),
        sub(f, "sub_2", "cus_2", prices=["price_enterprise"], at=7),
        sub(f, "sub_1", "cus_1", "canceled", prices=["price_pro"], at=8),
    ]  # fmt: skip
    ids = [backlog[0].id, backlog[1].id, late_link.id, *[d.id for d in backlog[2:]]]

    def store_late_link(db: psycopg.Connection) -> None:  # stored, not applied yet
        db.execute("insert into webhook_private.events (id, type, stripe_created, payload,"
                   " status) values (%s, %s, now(), %s, 'failed')",
                   (late_link.id, late_link.type, late_link.body.decode()))  # fmt: skip

    compare(conn, twin, backlog, links=links, ids=ids, setup=store_late_link)
    assert batched_events["events"] >= 5


def test_replayed_events_older_than_the_mirror(conn, twin) -> None:
    f = EventFactory(seed=108)
    links = [link(f, "cus_1", U1), link(f, "cus_2", U2)]
    applied = [
        sub(f, "sub_1", "cus_1", prices=["price_basic"], at=10),
        sub(f, "sub_2", "cus_2", "canceled", prices=["price_pro"], at=10),
    ]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_enterprise"], at=5),
        sub(f, "sub_2", "cus_2", "active", prices=["price_pro"], at=10, period=MONTH),
        sub(
            f, "sub_1", "cus_1", prices=["price_pro"], at=10, type_="customer.subscription.created"
        ),
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=11),
    ]
    compare(conn, twin, backlog, links=links, applied=applied)


def test_equal_price_plans_break_ties_by_lower_id(conn, twin) -> None:
    f = EventFactory(seed=109)
    links = [link(f, "cus_1", U1), link(f, "cus_2", U1)]

    def plans(db: psycopg.Connection) -> None:
        add_team_plan(db)
        db.execute("insert into public.plans (name, price, stripe_price_id) values"
                   " ('Team B', 29.00, 'price_team_b'), ('Team C', 29.00, 'price_team_c')")  # fmt: skip

    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_team_c"], at=1),
        sub(f, "sub_2", "cus_2", prices=["price_team_b", "price_seats"], at=2),
        sub(f, "sub_3", "cus_1", prices=["price_team"], at=3),
        sub(f, "sub_3", "cus_1", "canceled", prices=["price_team"], at=4),
    ]
    compare(conn, twin, backlog, links=links, setup=plans)


def test_dry_run_of_one_batch_sized_run_reports_alike(conn, twin) -> None:
    """Dry runs differ per batch by design, so a single event is compared."""
    f = EventFactory(seed=111)
    backlog = [sub(f, "sub_1", "cus_1", prices=["price_enterprise"], at=1)]
    compare(conn, twin, backlog, links=[link(f, "cus_1", U1)], dry_run=True)


def test_plan_moving_away_and_back_within_a_batch_keeps_used_resources(conn, twin) -> None:
    """Pro -> Enterprise -> Pro in one batch, after the customer used resources.

    One by one, each plan change fires the customer triggers, so remaining_resources is reset
    to Pro's full allowance. A batch that wrote only net changes would write nothing and
    leave the used balance; it writes the move away and back instead (plan_writes).
    """
    f = EventFactory(seed=112)
    links = [link(f, "cus_1", U1)]
    applied = [sub(f, "sub_1", "cus_1", prices=["price_pro"], at=1)]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_enterprise"], at=2),
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=3),
    ]

    def use(db: psycopg.Connection) -> None:
        db.execute(
            "update public.customer set remaining_resources = '{\"api_calls\": 1}' where uuid = %s",
            (U1,),
        )

    compare(conn, twin, backlog, links=links, applied=applied, setup=use)


def test_out_of_range_timestamp_in_a_newer_state(conn, twin) -> None:
    """A subscription whose cancel_at is past year 9999 (10**13).

    One by one, the handler fails that event ("timestamp ... is out of range") and applies
    the others. The batch must not take it in (it once did, and then raised while writing,
    rolling back the whole batch): `_candidate` now checks the timestamps first.
    """
    f = EventFactory(seed=113)
    links = [link(f, "cus_1", U1)]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_basic"], at=1),
        sub(f, "sub_2", "cus_1", prices=["price_pro"], at=2, cancel_at=10**13),
    ]
    compare(conn, twin, backlog, links=links)


def test_out_of_range_timestamp_in_a_stale_state(conn, twin) -> None:
    """The same bad cancel_at on an event older than the mirror row.

    The handler converts the timestamp before the upsert's order check, so the event fails
    one by one, stale or not; a batch that converted only the rows it keeps reported it
    processed.
    """
    f = EventFactory(seed=114)
    links = [link(f, "cus_1", U1)]
    applied = [sub(f, "sub_1", "cus_1", prices=["price_basic"], at=5)]
    backlog = [sub(f, "sub_1", "cus_1", prices=["price_pro"], at=2, cancel_at=10**13)]
    compare(conn, twin, backlog, links=links, applied=applied)


def test_full_tie_under_a_non_c_collation(conn, twin) -> None:
    """Two states of sub_1 that only their event ids tell apart, on a database whose text
    collation is not byte order (en_US.UTF-8 or an ICU locale, as hosted PostgreSQL usually
    has; emulated with ICU "unicode" on the mirror's event_id column, or with citext where
    this build has no ICU).

    Under such a collation "evt_BTie" > "evt_aTie"; by code point (Python) it is the other
    way round. Both paths now compare event ids byte by byte (COLLATE "C" in SQL), so the
    same state wins whatever the database's collation.
    """
    f = EventFactory(seed=115)
    links = [link(f, "cus_1", U1)]
    backlog = [
        sub(f, "sub_1", "cus_1", prices=["price_pro"], at=1, event_id="evt_BTie"),
        sub(f, "sub_1", "cus_1", prices=["price_basic"], at=1, event_id="evt_aTie"),
    ]

    def collate(db: psycopg.Connection) -> None:
        column = "alter table webhook_private.subscriptions alter column event_id type"
        try:
            db.execute("select 'a' < 'B' collate \"unicode\"")
            db.execute(f'{column} text collate "unicode"')  # ICU root collation
        except psycopg.errors.FeatureNotSupported:  # no ICU in this build: case-insensitive
            db.execute("create extension if not exists citext")
            db.execute(f"{column} citext")

    compare(conn, twin, backlog, links=links, setup=collate)

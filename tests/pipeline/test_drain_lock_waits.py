"""The drain and locks held elsewhere: a customer row the application holds, a handler
that waits in vain, a claim filled by one busy customer's events, two drains that would
deadlock. In each case the events concerned stay queued, the rest is applied, and the end
result is the in-order one.

Also two faults found beside them: renewals of a deleted and a linked Stripe customer in
one batch, and applied events reported even when the link requests after them fail. And the
link requests' own waits: a held customer or a stalled statement pauses them (the batches go
on), `until_empty` (`drain --once`) waits for them within its timeout, and a stopped worker
stays stopped.
"""

import logging
import threading
import time
import uuid

import psycopg
import pytest
from stripe_events import MONTH, Delivery, EventFactory

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.core.errors import ProjectError
from webhook.pipeline import drain as drain_module
from webhook.pipeline import drain_worker, inbox
from webhook.pipeline.drain import drain_batch, drain_until_empty, queued
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.stripe.payloads import parse_event

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
FIRST, SECOND = uuid.UUID(int=1), uuid.UUID(int=2)


def prepare(*databases: psycopg.Connection) -> None:
    """The same plans and the two users in each database."""
    for db in databases:
        db.execute(
            "insert into public.plans (name, price, resources, stripe_price_id) values"
            " ('Basic', 9.99, '{\"api_calls\": 1000}', 'price_basic'),"
            " ('Pro', 19.99, '{\"api_calls\": 5000}', 'price_pro')"
        )
        for user in (FIRST, SECOND):
            db.execute(
                "insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex}@x.test")
            )


def state(db: psycopg.Connection) -> dict[str, list[tuple]]:
    """What the events decide: plans, resources, links and the mirror."""
    queries = {
        "customers": "select uuid, plan_id, remaining_resources from public.customer order by uuid",
        "links": "select stripe_customer_id, customer_uuid from webhook_private.customer_links order by 1",
        "mirror": "select id, status, price_ids from webhook_private.subscriptions order by id",
    }
    return {name: db.execute(query).fetchall() for name, query in queries.items()}


def event_of(delivery: Delivery):
    return parse_event(delivery.event, delivery.body.decode())


def apply_in_order(conn: psycopg.Connection, deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        process_delivery(conn, event_of(delivery), RULES)


def statuses(conn: psycopg.Connection, deliveries: list[Delivery]) -> list[str]:
    rows = dict(
        conn.execute(
            "select id, status from webhook_private.events where id = any(%s)",
            ([d.id for d in deliveries],),
        ).fetchall()
    )
    return [rows[d.id] for d in deliveries]


def with_rules(lock_timeout_ms: int) -> ProcessingRules:
    return ProcessingRules(
        entitled_statuses=RULES.entitled_statuses, lock_timeout_ms=lock_timeout_ms
    )


def subscribed(f: EventFactory, user, stripe_customer: str, price: str) -> list[Delivery]:
    return [
        f.checkout_completed(customer=stripe_customer, subscription=None, client_reference_id=str(user)),
        f.subscription("customer.subscription.created", sub_id=f"sub_{stripe_customer}",
                       customer=stripe_customer, status="active", price_ids=[price]),
    ]  # fmt: skip


def two_subscribers(
    conn: psycopg.Connection, twin: psycopg.Connection, f: EventFactory, first: str, second: str
) -> list[Delivery]:
    """FIRST subscribed through Stripe customer `first`, SECOND through `second`, both on
    Basic, applied in `conn` (both databases get the plans and users); the deliveries."""
    prepare(conn, twin)
    setup = subscribed(f, FIRST, first, "price_basic") + subscribed(
        f, SECOND, second, "price_basic"
    )
    apply_in_order(conn, setup)
    return setup


def moved_to_pro(f: EventFactory, stripe_customer: str) -> Delivery:
    """The subscription of `subscribed(f, _, stripe_customer, _)` moved to Pro."""
    return f.subscription("customer.subscription.updated", sub_id=f"sub_{stripe_customer}",
                          customer=stripe_customer, status="active", price_ids=["price_pro"])  # fmt: skip


def test_a_customer_row_held_elsewhere_leaves_its_events_queued_without_waiting(
    db_url, conn, twin
) -> None:
    f = EventFactory()
    setup = two_subscribers(conn, twin, f, "cus_held", "cus_free")
    later = [moved_to_pro(f, "cus_held"), moved_to_pro(f, "cus_free")]
    for delivery in later:
        inbox.receive(conn, event_of(delivery))
    # A lock timeout far longer than the test may take: the drain must not wait at all.
    patient = with_rules(lock_timeout_ms=60_000)
    applied: list[str] = []
    with psycopg.connect(db_url) as app:  # the application, in a transaction of its own
        app.execute("select from public.customer where uuid = %s for update", (FIRST,))
        drain = threading.Thread(
            target=lambda: applied.extend(a.event_id for a in drain_batch(conn, patient))
        )
        drain.start()
        drain.join(timeout=20)
        assert not drain.is_alive(), "the drain waited for the held row"
        assert applied == [later[1].id]
        assert statuses(conn, later) == ["received", "processed"]
    assert [a.event_id for a in drain_batch(conn, patient)] == [later[0].id]
    assert not queued(conn)
    apply_in_order(twin, setup + later)
    assert state(conn) == state(twin)


def test_a_handler_that_waits_in_vain_leaves_its_event_queued_and_the_batch_goes_on(
    db_url, conn, plans, make_user
) -> None:
    # A checkout linking a new Stripe customer: its customer's row is not known before the
    # handler runs, so the handler waits for it, until the lock timeout.
    slow_user, other_user = make_user(), make_user()
    f = EventFactory()
    blocked = f.checkout_completed(customer="cus_slow", subscription=None,
                                   client_reference_id=str(slow_user))  # fmt: skip
    also_blocked = f.customer("customer.updated", customer_id="cus_slow")
    behind = [
        f.checkout_completed(customer=f"cus_{n}", subscription=None,
                             client_reference_id=str(other_user))
        for n in range(3)
    ]  # fmt: skip
    deliveries = [blocked, also_blocked, *behind]
    for delivery in deliveries:
        inbox.receive(conn, event_of(delivery))
    impatient = with_rules(lock_timeout_ms=200)
    with psycopg.connect(db_url) as app:
        app.execute("select from public.customer where uuid = %s for update", (slow_user,))
        applied = drain_batch(conn, impatient)
        # Its Stripe customer's other event stays queued with it, without a second wait.
        assert sorted(a.event_id for a in applied) == sorted(d.id for d in behind)
        assert statuses(conn, deliveries) == ["received", "received"] + ["processed"] * 3
    assert drain_until_empty(conn, impatient) == 2
    assert statuses(conn, deliveries) == ["processed", "ignored"] + ["processed"] * 3
    assert conn.execute(
        "select customer_uuid from webhook_private.customer_links"
        " where stripe_customer_id = 'cus_slow'"
    ).fetchone() == (slow_user,)


def test_a_full_claim_of_busy_customers_does_not_hide_the_events_behind_it(
    db_url, conn, factory
) -> None:
    busy = [factory.customer("customer.updated", customer_id="cus_busy") for _ in range(4)]
    free = factory.customer("customer.updated", customer_id="cus_free")
    for delivery in [*busy, free]:
        inbox.receive(conn, event_of(delivery))
    with psycopg.connect(db_url) as holder:
        holder.execute(
            "select pg_advisory_xact_lock(hashtextextended('stripe-customer:cus_busy', 0))"
        )
        # The queue's head is a whole batch (and more) of the busy customer's events.
        applied = drain_batch(conn, RULES, limit=2)
        assert [a.event_id for a in applied] == [free.id]
        assert statuses(conn, busy) == ["received"] * 4
    assert drain_until_empty(conn, RULES, limit=2) == 4
    assert statuses(conn, busy) == ["ignored"] * 4


def test_two_drains_that_would_deadlock_leave_one_event_queued_instead(
    db_url, conn, twin, monkeypatch
) -> None:
    # Two customers, each with a Stripe customer; each drain holds one customer's row for a
    # subscription event, then links a new Stripe customer to the other customer.
    f = EventFactory()
    setup = two_subscribers(conn, twin, f, "cus_a", "cus_b")
    by_a = [
        moved_to_pro(f, "cus_b"),
        f.customer("customer.updated", customer_id="cus_c", metadata={"customer_uuid": str(FIRST)}),
    ]  # fmt: skip
    by_b = [
        moved_to_pro(f, "cus_a"),
        f.customer("customer.updated", customer_id="cus_d", metadata={"customer_uuid": str(SECOND)}),
    ]  # fmt: skip
    for delivery in by_a + by_b:
        inbox.receive(conn, event_of(delivery))
    # Both drains reach their one-by-one events holding their subscription event's row.
    barrier = threading.Barrier(2, timeout=10)
    real_apply_one = drain_module._apply_one
    arrived: set[int] = set()

    def apply_one_together(c, event, rules):
        if threading.get_ident() not in arrived:
            arrived.add(threading.get_ident())
            barrier.wait()
        return real_apply_one(c, event, rules)

    monkeypatch.setattr(drain_module, "_apply_one", apply_one_together)
    outcomes: dict[str, object] = {}

    def run(name: str, deliveries: list[Delivery]) -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            try:
                outcomes[name] = len(drain_batch(own, RULES, only=[d.id for d in deliveries]))
            except psycopg.Error as exc:
                outcomes[name] = type(exc).__name__

    drains = [
        threading.Thread(target=run, args=("a", by_a)),
        threading.Thread(target=run, args=("b", by_b)),
    ]
    for drain in drains:
        drain.start()
    for drain in drains:
        drain.join(30)
    # One of them was chosen to break the deadlock: that event alone stayed queued.
    assert sorted(outcomes.values()) == [1, 2], outcomes
    monkeypatch.setattr(drain_module, "_apply_one", real_apply_one)
    assert drain_until_empty(conn, RULES) == 1
    apply_in_order(twin, setup + by_a + by_b)
    assert state(conn) == state(twin)


def test_renewals_of_a_deleted_and_a_linked_stripe_customer_in_one_batch(
    conn, plans, make_user, caplog
) -> None:
    user = make_user()
    f = EventFactory()
    start = f.clock
    apply_in_order(conn, [
        *subscribed(f, user, "cus_a", "price_pro"),
        f.customer("customer.deleted", customer_id="cus_b"),  # its link stays, with no owner
    ])  # fmt: skip
    renewals = [
        f.invoice("invoice.paid", invoice_id=f"in_{c}", customer=c, subscription=f"sub_{c}",
                  price_ids=["price_pro"], period_start=start + MONTH,
                  period_end=start + 2 * MONTH, created=start + MONTH)
        for c in ("cus_a", "cus_b")
    ]  # fmt: skip
    for delivery in renewals:
        inbox.receive(conn, event_of(delivery))
    with caplog.at_level(logging.ERROR, logger="webhook.pipeline.drain"):
        applied = {a.event_id: a.outcome.status for a in drain_batch(conn, RULES)}
    assert applied == {renewals[0].id: "processed", renewals[1].id: "ignored"}
    assert "renewal batch failed" not in caplog.text


def test_a_link_request_that_waits_for_a_lock_pauses_link_requests_not_the_drain(
    db_url, conn, plans, make_user, factory, monkeypatch
) -> None:
    monkeypatch.setattr(drain_worker, "LINK_REQUESTS_PAUSE_SECONDS", 1.0)
    user = make_user()
    # The application names a Stripe customer: a link request the drain settles after its batch.
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_app' where uuid = %s", (user,)
    )
    first, second = (factory.other("charge.succeeded") for _ in range(2))
    inbox.receive(conn, event_of(first))
    reported: list[str] = []
    # A lock timeout far longer than the test: the link request must not wait for it.
    worker = DrainWorker(db_url, with_rules(lock_timeout_ms=60_000),
                         on_applied=lambda a: reported.extend(e.event_id for e in a))  # fmt: skip

    def cycle_within(seconds: float) -> None:
        cycling = threading.Thread(target=worker.cycle)
        cycling.start()
        cycling.join(timeout=seconds)
        assert not cycling.is_alive(), "the drain waited for the link request's lock"

    pending = "select status from webhook_private.link_requests order by id"
    try:
        with psycopg.connect(db_url) as holder:
            holder.execute(
                "select pg_advisory_xact_lock(hashtextextended('stripe-customer:cus_app', 0))"
            )
            cycle_within(20)
            assert reported == [first.id]  # the batch was applied and reported ...
            assert conn.execute(pending).fetchall() == [("pending",)]  # ... the request waits
            inbox.receive(conn, event_of(second))
            cycle_within(20)  # link requests rest: no second wait
            assert reported == [first.id, second.id]
        time.sleep(1.2)  # the rest is over, and the lock released
        worker.cycle()
        assert conn.execute(pending).fetchall() == [("applied",)]
    finally:
        worker.stop()


def test_events_a_cycle_applied_are_reported_even_if_its_link_requests_fail(
    db_url, conn, factory, monkeypatch
) -> None:
    delivery = factory.other("charge.succeeded")
    inbox.receive(conn, event_of(delivery))

    def connection_lost(*_args: object, **_kwargs: object) -> int:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(drain_worker.application_links, "apply_pending", connection_lost)
    reported: list[str] = []
    worker = DrainWorker(db_url, RULES, on_applied=lambda a: reported.extend(e.event_id for e in a))
    try:
        with pytest.raises(psycopg.OperationalError):
            worker.cycle()
    finally:
        worker.stop()
    assert not queued(conn)  # the batch committed ...
    assert reported == [delivery.id]  # ... and was logged and counted


def test_a_link_request_whose_statement_stalls_pauses_link_requests_not_the_drain(
    db_url, conn, plans, make_user, factory, monkeypatch
) -> None:
    """A settling request's statement that runs on (a slow trigger of the application's,
    a stalled disk) is cancelled at LINK_REQUEST_STATEMENT_TIMEOUT_MS, not at the rules'
    statement timeout: the request stays pending, link requests rest, batches go on."""
    monkeypatch.setattr(drain_worker, "LINK_REQUEST_STATEMENT_TIMEOUT_MS", 300)
    monkeypatch.setattr(drain_worker, "LINK_REQUESTS_PAUSE_SECONDS", 1.0)
    user = make_user()
    conn.execute(
        "create function public.slow_link() returns trigger language plpgsql"
        " as $$ begin perform pg_sleep(30); return new; end $$"
    )
    conn.execute(
        "create trigger slow_link before insert on webhook_private.customer_links"
        " for each row execute function public.slow_link()"
    )
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_app' where uuid = %s", (user,)
    )
    delivery = factory.other("charge.succeeded")
    inbox.receive(conn, event_of(delivery))
    reported: list[str] = []
    worker = DrainWorker(db_url, RULES, on_applied=lambda a: reported.extend(e.event_id for e in a))
    pending = "select status from webhook_private.link_requests order by id"
    try:
        started = time.monotonic()
        worker.cycle()
        assert time.monotonic() - started < 10  # not the rules' 15 s, nor the trigger's 30
        assert reported == [delivery.id]
        assert conn.execute(pending).fetchall() == [("pending",)]
        conn.execute("drop trigger slow_link on webhook_private.customer_links")
        time.sleep(1.2)  # the rest is over
        worker.cycle()
        assert conn.execute(pending).fetchall() == [("applied",)]
    finally:
        worker.stop()


def test_until_empty_waits_for_a_held_link_request_and_says_so_if_it_stays_held(
    db_url, conn, plans, make_user, monkeypatch
) -> None:
    """`drain --once` (until_empty) does not return while a link request is pending because
    its customer is locked: it tries again until its timeout, then says what waits."""
    monkeypatch.setattr(drain_worker, "LINK_REQUESTS_PAUSE_SECONDS", 0.2)
    user = make_user()
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_app' where uuid = %s", (user,)
    )
    worker = DrainWorker(db_url, with_rules(lock_timeout_ms=60_000))
    pending = "select status from webhook_private.link_requests order by id"
    try:
        with psycopg.connect(db_url) as holder:
            holder.execute(
                "select pg_advisory_xact_lock(hashtextextended('stripe-customer:cus_app', 0))"
            )
            with pytest.raises(ProjectError, match="link requests still wait after 2s"):
                worker.until_empty(timeout=2)
            assert conn.execute(pending).fetchall() == [("pending",)]
            releaser = threading.Timer(0.5, holder.rollback)
            releaser.start()
            assert worker.until_empty(timeout=20) == 0  # returns once the request is applied
            releaser.join()
        assert conn.execute(pending).fetchall() == [("applied",)]
    finally:
        worker.stop()


def test_a_stopped_worker_stays_stopped(db_url, conn, factory) -> None:
    """A delivery stored while a web worker shuts down calls start() after stop(): the
    drain must not come back for a process that is about to exit mid-batch."""
    worker = DrainWorker(db_url, RULES)
    worker.start()
    assert worker.running
    worker.stop()
    worker.start()
    assert not worker.running
    inbox.receive(conn, event_of(factory.other("charge.succeeded")))
    worker.wake()
    time.sleep(0.5)
    assert queued(conn)  # nobody drained it

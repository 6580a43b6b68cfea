"""The drain: stored events applied in batches, with the result of in-order application.

Events are stored as the queued endpoint stores them (inbox.receive), in a shuffled order,
and applied by drain_batch; a twin database gets the same events applied one by one, in
Stripe's order, inline. Every row the processor owns must be equal.
"""

import random
import threading
import time
from collections import Counter

import psycopg
import pytest
from click.testing import CliRunner
from databases import refuse_writes
from replay_histories import USERS, owned_rows
from stripe_events import MONTH, Delivery, EventFactory

from webhook.cli import cli
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.core.errors import SchemaBehind
from webhook.pipeline import handlers, inbox
from webhook.pipeline.drain import drain_batch, drain_until_empty, queued
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.stripe.payloads import parse_event

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
PLANS = """
insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)
values ('Basic', 9.99, '{"api_calls": 1000}', 'price_basic', null),
       ('Pro', 19.99, '{"api_calls": 5000}', 'price_pro', 'prod_pro'),
       ('Enterprise', 49.99, '{"api_calls": 20000}', 'price_enterprise', null)
"""


def setup(conn: psycopg.Connection) -> None:
    conn.execute(PLANS)
    for user in USERS:
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex}@x.test")
        )


def receive(conn: psycopg.Connection, deliveries: list[Delivery]) -> None:
    for delivery in deliveries:
        inbox.receive(conn, parse_event(delivery.event, delivery.body.decode()))


def in_order(conn: psycopg.Connection, deliveries: list[Delivery]) -> None:
    for delivery in sorted(deliveries, key=lambda d: (d.event["created"], d.id)):
        process_delivery(conn, parse_event(delivery.event, delivery.body.decode()), RULES)


PRICES = ["price_basic", "price_pro", "price_pro_yearly", "price_enterprise"]
STATUSES = ["active", "active", "trialing", "past_due", "unpaid", "canceled", "incomplete"]


def mixed_history(seed: int) -> list[Delivery]:
    """Sign-ups, subscription changes with ties, renewals (both invoice events), customer
    updates and ignored types, for four users; every price maps to a plan, so the final
    plans depend only on the final mirror, whatever the order."""
    rng = random.Random(seed)
    f = EventFactory(seed=seed)
    f.known_price("price_pro_yearly", product="prod_pro")
    start = f.clock
    deliveries = [
        f.checkout_completed(customer=f"cus_{n}", subscription=None,
                             client_reference_id=str(user), created=start)
        for n, user in enumerate(USERS)
    ]  # fmt: skip
    for _ in range(60):
        n = rng.randrange(len(USERS))
        created = start + rng.randint(1, 15)
        roll = rng.random()
        if roll < 0.1:
            deliveries.append(f.other("charge.succeeded", created=created))
        elif roll < 0.15:
            deliveries.append(
                f.customer("customer.updated", customer_id=f"cus_{n}", created=created)
            )
        elif roll < 0.25:
            invoice = f.new_id("in_")
            for kind in ("invoice.paid", "invoice.payment_succeeded"):
                deliveries.append(
                    f.invoice(kind, invoice_id=invoice, customer=f"cus_{n}", subscription=f"sub_{n}",
                              price_ids=["price_pro"], period_start=created + MONTH,
                              period_end=created + 2 * MONTH, created=created)
                )  # fmt: skip
        else:
            deliveries.append(
                f.subscription(rng.choice(["customer.subscription.updated",
                                           "customer.subscription.created"]),
                               sub_id=f"sub_{n}_{rng.randrange(2)}", customer=f"cus_{n}",
                               status=rng.choice(STATUSES), price_ids=[rng.choice(PRICES)],
                               period_start=start, created=created)
            )  # fmt: skip
    return deliveries


def order_free(conn: psycopg.Connection) -> dict[str, list]:
    """What must not depend on the order: plans, links, the mirror, each event settled once."""
    rows = owned_rows(conn)
    return {
        "plans": [(uuid, plan, stripe_id) for uuid, plan, stripe_id, *_ in rows["customers"]],
        # Which of two checkouts of one second is named as the link's cause is not fixed.
        "links": [
            (stripe_id, owner, when, deleted)
            for stripe_id, owner, when, _, deleted in rows["links"]
        ],
        "subscriptions": rows["subscriptions"],
        "inbox": [(event_id, status != "received", n) for event_id, status, _, n in rows["inbox"]],
    }


@pytest.mark.parametrize("seed", range(6))
def test_draining_in_any_storage_order_ends_where_in_order_delivery_ends(conn, twin, seed):
    deliveries = mixed_history(seed)
    setup(conn)
    setup(twin)
    in_order(twin, deliveries)
    shuffled = deliveries[:]
    random.Random(seed).shuffle(shuffled)
    receive(conn, shuffled + shuffled[:5])  # some redelivered before they were applied
    applied = drain_until_empty(conn, RULES, limit=17)  # small batches: several of them
    assert applied == len(deliveries) and not queued(conn)
    assert order_free(conn) == order_free(twin)
    attempts = conn.execute(
        "select count(*), count(distinct event_id), bool_and(trigger = 'delivery')"
        " from webhook_private.event_attempts"
    ).fetchone()
    assert attempts == (len(deliveries), len(deliveries), True)
    resets = conn.execute("select count(*) from webhook_private.resource_resets").fetchone()
    assert resets[0] > 0  # renewals were applied too


def test_a_write_the_database_refuses_fails_that_event_only(conn, plans, make_user) -> None:
    users = [make_user() for _ in range(3)]
    f = EventFactory()
    deliveries = [
        f.checkout_completed(customer=f"cus_{n}", subscription=None, client_reference_id=str(u))
        for n, u in enumerate(users)
    ] + [
        f.subscription("customer.subscription.created", sub_id=f"sub_{n}", customer=f"cus_{n}",
                       status="active", price_ids=["price_pro"])
        for n in range(3)
    ]  # fmt: skip
    refuse_writes(
        conn, "webhook_private.subscriptions", "new.id = 'sub_1'", "sub_1 refused by the test"
    )
    receive(conn, deliveries)
    drain_until_empty(conn, RULES)
    statuses = dict(
        conn.execute("select object_id, status from webhook_private.events"
                     " where type like 'customer.subscription.%'").fetchall()
    )  # fmt: skip
    assert statuses == {"sub_0": "processed", "sub_1": "failed", "sub_2": "processed"}
    error = conn.execute(
        "select error from webhook_private.events where object_id = 'sub_1'"
    ).fetchone()[0]
    assert "sub_1 refused by the test" in error
    plans_now = [
        conn.execute("select plan_id from public.customer where uuid = %s", (u,)).fetchone()[0]
        for u in users
    ]
    assert plans_now == [plans["Pro"], None, plans["Pro"]]


def test_a_handler_that_raises_fails_its_event_and_the_batch_goes_on(
    conn, plans, make_user, monkeypatch
) -> None:
    user = make_user()
    f = EventFactory()
    poison = f.customer("customer.updated", customer_id="cus_poison")
    good = [
        f.checkout_completed(customer="cus_1", subscription=None, client_reference_id=str(user)),
        f.subscription("customer.subscription.created", sub_id="sub_1", customer="cus_1",
                       status="active", price_ids=["price_pro"]),
        f.other("charge.succeeded"),
    ]  # fmt: skip
    real = handlers.HANDLERS["customer.updated"]

    def buggy(ctx):
        if ctx.event.id == poison.id:
            raise RuntimeError("a bug in a handler")
        return real(ctx)

    monkeypatch.setitem(handlers.HANDLERS, "customer.updated", buggy)
    receive(conn, [good[0], poison, *good[1:]])
    assert len(drain_batch(conn, RULES)) == 4
    rows = dict(conn.execute("select id, status from webhook_private.events").fetchall())
    assert rows == {
        good[0].id: "processed",
        poison.id: "failed",
        good[1].id: "processed",
        good[2].id: "ignored",
    }
    assert conn.execute(
        "select error from webhook_private.events where id = %s", (poison.id,)
    ).fetchone() == ("internal error while applying the event (RuntimeError)",)


def test_a_busy_stripe_customer_waits_in_the_queue_while_the_rest_is_applied(
    db_url, conn, plans, make_user
) -> None:
    busy_user, free_user = make_user(), make_user()
    f = EventFactory()
    busy = f.checkout_completed(customer="cus_busy", subscription=None,
                                client_reference_id=str(busy_user))  # fmt: skip
    free = f.checkout_completed(customer="cus_free", subscription=None,
                                client_reference_id=str(free_user))  # fmt: skip
    receive(conn, [busy, free])
    with psycopg.connect(db_url) as holder:
        holder.execute(
            "select pg_advisory_xact_lock(hashtextextended('stripe-customer:cus_busy', 0))"
        )
        applied = drain_batch(conn, RULES)
        assert [a.event_id for a in applied] == [free.id]
        assert queued(conn)
    assert [a.event_id for a in drain_batch(conn, RULES)] == [busy.id]


def test_redeliveries_never_wait_for_a_batch_in_progress(db_url, conn, factory) -> None:
    delivery = factory.other("charge.succeeded")
    event = parse_event(delivery.event, delivery.body.decode())
    inbox.receive(conn, event)
    with psycopg.connect(db_url) as drain:  # a drain in the middle of this event's batch
        drain.execute(
            "select 1 from webhook_private.events where id = %s for no key update", (event.id,)
        )
        stored = inbox.receive(conn, event)  # answers although the row stays locked
        assert (stored.status, stored.new) == ("received", False)
        fresh = factory.other("charge.succeeded")
        assert inbox.receive(conn, parse_event(fresh.event, fresh.body.decode())).new


def test_a_redelivered_failed_event_is_queued_again(conn, plans, user, factory) -> None:
    unknown = factory.checkout_completed(
        customer="cus_1",
        subscription=None,
        client_reference_id="00000000-0000-4000-8000-000000000bad",
    )
    event = parse_event(unknown.event, unknown.body.decode())
    inbox.receive(conn, event)
    drain_until_empty(conn, RULES)
    assert conn.execute("select status from webhook_private.events").fetchone() == ("failed",)
    assert inbox.receive(conn, event).status == "received"
    assert queued(conn)


def test_two_drains_share_the_queue_and_apply_each_event_once(db_url, conn, twin) -> None:
    deliveries = [d for seed in range(4) for d in mixed_history(seed)]
    deliveries = list({d.id: d for d in deliveries}.values())
    setup(conn)
    setup(twin)
    in_order(twin, deliveries)
    receive(conn, deliveries)
    counts: list[int] = []

    def drain() -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            counts.append(drain_until_empty(own, RULES, limit=25))

    threads = [threading.Thread(target=drain) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(counts) == len(deliveries)
    attempts = Counter(
        row[0] for row in conn.execute("select event_id from webhook_private.event_attempts")
    )
    assert set(attempts.values()) == {1} and len(attempts) == len(deliveries)
    assert order_free(conn) == order_free(twin)


def test_the_worker_stops_after_the_batch_in_hand(db_url, conn, factory) -> None:
    deliveries = [factory.other("charge.succeeded") for _ in range(50)]
    receive(conn, deliveries)
    worker = DrainWorker(db_url, RULES, batch_size=10)
    worker.start()
    worker.wake()
    worker.stop()
    settled = conn.execute(
        "select count(*) from webhook_private.events where status = 'ignored'"
    ).fetchone()[0]
    assert settled % 10 == 0  # whole batches only: none was left half-applied
    assert (
        conn.execute("select count(*) from webhook_private.event_attempts").fetchone()[0] == settled
    )


def stored_with_another_payload(conn: psycopg.Connection, delivery: Delivery) -> None:
    """Store the delivery, then change its stored payload's type to one without a handler: a
    drain that decodes the stored payload ignores it; one that uses the parsed delivery
    applies it."""
    receive(conn, [delivery])
    conn.execute(
        "update webhook_private.events"
        " set payload = jsonb_set(payload::jsonb, '{type}', '\"charge.succeeded\"')::json"
        " where id = %s",
        (delivery.id,),
    )


def test_the_worker_applies_what_its_process_parsed_without_decoding_it_again(
    db_url, conn, factory
) -> None:
    setup(conn)
    user = USERS[0]
    checkout = factory.checkout_completed(
        customer="cus_known", subscription=None, client_reference_id=str(user)
    )
    stored_with_another_payload(conn, checkout)
    worker = DrainWorker(db_url, RULES)
    try:
        worker.wake(parse_event(checkout.event, checkout.body.decode()))  # as the request does
        assert worker.until_empty() == 1
    finally:
        worker.stop()
    # The parsed checkout was applied (it linked the user), not the stored charge.
    assert conn.execute(
        "select outcome from webhook_private.event_attempts where event_id = %s", (checkout.id,)
    ).fetchone() == ("processed",)
    assert conn.execute(
        "select customer_uuid from webhook_private.customer_links where stripe_customer_id = %s",
        ("cus_known",),
    ).fetchone() == (user,)
    assert worker._known == {}  # forgotten once applied


def test_parsed_events_are_kept_briefly_and_boundedly(db_url, conn, factory, monkeypatch) -> None:
    """Another process's drain may take an event this process parsed: its entry expires
    (KNOWN_EVENTS_SECONDS), and no more than KNOWN_EVENTS_LIMIT are ever kept."""
    from webhook.pipeline import drain_worker

    monkeypatch.setattr(drain_worker, "KNOWN_EVENTS_LIMIT", 3)
    monkeypatch.setattr(drain_worker, "KNOWN_EVENTS_SECONDS", 0.05)
    worker = DrainWorker(db_url, RULES)
    try:
        parsed = [
            parse_event(d.event, d.body.decode())
            for d in (factory.other("charge.succeeded") for _ in range(5))
        ]
        for event in parsed:
            worker.wake(event)
        assert list(worker._known) == [e.id for e in parsed[:3]]
        # None of them is stored (another drain took them, say); they expire.
        threading.Event().wait(0.1)
        assert worker.until_empty() == 0
        assert worker._known == {} and worker._known_since == {}
    finally:
        worker.stop()


def test_doctor_warns_when_the_queue_lags(db_url, conn, factory) -> None:
    def doctor() -> str:
        result = CliRunner().invoke(
            cli, ["--database-url", db_url, "doctor"], env={"STRIPE_WEBHOOK_SECRET": "whsec_x"}
        )
        return result.output

    receive(conn, [factory.other("charge.succeeded")])
    assert "ok   queue: 1 event(s) waiting" in doctor()
    conn.execute("update webhook_private.events set received_at = now() - interval '10 minutes'")
    output = doctor()
    assert "FIX  queue: 1 event(s) waiting, the oldest for 600s" in output
    assert "drain" in output


def test_doctor_names_a_session_that_holds_customers_behind_a_lagging_queue(
    db_url, conn, factory, make_user, monkeypatch
) -> None:
    """The drains pass over customers another transaction holds: when the queue lags
    because of such a session, doctor names it instead of blaming the drains."""
    from webhook.cli import inspect_commands

    monkeypatch.setattr(inspect_commands, "LAG_WARNING_SECONDS", 1)
    user = make_user()
    receive(conn, [factory.other("charge.succeeded")])
    conn.execute("update webhook_private.events set received_at = now() - interval '10 minutes'")
    with (
        psycopg.connect(db_url, application_name="billing-admin") as holder,
        psycopg.connect(db_url, application_name="pg_dump") as reader,
    ):
        pid = holder.info.backend_pid
        holder.execute("select 1 from public.customer where uuid = %s for update", (user,))
        reader.execute("select count(*) from public.customer")  # holds no row: not named
        time.sleep(1.5)
        doctor = ["--database-url", db_url, "doctor"]
        output = CliRunner().invoke(cli, doctor, env={"STRIPE_WEBHOOK_SECRET": "whsec_x"}).output
    line = next(line for line in output.splitlines() if "queue:" in line)
    assert line.startswith("FIX  queue: 1 event(s) waiting")
    assert f"session {pid} (billing-admin, idle in transaction)" in line
    assert "pg_dump" not in line and line.count("session ") == 1
    assert "pg_terminate_backend" in output
    assert "the drains are behind or not running" in output  # the other cause stays named


def wait_until_drained(conn: psycopg.Connection, worker: DrainWorker) -> None:
    """Wake the worker until the queue is empty (at most 30 s)."""
    deadline = time.monotonic() + 30
    while queued(conn) and time.monotonic() < deadline:
        worker.wake()
        time.sleep(0.05)
    assert not queued(conn)


def test_a_drain_waits_while_migrations_are_pending(conn, db_url, caplog) -> None:
    """Code started before its migrations ran (no release step) applies nothing until they
    have: the drain retries, and applies the queue once the schema has caught up; the log
    says once why it waits, and once that it resumed."""
    setup(conn)
    factory = EventFactory(start=1_700_000_000)
    delivery = factory.subscription(
        "customer.subscription.updated", sub_id="sub_m", customer="cus_m", status="active"
    )
    receive(conn, [delivery])
    row = conn.execute(
        "delete from webhook_private.schema_migrations where version = '015' returning *"
    ).fetchone()
    worker = DrainWorker(db_url, RULES, poll_seconds=0.05)
    with pytest.raises(SchemaBehind, match=r"1 migration\(s\) pending \(015_"):
        worker.until_empty()
    worker.start()
    try:
        time.sleep(1.0)  # several attempts, each refused
        assert queued(conn)
        columns = ", ".join("%s" for _ in row)
        conn.execute(f"insert into webhook_private.schema_migrations values ({columns})", row)
        wait_until_drained(conn, worker)
    finally:
        worker.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook.pipeline.drain_worker"]
    assert len([line for line in lines if "pending" in line and "waiting" in line]) == 1
    assert lines[-1] == "drain: resumed"


def test_a_drain_waits_out_a_read_only_database(conn, db_url, caplog) -> None:
    """Supabase's read-only mode (a full disk) or a standby after a failover: the drain says
    so once, without a traceback, and applies the queue once writes are back."""
    setup(conn)
    delivery = EventFactory(start=1_700_000_000).subscription(
        "customer.subscription.updated", sub_id="sub_r", customer="cus_r", status="active"
    )
    receive(conn, [delivery])
    database = conn.info.dbname
    conn.execute(f'alter database "{database}" set default_transaction_read_only = on')
    worker = DrainWorker(db_url, RULES, poll_seconds=0.05)
    try:
        worker.start()
        time.sleep(1.5)  # several attempts, each refused
        assert queued(conn)
        conn.execute(f'alter database "{database}" reset default_transaction_read_only')
        wait_until_drained(conn, worker)
    finally:
        worker.stop()
        conn.execute(f'alter database "{database}" reset default_transaction_read_only')
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook.pipeline.drain_worker"]
    assert lines.count("drain: the database accepts no writes (read-only); retrying") == 1
    assert "Traceback" not in caplog.text

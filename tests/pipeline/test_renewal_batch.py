"""Renewal invoices decided in a batch end where the same events, one at a time, end.

The same accounts in two databases (linked customers with plans and spent resources,
earlier resets, an unlinked Stripe customer, a customer without a plan), then a random
month-start run of paid invoices: both events of each renewal, duplicates, periods older
than the last reset, an invoice id seen for another customer, invoices that are no cycle
renewal. One database applies them as a drain does, in one batch (decided in memory from
one read); the other one event at a time in the same order, each reading what the events
before it wrote: through the invoice handler (the same rule, for a batch of one), and
through the rule written out independently as SQL (reference_rule). Outcomes, resets,
balances and audit rows must be equal. The rule's own cases are below and in
tests/pipeline/test_webhook_events.py.
"""

import random
import uuid

import psycopg
import pytest
from databases import refuse_writes
from stripe_events import MONTH, Delivery, EventFactory
from test_drain import PLANS, RULES, drain_until_empty, receive

from webhook.pipeline import drain, inbox
from webhook.pipeline.handlers.base import Outcome
from webhook.pipeline.renewal_batch import Renewal, apply_renewals, renewal_for
from webhook.stripe.payloads import Event, invoice_subscription_id, parse_event

USERS = [uuid.UUID(int=n) for n in range(11, 16)]  # the last one never subscribes
LINKED = {f"cus_{n}": user for n, user in enumerate(USERS)}


def accounts(f: EventFactory) -> list[Delivery]:
    start = f.clock
    links = [
        f.checkout_completed(customer=stripe_id, subscription=None,
                             client_reference_id=str(user), created=start)
        for stripe_id, user in LINKED.items()
    ]  # fmt: skip
    subscriptions = [
        f.subscription("customer.subscription.created", sub_id=f"sub_{n}", customer=f"cus_{n}",
                       status="active", price_ids=[["price_basic", "price_pro"][n % 2]],
                       period_start=start, created=start + 1)
        for n in range(len(USERS) - 1)
    ]  # fmt: skip
    earlier = [
        f.invoice("invoice.paid", invoice_id=f"in_early_{n}", customer=f"cus_{n}",
                  subscription=f"sub_{n}", period_start=start + MONTH, period_end=start + 2 * MONTH,
                  created=start + 2)
        for n in (0, 1)
    ]  # fmt: skip
    return links + subscriptions + earlier


def renewals(seed: int, f: EventFactory) -> list[Delivery]:
    rng = random.Random(seed)
    start = f.clock
    out: list[Delivery] = []
    invoices: list[tuple[str, str]] = []
    for _ in range(40):
        n = rng.randrange(len(USERS) + 1)  # the last: a Stripe customer nobody linked
        customer = f"cus_{n}"
        roll = rng.random()
        if roll < 0.15 and invoices:
            invoice, customer = rng.choice(invoices)  # the same invoice again
            if rng.random() < 0.3:
                customer = f"cus_{rng.randrange(len(USERS))}"  # named for someone else
        else:
            invoice = f.new_id("in_")
            invoices.append((invoice, customer))
        months = rng.choice([0, 1, 2, 2, 3, 3, 4])  # 0 and 1: not newer than the earlier reset
        reason = (
            "subscription_cycle"
            if rng.random() > 0.15
            else rng.choice(["subscription_create", "manual", "subscription_update"])
        )
        for kind in rng.sample(["invoice.paid", "invoice.payment_succeeded"], rng.choice([1, 2])):
            out.append(
                f.invoice(kind, invoice_id=invoice, customer=customer, subscription=f"sub_{n}",
                          billing_reason=reason, period_start=start + months * MONTH,
                          period_end=start + (months + 1) * MONTH, created=start + rng.randint(1, 9))
            )  # fmt: skip
    return out


def prepare(db: psycopg.Connection, setup: list[Delivery], run: list[Delivery]) -> None:
    db.execute(PLANS)
    for user in USERS:
        db.execute("insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex}@x.t"))
    receive(db, setup)
    drain_until_empty(db, RULES)
    db.execute(  # everyone has spent something since
        "update public.customer set remaining_resources = '{\"api_calls\": 7}'"
        " where plan_id is not null"
    )
    receive(db, run)


def audit(db: psycopg.Connection) -> list[tuple]:
    return db.execute(
        "select customer_uuid, action, old_value, new_value, source from public.audit_logs"
        " order by customer_uuid, id"
    ).fetchall()


def state(db: psycopg.Connection) -> dict[str, list]:
    return {
        "customers": db.execute(
            "select uuid, plan_id, remaining_resources from public.customer order by uuid"
        ).fetchall(),
        "resets": db.execute(
            "select invoice_id, customer_uuid, subscription_id, period_start, event_id"
            " from webhook_private.resource_resets order by invoice_id"
        ).fetchall(),
        "audit": audit(db),
    }


def reference_rule(conn: psycopg.Connection, event: Event) -> Outcome:
    """The renewal rule written out independently, as SQL one event at a time (the form
    the invoice handler had before it used renewal_batch): the reference the batch and the
    handler are both held to."""
    invoice = event.object
    if invoice.get("billing_reason") != "subscription_cycle":
        return Outcome.ignored()
    customer = conn.execute(
        "select customer_uuid from webhook_private.customer_links where stripe_customer_id = %s",
        (invoice["customer"],),
    ).fetchone()
    if customer is None or customer[0] is None:
        return Outcome.ignored()
    starts = [line["period"]["start"] for line in invoice["lines"]["data"]]
    claimed = conn.execute(
        """
        insert into webhook_private.resource_resets
          (invoice_id, customer_uuid, subscription_id, period_start, event_id)
        select %(invoice)s, %(customer)s, %(subscription)s, to_timestamp(%(start)s), %(event)s
         where not exists (
           select from webhook_private.resource_resets r
            where r.customer_uuid = %(customer)s
              and (r.invoice_id = %(invoice)s or r.period_start >= to_timestamp(%(start)s)))
        on conflict (invoice_id) do nothing
        returning 1
        """,
        {"invoice": invoice["id"], "customer": customer[0], "event": event.id,
         "subscription": invoice_subscription_id(invoice), "start": max(starts)},
    ).fetchone()  # fmt: skip
    if claimed is None:
        return Outcome.ignored(customer[0])
    conn.execute(
        "update public.customer set remaining_resources = plan_resources where uuid = %s"
        " and plan_id is not null and remaining_resources is distinct from plan_resources",
        (customer[0],),
    )
    return Outcome.processed(customer[0])


def one_at_a_time(db: psycopg.Connection, events: list[Event], how: str) -> list[tuple]:
    """Each event in a savepoint of its own, naming its audit rows, as a drain's handler
    does: through the invoice handler, or through the reference rule."""
    outcomes = []
    with db.transaction():
        for event in events:
            if how == "handler":
                result = drain._apply_one(db, event, RULES)
                outcomes.append((result.event_id, result.outcome.status, result.outcome.customer))
                continue
            with db.transaction():
                db.execute("select set_config('webhook.source', %s, true)", (f"stripe:{event.id}",))
                outcome = reference_rule(db, event)
            outcomes.append((event.id, outcome.status, outcome.customer))
    return outcomes


@pytest.mark.parametrize("how", ["reference", "handler"])
@pytest.mark.parametrize("seed", range(8))
def test_a_batch_of_renewals_ends_where_they_end_one_at_a_time(conn, twin, seed, how) -> None:
    f = EventFactory(seed=seed)
    setup = accounts(f)
    run = renewals(seed, f)
    for db in (conn, twin):
        prepare(db, setup, run)
    events = [parse_event(d.event, d.body.decode()) for d in run]
    batch = [renewal_for(e) for e in events]
    assert all(r and not (r.unreadable or r.unreadable_period) for r in batch)

    with conn.transaction():
        conn.execute("select set_config('webhook.source', '', true)")
        batched = apply_renewals(conn, [r for r in batch if r is not None])
    one_by_one = one_at_a_time(twin, events, how)

    outcomes = [(r.event_id, r.outcome.status, r.outcome.customer) for r in batched]
    assert outcomes == one_by_one
    assert state(conn) == state(twin)
    assert {status for _, status, _ in outcomes} == {"processed", "ignored"}


def test_an_unreadable_invoice_fails_with_its_reason(conn, plans) -> None:
    f = EventFactory(seed=3)
    no_customer = f.invoice("invoice.paid", invoice_id="in_x", customer="cus_0", subscription=None,
                            period_start=f.clock, period_end=f.clock + MONTH)  # fmt: skip
    no_customer.event["data"]["object"]["customer"] = None
    event = parse_event(no_customer.event)
    assert renewal_for(event) == Renewal(event, None, unreadable="invoice has no id or no customer")
    inbox.receive(conn, event)  # stored as parsed (the delivery's body still names cus_0)
    drain_until_empty(conn, RULES)
    status, error = conn.execute(
        "select status, error from webhook_private.events where id = %s", (event.id,)
    ).fetchone()
    assert (status, error) == ("failed", "invoice has no id or no customer")


def test_a_period_that_is_no_timestamp_fails_a_linked_customers_invoice_only(conn) -> None:
    """As the handler always did: the period matters once the customer is known."""
    f = EventFactory(seed=6)
    prepare(conn, accounts(f), [])
    far = 10**12  # past the year 9999
    linked, unlinked = (
        f.invoice("invoice.paid", invoice_id=f"in_far_{who}", customer=who, subscription=None,
                  period_start=far, period_end=far + MONTH)
        for who in ("cus_0", "cus_nobody")
    )  # fmt: skip
    receive(conn, [linked, unlinked])
    drain_until_empty(conn, RULES)
    rows = dict(
        conn.execute(
            "select object_id, status || coalesce(': ' || error, '') from webhook_private.events"
            " where object_id like 'in_far_%'"
        ).fetchall()
    )
    assert rows == {
        "in_far_cus_0": f"failed: timestamp {far} is out of range",
        "in_far_cus_nobody": "ignored",
    }


def test_an_invoice_already_reset_for_another_customer_resets_nobody(conn) -> None:
    f = EventFactory(seed=7)
    prepare(conn, accounts(f), [])
    later = f.clock + 5 * MONTH
    first, reused = (
        f.invoice("invoice.paid", invoice_id="in_shared", customer=who, subscription=None,
                  period_start=later, period_end=later + MONTH)
        for who in ("cus_0", "cus_1")
    )  # fmt: skip
    receive(conn, [first])
    drain_until_empty(conn, RULES)
    receive(conn, [reused])
    drain_until_empty(conn, RULES)
    assert conn.execute(
        "select status from webhook_private.events where id = %s", (reused.id,)
    ).fetchone() == ("ignored",)
    assert conn.execute(
        "select customer_uuid from webhook_private.resource_resets where invoice_id = 'in_shared'"
    ).fetchall() == [(USERS[0],)]
    assert conn.execute(
        "select remaining_resources from public.customer where uuid = %s", (USERS[1],)
    ).fetchone() == ({"api_calls": 7},)


def test_a_reset_the_database_refuses_fails_that_event_only(conn) -> None:
    f = EventFactory(seed=4)
    setup = accounts(f)
    run = [
        f.invoice("invoice.paid", invoice_id=f"in_new_{n}", customer=f"cus_{n}",
                  subscription=f"sub_{n}", period_start=f.clock + 5 * MONTH,
                  period_end=f.clock + 6 * MONTH)
        for n in range(3)
    ]  # fmt: skip
    prepare(conn, setup, [])
    refuse_writes(conn, "webhook_private.resource_resets", "new.invoice_id = 'in_new_1'",
                  "in_new_1 refused by the test", on="insert")  # fmt: skip
    receive(conn, run)
    drain_until_empty(conn, RULES)

    rows = dict(
        conn.execute(
            "select object_id, status || coalesce(': ' || error, '') from webhook_private.events"
            " where object_id like 'in_new_%'"
        ).fetchall()
    )
    assert rows["in_new_0"] == rows["in_new_2"] == "processed"
    assert rows["in_new_1"].startswith("failed: ") and "in_new_1 refused" in rows["in_new_1"]
    remaining = dict(
        conn.execute(
            "select stripe_customer_id, remaining_resources from public.customer"
        ).fetchall()
    )
    assert remaining["cus_1"] == {"api_calls": 7}  # its reset was refused: balance untouched
    assert remaining["cus_0"] != {"api_calls": 7} and remaining["cus_2"] != {"api_calls": 7}


def test_a_reset_in_a_drain_batch_names_its_own_event(conn) -> None:
    """A one-by-one event before the renewals leaves its source set for the transaction:
    the reset's audit row must still name the invoice event (found in a review)."""
    f = EventFactory(seed=5)
    prepare(conn, accounts(f), [])
    other = f.customer("customer.updated", customer_id="cus_3")
    paid = f.invoice("invoice.paid", invoice_id="in_own", customer="cus_2", subscription="sub_2",
                     period_start=f.clock + 5 * MONTH, period_end=f.clock + 6 * MONTH)  # fmt: skip
    receive(conn, [other, paid])
    drain_until_empty(conn, RULES)
    rows = conn.execute(
        "select a.source from public.audit_logs a join public.customer c on c.uuid = a.customer_uuid"
        " where c.stripe_customer_id = 'cus_2' and a.action = 'resource_reset'"
    ).fetchall()
    assert rows == [(f"stripe:{paid.id}",)]

"""`python -m webhook sync --events --since 72h`: catch up on the events an outage lost.

An account's event log lives in the Stripe stand-in, in the API version each event was
created with (both payload shapes, mixed). Part of it reached the webhook before the
outage; the catch-up must apply the rest, oldest first, through the same engine, and end
where delivering everything in order would have ended.
"""

import random
import time
import uuid

import psycopg
import pytest
from click.testing import CliRunner, Result
from stripe_events import ENDIVE_API, MONTH, OLD_API, Delivery, EventFactory
from stripe_standin import API_KEY, StripeStandIn
from webhook_support import StripeSender, build_app, outcome_rows

from webhook.cli import cli
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline.handlers import HANDLERS
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.stripe.payloads import parse_event

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
USERS = [uuid.UUID(int=n) for n in range(11, 15)]
PLANS_SQL = """
insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)
values ('Basic', 9.99, '{"api_calls": 1000}', 'price_basic', 'prod_basic'),
       ('Pro', 19.99, '{"api_calls": 5000}', 'price_pro', 'prod_pro'),
       ('Enterprise', 49.99, '{"api_calls": 20000}', 'price_enterprise', 'prod_enterprise')
"""


def prepare(conn: psycopg.Connection) -> None:
    conn.execute(PLANS_SQL)
    for user in USERS:
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex}@x.test")
        )


def account_history(seed: int, start: int, steps: int = 6) -> list[Delivery]:
    """Sign-ups, renewals, upgrades and cancellations, some in each payload shape."""
    rng = random.Random(seed)
    old, new = (
        EventFactory(OLD_API, start=start, seed=seed),
        EventFactory(ENDIVE_API, start=start, seed=seed + 1),
    )
    deliveries: list[Delivery] = []
    for n, user in enumerate(USERS):
        f = old if n % 2 else new
        customer, sub_id = f"cus_{n}", f"sub_{n}"
        deliveries.append(
            f.checkout_completed(
                customer=customer, subscription=sub_id, client_reference_id=str(user)
            )
        )
        for step in range(steps):
            f = old if rng.random() < 0.5 else new  # the account's version changed over time
            f.clock = start + 60 * (step + 1) + n
            status = rng.choice(["active", "active", "past_due", "canceled", "trialing"])
            kind = (
                "customer.subscription.deleted"
                if status == "canceled"
                else rng.choice(["customer.subscription.updated", "customer.subscription.created"])
            )
            deliveries.append(
                f.subscription(kind, sub_id=sub_id, customer=customer, status=status,
                               price_ids=[rng.choice(["price_basic", "price_pro", "price_enterprise"])],
                               period_start=start)
            )  # fmt: skip
            if rng.random() < 0.3:
                deliveries.append(
                    f.invoice("invoice.paid", invoice_id=f.new_id("in_"), customer=customer,
                              subscription=sub_id, price_ids=["price_pro"],
                              period_start=start + MONTH, period_end=start + 2 * MONTH)
                )  # fmt: skip
            if rng.random() < 0.2:
                deliveries.append(f.other("charge.succeeded"))
    return deliveries


def in_order(conn: psycopg.Connection, deliveries: list[Delivery]) -> None:
    for delivery in sorted(deliveries, key=lambda d: (d.event["created"], d.id)):
        process_delivery(conn, parse_event(delivery.event, delivery.body.decode()), RULES)


def owned(conn: psycopg.Connection) -> dict[str, list]:
    """The rows delivery decides (the inbox differs: the twin got the ignored types too)."""
    rows = outcome_rows(conn)
    del rows["inbox"]
    return rows


def run_catch_up(db_url: str, standin: StripeStandIn, *args: str) -> Result:
    environment = {
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "STRIPE_API_MAX_RETRIES": "1",
    }
    return CliRunner().invoke(
        cli, ["--database-url", db_url, "sync", "--events", *args], env=environment
    )


@pytest.mark.parametrize("seed", range(3))
def test_a_catch_up_ends_where_in_order_delivery_ends(db_url, conn, twin, standin, seed) -> None:
    deliveries = account_history(seed, start=int(time.time()) - 7200)
    standin.add("event", [d.event for d in deliveries])
    prepare(conn)
    prepare(twin)
    in_order(twin, deliveries)

    # Before the outage: a random part of the history arrived, in random order, some twice.
    rng = random.Random(seed)
    delivered = rng.sample(deliveries, len(deliveries) // 3)
    app = build_app(db_url)
    try:
        stripe = StripeSender(app.test_client())
        stripe.send_all(delivered + delivered[:3])
    finally:
        app.extensions["webhook"].close()
    attempts_before = conn.execute(
        "select event_id, count(*) from webhook_private.event_attempts group by 1 order by 1"
    ).fetchall()

    result = run_catch_up(db_url, standin, "--since", "72h")
    assert result.exit_code == 0, result.output
    handled = [d for d in deliveries if d.type in HANDLERS]
    missing = {d.id for d in handled} - {d.id for d in delivered}
    assert f"{len(handled)} listed" in result.output
    assert f"{len(missing)} missing" in result.output
    assert owned(conn) == owned(twin)

    # Delivered events were left alone; every missing one was applied once, by the sync.
    attempts = dict(
        conn.execute(
            "select event_id, count(*) from webhook_private.event_attempts group by 1"
        ).fetchall()
    )
    assert all(attempts[event_id] == count for event_id, count in attempts_before)
    synced = dict(
        conn.execute(
            "select event_id, count(*) from webhook_private.event_attempts"
            " where trigger = 'sync' group by 1"
        ).fetchall()
    )
    assert synced == dict.fromkeys(missing, 1)

    # Running it again changes nothing.
    again = run_catch_up(db_url, standin, "--since", "72h")
    assert again.exit_code == 0, again.output
    assert "0 missing" in again.output
    assert owned(conn) == owned(twin)


def test_it_asks_for_the_handled_types_and_the_window_only(db_url, conn, standin) -> None:
    prepare(conn)
    now = int(time.time())
    f = EventFactory(ENDIVE_API, start=now - 4 * 86_400)
    too_old = f.subscription("customer.subscription.created", sub_id="sub_old", customer="cus_old",
                             status="active", price_ids=["price_pro"])  # fmt: skip
    f.clock = now - 600
    recent = f.subscription("customer.subscription.created", sub_id="sub_new", customer="cus_new",
                            status="active", price_ids=["price_pro"])  # fmt: skip
    ignored = f.other("charge.succeeded")
    standin.add("event", [too_old.event, recent.event, ignored.event])
    result = run_catch_up(db_url, standin, "--since", "3d")
    assert result.exit_code == 0, result.output
    stored = conn.execute("select id from webhook_private.events").fetchall()
    assert stored == [(recent.id,)]
    query = standin.answered("/v1/events")[0].query
    types = [value for key, value in query if key.startswith("types[")]
    assert sorted(types) == sorted(HANDLERS) and len(types) <= 20
    assert ("delivery_success", "false") not in query
    gte = int(dict(query)["created[gte]"])
    assert now - 3 * 86_400 - 5 <= gte <= now - 3 * 86_400 + 5


def test_a_dry_run_lists_what_it_would_apply(db_url, conn, standin) -> None:
    prepare(conn)
    deliveries = account_history(7, start=int(time.time()) - 3600)
    standin.add("event", [d.event for d in deliveries])
    result = run_catch_up(db_url, standin, "--dry-run")
    assert result.exit_code == 0, result.output
    subscription_events = sum(d.type.startswith("customer.subscription.") for d in deliveries)
    would = {
        line.split()[3]: int(line.split()[2])
        for line in result.output.splitlines()
        if line.startswith("would apply ")
    }
    assert sum(n for t, n in would.items() if t.startswith("customer.subscription.")) == (
        subscription_events
    )
    assert "dry run: nothing was written" in result.output
    assert conn.execute("select count(*) from webhook_private.events").fetchone()[0] == 0
    assert conn.execute("select count(*) from webhook_private.sync_runs").fetchone()[0] == 0


def test_an_interrupted_catch_up_continues(db_url, conn, twin, standin) -> None:
    deliveries = account_history(3, start=int(time.time()) - 7200, steps=40)
    assert len([d for d in deliveries if d.type in HANDLERS]) > 150  # two pages or more
    standin.add("event", [d.event for d in deliveries])
    prepare(conn)
    prepare(twin)
    in_order(twin, deliveries)
    standin.fail_at(range(2, 10), status=500)  # the second page fails, and every retry
    first = run_catch_up(db_url, standin)
    assert first.exit_code == 1, first.output
    assert "Stripe answered 500 for /v1/events" in first.output
    standin.heal()
    second = run_catch_up(db_url, standin)
    assert second.exit_code == 0, second.output
    assert "continued run" in second.output
    assert owned(conn) == owned(twin)

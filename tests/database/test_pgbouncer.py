"""Through a real PgBouncer in transaction mode: ingest, drain, replay, sync, the web server.

Supabase's transaction pooler hands each transaction to any server connection. Everything
the service does must then be transaction-local; migrations, which are not, run over the
direct URL (the test's database is migrated already). Every check runs with
DB_PREPARED_STATEMENTS=off, as the service sets itself on port 6543.
"""

import time

import pytest
from click.testing import CliRunner
from servers import GUNICORN_COMMAND, base_env, free_port, start, wait_until_applied
from servers import request as http_request
from stripe_events import MONTH, EventFactory
from stripe_standin import API_KEY
from webhook_support import SECRET, StripeSender, build_app, customer_state, event_status

from webhook.cli import cli

OFF = {"DB_PREPARED_STATEMENTS": "off"}


def lifecycle(factory: EventFactory, user) -> list:
    start = factory.clock
    return [
        factory.checkout_completed(customer="cus_1", subscription="sub_1",
                                   client_reference_id=str(user)),
        factory.subscription("customer.subscription.created", sub_id="sub_1", customer="cus_1",
                             status="active", price_ids=["price_pro"], period_start=start),
        factory.invoice("invoice.paid", invoice_id="in_1", customer="cus_1", subscription="sub_1",
                        price_ids=["price_pro"], period_start=start + MONTH,
                        period_end=start + 2 * MONTH),
        factory.other("charge.succeeded"),
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["queued", "inline"])
def test_ingest_and_drain_through_the_pooler(conn, pooled_url, plans, user, factory, mode):
    app = build_app(pooled_url, WEBHOOK_APPLY=mode, **OFF)
    try:
        events = lifecycle(factory, user)
        StripeSender(app.test_client()).send_all(events + events[:2])
    finally:
        app.extensions["webhook"].close()
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    assert [event_status(conn, e.id)[0] for e in events] == [
        "processed",
        "processed",
        "processed",
        "ignored",
    ]


def run(url: str, *args: str, **env: str) -> str:
    result = CliRunner().invoke(cli, ["--database-url", url, *args], env={**OFF, **env})
    assert result.exit_code == 0, result.output
    return result.output


def test_replay_and_reconcile_through_the_pooler(conn, pooled_url, plans, user, factory, stripe):
    created = factory.subscription(
        "customer.subscription.created", sub_id="sub_1", customer="cus_1", status="active",
        price_ids=["price_team"],
    )  # fmt: skip
    stripe.send_all([lifecycle(factory, user)[0], created])
    assert event_status(conn, created.id)[0] == "failed"
    conn.execute(
        "insert into public.plans (name, price, stripe_price_id) values ('Team', 29, 'price_team')"
    )
    assert "replayed 1 event(s), 0 still failing" in run(pooled_url, "replay", "--failed")
    assert "checked 1 customer(s); 0 changed" in run(pooled_url, "reconcile")
    assert customer_state(conn, user)["plan_id"] is not None


def test_sync_through_the_pooler(conn, pooled_url, plans, user, stripe, standin):
    factory = EventFactory(start=int(time.time()) - 3600)
    stripe.send_all([lifecycle(factory, user)[0]])
    standin.add(
        "subscription",
        [factory.subscription("customer.subscription.updated", sub_id="sub_1", customer="cus_1",
                              status="active", price_ids=["price_enterprise"]).object],
    )  # fmt: skip
    missed = factory.subscription(
        "customer.subscription.updated", sub_id="sub_2", customer="cus_1", status="trialing",
        price_ids=["price_basic"],
    )  # fmt: skip
    standin.add("event", [missed.event])
    env = {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url, "STRIPE_API_MAX_RETRIES": "1"}
    assert "plans would change: 1" in run(pooled_url, "sync", "--dry-run", **env)
    assert customer_state(conn, user)["plan_id"] is None
    assert "plans changed: 1" in run(pooled_url, "sync", **env)
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    assert "1 missing" in run(pooled_url, "sync", "--events", "--since", "2h", **env)
    assert event_status(conn, missed.id)[0] == "processed"


def test_the_web_server_through_the_pooler(conn, pooled_url, plans, make_user, tmp_path):
    user, linked = make_user(), make_user()
    port = free_port()
    env = base_env(
        DATABASE_URL=pooled_url, STRIPE_WEBHOOK_SECRET=SECRET, PORT=str(port), HOST="127.0.0.1",
        WEB_CONCURRENCY="2", **OFF,
    )  # fmt: skip
    server = start(
        "pooled-web",
        GUNICORN_COMMAND,
        cwd=tmp_path,
        env=env,
        log_dir=tmp_path,
    )
    try:
        server.wait_for(port, "/readyz", timeout=20)
        factory = EventFactory(start=int(time.time()))
        events = lifecycle(factory, user)
        for delivery in events:
            status, _ = http_request(
                port, "POST", "/webhook", delivery.body, delivery.headers(SECRET)
            )
            assert status == 200
        wait_until_applied(conn, [e.id for e in events])
        assert customer_state(conn, user)["plan_id"] == plans["Pro"]
        # The application's own link, applied by the workers' drains through the pooler.
        stripe_only = factory.subscription(
            "customer.subscription.created", sub_id="sub_9", customer="cus_9", status="active",
            price_ids=["price_basic"],
        )  # fmt: skip
        http_request(port, "POST", "/webhook", stripe_only.body, stripe_only.headers(SECRET))
        wait_until_applied(conn, [stripe_only.id])
        conn.execute(
            "update public.customer set stripe_customer_id = 'cus_9' where uuid = %s", (linked,)
        )
        deadline = time.monotonic() + 15
        while customer_state(conn, linked)["plan_id"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert customer_state(conn, linked)["plan_id"] == plans["Basic"]
    finally:
        server.stop()
    assert "Traceback" not in server.output()

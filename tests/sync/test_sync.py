"""`python -m webhook sync`: import and repair from Stripe's API (a local stand-in of it).

The stand-in (tests/stripe_standin.py) lists newest first with cursors, hides canceled
subscriptions unless asked for `status=all`, requires the key, and can rate-limit or fail.
Webhook deliveries go through the app as usual; `sync` runs through the CLI, as an
operator would run it, or through its function where a test needs its report.
"""

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from servers import closed_port
from stripe_events import ENDIVE_API, OLD_API, EventFactory
from stripe_standin import API_KEY, StripeStandIn
from webhook_support import StripeSender, audit_rows, customer_state

from webhook.cli import cli
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.core.errors import ConfigError, ProjectError
from webhook.stripe.client import StripeAPI, StripeAPIError
from webhook.sync import runs
from webhook.sync.subscriptions import sync_subscriptions

STATUSES = frozenset(DEFAULT_ENTITLED_STATUSES)


@pytest.fixture
def factory() -> EventFactory:
    # Objects as Stripe's API returns them today; created well before "now", as real ones are.
    return EventFactory(ENDIVE_API, start=int(time.time()) - 86_400)


def sub(factory: EventFactory, sub_id: str, customer: str, status: str, price: str, **kw) -> dict:
    """A subscription object as GET /v1/subscriptions returns it."""
    return factory.subscription(
        "customer.subscription.updated",
        sub_id=sub_id,
        customer=customer,
        status=status,
        price_ids=[price],
        **kw,
    ).object


def run_sync(db_url: str, standin: StripeStandIn, *args: str, **env: str | None) -> Result:
    environment = {
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "STRIPE_API_MAX_RETRIES": "1",  # fail over in half a second where a test wants it to
        **env,
    }
    return CliRunner().invoke(cli, ["--database-url", db_url, "sync", *args], env=environment)


def succeeds(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.stdout


def fails(result: Result) -> str:
    """A one-line reason on stderr, exit 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    return errors[0]


def linked_by_checkout(stripe: StripeSender, factory: EventFactory, user: uuid.UUID, customer: str):
    stripe.send_all(
        [
            factory.checkout_completed(
                customer=customer, subscription=None, client_reference_id=str(user)
            )
        ]
    )


def plan_audit(conn: psycopg.Connection, user: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select (new_value ->> 'plan_id')::bigint, source from public.audit_logs"
        " where customer_uuid = %s and action = 'plan_change' order by id",
        (user,),
    ).fetchall()


# --- import -----------------------------------------------------------------------------------


def test_a_sync_on_an_empty_database_imports_and_reports(db_url, conn, plans, standin, factory):
    standin.add(
        "subscription",
        [
            sub(factory, "sub_1", "cus_1", "active", "price_pro"),
            sub(factory, "sub_2", "cus_2", "canceled", "price_basic"),
        ],
    )
    output = succeeds(run_sync(db_url, standin))
    mirrored = conn.execute(
        "select id, status, event_id like 'sync:%' from webhook_private.subscriptions order by id"
    ).fetchall()
    assert mirrored == [("sub_1", "active", True), ("sub_2", "canceled", True)]
    assert "subscriptions read: 2" in output
    assert "subscriptions whose Stripe customer is not linked: 2 (1 of them active" in output
    assert "plans changed: 0" in output
    listed = standin.answered("/v1/subscriptions")
    assert all(
        ("status", "all") in entry.query and ("limit", "100") in entry.query for entry in listed
    )


def test_a_sync_grants_the_plans_of_customers_the_application_linked(
    db_url, conn, plans, make_user, standin, factory
):
    user = make_user()
    conn.execute("update public.customer set stripe_customer_id = 'cus_1' where uuid = %s", (user,))
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_pro")])
    output = succeeds(run_sync(db_url, standin))
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    run_id = conn.execute("select max(id) from webhook_private.sync_runs").fetchone()[0]
    assert plan_audit(conn, user) == [(plans["Pro"], f"sync:{run_id}")]
    assert f"changed {user}: plan None -> {plans['Pro']}" in output


def subscribed_through_the_webhook(stripe, factory, user, price: str) -> None:
    """The customer signed up and the webhook heard of it (sub_1 of cus_1 on `price`)."""
    linked_by_checkout(stripe, factory, user, "cus_1")
    stripe.send_all(
        [factory.subscription("customer.subscription.created", sub_id="sub_1", customer="cus_1",
                              status="active", price_ids=[price])]
    )  # fmt: skip
    factory.tick(3600)


def test_a_sync_repairs_a_missed_cancellation(db_url, conn, plans, user, stripe, standin, factory):
    subscribed_through_the_webhook(stripe, factory, user, "price_pro")
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    # The customer.subscription.deleted never arrived; Stripe's list hides it by default.
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "canceled", "price_pro")])
    succeeds(run_sync(db_url, standin))
    assert customer_state(conn, user)["plan_id"] is None
    assert [source.startswith("sync:") for _, source in plan_audit(conn, user)] == [False, True]


def test_a_sync_repairs_a_missed_upgrade(db_url, conn, plans, user, stripe, standin, factory):
    subscribed_through_the_webhook(stripe, factory, user, "price_basic")
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_enterprise")])
    succeeds(run_sync(db_url, standin))
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    assert len(plan_audit(conn, user)) == 2


def test_a_second_run_changes_nothing(db_url, conn, plans, user, stripe, standin, factory):
    linked_by_checkout(stripe, factory, user, "cus_1")
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_pro")])
    succeeds(run_sync(db_url, standin))
    audit_before = audit_rows(conn, user)
    customer_before = customer_state(conn, user)
    second = succeeds(run_sync(db_url, standin))
    assert "in the mirror: 0" in second
    assert "plans changed: 0" in second
    assert audit_rows(conn, user) == audit_before
    assert customer_state(conn, user) == customer_before


def test_a_fetched_state_loses_to_newer_events_and_beats_older_ones(
    db_url, conn, plans, user, stripe, standin, factory
):
    linked_by_checkout(stripe, factory, user, "cus_1")
    older = factory.subscription(
        "customer.subscription.updated", sub_id="sub_1", customer="cus_1", status="past_due",
        price_ids=["price_basic"], created=int(time.time()) - 600,
    )  # fmt: skip
    newer = factory.subscription(
        "customer.subscription.updated", sub_id="sub_1", customer="cus_1", status="active",
        price_ids=["price_enterprise"], created=int(time.time()) + 5,
    )  # fmt: skip
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_pro")])
    succeeds(run_sync(db_url, standin))
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    stripe.send_all([older])  # created before the fetch: the fetched state already has it
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    stripe.send_all([newer])  # created after the fetch: newer than what was read
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]


def test_a_dry_run_says_what_would_change_and_writes_nothing(
    db_url, conn, plans, user, stripe, standin, factory
):
    linked_by_checkout(stripe, factory, user, "cus_1")
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_pro")])

    def everything() -> dict[str, Any]:
        tables = ("public.customer", "public.audit_logs", "webhook_private.subscriptions",
                  "webhook_private.customer_links", "webhook_private.sync_runs")  # fmt: skip
        return {t: conn.execute(f"select * from {t} order by 1").fetchall() for t in tables}

    before = everything()
    output = succeeds(run_sync(db_url, standin, "--dry-run"))
    assert f"would change {user}: plan None -> {plans['Pro']}" in output
    assert "plans would change: 1" in output
    assert "dry run: nothing was written" in output
    assert everything() == before


# --- links ---------------------------------------------------------------------------------


def test_links_by_metadata_of_subscriptions_and_customers(
    db_url, conn, plans, make_user, standin, factory
):
    by_subscription, by_customer = make_user(), make_user()
    standin.add(
        "subscription",
        [
            sub(factory, "sub_1", "cus_1", "active", "price_pro",
                metadata={"customer_uuid": str(by_subscription)}),
            sub(factory, "sub_2", "cus_2", "active", "price_basic"),
        ],
    )  # fmt: skip
    standin.add(
        "customer",
        [
            factory.customer("customer.updated", customer_id="cus_2",
                             metadata={"customer_uuid": str(by_customer)}).object,
            factory.customer("customer.updated", customer_id="cus_9",
                             metadata={"customer_uuid": str(uuid.uuid4())}).object,
        ],
    )  # fmt: skip
    output = succeeds(run_sync(db_url, standin))
    assert customer_state(conn, by_subscription)["plan_id"] == plans["Pro"]
    assert customer_state(conn, by_customer)["plan_id"] == plans["Basic"]
    assert "links made from metadata.customer_uuid: 2" in output
    assert "subscriptions whose Stripe customer is not linked: 0" in output


def test_customers_are_listed_only_when_a_subscription_is_unlinked(
    db_url, conn, plans, user, stripe, standin, factory
):
    linked_by_checkout(stripe, factory, user, "cus_1")
    standin.add("subscription", [sub(factory, "sub_1", "cus_1", "active", "price_pro")])
    succeeds(run_sync(db_url, standin))
    assert standin.answered("/v1/customers") == []


# --- resuming --------------------------------------------------------------------------------


def many(factory: EventFactory, count: int) -> list[dict]:
    subs = []
    for n in range(count):
        factory.tick()
        subs.append(sub(factory, f"sub_{n:04d}", f"cus_{n:04d}", "active", "price_pro"))
    return subs


def test_an_interrupted_run_continues_where_it_stopped(db_url, conn, plans, standin, factory):
    standin.add("subscription", many(factory, 350))  # four pages
    standin.fail_at(range(3, 30), status=503)  # the third request and everything after it
    first = run_sync(db_url, standin)
    line = fails(first)
    assert "Stripe answered 503" in line and "gave up after" in line
    written = conn.execute("select count(*) from webhook_private.subscriptions").fetchone()[0]
    assert written == 200  # the two pages before the failure, committed with the cursor
    standin.heal()  # the outage is over
    resumed = succeeds(run_sync(db_url, standin))
    assert "continued run" in resumed
    assert "subscriptions read: 350" in resumed
    pages = [dict(e.query).get("starting_after") for e in standin.answered("/v1/subscriptions")
             if e.status == 200]  # fmt: skip
    assert pages.count(None) == 1  # the first page was read once, not again after the failure
    assert conn.execute("select count(*) from webhook_private.subscriptions").fetchone()[0] == 350
    ended = conn.execute("select phase, finished_at is not null from webhook_private.sync_runs")
    assert ended.fetchall() == [("done", True)]


def test_restart_starts_over(db_url, conn, plans, standin, factory):
    standin.add("subscription", many(factory, 150))
    standin.fail_at(range(2, 40), status=500)
    fails(run_sync(db_url, standin))
    standin.heal()
    succeeds(run_sync(db_url, standin, "--restart"))
    phases = conn.execute("select phase from webhook_private.sync_runs order by id").fetchall()
    assert phases == [("abandoned",), ("done",)]


def test_a_run_whose_process_is_alive_is_not_taken_over(db_url, conn, standin):
    conn.execute(
        "insert into webhook_private.sync_runs (kind, phase, owner) values ('subscriptions',"
        " 'subscriptions', 'elsewhere:1')"
    )  # another host, heartbeat just now
    line = fails(run_sync(db_url, standin))
    assert "another sync is running" in line


def test_a_killed_run_on_this_host_is_continued(db_url, conn, plans, standin, factory):
    standin.add("subscription", many(factory, 5))
    conn.execute(
        "insert into webhook_private.sync_runs (kind, phase, owner) values ('subscriptions',"
        " 'subscriptions', %s)",
        (f"{socket.gethostname()}:{closed_port() + 4_000_000}",),  # a pid that cannot exist
    )
    assert "continued run" in succeeds(run_sync(db_url, standin))


# --- Stripe's limits and faults ---------------------------------------------------------------


def test_the_throttle_holds_under_429s(db_url, conn, plans, factory):
    standin = StripeStandIn(rate_limit=4)
    try:
        standin.add("subscription", many(factory, 1200))  # 12 pages
        with StripeAPI(API_KEY, standin.url, rate=10) as api:
            report = sync_subscriptions(conn, api, STATUSES)
    finally:
        standin.close()
    assert report.count("subscriptions_read") == 1200
    assert api.counters.rate_limited > 0
    log = standin.answered("/v1/subscriptions")
    starts = [entry.at for entry in log]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1 * 0.9  # never faster than the configured 10 requests/s
    for before, after in itertools.pairwise(log):
        if before.status == 429:  # Retry-After: 1 was honoured
            assert after.at - before.at >= 0.95
    assert conn.execute("select count(*) from webhook_private.subscriptions").fetchone()[0] == 1200


def test_a_429_without_retry_after_backs_off_and_succeeds(conn, plans, factory):
    standin = StripeStandIn(rate_limit=2, retry_after=False)
    try:
        standin.add("subscription", many(factory, 300))
        with StripeAPI(API_KEY, standin.url, rate=50) as api:
            report = sync_subscriptions(conn, api, STATUSES)
    finally:
        standin.close()
    assert report.count("subscriptions_read") == 300
    assert api.counters.rate_limited > 0


def test_server_errors_and_dropped_connections_are_retried(conn, plans, standin, factory):
    standin.add("subscription", many(factory, 250))
    standin.fail_at([1], status=500)
    standin.fail_at([2], status=0)  # the connection drops without an answer
    standin.fail_at([4], status=502)
    with StripeAPI(API_KEY, standin.url, rate=50, backoff_start=0.01) as api:
        report = sync_subscriptions(conn, api, STATUSES)
    assert report.count("subscriptions_read") == 250
    assert api.counters.retried == 3


# --- CLI mistakes: one line, exit 1 -------------------------------------------------------------


def test_without_a_key(db_url, standin):
    line = fails(run_sync(db_url, standin, STRIPE_API_KEY=None))
    assert "STRIPE_API_KEY is not set" in line


def test_with_a_wrong_key(db_url, standin):
    line = fails(run_sync(db_url, standin, STRIPE_API_KEY="sk_test_wrong"))
    assert "Stripe refused the API key (401)" in line
    assert "sk_test_wrong" not in line


def test_with_an_unreachable_api(db_url):
    environment = {
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": f"http://127.0.0.1:{closed_port()}",
    }
    result = CliRunner().invoke(cli, ["--database-url", db_url, "sync"], env=environment)
    line = fails(result)
    assert "cannot reach Stripe's API at http://127.0.0.1:" in line
    assert "connection refused" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--events", "--since", "45d"], {}, "Stripe keeps events for 30 days only"),
        ([], {"STRIPE_API_RATE": "fast"}, "STRIPE_API_RATE must be a number"),
        ([], {"STRIPE_API_RATE": "500"}, "STRIPE_API_RATE must be at most 100"),
        ([], {"STRIPE_API_BASE": "ftp://x"}, "STRIPE_API_BASE must be an http(s) URL"),
        # urllib reads these and fails only when the port is asked for: a traceback.
        ([], {"STRIPE_API_BASE": "http://localhost:abc"}, "STRIPE_API_BASE must be an http"),
        ([], {"STRIPE_API_BASE": "http://localhost:99999"}, "STRIPE_API_BASE must be an http"),
        ([], {"STRIPE_API_BASE": "http://[::1"}, "STRIPE_API_BASE must be an http(s) URL"),
        (["--events"], {"STRIPE_API_BASE": "http://localhost:abc"}, "STRIPE_API_BASE must be"),
        ([], {"STRIPE_API_MAX_RETRIES": "-1"}, "STRIPE_API_MAX_RETRIES must be at least 0"),
    ],
)
def test_configuration_mistakes(db_url, standin, args, env, expected):
    assert expected in fails(run_sync(db_url, standin, *args, **env))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "3d"], "--since goes with --events"),
        (["--events", "--since", "soon"], "bad duration"),
    ],
)
def test_usage_mistakes(db_url, standin, args, expected):
    result = run_sync(db_url, standin, *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_the_run_bookkeeping_refuses_nothing_on_a_fresh_database(conn):
    run = runs.start(conn, "subscriptions", "subscriptions")
    assert not run.resumed
    with pytest.raises(ProjectError):
        # The same process cannot be "another" run, but a live owner elsewhere is.
        conn.execute("update webhook_private.sync_runs set owner = 'other-host:1'")
        runs.start(conn, "subscriptions", "subscriptions")


@pytest.mark.parametrize(
    "base", ["http://localhost:abc", "https://api.example:70000", "gopher://x"]
)
def test_the_client_refuses_a_base_it_cannot_reach_naming_the_variable(base):
    with pytest.raises(ConfigError, match=r"^STRIPE_API_BASE must be an http"):
        StripeAPI(API_KEY, base)


def test_a_stripe_error_is_one_line(standin):
    standin.fail_at([1], status=400)
    with (
        pytest.raises(StripeAPIError, match="Stripe answered 400 for /v1/subscriptions: injected"),
        StripeAPI(API_KEY, standin.url) as api,
    ):
        api.get("/v1/subscriptions")


def test_old_payload_shapes_from_the_api_are_read(db_url, conn, plans, user, stripe, standin):
    """An account's objects as an old API version would render them, still mapped."""
    old = EventFactory(OLD_API, start=int(time.time()) - 86_400)
    linked_by_checkout(stripe, old, user, "cus_1")
    standin.add("subscription", [sub(old, "sub_1", "cus_1", "trialing", "price_basic")])
    succeeds(run_sync(db_url, standin))
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]


@pytest.mark.parametrize("level", ["info", "warning"])
def test_sync_shows_the_clients_retries_at_info(db_url, plans, factory, level) -> None:
    """`python -m webhook sync` as an operator runs it: a 429 is tried again, and at the
    default LOG_LEVEL the client says so on stderr as it happens, naming no key."""
    standin = StripeStandIn(rate_limit=2, retry_after=False)
    try:
        standin.add("subscription", many(factory, 300))
        env = {**os.environ, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url,
               "STRIPE_API_RATE": "50", "LOG_LEVEL": level}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "webhook", "--database-url", db_url, "sync"],
            cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
    finally:
        standin.close()
    assert done.returncode == 0, done.stderr
    retried = [line for line in done.stderr.splitlines() if "trying again" in line]
    if level == "info":
        assert retried and all("[INFO] webhook.stripe.client:" in line for line in retried)
    else:
        assert retried == []
    assert API_KEY not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr

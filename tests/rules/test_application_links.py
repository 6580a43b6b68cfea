"""The application's own link: writing public.customer.stripe_customer_id.

The application's write is played by plain SQL on the test's database (as the superuser,
and as Supabase's service_role); events go through the app as Stripe sends them; link
requests are applied by the same code the web workers run in the background.
"""

import threading
import time
import uuid

import psycopg
import pytest
from click.testing import CliRunner
from databases import refuse_writes
from stripe_events import API_VERSIONS, Delivery, EventFactory
from webhook_support import audit_rows, customer_state

from webhook.cli import cli
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline.drain import drain_until_empty
from webhook.pipeline.processor import ProcessingRules
from webhook.rules import application_links

STATUSES = frozenset(DEFAULT_ENTITLED_STATUSES)
RULES = ProcessingRules(entitled_statuses=STATUSES)


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param)


def app_writes(conn: psycopg.Connection, user: uuid.UUID, stripe_id: str | None) -> None:
    """What the application does after creating (or forgetting) the Stripe customer."""
    conn.execute(
        "update public.customer set stripe_customer_id = %s where uuid = %s", (stripe_id, user)
    )


def drain(conn: psycopg.Connection) -> int:
    return application_links.apply_pending(conn, STATUSES)


def subscribed(factory: EventFactory, customer: str, price: str, sub_id: str) -> Delivery:
    return factory.subscription(
        "customer.subscription.created",
        sub_id=sub_id,
        customer=customer,
        status="active",
        price_ids=[price],
    )


def requests(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select customer_uuid, previous_stripe_customer_id, stripe_customer_id, status"
        " from webhook_private.link_requests order by id"
    ).fetchall()


def links(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select stripe_customer_id, customer_uuid, linked_by_event"
        " from webhook_private.customer_links order by 1"
    ).fetchall()


def test_a_link_written_before_the_subscription(conn, plans, user, stripe, factory) -> None:
    app_writes(conn, user, "cus_app")
    assert drain(conn) == 1
    stripe.send_all([subscribed(factory, "cus_app", "price_pro", "sub_1")])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    assert links(conn) == [("cus_app", user, "application")]


def test_a_subscription_that_arrives_before_the_request_is_applied(
    conn, plans, user, stripe, factory
) -> None:
    app_writes(conn, user, "cus_app")
    stripe.drain = False  # only the event is applied, not (yet) the link request
    stripe.send_all([subscribed(factory, "cus_app", "price_pro", "sub_1")])
    drain_until_empty(conn, RULES)
    assert customer_state(conn, user)["plan_id"] is None  # not applied yet
    drain(conn)
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_a_link_written_after_the_subscription_takes_effect_with_no_further_event(
    conn, plans, user, stripe, factory
) -> None:
    stripe.send_all([subscribed(factory, "cus_app", "price_pro", "sub_1")])
    assert customer_state(conn, user)["plan_id"] is None
    app_writes(conn, user, "cus_app")
    drain(conn)
    state = customer_state(conn, user)
    assert (state["plan_id"], state["stripe_customer_id"]) == (plans["Pro"], "cus_app")
    rows = conn.execute(
        "select action, source from public.audit_logs where customer_uuid = %s", (user,)
    ).fetchall()
    assert rows == [("plan_change", "application")]


def test_writing_null_unlinks_every_stripe_customer(conn, plans, user, stripe, factory) -> None:
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_checkout", subscription="sub_2", client_reference_id=str(user)
            ),
            subscribed(factory, "cus_checkout", "price_basic", "sub_2"),
            subscribed(factory, "cus_app", "price_pro", "sub_1"),
        ]
    )
    app_writes(conn, user, "cus_app")
    drain(conn)
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    app_writes(conn, user, None)
    drain(conn)
    state = customer_state(conn, user)
    assert (state["plan_id"], state["stripe_customer_id"]) == (None, None)
    assert links(conn) == [("cus_app", None, "application"), ("cus_checkout", None, "application")]


def test_changing_the_id_moves_the_link(conn, plans, user, stripe, factory) -> None:
    stripe.send_all(
        [
            subscribed(factory, "cus_old", "price_enterprise", "sub_1"),
            subscribed(factory, "cus_new", "price_basic", "sub_2"),
        ]
    )
    app_writes(conn, user, "cus_old")
    drain(conn)
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    app_writes(conn, user, "cus_new")
    drain(conn)
    assert customer_state(conn, user)["plan_id"] == plans["Basic"]
    assert links(conn) == [("cus_new", user, "application"), ("cus_old", None, "application")]


def test_an_older_event_cannot_undo_the_applications_write(
    conn, plans, user, make_user, stripe, factory
) -> None:
    """A checkout created before the write, delivered after it, cannot take the link."""
    other = make_user()
    late_checkout = factory.checkout_completed(
        customer="cus_app", subscription=None, client_reference_id=str(other)
    )
    app_writes(conn, user, "cus_app")
    drain(conn)
    stripe.send_all([late_checkout, subscribed(factory, "cus_app", "price_pro", "sub_1")])
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    assert customer_state(conn, other)["plan_id"] is None


def test_a_newer_event_can_move_the_link_again(
    conn, plans, user, make_user, stripe, factory
) -> None:
    other = make_user()
    app_writes(conn, user, "cus_app")
    drain(conn)
    factory.clock = 4_000_000_000  # long after the write
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_app", subscription="sub_1", client_reference_id=str(other)
            ),
            subscribed(factory, "cus_app", "price_pro", "sub_1"),
        ]
    )
    assert customer_state(conn, other)["plan_id"] == plans["Pro"]
    assert customer_state(conn, user)["plan_id"] is None
    assert customer_state(conn, user)["stripe_customer_id"] is None


def test_a_deleted_stripe_customer_is_not_linked_by_the_application(
    conn, plans, user, stripe, factory
) -> None:
    stripe.send_all(
        [
            subscribed(factory, "cus_gone", "price_pro", "sub_1"),
            factory.customer("customer.deleted", customer_id="cus_gone"),
        ]
    )
    app_writes(conn, user, "cus_gone")
    drain(conn)
    assert customer_state(conn, user)["plan_id"] is None
    assert requests(conn) == [(user, None, "cus_gone", "applied")]


def test_the_services_own_writes_make_no_request_and_one_audit_row(
    conn, plans, user, stripe, factory
) -> None:
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_1", subscription="sub_1", client_reference_id=str(user)
            ),
            subscribed(factory, "cus_1", "price_pro", "sub_1"),
            factory.customer("customer.deleted", customer_id="cus_1"),
        ]
    )
    assert requests(conn) == []
    assert [row[0] for row in audit_rows(conn, user)] == ["plan_change", "plan_change"]
    app_writes(conn, user, "cus_2")
    drain(conn)
    assert drain(conn) == 0  # applying it wrote the column too, and asked for nothing more
    assert len(requests(conn)) == 1


def test_a_customer_keeps_several_stripe_customers(conn, plans, user, stripe, factory) -> None:
    app_writes(conn, user, "cus_app")
    drain(conn)
    stripe.send_all(
        [
            subscribed(factory, "cus_app", "price_basic", "sub_1"),
            factory.checkout_completed(
                customer="cus_checkout", subscription="sub_2", client_reference_id=str(user)
            ),
            subscribed(factory, "cus_checkout", "price_enterprise", "sub_2"),
        ]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Enterprise"]
    assert {row[0] for row in links(conn) if row[1] == user} == {"cus_app", "cus_checkout"}


def test_service_role_writes_are_requests_too(conn, plans, user, stripe, factory, as_role) -> None:
    with conn.transaction():
        conn.execute("set local role service_role")
        app_writes(conn, user, "cus_app")
    stripe.send_all([subscribed(factory, "cus_app", "price_pro", "sub_1")])
    drain(conn)
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_authenticated_users_cannot_link_themselves(conn, user, as_role) -> None:
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        as_role("authenticated", user) as db,
    ):
        db.execute(
            "update public.customer set stripe_customer_id = 'cus_mine' where uuid = %s", (user,)
        )
    assert requests(conn) == []


def test_a_request_that_cannot_be_applied_fails_and_the_next_ones_go_on(
    conn, plans, make_user, stripe, factory
) -> None:
    first, second = make_user(), make_user()
    refuse_writes(conn, "webhook_private.customer_links", "new.stripe_customer_id = 'cus_bad'",
                  "refused by test", on="insert")  # fmt: skip
    stripe.send_all([subscribed(factory, "cus_good", "price_pro", "sub_1")])
    app_writes(conn, first, "cus_bad")
    app_writes(conn, second, "cus_good")
    assert drain(conn) == 2
    statuses = conn.execute(
        "select stripe_customer_id, status, error from webhook_private.link_requests order by id"
    ).fetchall()
    assert statuses == [("cus_bad", "failed", "refused by test"), ("cus_good", "applied", None)]
    assert customer_state(conn, second)["plan_id"] == plans["Pro"]


def test_two_processes_apply_each_request_once(db_url, conn, plans, make_user, stripe, factory):
    users = [make_user() for _ in range(30)]
    stripe.send_all(
        [subscribed(factory, f"cus_{n}", "price_pro", f"sub_{n}") for n in range(len(users))]
    )
    for n, user in enumerate(users):
        app_writes(conn, user, f"cus_{n}")
    counts: list[int] = []

    def worker() -> None:
        with psycopg.connect(db_url, autocommit=True) as own:
            counts.append(drain(own))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == len(users)
    audit = conn.execute(
        "select count(*) from public.audit_logs where source = 'application'"
    ).fetchone()[0]
    assert audit == len(users)
    assert all(customer_state(conn, u)["plan_id"] == plans["Pro"] for u in users)


def test_a_migration_holding_the_requests_stops_the_claim_in_time(
    db_url, conn, plans, user, stripe, factory
) -> None:
    """The claim takes the table's lock while it is planned: its lock timeout has to be set
    before it, or the drain's thread would wait for as long as a migration holds the table.
    Should it wait after all, the server ends the locking session after 3 s, so the test
    fails on the time rather than hanging. The request stays pending and is applied later."""
    stripe.send(subscribed(factory, "cus_1", "price_pro", "sub_1"))
    app_writes(conn, user, "cus_1")
    migration = psycopg.connect(db_url)
    try:
        migration.execute("set idle_in_transaction_session_timeout = '3s'")
        migration.execute("lock table webhook_private.link_requests in access exclusive mode")
        started = time.monotonic()
        with (
            psycopg.connect(db_url, autocommit=True) as own,
            pytest.raises(psycopg.errors.LockNotAvailable),
        ):
            application_links.apply_pending(own, STATUSES, lock_timeout_ms=300)
        waited = time.monotonic() - started
    finally:
        migration.close()
    assert waited < 2.5
    assert requests(conn)[0][-1] == "pending"
    assert drain(conn) == 1
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]


def test_doctor_reports_links_that_wait_or_failed(db_url, conn, plans, make_user) -> None:
    waiting, refused = make_user(), make_user()
    app_writes(conn, waiting, "cus_waiting")
    app_writes(conn, refused, "cus_refused")
    conn.execute(
        "update webhook_private.link_requests set requested_at = now() - interval '5 minutes'"
        " where stripe_customer_id = 'cus_waiting'"
    )
    conn.execute(
        "update webhook_private.link_requests set status = 'failed', error = 'x'"
        " where stripe_customer_id = 'cus_refused'"
    )
    result = CliRunner().invoke(
        cli, ["--database-url", db_url, "doctor"], env={"STRIPE_WEBHOOK_SECRET": "whsec_x"}
    )
    assert result.exit_code == 1, result.output
    assert "FIX  application links waiting for over a minute: 1" in result.output
    assert "FIX  application links that could not be applied: 1" in result.output

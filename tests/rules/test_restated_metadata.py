"""Metadata that an event only carries along is a weaker fact than a new one (migration 018).

A subscription created with `metadata.customer_uuid` names that customer in every later
event. Only its creation, or an update whose `previous_attributes` name metadata, links as
a new fact; the rest restate it: they link a Stripe customer nothing else has linked, and
never undo a link a new fact made (a checkout, the application's write, changed metadata),
whatever their times. Each case is applied one by one and through the queue, in both
payload shapes, and where order could matter, in both orders.
"""

import time
import uuid

import psycopg
import pytest
from apply_ways import STATUSES, WAYS, one_by_one
from stripe_events import API_VERSIONS, MONTH, Delivery, EventFactory

from webhook.rules import accounts, application_links


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    # An hour ago: the application's writes (now) fall between old and new events.
    return EventFactory(request.param, start=int(time.time()) - 3600)


def owner(conn: psycopg.Connection, stripe_id: str = "cus_1") -> uuid.UUID | None:
    return accounts.linked_customer(conn, stripe_id)


def plan_of(conn: psycopg.Connection, user: uuid.UUID) -> int | None:
    return conn.execute("select plan_id from public.customer where uuid = %s", (user,)).fetchone()[
        0
    ]


def subscription(f: EventFactory, kind: str, named: uuid.UUID, at: int, **extra) -> Delivery:
    return f.subscription(
        f"customer.subscription.{kind}", sub_id="sub_1", customer="cus_1", status="active",
        price_ids=["price_pro"], metadata={"customer_uuid": str(named)}, created=at,
        period_start=extra.pop("period_start", at), **extra,
    )  # fmt: skip


def moved_by_the_application(conn: psycopg.Connection, old: uuid.UUID, new: uuid.UUID) -> None:
    """The application moves Stripe customer cus_1 from `old` to `new` (README, Linking)."""
    conn.execute("update public.customer set stripe_customer_id = null where uuid = %s", (old,))
    conn.execute("update public.customer set stripe_customer_id = 'cus_1' where uuid = %s", (new,))
    application_links.apply_pending(conn, STATUSES)


@pytest.mark.parametrize("way", WAYS)
def test_a_routine_event_with_old_metadata_does_not_undo_the_applications_move(
    conn, plans, make_user, factory, way
) -> None:
    """The review's case: billing moved from A to B; next month's renewal update still
    carries `customer_uuid = A` from the subscription's creation."""
    a, b = make_user(), make_user()
    t = factory.clock
    WAYS[way](conn, [subscription(factory, "created", a, t)])
    assert owner(conn) == a and plan_of(conn, a) == plans["Pro"]
    moved_by_the_application(conn, a, b)
    assert owner(conn) == b and plan_of(conn, b) == plans["Pro"]
    renewal = subscription(factory, "updated", a, t + 7200, period_start=t + MONTH,
                           previous_attributes={"current_period_start": t})  # fmt: skip
    WAYS[way](conn, [renewal])
    assert owner(conn) == b
    assert (plan_of(conn, a), plan_of(conn, b)) == (None, plans["Pro"])


@pytest.mark.parametrize("way", WAYS)
def test_changed_metadata_is_a_new_fact_and_moves_the_stripe_customer(
    conn, plans, make_user, factory, way
) -> None:
    a, b = make_user(), make_user()
    t = factory.clock
    WAYS[way](conn, [subscription(factory, "created", a, t)])
    moved_by_the_application(conn, a, b)
    changed = subscription(factory, "updated", a, t + 7200,
                           previous_attributes={"metadata": {"customer_uuid": str(b)}})  # fmt: skip
    WAYS[way](conn, [changed])
    assert owner(conn) == a and plan_of(conn, a) == plans["Pro"]


@pytest.mark.parametrize("way", WAYS)
def test_restated_metadata_links_what_nothing_else_linked(
    conn, plans, make_user, factory, way
) -> None:
    """A subscription from before the service was installed: its first event here is a
    routine update, and its metadata is all that names the customer."""
    a = make_user()
    WAYS[way](conn, [subscription(factory, "updated", a, factory.clock,
                                  previous_attributes={"status": "trialing"})])  # fmt: skip
    assert owner(conn) == a and plan_of(conn, a) == plans["Pro"]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("order", ["as_created", "reversed"])
def test_a_new_fact_outranks_a_later_restatement_in_any_order(
    conn, plans, make_user, factory, way, order
) -> None:
    a, b = make_user(), make_user()
    t = factory.clock
    checkout = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(a), created=t
    )
    restating_b = subscription(factory, "updated", b, t + 10,
                               previous_attributes={"status": "trialing"})  # fmt: skip
    deliveries = [checkout, restating_b]
    WAYS[way](conn, deliveries if order == "as_created" else deliveries[::-1])
    assert owner(conn) == a
    assert (plan_of(conn, a), plan_of(conn, b)) == (plans["Pro"], None)


def test_sync_restates_and_never_undoes_a_newer_or_older_new_fact(conn, make_user) -> None:
    """What sync does with the metadata it reads (sync/subscriptions._link)."""
    a, b = make_user(), make_user()
    accounts.link(conn, "cus_1", a, "evt_checkout", 1_700_000_000)
    assert accounts.link(conn, "cus_1", b, "sync", 1_800_000_000, restated=True) == {a}
    assert owner(conn) == a
    # A restated link is replaced by a later restatement and by any new fact.
    accounts.link(conn, "cus_2", b, "sync", 1_800_000_000, restated=True)
    accounts.link(conn, "cus_2", a, "sync", 1_800_000_100, restated=True)
    assert owner(conn, "cus_2") == a
    accounts.link(conn, "cus_2", b, "evt_old_checkout", 1_600_000_000)
    assert owner(conn, "cus_2") == b
    assert conn.execute(
        "select restated from webhook_private.customer_links where stripe_customer_id = 'cus_2'"
    ).fetchone() == (False,)


@pytest.mark.parametrize("way", WAYS)
def test_a_change_to_another_metadata_key_restates_customer_uuid(
    conn, plans, make_user, factory, way
) -> None:
    """Stripe's previous_attributes list the metadata keys an update changed: a new `note`
    says nothing new of `customer_uuid`."""
    a, b = make_user(), make_user()
    t = factory.clock
    WAYS[way](conn, [subscription(factory, "created", a, t)])
    moved_by_the_application(conn, a, b)
    noted = subscription(factory, "updated", a, t + 7200,
                         previous_attributes={"metadata": {"note": None}})  # fmt: skip
    WAYS[way](conn, [noted])
    assert owner(conn) == b


@pytest.mark.parametrize("later", [True, False])
@pytest.mark.parametrize("release_first", [True, False])
def test_a_release_says_nothing_of_another_customer(
    conn, plans, make_user, factory, later, release_first
) -> None:
    """The application releases A's Stripe customer; a restatement naming B, before or
    after the release, ends the same in either order: B's."""
    a, b = make_user(), make_user()
    one_by_one(conn, [subscription(factory, "updated", a, factory.clock,
                                   previous_attributes={"status": "trialing"})])  # fmt: skip
    assert owner(conn) == a
    conn.execute("update public.customer set stripe_customer_id = null where uuid = %s", (a,))
    restating_b = factory.customer(
        "customer.updated", customer_id="cus_1", metadata={"customer_uuid": str(b)},
        created=int(time.time()) + (60 if later else -60),
    )  # fmt: skip
    if release_first:
        application_links.apply_pending(conn, STATUSES)
    one_by_one(conn, [restating_b])
    application_links.apply_pending(conn, STATUSES)
    assert owner(conn) == b


def test_a_release_holds_against_its_customers_restated_metadata(
    conn, plans, make_user, factory
) -> None:
    """The application says A has no Stripe customer now; A's metadata on the next renewal
    does not link A again."""
    a = make_user()
    t = factory.clock
    one_by_one(conn, [subscription(factory, "created", a, t)])
    conn.execute("update public.customer set stripe_customer_id = null where uuid = %s", (a,))
    application_links.apply_pending(conn, STATUSES)
    one_by_one(conn, [subscription(factory, "updated", a, t + 7200,
                                   previous_attributes={"status": "past_due"})])  # fmt: skip
    assert owner(conn) is None and plan_of(conn, a) is None


def test_sync_counts_only_the_links_it_made(conn, make_user) -> None:
    from webhook.sync.subscriptions import _link

    a, b = make_user(), make_user()
    accounts.link(conn, "cus_1", a, "evt_checkout", 1_700_000_000)
    assert _link(conn, "cus_1", b, "sync:1", 1_800_000_000, 0, 0) == (0, 0)
    assert _link(conn, "cus_2", b, "sync:1", 1_800_000_000, 0, 0) == (1, 0)


def test_the_customers_column_shows_a_new_facts_link_before_a_restated_one(conn, make_user) -> None:
    a = make_user()
    accounts.link(conn, "cus_old", a, "sync:1", 1_700_000_000, restated=True)
    accounts.link(conn, "cus_new", a, "application", 1_750_000_000)
    accounts.link(conn, "cus_old", a, "evt_renewal", 1_760_000_000, restated=True)
    assert conn.execute(
        "select stripe_customer_id from public.customer where uuid = %s", (a,)
    ).fetchone() == ("cus_new",)


def test_a_release_from_before_018_still_ranks_against_every_fact(conn, make_user) -> None:
    """Such a release does not say whom it released: an older fact for anyone stays out."""
    a, b = make_user(), make_user()
    conn.execute(
        "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid,"
        " event_created, linked_by_event) values ('cus_1', null, to_timestamp(1750000000),"
        " 'application')"
    )
    assert accounts.link(conn, "cus_1", b, "evt_old", 1_700_000_000) == set()
    assert accounts.link(conn, "cus_1", a, "sync:1", 1_760_000_000, restated=True) == set()
    assert owner(conn) is None
    accounts.link(conn, "cus_1", b, "evt_new", 1_760_000_000)
    assert owner(conn) == b

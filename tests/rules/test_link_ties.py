"""Facts about one Stripe customer settle alike in every order: ties and releases.

Stripe's `created` counts whole seconds, so a checkout for one customer and a Stripe
customer created with another's `customer_uuid` can carry the same time. Before, the one
applied last won, so the owner depended on delivery order. Now between two links the
greater event id wins (byte order), and a release wins over a link of the same moment,
as it does when it is applied after one. A release keeps the standing of the link it
ended and is remembered for its customer (migration 021), so another customer's lesser
fact, or the released customer's own stopped fact, ends the same whether it comes before
or after the release. Where events are involved, each case runs one by one and through
the queue, in both payload shapes; the rule's own cases run every order in which each
release follows the link it ends (the application releases only what it sees linked).
"""

import itertools
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from apply_ways import STATUSES, WAYS
from stripe_events import API_VERSIONS, Delivery, EventFactory

from webhook.rules import accounts, application_links

T = 1_750_000_000  # a Stripe `created`, for the rule's own tests


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param, start=int(time.time()) - 3600)


def owner(conn: psycopg.Connection) -> uuid.UUID | None:
    return accounts.linked_customer(conn, "cus_1")


def checkout(f: EventFactory, customer: uuid.UUID, at: int) -> Delivery:
    return f.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(customer), created=at
    )


def created_with_metadata(f: EventFactory, customer: uuid.UUID, at: int) -> Delivery:
    return f.customer(
        "customer.created", customer_id="cus_1", metadata={"customer_uuid": str(customer)},
        created=at,
    )  # fmt: skip


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("reverse", [False, True], ids=["in_order", "reversed"])
def test_a_checkout_and_a_new_stripe_customer_in_one_second_settle_alike(
    conn, make_user, factory, way, reverse
) -> None:
    a, b = make_user(), make_user()
    t = factory.clock
    facts = [checkout(factory, a, t), created_with_metadata(factory, b, t)]
    by_event = {facts[0].event["id"]: a, facts[1].event["id"]: b}
    WAYS[way](conn, facts[::-1] if reverse else facts)
    assert owner(conn) == by_event[max(by_event)]
    shown = conn.execute(
        "select uuid from public.customer where stripe_customer_id = 'cus_1'"
    ).fetchall()
    assert shown == [(owner(conn),)]


def test_every_order_of_three_links_in_one_second_ends_alike(conn, make_user) -> None:
    """Three customers, three facts at one moment, all six orders (the rule itself)."""
    customers = [make_user() for _ in range(3)]
    facts = list(zip(["evt_b", "evt_c", "evt_a"], customers, strict=True))
    results = set()
    for number, order in enumerate(itertools.permutations(facts)):
        stripe_id = f"cus_order_{number}"  # a Stripe customer of its own for each order
        for event_id, customer in order:
            accounts.link(conn, stripe_id, customer, event_id, 1_750_000_000)
        row = conn.execute(
            "select customer_uuid, linked_by_event from webhook_private.customer_links"
            " where stripe_customer_id = %s",
            (stripe_id,),
        ).fetchone()
        results.add(row)
    assert results == {(customers[1], "evt_c")}


@pytest.mark.parametrize("restated", [False, True])
def test_one_customers_two_facts_in_one_second_keep_the_same_record(
    conn, make_user, restated
) -> None:
    """The owner does not change; which fact the row names must not depend on order either."""
    a = make_user()
    records = set()
    for stripe_id, order in (("cus_1", ("evt_1", "evt_2")), ("cus_2", ("evt_2", "evt_1"))):
        for event_id in order:
            accounts.link(conn, stripe_id, a, event_id, 1_750_000_000, restated=restated)
        records.add(
            conn.execute(
                "select customer_uuid, linked_by_event, restated"
                " from webhook_private.customer_links where stripe_customer_id = %s",
                (stripe_id,),
            ).fetchone()
        )
    assert records == {(a, "evt_2", restated)}


@pytest.mark.parametrize("release_first", [False, True])
def test_a_release_wins_over_a_link_of_the_same_moment_in_either_order(
    conn, make_user, release_first
) -> None:
    """The application released A at the very moment an event linked A again."""
    a = make_user()
    moment = datetime.fromtimestamp(1_750_000_000, UTC)
    accounts.link(conn, "cus_1", a, "evt_old", 1_700_000_000)
    steps = [
        lambda: accounts.release(conn, "cus_1", a, moment, "application"),
        lambda: accounts.link(conn, "cus_1", a, "evt_same_second", moment),
    ]
    for step in steps if release_first else steps[::-1]:
        step()
    assert owner(conn) is None
    assert conn.execute(
        "select released_customer from webhook_private.customer_links"
    ).fetchone() == (a,)


def test_a_later_link_still_ends_a_release(conn, make_user) -> None:
    a = make_user()
    accounts.link(conn, "cus_1", a, "evt_old", 1_700_000_000)
    accounts.release(conn, "cus_1", a, datetime.fromtimestamp(1_750_000_000, UTC), "application")
    accounts.link(conn, "cus_1", a, "evt_later", 1_750_000_001)
    assert owner(conn) == a


def test_the_applications_clear_then_set_in_one_statement_keeps_the_link(conn, make_user) -> None:
    """Two writes of one statement (a DO block, a function called over the API): each is
    dated when it is made, so the later one, setting the column again, stands (the
    review's case; both took the statement's one moment before migration 020)."""
    c = make_user()
    conn.execute("update public.customer set stripe_customer_id = 'cus_1' where uuid = %s", (c,))
    application_links.apply_pending(conn, STATUSES)
    conn.execute(
        f"""do $$ begin
              update public.customer set stripe_customer_id = null where uuid = '{c}';
              update public.customer set stripe_customer_id = 'cus_1' where uuid = '{c}';
            end $$"""
    )
    application_links.apply_pending(conn, STATUSES)
    shown = conn.execute(
        "select stripe_customer_id from public.customer where uuid = %s", (c,)
    ).fetchone()[0]
    assert (owner(conn), shown) == (c, "cus_1")


def orders_where_the_release_follows_its_link(count: int) -> list[tuple[int, ...]]:
    """Orders of facts 0..count-1 in which fact 0 (a link) comes before fact 1 (the
    application's release of it): the release is made from what the application saw."""
    return [o for o in itertools.permutations(range(count)) if o.index(0) < o.index(1)]


def release(conn: psycopg.Connection, stripe_id: str, customer: uuid.UUID, at: datetime) -> None:
    """The application's release, as application_links applies it."""
    accounts.release(conn, stripe_id, customer, at, "application")
    accounts.show_latest_link(conn, customer)


def owners_by_order(conn: psycopg.Connection, steps, prefix: str) -> dict:
    """The owner each order of `steps` ends with, on a Stripe customer of its own."""
    ends: dict = {}
    for number, order in enumerate(orders_where_the_release_follows_its_link(len(steps))):
        stripe_id = f"{prefix}_{number}"
        for index in order:
            steps[index](stripe_id)
        ends.setdefault(accounts.linked_customer(conn, stripe_id), []).append(order)
    return ends


@pytest.mark.parametrize("rival_restated", [True, False], ids=["restated", "older_new_fact"])
def test_a_rival_lesser_than_the_released_link_ends_alike_in_every_order(
    conn, make_user, rival_restated
) -> None:
    """A linked by a checkout (T+10); the application releases A (T+20); D's fact is
    lesser than A's link: a routine event's metadata later than it, or a new fact older
    than it (T). Applied before the release it lost to A's link; after, it used to
    replace the release. Now nobody, in every order."""
    a, d = make_user(), make_user()
    release_at = datetime.fromtimestamp(T + 20, UTC)
    rival_at = T + 15 if rival_restated else T
    steps = [
        lambda s: accounts.link(conn, s, a, "evt_checkout", T + 10),
        lambda s: release(conn, s, a, release_at),
        lambda s: accounts.link(conn, s, d, "evt_rival", rival_at, restated=rival_restated),
    ]
    assert owners_by_order(conn, steps, "cus_rival") == {
        None: orders_where_the_release_follows_its_link(3)
    }


def test_a_rival_greater_than_the_released_link_takes_it_in_every_order(conn, make_user) -> None:
    a, d = make_user(), make_user()
    steps = [
        lambda s: accounts.link(conn, s, a, "evt_checkout", T),
        lambda s: release(conn, s, a, datetime.fromtimestamp(T + 20, UTC)),
        lambda s: accounts.link(conn, s, d, "evt_new_checkout", T + 10),
    ]
    assert owners_by_order(conn, steps, "cus_greater") == {
        d: orders_where_the_release_follows_its_link(3)
    }


def test_three_facts_of_one_second_end_alike_in_every_order(conn, make_user) -> None:
    """A linked (evt_b), A released, D linked (evt_a), all in one second."""
    a, d = make_user(), make_user()
    moment = datetime.fromtimestamp(T, UTC)
    steps = [
        lambda s: accounts.link(conn, s, a, "evt_b", T),
        lambda s: release(conn, s, a, moment),
        lambda s: accounts.link(conn, s, d, "evt_a", T),
    ]
    assert owners_by_order(conn, steps, "cus_second") == {
        None: orders_where_the_release_follows_its_link(3)
    }


@pytest.mark.parametrize("way", WAYS)
def test_the_applications_move_still_takes_a_stripe_customer_a_checkout_linked(
    conn, make_user, factory, way
) -> None:
    """Billing moved from A to B by the application (clear A, set B): B's write is newer
    than the checkout that linked A, so it outranks the link the release ended."""
    a, b = make_user(), make_user()
    WAYS[way](conn, [checkout(factory, a, factory.clock)])
    conn.execute("update public.customer set stripe_customer_id = null where uuid = %s", (a,))
    conn.execute("update public.customer set stripe_customer_id = 'cus_1' where uuid = %s", (b,))
    application_links.apply_pending(conn, STATUSES)
    assert owner(conn) == b


def test_a_release_from_before_021_lets_any_link_to_another_customer_replace_it(
    conn, make_user
) -> None:
    """Such a release does not say what it ended: the rule before 021 holds for it."""
    a, d = make_user(), make_user()
    conn.execute(
        "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid,"
        " event_created, linked_by_event, released_customer) values"
        " ('cus_1', null, to_timestamp(%s), 'application', %s)",
        (T + 20, a),
    )
    accounts.link(conn, "cus_1", d, "sync:1", T, restated=True)
    assert owner(conn) == d


@pytest.mark.parametrize(
    "order",
    [(0, 1, 2, 3), (0, 1, 3, 2), (0, 2, 1, 3), (2, 0, 1, 3)],
    ids=lambda o: "".join(map(str, o)),
)
def test_a_release_stops_its_customers_older_facts_whoever_holds_the_stripe_customer(
    conn, make_user, order
) -> None:
    """X's checkout (T) is released by the application (T+20); late events bring Y's
    checkout (T+10) and X's subscription creation (T+15). X's fact at T+15 is not newer
    than X's release, so Y ends with the Stripe customer in every order: also after Y's
    link replaced the release, or where the release found Y holding it (migration 021)."""
    x, y = make_user(), make_user()
    facts = [
        lambda: accounts.link(conn, "cus_1", x, "evt_x_checkout", T),
        lambda: release(conn, "cus_1", x, datetime.fromtimestamp(T + 20, UTC)),
        lambda: accounts.link(conn, "cus_1", y, "evt_y_checkout", T + 10),
        lambda: accounts.link(conn, "cus_1", x, "evt_x_subscription", T + 15),
    ]
    for index in order:
        facts[index]()
    assert owner(conn) == y
    assert conn.execute(
        "select uuid from public.customer where stripe_customer_id = 'cus_1'"
    ).fetchall() == [(y,)]


def test_a_newer_fact_links_a_released_customer_again(conn, make_user) -> None:
    x, y = make_user(), make_user()
    accounts.link(conn, "cus_1", x, "evt_x_checkout", T)
    release(conn, "cus_1", x, datetime.fromtimestamp(T + 20, UTC))
    accounts.link(conn, "cus_1", y, "evt_y_checkout", T + 10)
    accounts.link(conn, "cus_1", x, "evt_x_new_checkout", T + 30)
    assert owner(conn) == x

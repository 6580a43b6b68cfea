"""Migration 019: the rows events and spends change are rewritten on their own page.

A heap-only (HOT) update writes no index entry; with a million customers the index
entries and pages a moved row touches are most of the WAL and cache misses an applied
event costs. It takes two things: no changed column is indexed, and the row's page has
room. These tests fill pages the way sign-ups or a sync do, then make the service's own
changes and ask PostgreSQL how each update was done.
"""

import uuid

import psycopg
import pytest

SIGN_UPS = 120


def updates_made(conn: psycopg.Connection, table: str, sql: str, params: tuple) -> tuple[int, int]:
    """Run `sql` and return how many of its updates of `table` were heap-only, and how
    many there were, from the backend's own counters (read before and after, since they
    also hold earlier transactions' counts until the backend reports them)."""
    counters = (
        "select pg_stat_get_xact_tuples_hot_updated(%s::regclass),"
        "       pg_stat_get_xact_tuples_updated(%s::regclass)"
    )
    with conn.transaction():
        hot_before, all_before = conn.execute(counters, (table, table)).fetchone()
        conn.execute(sql, params)
        hot_after, all_after = conn.execute(counters, (table, table)).fetchone()
    return hot_after - hot_before, all_after - all_before


def first_page_rows(conn: psycopg.Connection, table: str, key: str) -> list:
    """The keys of the rows on the table's first page, which later inserts filled."""
    return [
        row[0]
        for row in conn.execute(
            f"select {key} from {table} where (ctid::text::point)[0] = 0 order by ctid"
        )
    ]


@pytest.fixture
def signed_up(conn, make_user) -> list[uuid.UUID]:
    """Enough sign-ups to fill several of the customer table's pages, first page first."""
    for _ in range(SIGN_UPS):
        make_user()
    rows = first_page_rows(conn, "public.customer", "uuid")
    assert 0 < len(rows) < SIGN_UPS, "the customers should span several pages"
    return rows


def test_the_tables_keep_room_for_updates(conn) -> None:
    options = dict(
        conn.execute(
            "select oid::regclass::text, reloptions from pg_class"
            " where oid in ('public.customer'::regclass, 'webhook_private.subscriptions'::regclass)"
        ).fetchall()
    )
    assert options == {
        "customer": ["fillfactor=90"],
        "webhook_private.subscriptions": ["fillfactor=90"],
    }


def page_of(conn: psycopg.Connection, customer: uuid.UUID) -> int:
    """The heap page holding the customer's current row version."""
    return conn.execute(
        "select (ctid::text::point)[0]::int from public.customer where uuid = %s", (customer,)
    ).fetchone()[0]


def test_a_plan_change_on_a_full_page_keeps_the_row_on_its_page(conn, plans, signed_up) -> None:
    """`plan_id` is indexed (its foreign key wants it), so the index entries are new, but
    the row's new version, grown by the plan's resources, stays where the row was."""
    customer = signed_up[0]
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Pro"], customer)
    )
    assert page_of(conn, customer) == 0
    resources = conn.execute(
        "select remaining_resources from public.customer where uuid = %s", (customer,)
    ).fetchone()[0]
    assert resources == {"api_calls": 5000, "storage_gb": 50}


def test_spending_resources_is_an_update_in_place(conn, plans, signed_up) -> None:
    """Customers who all have a plan, packed as an import or a restore writes them."""
    conn.execute("update public.customer set plan_id = %s", (plans["Basic"],))
    conn.execute("vacuum full public.customer")
    customer = first_page_rows(conn, "public.customer", "uuid")[0]
    spend = "select public.consume_resources(%s, 'api_calls', 10)"
    assert updates_made(conn, "public.customer", spend, (customer,)) == (1, 1)
    left = conn.execute(
        "select remaining_resources ->> 'api_calls' from public.customer where uuid = %s",
        (customer,),
    ).fetchone()[0]
    assert left == "990"


def test_a_mirror_update_on_a_full_page_is_an_update_in_place(conn) -> None:
    conn.execute(
        """
        insert into webhook_private.subscriptions
               (id, stripe_customer_id, status, price_ids, order_key, event_id)
        select 'sub_' || n, 'cus_' || n, 'active', array['price_basic'], array[n], 'evt_' || n
          from generate_series(1, %s) n
        """,
        (SIGN_UPS * 2,),
    )
    subscription = first_page_rows(conn, "webhook_private.subscriptions", "id")[0]
    renewal = """
        update webhook_private.subscriptions
           set status = 'past_due', price_ids = array['price_pro'],
               order_key = array[1000000], event_id = 'evt_renewal', updated_at = now()
         where id = %s
    """
    assert updates_made(conn, "webhook_private.subscriptions", renewal, (subscription,)) == (1, 1)

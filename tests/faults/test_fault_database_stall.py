"""PostgreSQL up but stalled: a session holds the inbox's lock (as a migration rewriting
it would) while Stripe keeps delivering.

The deliveries get 503 after WEB_STORE_TIMEOUT_MS rather than hanging until Stripe gives
up, new ones get 503 at once while the stuck insert has not come back, and once the lock
is released Stripe's retries are accepted. The end is exactly the in-order one: the event
whose late insert committed is found stored by its redelivery, nothing is lost or doubled.
"""

from __future__ import annotations

import time

import psycopg
from faultkit import (
    all_deliveries,
    check_invariant,
    histories,
    post,
    prepare,
    redeliver_until_accepted,
    shuffled,
    wait_until,
)
from stripe_events import Delivery

STORE_TIMEOUT_MS = 500


def test_a_stalled_inbox_answers_503_in_time_and_redelivery_loses_nothing(
    db_url, conn, gunicorn, in_order
) -> None:
    hs = histories(3, seed=61)
    expected = in_order(hs)
    prepare(db_url, hs)
    order = shuffled(all_deliveries(hs), seed=4)
    web = gunicorn(db_url, workers=1, WEB_STORE_TIMEOUT_MS=str(STORE_TIMEOUT_MS))
    before = order[: len(order) // 2]
    stalled, meanwhile, *after = order[len(order) // 2 :]
    assert {post(web.port, d).status for d in before} == {200}

    with psycopg.connect(db_url) as migration:
        migration.execute("lock table webhook_private.events in access exclusive mode")
        started = time.monotonic()
        first = post(web.port, stalled)
        waited = time.monotonic() - started
        started = time.monotonic()
        second = post(web.port, meanwhile)
        refused_in = time.monotonic() - started
        wait_until(lambda: _waits_for_the_lock(conn), "the late insert to wait for the lock")
        migration.rollback()

    assert first.status == 503, first
    assert STORE_TIMEOUT_MS / 1000 <= waited < 5
    assert second.status == 503, second
    assert refused_in < STORE_TIMEOUT_MS / 1000  # refused at once, not after its own wait
    redeliver_until_accepted([web.port], [stalled, meanwhile, *after])
    check_invariant(conn, hs, expected)


def test_under_gthread_a_stalled_inbox_answers_503_in_time_and_redelivery_loses_nothing(
    db_url, conn, gunicorn, in_order
) -> None:
    """The threaded worker: its request thread waits in the insert itself, so the insert is
    cancelled at its deadline (web/store_deadline.py) and nothing is stored late."""
    hs = histories(3, seed=62)
    expected = in_order(hs)
    prepare(db_url, hs)
    order = shuffled(all_deliveries(hs), seed=5)
    web = gunicorn(db_url, workers=1, WEB_WORKER_CLASS="gthread",
                   WEB_STORE_TIMEOUT_MS=str(STORE_TIMEOUT_MS))  # fmt: skip
    before = order[: len(order) // 2]
    stalled, *after = order[len(order) // 2 :]
    assert {post(web.port, d).status for d in before} == {200}

    with psycopg.connect(db_url) as migration:
        # Should the insert not be cancelled, the server ends this session after 5 s and
        # the test fails on the time rather than hanging.
        migration.execute("set idle_in_transaction_session_timeout = '5s'")
        migration.execute("lock table webhook_private.events in access exclusive mode")
        started = time.monotonic()
        first = post(web.port, stalled)
        waited = time.monotonic() - started
        migration.rollback()

    assert first.status == 503, first
    assert STORE_TIMEOUT_MS / 1000 <= waited < 4
    assert not _stored(conn, stalled)  # cancelled, not committed late
    redeliver_until_accepted([web.port], [stalled, *after])
    check_invariant(conn, hs, expected)


def _stored(conn: psycopg.Connection, delivery: Delivery) -> bool:
    row = conn.execute(
        "select count(*) from webhook_private.events where id = %s", (delivery.id,)
    ).fetchone()
    return row[0] > 0


def _waits_for_the_lock(conn: psycopg.Connection) -> bool:
    """Whether the worker's insert is still waiting for the lock (so it lands late)."""
    row = conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and wait_event_type = 'Lock' and pid <> pg_backend_pid()"
        " and query like '%%insert into webhook_private.events%%'"
    ).fetchone()
    return row[0] > 0

"""Queued mode on a bad day: a drain killed mid-batch, a poison event, requests that never
wait for a busy customer.

The web processes store and answer; the drains are `python -m webhook drain` processes
(WEB_DRAIN=off on the web), so a test can kill one without touching the web.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
from databases import refuse_writes
from faultkit import (
    all_deliveries,
    check_invariant,
    histories,
    holding_customer_lock,
    post,
    prepare,
    redeliver_until_accepted,
    run_concurrently,
    shuffled,
    snapshot,
    wait_until,
    wait_until_drained,
)
from servers import base_env
from webhook_support import SECRET


def start_drain(db_url: str, *args: str) -> subprocess.Popen:
    env = base_env(DATABASE_URL=db_url, STRIPE_WEBHOOK_SECRET=SECRET, DB_LOCK_TIMEOUT_MS="60000")
    return subprocess.Popen(
        [sys.executable, "-m", "webhook", "drain", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def row_lock_waiters(conn: psycopg.Connection) -> set[int]:
    rows = conn.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and wait_event_type = 'Lock' and wait_event in ('transactionid', 'tuple')"
    ).fetchall()
    return {row[0] for row in rows}


def queue_state(conn: psycopg.Connection) -> tuple[int, int]:
    """(events waiting, attempts recorded)."""
    waiting = conn.execute(
        "select count(*) from webhook_private.events where status = 'received'"
    ).fetchone()[0]
    attempts = conn.execute("select count(*) from webhook_private.event_attempts").fetchone()[0]
    return waiting, attempts


def test_a_drain_killed_mid_batch_returns_its_events_to_the_queue(
    db_url, conn, gunicorn, in_order
) -> None:
    hs = histories(3, seed=51)
    expected = in_order(hs)
    prepare(db_url, hs)
    web = gunicorn(db_url, workers=1, WEB_DRAIN="off")
    for delivery in all_deliveries(hs):
        assert post(web.port, delivery).status == 200
    assert queue_state(conn) == (len(all_deliveries(hs)), 0)

    # A customer row locked elsewhere: the drain's batch stops at it, mid-transaction.
    user = hs[0].user
    with psycopg.connect(db_url) as holder:
        holder.execute("select 1 from public.customer where uuid = %s for update", (user,))
        drain = start_drain(db_url)
        wait_until(lambda: row_lock_waiters(conn), "the drain to wait inside its batch")
        os.kill(drain.pid, signal.SIGKILL)
        drain.wait(10)
        holder.rollback()
    # The killed drain's backend ends and its transaction rolls back: nothing was applied.
    wait_until(lambda: not row_lock_waiters(conn), "the killed drain's backend to end")
    wait_until(
        lambda: queue_state(conn) == (len(all_deliveries(hs)), 0),
        "every event back in the queue, none applied",
    )

    again = start_drain(db_url, "--once")
    assert again.wait(60) == 0
    check_invariant(conn, hs, expected)


def test_a_poison_event_fails_alone_and_the_batch_goes_on(db_url, conn, gunicorn, in_order) -> None:
    hs = histories(3, seed=52)
    expected = in_order(hs)
    prepare(db_url, hs)
    poisoned = hs[1].subscription
    refuse_writes(conn, "webhook_private.subscriptions", f"new.id = '{poisoned}'",
                  "poisoned by the test", schema="public")  # fmt: skip
    web = gunicorn(db_url, workers=1, WEB_DRAIN="off")
    replies = run_concurrently(
        [lambda d=d: post(web.port, d) for d in shuffled(all_deliveries(hs), seed=8)]
    )
    assert {r.status for r in replies} == {200}
    drain = start_drain(db_url, "--once")
    assert drain.wait(60) == 0

    rows = conn.execute(
        "select object_id, status, error from webhook_private.events"
        " where type like 'customer.subscription.%'"
    ).fetchall()
    failed = {(obj, error) for obj, status, error in rows if status == "failed"}
    assert {obj for obj, _ in failed} == {poisoned}
    assert all("poisoned by the test" in error for _, error in failed)
    settled = {status for obj, status, _ in rows if obj != poisoned}
    assert settled <= {"processed", "ignored"}
    # Everyone else ends as in-order delivery ends.
    others = {h.user for h in hs if h.subscription != poisoned}
    assert [row for row in snapshot(conn).customers if row[0] in others] == [
        row for row in expected.customers if row[0] in others
    ]


def test_a_busy_customer_never_delays_an_answer(db_url, conn, gunicorn, in_order) -> None:
    hs = histories(2, seed=53)
    expected = in_order(hs)
    prepare(db_url, hs)
    web = gunicorn(db_url, workers=1, threads=4)  # with its own drain
    with holding_customer_lock(db_url, hs[0].customer):
        replies = [post(web.port, d, timeout=5) for d in all_deliveries(hs)]
        assert {r.status for r in replies} == {200}
        assert {r.body["status"] for r in replies} <= {"received", "processed", "ignored"}
        # The other customer's events are applied meanwhile; the held one's wait.
        wait_until(
            lambda: (
                conn.execute(
                    "select count(*) from webhook_private.events where status = 'received'"
                    " and payload->'data'->'object'->>'customer' = %s",
                    (hs[1].customer,),
                ).fetchone()[0]
                == 0
            ),
            "the free customer's events to be applied",
        )
    wait_until_drained(conn)
    redeliver_until_accepted([web.port], shuffled(all_deliveries(hs), seed=9))
    check_invariant(conn, hs, expected)

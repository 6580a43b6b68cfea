"""A gunicorn worker killed with SIGKILL in the middle of applying events (inline mode).

The test holds the advisory lock the processor takes per Stripe customer, so two
deliveries stop inside their transactions, after storing the event and before applying
it. The worker serving them is then killed outright. Nothing of either event may remain
(the transactions die with the connections), gunicorn replaces the worker, and Stripe's
retry applies each event once.
"""

from __future__ import annotations

import os
import signal

from faultkit import (
    Background,
    all_deliveries,
    check_invariant,
    child_pids,
    histories,
    holding_customer_lock,
    inbox_ids,
    lock_waiters,
    post,
    prepare,
    redeliver_until_accepted,
    shuffled,
    snapshot,
    wait_until,
)


def backends(conn) -> set[int]:
    return {row[0] for row in conn.execute("select pid from pg_stat_activity")}


def test_a_worker_killed_mid_request_leaves_nothing_half_applied(
    db_url, conn, gunicorn, in_order
) -> None:
    # Two users; each history ends with the upgrade to Pro, which is the event in flight.
    hs = histories(2, seed=21, cuts=(5, 5))
    expected = in_order(hs)
    prepare(db_url, hs)
    server = gunicorn(
        db_url,
        workers=1,
        threads=4,
        DB_LOCK_TIMEOUT_MS="60000",
        WEBHOOK_APPLY="inline",
    )

    victims = [h.deliveries[-1] for h in hs]
    assert {v.type for v in victims} == {"customer.subscription.updated"}
    before = [d for h in hs for d in h.deliveries[:-1]]
    for delivery in before:
        assert post(server.port, delivery).status == 200
    state_before = snapshot(conn)
    assert {row[1] for row in state_before.customers} == {"Basic"}

    [worker] = child_pids(server.master)
    with (
        holding_customer_lock(db_url, hs[0].customer),
        holding_customer_lock(db_url, hs[1].customer),
    ):
        in_flight = [Background(lambda v=v: post(server.port, v, timeout=60)) for v in victims]
        waiting = wait_until(
            lambda: len(lock_waiters(conn)) == 2 and lock_waiters(conn),
            "both deliveries to wait for their customer's lock",
        )
        # Stored in the inbox by now, but not committed: nobody else can see them.
        assert not inbox_ids(conn) & {v.id for v in victims}
        os.kill(worker, signal.SIGKILL)
        for request in in_flight:
            kind, value = request.outcome()
            assert kind == "raised" and isinstance(value, OSError), (
                f"the request served by the killed worker got an answer: {value!r}"
            )
    # The locks are released: the orphaned backends get them, find their client gone and
    # end, rolling their transactions back.
    wait_until(lambda: not (waiting & backends(conn)), "the killed worker's backends to end")

    assert not inbox_ids(conn) & {v.id for v in victims}, "a killed request left its event"
    attempts = conn.execute(
        "select count(*) from webhook_private.event_attempts where event_id = any(%s)",
        ([v.id for v in victims],),
    ).fetchone()[0]
    assert attempts == 0
    assert snapshot(conn) == state_before, "a killed request changed rows"

    # gunicorn starts a new worker in its place.
    server.wait_healthy()
    assert child_pids(server.master) - {worker}, "no new worker"
    assert worker not in child_pids(server.master)

    # Stripe retries each killed delivery: applied now, once; then it redelivers everything.
    retried = redeliver_until_accepted([server.port], victims)
    assert [r.body["duplicate"] for r in retried] == [False, False]
    again = redeliver_until_accepted([server.port], shuffled(all_deliveries(hs), seed=3))
    assert all(r.body["duplicate"] for r in again)

    check_invariant(conn, hs, expected)

"""The connection pool exhausted: requests wait a bounded time, then 503; nothing hangs.

Inline mode, where a request holds its connection while it applies the event. (In the
default queued mode no request waits on a lock: test_fault_queued.py.)

One pooled connection (DB_POOL_MAX_SIZE=1, DB_POOL_TIMEOUT=1) is held by a delivery that
waits on a customer lock the test holds. Deliveries for other customers arriving
meanwhile must each be answered 503 with Retry-After within the client's bound, and
store nothing. Once the lock is released, the held delivery completes, Stripe's retries
go through, and every event ends applied once with the in-order result.
"""

from __future__ import annotations

from faultkit import (
    Background,
    all_deliveries,
    check_invariant,
    histories,
    holding_customer_lock,
    inbox_ids,
    lock_waiters,
    post,
    prepare,
    redeliver_until_accepted,
    run_concurrently,
    shuffled,
    wait_until,
)

# The client gives up after this long; a request still unanswered by then has hung.
ANSWER_WITHIN_SECONDS = 10.0


def test_requests_beyond_the_pool_get_503_within_a_bound_and_are_applied_once_later(
    db_url, conn, gunicorn, in_order
) -> None:
    hs = histories(3, seed=31)
    expected = in_order(hs)
    prepare(db_url, hs)
    server = gunicorn(
        db_url,
        workers=1,
        threads=6,
        DB_POOL_MIN_SIZE="1",
        DB_POOL_MAX_SIZE="1",
        DB_POOL_TIMEOUT="1",
        DB_LOCK_TIMEOUT_MS="60000",
        WEBHOOK_APPLY="inline",
    )
    holder = hs[0].deliveries[0]
    others = [h.deliveries[i] for h in hs[1:] for i in (0, 1)]

    with holding_customer_lock(db_url, hs[0].customer):
        held = Background(lambda: post(server.port, holder, timeout=60))
        wait_until(lambda: lock_waiters(conn), "the first delivery to hold the only connection")

        replies = run_concurrently(
            [lambda d=d: post(server.port, d, timeout=ANSWER_WITHIN_SECONDS) for d in others]
        )
        assert [r.status for r in replies] == [503] * len(others), replies
        for reply in replies:
            assert reply.headers.get("retry-after"), reply
            assert "error" in reply.body, reply
        assert not inbox_ids(conn) & {d.id for d in others}, "a refused delivery was stored"
        assert held.running(), "the delivery holding the connection gave up"

    reply = held.result()
    assert reply.status == 200 and reply.body["duplicate"] is False, reply

    # Stripe retries the refused ones, and then delivers everything else in its own order.
    retried = redeliver_until_accepted([server.port], others)
    assert not any(r.body["duplicate"] for r in retried)
    redeliver_until_accepted([server.port], shuffled(all_deliveries(hs), seed=4))

    check_invariant(conn, hs, expected)

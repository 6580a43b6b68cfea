"""PostgreSQL stopped for a few seconds in the middle of a load, then started again.

The test's own embedded server (never the shared one) is stopped with `pg_ctl stop -m fast`
while two senders post every event to a gunicorn, each in its own shuffled order. While
it is down, deliveries must get 503 with Retry-After (Stripe retries those) and /readyz
must say the service is unavailable. Once it is back, /readyz recovers, redelivering what
failed succeeds, and the result is exactly the in-order one: nothing lost, nothing doubled.
"""

from __future__ import annotations

import threading
import time

import psycopg
from faultkit import (
    Reply,
    all_deliveries,
    check_invariant,
    histories,
    post,
    prepare,
    redeliver_until_accepted,
    run_concurrently,
    shuffled,
    wait_until,
)

OUTAGE_SECONDS = 3.0
DURING_OUTAGE = 4  # deliveries each sender makes while the database is down


def test_requests_during_a_database_outage_get_503_and_redelivery_loses_nothing(
    private_postgres, gunicorn, in_order
) -> None:
    hs = histories(4, seed=11)
    events = all_deliveries(hs)
    expected = in_order(hs)
    prepare(private_postgres.url, hs)
    server = gunicorn(private_postgres.url, threads=4, DB_POOL_TIMEOUT="1", DB_POOL_MAX_SIZE="4")
    assert server.get("/readyz").status == 200

    answered: list[tuple[str, Reply | OSError]] = []
    while_down: list[Reply | OSError] = []  # sent and answered with the database stopped
    warmed_up = threading.Barrier(3)
    sent_into_outage = threading.Barrier(3)
    stopped = threading.Event()
    outage_over = threading.Event()

    def deliver(delivery) -> None:
        down = stopped.is_set() and not outage_over.is_set()
        try:
            reply: Reply | OSError = post(server.port, delivery)
        except OSError as exc:  # recorded: the test fails on it below
            reply = exc
        answered.append((delivery.id, reply))
        if down:
            while_down.append(reply)

    def sender(order: list) -> None:
        """A third of its order; then on without a pause while the database is stopped, until
        a few deliveries were made after it went down; then, once it is back, the rest."""
        third = len(order) // 3
        for delivery in order[:third]:
            deliver(delivery)
        warmed_up.wait(timeout=60)
        position, after_stop = third, 0
        while after_stop < DURING_OUTAGE and position < len(order):
            down = stopped.is_set()
            deliver(order[position])
            position += 1
            after_stop += down
        sent_into_outage.wait(timeout=60)
        assert outage_over.wait(timeout=60)
        for delivery in order[position:]:
            deliver(delivery)

    def operator() -> Reply:
        try:
            return outage()
        except BaseException:
            # Do not leave the senders waiting for an outage that will not come.
            warmed_up.abort()
            sent_into_outage.abort()
            outage_over.set()
            raise

    def outage() -> Reply:
        """Stops PostgreSQL under load, asks /readyz, starts it again a few seconds later."""
        warmed_up.wait(timeout=60)
        private_postgres.stop()
        stopped.set()
        stopped_at = time.monotonic()
        during = server.get("/readyz", timeout=15)
        sent_into_outage.wait(timeout=60)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
        private_postgres.start()
        outage_over.set()
        return during

    try:
        readyz = run_concurrently(
            [
                lambda: sender(shuffled(events, seed=1)),
                lambda: sender(shuffled(events, seed=2)),
                operator,
            ],
            timeout=120,
        )[2]
    finally:
        outage_over.set()
        if not private_postgres.running:
            private_postgres.start()

    # While the database was down, readiness said so.
    assert readyz.status == 503, readyz
    assert readyz.body["status"] == "unavailable", readyz.body

    # Every request got an answer, and only 200 (stored) or 503 (retry later).
    dropped = [(event_id, r) for event_id, r in answered if not isinstance(r, Reply)]
    assert not dropped, f"requests without an answer: {dropped}"
    statuses = sorted({r.status for _, r in answered})
    unexpected = [(e, r) for e, r in answered if r.status not in (200, 503)]
    assert set(statuses) <= {200, 503}, (unexpected, server.process.tail())  # the traceback
    assert while_down, "no delivery was made while the database was down"
    assert [r.status for r in while_down] == [503] * len(while_down), while_down
    unavailable = [r for _, r in answered if r.status == 503]
    assert all(r.headers.get("retry-after") for r in unavailable), unavailable
    assert all("error" in r.body for r in unavailable), unavailable
    assert any(r.status == 200 for _, r in answered)

    # The service becomes ready again by itself once the database is back.
    wait_until(lambda: server.get("/readyz").status == 200, "/readyz to recover", timeout=45)

    # Stripe redelivers every event it got a 503 for (or no 200 at all); then, as it may,
    # everything once more.
    refused = {event_id for event_id, r in answered if r.status == 503}
    accepted_ids = {event_id for event_id, r in answered if r.status == 200}
    retry = [d for d in events if d.id in refused or d.id not in accepted_ids]
    assert retry
    redeliver_until_accepted([server.port], retry, within=60)
    again = redeliver_until_accepted([server.port], events, within=60)
    assert all(r.body["duplicate"] for r in again), [r.body for r in again]

    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        check_invariant(conn, hs, expected)

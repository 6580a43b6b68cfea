"""Several app instances on one database, and a storm of one event, over real HTTP.

Stripe may deliver one event to two hosts at once (a retry overlapping a slow attempt,
replicas behind a load balancer), and may send the same event many times in a burst.
Locks in the database, not in a process, must make each event count once and end in the
in-order result. Each instance is its own gunicorn (the Procfile's command) on its own
port of 127.0.0.1; the test's requests are concurrent, signed, real HTTP.

tests/web/test_webhook_processes.py covers two instances each posting one ordered sequence;
here each instance gets several concurrent clients in different shuffled orders with
duplicates, and the check is the fault suite's full invariant.
"""

from __future__ import annotations

from collections import Counter

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
    wait_until_drained,
)

STORM = 50


def post_each(port: int, deliveries) -> list[tuple[str, Reply]]:
    return [(d.id, post(port, d)) for d in deliveries]


def test_two_instances_receiving_the_same_events_in_different_orders_apply_each_once(
    db_url, conn, gunicorn, in_order
) -> None:
    hs = histories(4, seed=41)
    events = all_deliveries(hs)
    expected = in_order(hs)
    prepare(db_url, hs)
    instances = [
        gunicorn(db_url, name=name, threads=4, DB_POOL_MAX_SIZE="4") for name in ("a", "b")
    ]

    # Each instance gets every event from two clients at once, each client in its own
    # shuffled order, one of them with every event twice.
    jobs = [
        lambda port=server.port, seed=seed, copies=copies: post_each(
            port, shuffled(events, seed=seed, copies=copies)
        )
        for server, (seed, copies) in zip(
            [*instances, *instances], [(1, 1), (2, 2), (3, 2), (4, 1)], strict=True
        )
    ]
    answers = [answer for job in run_concurrently(jobs, timeout=120) for answer in job]

    assert len(answers) == 6 * len(events)
    refused = [(event_id, r) for event_id, r in answers if r.status != 200]
    assert not refused, refused
    applied = Counter(event_id for event_id, r in answers if not r.body["duplicate"])
    assert applied == Counter({d.id: 1 for d in events}), "each event applied by one request"

    check_invariant(conn, hs, expected)


def test_a_storm_of_fifty_concurrent_deliveries_of_one_event_applies_it_once(
    db_url, conn, gunicorn, in_order
) -> None:
    hs = histories(2, seed=51, cuts=(10, 5))
    expected = in_order(hs)
    prepare(db_url, hs)
    instances = [
        gunicorn(db_url, name=name, threads=8, DB_POOL_MAX_SIZE="8") for name in ("a", "b")
    ]

    # The storm hits the upgrade to Pro, the event that changes the plan; the other user's
    # events and the rest of the first history arrive around it.
    stormed = hs[0].deliveries[4]
    assert stormed.type == "customer.subscription.updated"
    for delivery in hs[0].deliveries[:4]:
        assert post(instances[0].port, delivery).status == 200

    storm = [
        lambda port=instances[i % 2].port: post(port, stormed, timeout=60) for i in range(STORM)
    ]
    around = [
        lambda port=instances[0].port: post_each(port, hs[1].deliveries),
        lambda port=instances[1].port: post_each(port, hs[0].deliveries[5:]),
    ]
    replies = run_concurrently([*storm, *around], timeout=120)
    storm_replies = replies[:STORM]
    others = [reply for job in replies[STORM:] for _, reply in job]

    assert [r.status for r in storm_replies] == [200] * STORM, storm_replies
    assert sorted(r.body["duplicate"] for r in storm_replies) == [False] + [True] * (STORM - 1)
    assert {r.body["id"] for r in storm_replies} == {stormed.id}
    assert [r.status for r in others] == [200] * len(others), others
    wait_until_drained(conn)
    deliveries, attempts = conn.execute(
        "select deliveries, attempts from webhook_private.events where id = %s", (stormed.id,)
    ).fetchone()
    # Applied once. Redeliveries are counted, except those that came while a drain was
    # applying the event (answered from its last status rather than waiting for the batch).
    assert attempts == 1
    assert 1 <= deliveries <= STORM

    redeliver_until_accepted([i.port for i in instances], shuffled(all_deliveries(hs), seed=5))
    check_invariant(conn, hs, expected)

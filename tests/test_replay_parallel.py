"""Replay on several connections ends where replay on one connection ends.

The same backlog in two databases (random histories from test_replay_batch: several
Stripe customers for one user, unknown prices, links by metadata, invoices, other types),
replayed with two workers in one and event by event in the other. Batches are made small
here so that a few dozen events already take the parallel path, and the shares meet on
the user with two Stripe customers.
"""

import random
from collections import Counter

import psycopg
import pytest
from test_replay_batch import RULES, add_team_plan, history, owned_rows, prepare

from webhook import replay
from webhook.errors import DatabaseUnavailable
from webhook.replay import iter_replay, replay_event
from webhook.replay_parallel import split_by_object

ORDER_FREE = ("customers", "subscriptions", "links", "resets")


@pytest.fixture
def small_batches(monkeypatch) -> None:
    monkeypatch.setattr(replay, "BATCH_EVENTS", 4)


@pytest.fixture
def connect(db_url):
    """Opens connections to the test's database, and counts them."""
    opened: Counter = Counter()

    def open_one() -> psycopg.Connection:
        opened["connections"] += 1
        return psycopg.connect(db_url, autocommit=True)

    open_one.opened = opened  # type: ignore[attr-defined]
    return open_one


@pytest.mark.parametrize("seed", range(6))
def test_two_workers_end_where_one_by_one_replay_ends(
    conn, twin, seed, small_batches, connect
) -> None:
    deliveries = history(seed, team_last=seed % 3 == 0)
    for db in (conn, twin):
        prepare(db, deliveries, backlog=True)
        add_team_plan(db)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]
    random.Random(seed).shuffle(ids)

    parallel = list(iter_replay(conn, ids, RULES, connect=connect, workers=2))
    for event_id in ids:
        replay_event(twin, event_id, RULES)

    assert connect.opened["connections"] == 2
    assert sorted(r.event_id for r in parallel) == sorted(ids)  # each reported once
    ours, theirs = owned_rows(conn), owned_rows(twin)
    for table in ORDER_FREE:
        assert ours[table] == theirs[table], table
    # Every event was applied once and settled, in the one attempt each replay made.
    statuses = conn.execute(
        "select count(*) filter (where status in ('processed', 'ignored', 'failed')),"
        " count(*) filter (where attempts <> 1) from webhook_private.events where id = any(%s)",
        (ids,),
    ).fetchone()
    assert statuses == (len(ids), 0)


def test_each_subscriptions_events_stay_in_one_share_in_the_order_given() -> None:
    ids = [f"evt_{n}" for n in range(40)]
    objects = {event_id: f"sub_{n % 7}" for n, event_id in enumerate(ids)}

    shares = split_by_object(ids, objects, 3)

    assert sorted(e for share in shares for e in share) == sorted(ids)
    assert all(share for share in shares)
    for share in shares:
        assert share == [event_id for event_id in ids if event_id in share]  # order kept
    share_of = {event_id: n for n, share in enumerate(shares) for event_id in share}
    for sub in set(objects.values()):
        assert len({share_of[e] for e, s in objects.items() if s == sub}) == 1


def test_a_dry_run_on_two_workers_keeps_nothing(conn, small_batches, connect) -> None:
    deliveries = history(2)
    prepare(conn, deliveries, backlog=True)
    add_team_plan(conn)
    before = owned_rows(conn)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]

    results = list(iter_replay(conn, ids, RULES, dry_run=True, connect=connect, workers=2))

    assert len(results) == len(ids)
    assert owned_rows(conn) == before


def test_a_worker_that_cannot_connect_stops_the_replay_with_its_error(conn, small_batches) -> None:
    deliveries = history(4)
    prepare(conn, deliveries, backlog=True)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]

    def unreachable() -> psycopg.Connection:
        raise DatabaseUnavailable("cannot reach the database at test: refused")

    with pytest.raises(DatabaseUnavailable, match="cannot reach"):
        list(iter_replay(conn, ids, RULES, connect=unreachable, workers=2))
    assert conn.execute(
        "select count(*) from webhook_private.events where id = any(%s) and error = 'backlog'",
        (ids,),
    ).fetchone() == (len(ids),)

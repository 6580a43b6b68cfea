"""Concurrent deliveries stored together: one insert for the threads that meet, the same
answers as storing each on its own, and one bad event never failing the others.

How grouping is made visible and deterministic: tests/inbox_stores.py (the tests allow
one insert in flight unless they say otherwise).
"""

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import psycopg
from inbox_stores import events, held_up, release_later, transaction_ids

from webhook.core.errors import DatabaseUnavailable
from webhook.database.pool import Database
from webhook.pipeline import inbox
from webhook.stripe.payloads import Event
from webhook.web.grouped_store import GroupedStore
from webhook.web.store_deadline import StoreDeadlines


def in_threads(work: Callable[[Event], object], items: list[Event]) -> list[object]:
    """Run work(item) for each item in a thread of its own; results (or errors) in order."""
    results: list[object] = [None] * len(items)

    def run(index: int) -> None:
        try:
            results[index] = work(items[index])
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(items))]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # in this order, so the first one leads
    for thread in threads:
        thread.join(10)
    return results


def test_threads_that_meet_are_stored_with_one_insert(db_url, database, conn):
    store = GroupedStore(database, max_rows=16, in_flight=1)
    first, *others = events(6)
    blocker = held_up(db_url, first)
    waiting = threading.Thread(target=lambda: time.sleep(0.3) or blocker.rollback())
    waiting.start()
    answers = in_threads(store.receive, [first, *others])
    waiting.join()
    blocker.close()

    assert answers == [inbox.Stored(status="received", new=True)] * 6
    xids = transaction_ids(conn, [e.id for e in [first, *others]])
    assert len(set(xids[1:])) == 1, "the five queued behind the first went in together"
    assert xids[0] != xids[1]


def test_a_group_is_never_larger_than_max_rows(db_url, database, conn):
    store = GroupedStore(database, max_rows=2, in_flight=1)
    first, *others = events(5)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = in_threads(store.receive, [first, *others])
    time.sleep(0.1)
    released.join()
    blocker.close()

    assert all(answer == inbox.Stored(status="received", new=True) for answer in answers)
    xids = transaction_ids(conn, [e.id for e in others])
    assert len(set(xids)) == 2  # four queued, two per insert


def test_duplicates_in_one_group_are_stored_once_and_counted(db_url, database, conn):
    store = GroupedStore(database, max_rows=16, in_flight=1)
    first, second, third = events(3)
    stored_before = events(4)[3]
    inbox.receive(conn, stored_before)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = in_threads(store.receive, [first, second, third, second, stored_before])
    released.join()
    blocker.close()

    new = inbox.Stored(status="received", new=True)
    again = inbox.Stored(status="received")
    assert answers == [new, new, new, again, again]
    deliveries = dict(conn.execute("select id, deliveries from webhook_private.events").fetchall())
    assert deliveries == {first.id: 1, second.id: 2, third.id: 1, stored_before.id: 2}


def test_an_event_the_database_refuses_fails_alone(db_url, database, conn):
    store = GroupedStore(database, max_rows=16, in_flight=1)
    first, good, also_good = events(3)
    refused = replace(events(4)[3], text='{"not": json}')
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = in_threads(store.receive, [first, good, refused, also_good])
    released.join()
    blocker.close()

    assert answers[0] == answers[1] == answers[3] == inbox.Stored(status="received", new=True)
    assert isinstance(answers[2], psycopg.errors.InvalidTextRepresentation)
    stored = {row[0] for row in conn.execute("select id from webhook_private.events")}
    assert stored == {first.id, good.id, also_good.id}


def test_an_outage_answers_every_waiting_thread_at_once():
    closed_port = "postgresql://postgres@127.0.0.1:9/none?connect_timeout=1"
    database = Database(closed_port, min_size=0, max_size=2, timeout=1)
    store = GroupedStore(database, max_rows=2, in_flight=1)
    answers = in_threads(store.receive, events(5))
    database.close()
    assert all(isinstance(answer, DatabaseUnavailable) for answer in answers)
    # The first insert's error, handed to all who queued while it waited for a connection
    # (two per group), instead of a wait of DB_POOL_TIMEOUT for each group behind it.
    assert all(answer is answers[0] for answer in answers)


def test_up_to_in_flight_inserts_run_at_once_and_the_rest_group(db_url, database, conn):
    store = GroupedStore(database, max_rows=16, in_flight=2)
    first, second, *others = events(6)
    blockers = [held_up(db_url, first), held_up(db_url, second)]
    # One after the other: the queue goes to whichever insert finishes first, whole.
    released = [release_later(blockers[0], 0.3), release_later(blockers[1], 0.6)]
    answers = in_threads(store.receive, [first, second, *others])
    for timer, blocker in zip(released, blockers, strict=True):
        timer.join()
        blocker.close()

    assert answers == [inbox.Stored(status="received", new=True)] * 6
    xids = transaction_ids(conn, [e.id for e in [first, second, *others]])
    assert len({xids[0], xids[1], xids[2]}) == 3, "the first two were stored at once, alone"
    assert len(set(xids[2:])) == 1, "the four that found both busy went in together"


def test_max_rows_one_stores_each_on_its_own_connection(db_url, database, conn):
    store = GroupedStore(database, max_rows=1)
    first, *others = events(4)
    blocker = held_up(db_url, first)
    # The first waits for the blocker; the others do not wait for the first.
    answers = in_threads(store.receive, others)
    assert answers == [inbox.Stored(status="received", new=True)] * 3
    late = threading.Thread(target=store.receive, args=(first,))
    late.start()
    time.sleep(0.2)
    assert late.is_alive()
    blocker.rollback()
    blocker.close()
    late.join(5)
    xids = transaction_ids(conn, [e.id for e in [first, *others]])
    assert len(set(xids)) == 4


def test_deadlines_answer_a_stalled_inbox_unavailable_and_store_nothing(db_url, database, conn):
    """The threaded workers' bound: a migration holding the inbox's lock gets the insert
    cancelled at its deadline, and the threads queued behind it get the same answer."""
    store = GroupedStore(database, max_rows=2, in_flight=1, deadlines=StoreDeadlines(0.3))
    migration = psycopg.connect(db_url)
    try:
        # Should the insert wait for the lock after all, the server ends this session
        # after 3 s, and the test fails on the answers rather than hanging.
        migration.execute("set idle_in_transaction_session_timeout = '3s'")
        migration.execute("lock table webhook_private.events in access exclusive mode")
        started = time.monotonic()
        answers = in_threads(store.receive, events(5))
        waited = time.monotonic() - started
    finally:
        migration.close()

    assert all(isinstance(answer, DatabaseUnavailable) for answer in answers), answers
    assert all(answer is answers[0] for answer in answers)  # one wait, not one per group
    assert 0.3 <= waited < 3
    assert conn.execute("select count(*) from webhook_private.events").fetchone()[0] == 0
    assert in_threads(store.receive, events(5)) == [inbox.Stored(status="received", new=True)] * 5


def test_deadlines_also_bound_a_store_of_one(db_url, database, conn):
    store = GroupedStore(database, max_rows=1, deadlines=StoreDeadlines(0.3))
    first = events(1)[0]
    blocker = held_up(db_url, first)
    try:
        started = time.monotonic()
        answer = in_threads(store.receive, [first])[0]
        waited = time.monotonic() - started
    finally:
        blocker.close()
    assert isinstance(answer, DatabaseUnavailable), answer
    assert 0.3 <= waited < 3
    assert store.receive(first) == inbox.Stored(status="received", new=True)


def test_a_session_sent_a_cancel_is_closed_and_one_in_time_is_kept(db_url):
    """A cancel can land after its statement ended, on the next one: never reuse it."""
    deadlines = StoreDeadlines(0.3)
    with (
        psycopg.connect(db_url, autocommit=True) as late,
        psycopg.connect(db_url, autocommit=True) as in_time,
    ):
        started = time.monotonic()
        try:
            with deadlines.watch(late):
                late.execute("select pg_sleep(5)")
        except psycopg.errors.QueryCanceled:
            pass
        assert 0.3 <= time.monotonic() - started < 3
        assert late.closed
        with deadlines.watch(in_time):
            in_time.execute("select 1")
        assert not in_time.closed

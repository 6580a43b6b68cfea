"""The event loop's store: deliveries that meet on a worker's loop go in with one insert,
each gets what storing it alone would have said, one bad event never fails the others,
and an outage answers everything queued at once.

How grouping is made visible and deterministic: tests/inbox_stores.py.
"""

import asyncio
import time
from dataclasses import replace

import psycopg
from inbox_stores import events, held_up, release_later, transaction_ids

from webhook.core.errors import DatabaseUnavailable
from webhook.database.pool import Database
from webhook.pipeline import inbox
from webhook.stripe.payloads import Event
from webhook.web.loop_store import LoopStore

NEW = inbox.Stored(status="received", new=True)


def store_all(store: LoopStore, items: list[Event]) -> list[object]:
    """Store the items from concurrent tasks of one loop, in this order; answers or errors."""

    async def all_of_them() -> list[object]:
        tasks = []
        for item in items:
            tasks.append(asyncio.create_task(store.receive(item)))
            await asyncio.sleep(0.02)  # in this order, so the first one is stored first
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        return asyncio.run(all_of_them())
    finally:
        store.close()


def test_deliveries_that_meet_are_stored_with_one_insert(db_url, database, conn):
    store = LoopStore(database, max_rows=16)
    first, *others = events(6)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = store_all(store, [first, *others])
    released.join()
    blocker.close()

    assert answers == [NEW] * 6
    xids = transaction_ids(conn, [e.id for e in [first, *others]])
    assert len(set(xids[1:])) == 1, "the five queued behind the first went in together"
    assert xids[0] != xids[1]


def test_a_group_is_never_larger_than_max_rows(db_url, database, conn):
    store = LoopStore(database, max_rows=2)
    first, *others = events(5)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = store_all(store, [first, *others])
    released.join()
    blocker.close()

    assert answers == [NEW] * 5
    assert len(set(transaction_ids(conn, [e.id for e in others]))) == 2  # two per insert


def test_a_lone_delivery_is_stored_at_once(database, conn):
    store = LoopStore(database, max_rows=16)
    (event,) = events(1)
    started = time.monotonic()
    assert store_all(store, [event]) == [NEW]
    assert time.monotonic() - started < 2
    assert conn.execute("select status from webhook_private.events").fetchall() == [("received",)]


def test_duplicates_in_one_group_are_stored_once_and_counted(db_url, database, conn):
    store = LoopStore(database, max_rows=16)
    first, second, third = events(3)
    stored_before = events(4)[3]
    inbox.receive(conn, stored_before)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = store_all(store, [first, second, third, second, stored_before])
    released.join()
    blocker.close()

    again = inbox.Stored(status="received")
    assert answers == [NEW, NEW, NEW, again, again]
    deliveries = dict(conn.execute("select id, deliveries from webhook_private.events").fetchall())
    assert deliveries == {first.id: 1, second.id: 2, third.id: 1, stored_before.id: 2}


def test_an_event_the_database_refuses_fails_alone(db_url, database, conn):
    store = LoopStore(database, max_rows=16)
    first, good, also_good = events(3)
    refused = replace(events(4)[3], text='{"not": json}')
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = store_all(store, [first, good, refused, also_good])
    released.join()
    blocker.close()

    assert answers[0] == answers[1] == answers[3] == NEW
    assert isinstance(answers[2], psycopg.errors.InvalidTextRepresentation)
    stored = {row[0] for row in conn.execute("select id from webhook_private.events")}
    assert stored == {first.id, good.id, also_good.id}


def test_an_outage_answers_every_queued_delivery_at_once():
    closed_port = "postgresql://postgres@127.0.0.1:9/none?connect_timeout=1"
    database = Database(closed_port, min_size=0, max_size=2, timeout=1)
    store = LoopStore(database, max_rows=2)
    started = time.monotonic()
    answers = store_all(store, events(7))
    database.close()
    assert all(isinstance(answer, DatabaseUnavailable) for answer in answers)
    # The first insert's error, handed to every delivery that queued while it waited for a
    # connection, instead of a wait of DB_POOL_TIMEOUT for each group of two behind it.
    assert all(answer is answers[0] for answer in answers)
    assert time.monotonic() - started < 3


def test_a_delivery_whose_request_went_away_is_still_stored(db_url, database, conn):
    store = LoopStore(database, max_rows=16)
    first, gone, stays = events(3)
    blocker = held_up(db_url, first)
    released = release_later(blocker)

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(store.receive(e)) for e in (first, gone, stays)]
        await asyncio.sleep(0.1)
        tasks[1].cancel()  # its client closed the connection while it waited
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        answers = asyncio.run(scenario())
    finally:
        store.close()
    released.join()
    blocker.close()

    assert answers[0] == answers[2] == NEW
    assert isinstance(answers[1], asyncio.CancelledError)
    stored = {row[0] for row in conn.execute("select id from webhook_private.events")}
    assert stored == {first.id, gone.id, stays.id}  # a redelivery will find it


def test_closing_answers_what_is_still_queued_with_503(db_url, database, conn):
    """A worker stopping (lifespan shutdown) while an insert is on its way: that insert
    lands, the deliveries queued behind it get 503 at once (Stripe sends them again),
    and so does any that arrives afterwards."""
    store = LoopStore(database, max_rows=16)
    first, *queued = events(4)
    blocker = held_up(db_url, first)

    async def scenario() -> tuple[list[object], object]:
        tasks = []
        for event in (first, *queued):
            tasks.append(asyncio.create_task(store.receive(event)))
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(None, store.close)  # as the lifespan shutdown does
        await asyncio.sleep(0.1)
        blocker.rollback()
        await closing
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        late = await asyncio.gather(store.receive(events(5)[4]), return_exceptions=True)
        return answers, late[0]

    answers, late = asyncio.run(scenario())
    blocker.close()
    assert answers[0] == NEW
    assert all(isinstance(a, DatabaseUnavailable) for a in answers[1:]), answers
    assert isinstance(late, DatabaseUnavailable)
    assert store._in_flight == 0
    stored = {row[0] for row in conn.execute("select id from webhook_private.events")}
    assert stored == {first.id}


def test_a_full_queue_answers_503_at_once(db_url, database, monkeypatch):
    """A database that stalls rather than fails must not let a worker take in deliveries
    without end: past QUEUE_LIMIT waiting, a delivery gets 503 at once."""
    from webhook.web import loop_store

    monkeypatch.setattr(loop_store, "QUEUE_LIMIT", 2)
    store = LoopStore(database, max_rows=16)
    first, *more = events(5)
    blocker = held_up(db_url, first)
    released = release_later(blocker)
    answers = store_all(store, [first, *more])
    released.join()
    blocker.close()
    assert answers[:3] == [NEW] * 3  # the insert on its way, and two queued
    assert all(isinstance(a, DatabaseUnavailable) for a in answers[3:]), answers


def test_an_insert_that_stalls_is_answered_503_in_time_and_loses_nothing(db_url, database, conn):
    """A lock held longer than the store's time (a migration, say): the deliveries the
    insert carries and those queued behind it get 503 after that time, and so does a
    delivery that arrives before the insert comes back. The late insert still commits, so
    Stripe's redelivery of that event finds it stored; the ones answered from the queue
    were never stored and are stored when Stripe sends them again."""
    store = LoopStore(database, max_rows=16, timeout_seconds=0.3)
    first, queued, meanwhile, later = events(4)
    blocker = held_up(db_url, first)

    async def scenario() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = [asyncio.create_task(store.receive(first))]
        await asyncio.sleep(0.02)
        tasks.append(asyncio.create_task(store.receive(queued)))
        stalled = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        waited = loop.time() - started
        [refused] = await asyncio.gather(store.receive(meanwhile), return_exceptions=True)
        blocker.rollback()  # the lock is released: the insert on its way commits
        for _ in range(200):
            if not store._overdue:
                break
            await asyncio.sleep(0.02)
        return {
            "stalled": stalled,
            "waited": waited,
            "refused": refused,
            "later": await store.receive(later),
            "redelivered": await store.receive(first),
            "queued again": await store.receive(queued),
        }

    try:
        seen = asyncio.run(scenario())
    finally:
        blocker.close()  # first: closing the store waits for the insert on its way
        store.close()

    assert all(isinstance(a, DatabaseUnavailable) for a in seen["stalled"]), seen["stalled"]
    assert "0.3 s" in str(seen["stalled"][0])
    assert 0.3 <= seen["waited"] < 2
    assert isinstance(seen["refused"], DatabaseUnavailable)
    assert seen["later"] == seen["queued again"] == NEW
    assert seen["redelivered"] == inbox.Stored(status="received")  # stored once, found
    deliveries = dict(conn.execute("select id, deliveries from webhook_private.events").fetchall())
    assert deliveries == {first.id: 2, queued.id: 1, later.id: 1}


def test_a_delivery_queued_behind_a_slow_insert_gets_its_answer_within_its_own_time(
    db_url, database, conn
):
    """The time counts from each delivery's arrival, not from its insert's start: one that
    waited in the queue behind a slow (but not stalled) insert does not get a full new
    timeout for its own insert."""
    timeout = 0.6
    store = LoopStore(database, max_rows=16, timeout_seconds=timeout)
    first, queued = events(2)
    slow, stalled = held_up(db_url, first), held_up(db_url, queued)
    released = release_later(slow, 0.45)  # the first lands in time; the second is held to the end

    async def scenario() -> tuple[list[object], float]:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(store.receive(first))]
        await asyncio.sleep(0.02)
        arrived = loop.time()
        tasks.append(asyncio.create_task(store.receive(queued)))
        await asyncio.wait_for(asyncio.wait([tasks[1]]), 5)
        waited = loop.time() - arrived
        return await asyncio.gather(*tasks, return_exceptions=True), waited

    try:
        answers, waited = asyncio.run(scenario())
    finally:
        released.join()
        slow.close()
        stalled.close()
        store.close()

    assert answers[0] == NEW
    assert isinstance(answers[1], DatabaseUnavailable)
    assert timeout - 0.05 <= waited < timeout + 0.3  # not 0.45 s in the queue + 0.6 s
    stored = {row[0] for row in conn.execute("select id from webhook_private.events")}
    assert stored == {first.id, queued.id}  # the late insert committed: a redelivery finds it

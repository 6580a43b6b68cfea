"""Helpers for the tests of the grouping stores (threads and event loop): events to store,
an insert held up on purpose, and PostgreSQL's record of which rows went in together.

Grouping is made visible with PostgreSQL's own record of it: rows written by one insert
carry the same transaction id (xmin). To make deliveries meet deterministically, the first
one's insert is held up by an uncommitted insert of the same event id in another session;
everything stored meanwhile queues behind it.
"""

import threading

import psycopg
from stripe_events import EventFactory

from webhook.stripe.payloads import Event, parse_event


def events(count: int) -> list[Event]:
    factory = EventFactory(seed=7)
    deliveries = [factory.other() for _ in range(count)]
    return [parse_event(d.event, d.body.decode()) for d in deliveries]


def held_up(db_url: str, event: Event) -> psycopg.Connection:
    """A session holding an uncommitted row with `event`'s id: a store of it waits."""
    blocker = psycopg.connect(db_url)
    blocker.execute(
        "insert into webhook_private.events (id, type, stripe_created, payload)"
        " values (%s, 'blocker', now(), '{}')",
        (event.id,),
    )
    return blocker


def transaction_ids(conn: psycopg.Connection, ids: list[str]) -> list[str]:
    rows = dict(
        conn.execute(
            "select id, xmin::text from webhook_private.events where id = any(%s)", (ids,)
        ).fetchall()
    )
    return [rows[event_id] for event_id in ids]


def release_later(blocker: psycopg.Connection, seconds: float = 0.3) -> threading.Timer:
    """Roll the blocker back in `seconds`. Join the timer before closing the blocker: the
    insert it held can finish before the rollback's own answer is read, and a close in
    between fails the rollback."""
    timer = threading.Timer(seconds, blocker.rollback)
    timer.start()
    return timer

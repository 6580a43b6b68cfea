"""The private inbox: every event stored once, with its status and processing history.

Status moves received -> processed | ignored | failed. Storing uses the event id as the
key; a concurrent second delivery of the same event waits on the first one's row lock,
then finds it stored and stops, so an event is applied once however it is delivered.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import psycopg

from webhook.pipeline.handlers.base import Outcome
from webhook.stripe.payloads import Event, timestamp

# A stored event in one of these states was applied already; a redelivery is a duplicate.
SETTLED = frozenset({"processed", "ignored"})


@dataclass(frozen=True)
class Stored:
    """The inbox row after storing a delivery."""

    status: str
    new: bool = False

    @property
    def settled(self) -> bool:
        return self.status in SETTLED


def store(
    conn: psycopg.Connection, event: Event, *, lock_timeout_ms: int, statement_timeout_ms: int
) -> Stored:
    """Insert the event, or count another delivery of it; say whether it was new.

    A statement of its own first bounds this transaction's lock and statement waits
    (set_config with is_local, so it is safe behind a pooler) and names the event as the
    source of the audit rows the triggers write. It has to come first: the insert takes its
    table's lock while it is planned, before anything in it runs, so settings made inside
    the insert would not cover a lock a migration holds on the inbox. In the pipeline the
    processor runs this in, both go in one round trip.
    """
    conn.execute(
        "select set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('webhook.source', %s, true)",
        (f"{lock_timeout_ms}ms", f"{statement_timeout_ms}ms", f"stripe:{event.id}"),
    )
    row = conn.execute(
        """
        insert into webhook_private.events as e
          (id, type, api_version, livemode, stripe_created, object_id, stripe_customer_id,
           payload)
        values (%(id)s, %(type)s, %(api_version)s, %(livemode)s, %(created)s, %(object_id)s,
                %(stripe_customer)s, %(payload)s::json)
        on conflict (id) do update set deliveries = e.deliveries + 1
        returning e.status
        """,
        _row(event),
    ).fetchone()
    assert row is not None
    return Stored(status=row[0])


def receive(conn: psycopg.Connection, event: Event) -> Stored:
    """Store a delivery for the drain to apply (queued mode); one statement for a new event.

    A new event is a plain insert: no lock is waited for. A redelivery is counted, waiting
    at most REDELIVERY_LOCK_WAIT for the row (another redelivery holds it for a moment); if
    a drain is applying the event right then, it is answered from the last committed status
    without being counted, rather than waiting for the batch. A redelivery of a failed
    event puts it back in the queue, as in inline mode it would be tried again.
    """
    params = _row(event)
    row = conn.execute(_RECEIVE, params).fetchone()
    if row is not None:
        return Stored(status=row[0], new=True)
    try:
        with conn.transaction():
            conn.execute(f"set local lock_timeout = '{REDELIVERY_LOCK_WAIT}'")
            row = conn.execute(_REDELIVERED, params).fetchone()
    except psycopg.errors.LockNotAvailable:
        row = None
    if row is None:
        row = conn.execute(
            "select status from webhook_private.events where id = %(id)s", params
        ).fetchone()
    assert row is not None
    return Stored(status=row[0])


REDELIVERY_LOCK_WAIT = "50ms"


def receive_many(conn: psycopg.Connection, events: Sequence[Event]) -> list[Stored]:
    """Store several deliveries with one insert and one commit; what receive() would say
    of each, in the order given.

    New events go in with one statement; a redelivery (already stored, or a second copy in
    `events`) is then counted by receive(), as on its own. Rows go in sorted by id, so two
    processes storing overlapping events wait for each other in one order, never in a cycle.
    """
    if len(events) == 1:
        return [receive(conn, events[0])]
    firsts: dict[str, Event] = {}
    for event in events:
        firsts.setdefault(event.id, event)
    new = sorted(firsts.values(), key=lambda event: event.id)
    params = [value for event in new for value in _row(event).values()]
    inserted = dict(conn.execute(_receive_rows(len(new)), params).fetchall())
    answers: list[Stored] = []
    for event in events:
        status = inserted.pop(event.id, None)
        answers.append(Stored(status=status, new=True) if status else receive(conn, event))
    return answers


@cache
def _receive_rows(count: int) -> str:
    """The insert of `count` new events (one text per count, so each can be prepared)."""
    row = "(%s, %s, %s, %s, %s, %s, %s, %s::json)"
    return f"""
insert into webhook_private.events as e
  (id, type, api_version, livemode, stripe_created, object_id, stripe_customer_id, payload)
values {", ".join([row] * count)}
on conflict (id) do nothing
returning e.id, e.status
"""


_RECEIVE = """
insert into webhook_private.events as e
  (id, type, api_version, livemode, stripe_created, object_id, stripe_customer_id, payload)
values (%(id)s, %(type)s, %(api_version)s, %(livemode)s, %(created)s, %(object_id)s,
        %(stripe_customer)s, %(payload)s::json)
on conflict (id) do nothing
returning e.status
"""

_REDELIVERED = """
update webhook_private.events e
   set deliveries = e.deliveries + 1,
       status = case when e.status = 'failed' and e.payload is not null then 'received'
                     else e.status end,
       received_at = case when e.status = 'failed' then now() else e.received_at end
 where e.id = %(id)s
returning e.status
"""


def _row(event: Event) -> dict[str, object]:
    return {
        "id": event.id,
        "type": event.type,
        "api_version": event.api_version,
        "livemode": event.livemode,
        "created": timestamp(event.created),
        "object_id": event.object_id,
        "stripe_customer": event.stripe_customer,
        "payload": event.text if event.text is not None else json.dumps(event.raw),
    }


def record(
    conn: psycopg.Connection, event_id: str, outcome: Outcome, trigger: str, duration_ms: float
) -> None:
    """Set the event's status and append the attempt to its history (one round trip)."""
    conn.execute(
        """
        with attempt as (
          insert into webhook_private.event_attempts (event_id, trigger, outcome, error, duration_ms)
          values (%(id)s, %(trigger)s, %(status)s, %(error)s, %(ms)s)
        )
        update webhook_private.events
           set status = %(status)s, error = %(error)s, attempts = attempts + 1, processed_at = now()
         where id = %(id)s
        """,
        {
            "id": event_id,
            "trigger": trigger,
            "status": outcome.status,
            "error": outcome.error,
            "ms": round(duration_ms, 3),
        },
    )

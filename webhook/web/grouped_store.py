"""Storing the deliveries a worker's threads hold at the same moment with one insert.

Under load, a worker's request threads reach the store step faster than PostgreSQL
commits their inserts one by one. Up to INSERTS_IN_FLIGHT threads per process store at
once, each on its own connection, as without grouping; a thread that finds that many
inserts on their way queues here, and whichever insert finishes first hands the queue to
one of the queued threads, which stores everything queued with one statement
(inbox.receive_many) and one commit and answers the others. Nobody waits for a group to
fill: at a light load every delivery is stored at once on its own, and under a heavy one
a few events share a transaction, which costs PostgreSQL less per event (see README,
*Benchmark*) and spares each request a pool checkout and a round trip of its own.

A queued thread waits for one insert to finish, then for its own. If the database is
unreachable, the threads queued meanwhile get the same answer at once rather than each
waiting DB_POOL_TIMEOUT again. If a grouped insert fails for a reason of the data rather
than the database (no event the inbox accepts should, but one must never take the others
down with it), each event is stored on its own, so only the culprit gets the error. With
deadlines (store_deadline.py; the app gives them WEB_STORE_TIMEOUT_MS), an insert that a
stalled database keeps waiting is cancelled, and the threads waiting on it get 503.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg

from webhook.core.errors import DatabaseUnavailable
from webhook.database.pool import Database
from webhook.pipeline import inbox
from webhook.stripe.payloads import Event
from webhook.web.store_deadline import StoreDeadlines

T = TypeVar("T")

# Inserts one process runs at once before later deliveries queue for a grouped one.
INSERTS_IN_FLIGHT = 2


@dataclass(eq=False)
class _Waiter:
    """One thread's event, and what became of it."""

    event: Event
    # Held until this waiter is answered or asked to lead; released by whoever does either.
    signal: threading.Lock = field(default_factory=threading.Lock)
    leads: bool = False
    stored: inbox.Stored | None = None
    error: BaseException | None = None

    def answer(self) -> inbox.Stored:
        if self.error is not None:
            raise self.error
        assert self.stored is not None
        return self.stored


class GroupedStore:
    """The inbox as the request threads of one process store into it."""

    def __init__(
        self,
        database: Database,
        max_rows: int,
        in_flight: int = INSERTS_IN_FLIGHT,
        *,
        deadlines: StoreDeadlines | None = None,
    ) -> None:
        self._database = database
        self._max_rows = max_rows
        self._deadlines = deadlines
        self._in_flight_limit = in_flight
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._in_flight = 0

    def receive(self, event: Event) -> inbox.Stored:
        """What inbox.receive says of `event`, stored together with any concurrent ones.

        Raises what storing raised (DatabaseUnavailable for an outage), for this event only.
        """
        if self._max_rows == 1:  # grouping off: every thread on its own connection
            return self._database.run(
                _watched(self._deadlines, lambda conn: inbox.receive(conn, event))
            )
        waiter = _Waiter(event)
        waiter.signal.acquire()
        with self._lock:
            if self._in_flight < self._in_flight_limit:
                self._in_flight += 1
                waiter.leads = True
            else:
                self._queue.append(waiter)
        if not waiter.leads:
            waiter.signal.acquire()  # until answered, or handed the queue to insert
        if waiter.leads:
            self._insert_from(waiter)
        return waiter.answer()

    def _insert_from(self, leader: _Waiter) -> None:
        """Store the leader's event with what is queued (up to max_rows in all), answer
        those threads, and hand the rest of the queue to one of them or give the slot up."""
        with self._lock:
            batch = [leader, *self._queue[: self._max_rows - 1]]
            del self._queue[: self._max_rows - 1]
        outage: DatabaseUnavailable | None = None
        try:
            outage = self._store(batch)
        finally:
            with self._lock:
                if outage is not None:
                    # Queued while the database was failing: the same answer, now.
                    for waiter in self._queue:
                        waiter.error = outage
                    batch.extend(self._queue)
                    self._queue.clear()
                successor = self._queue.pop(0) if self._queue else None
                if successor is None:
                    self._in_flight -= 1
                else:
                    successor.leads = True
            for waiter in batch:
                if waiter is not leader:
                    waiter.signal.release()
            if successor is not None:
                successor.signal.release()

    def _store(self, batch: list[_Waiter]) -> DatabaseUnavailable | None:
        """Store the batch and set each waiter's answer; the error if the database was
        unavailable to all of them."""
        events = [waiter.event for waiter in batch]
        answers, outage = store_together(self._database, events, self._deadlines)
        for waiter, answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                waiter.error = answer
            else:
                waiter.stored = answer
        return outage


Answers = list[inbox.Stored | BaseException]


def store_together(
    database: Database, events: Sequence[Event], deadlines: StoreDeadlines | None = None
) -> tuple[Answers, DatabaseUnavailable | None]:
    """Store `events` with one insert and one commit: what inbox.receive says of each, or
    the error storing it raised, in order; and the outage when the database was
    unavailable to all of them (the stores of the requests queued meanwhile would fail
    the same way). Both grouping stores, the threads' and the event loop's, use this.

    If the grouped insert fails for a reason of the data, each event is stored on its own,
    so the error lands on the event it belongs to. With `deadlines`, an insert that outlives
    its deadline is cancelled, and the database counts as unavailable to all of them.
    """
    try:
        work = _watched(deadlines, lambda conn: inbox.receive_many(conn, events))
        return list(database.run(work)), None
    except psycopg.Error as exc:
        if len(events) == 1:
            return [exc], None
        return [_store_alone(database, event, deadlines) for event in events], None
    except BaseException as exc:  # an outage (DatabaseUnavailable): the same for all
        outage = exc if isinstance(exc, DatabaseUnavailable) else None
        return [exc] * len(events), outage


def _store_alone(
    database: Database, event: Event, deadlines: StoreDeadlines | None
) -> inbox.Stored | BaseException:
    try:
        return database.run(_watched(deadlines, lambda conn: inbox.receive(conn, event)))
    except BaseException as exc:
        return exc


def _watched(
    deadlines: StoreDeadlines | None, work: Callable[[psycopg.Connection], T]
) -> Callable[[psycopg.Connection], T]:
    """`work`, cancelled by `deadlines` if it outlives its deadline (as it is without)."""
    if deadlines is None:
        return work

    def watched(conn: psycopg.Connection) -> T:
        with deadlines.watch(conn):
            return work(conn)

    return watched

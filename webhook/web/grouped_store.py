"""Storing the deliveries a worker's threads hold at the same moment with one insert.

Under load, a worker's request threads each reach the store step while another thread's
insert is on its way to PostgreSQL. Rather than each taking a connection and committing on
its own, they queue here; whichever thread finds no insert in flight stores everything
queued with one statement (inbox.receive_many) and one commit, and hands every thread its
answer. Nobody waits for a batch to fill: a thread alone is stored at once, so a quiet
service sees no delay, and a busy one commits a few events per transaction, which is
cheaper for PostgreSQL per event (measured in bench/) and spares each request a pool
checkout and a round trip of its own.

A thread waits at most for the insert in flight, then for its own. If the grouped insert
fails for a reason of the data rather than the database (no event the inbox accepts
should, but one must never take the others down with it), each is stored on its own, so
only the culprit gets the error.
"""

import threading
from dataclasses import dataclass, field

import psycopg

from webhook.database.pool import Database
from webhook.pipeline import inbox
from webhook.stripe.payloads import Event


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

    def __init__(self, database: Database, max_rows: int) -> None:
        self._database = database
        self._max_rows = max_rows
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._inserting = False

    def receive(self, event: Event) -> inbox.Stored:
        """What inbox.receive says of `event`, stored together with any concurrent ones.

        Raises what storing raised (DatabaseUnavailable for an outage), for this event only.
        """
        if self._max_rows == 1:  # grouping off: every thread on its own connection
            return self._database.run(lambda conn: inbox.receive(conn, event))
        waiter = _Waiter(event)
        waiter.signal.acquire()
        with self._lock:
            self._queue.append(waiter)
            waiter.leads = not self._inserting
            self._inserting = True
        if not waiter.leads:
            waiter.signal.acquire()  # until answered, or asked to lead the next insert
        if waiter.leads:
            self._insert_queued()
        return waiter.answer()

    def _insert_queued(self) -> None:
        """Store what is queued (up to max_rows), answer those threads, pass the lead on."""
        with self._lock:
            batch = self._queue[: self._max_rows]
            del self._queue[: self._max_rows]
        try:
            self._store(batch)
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._inserting = False
                else:
                    successor.leads = True
            for waiter in batch:
                if waiter.signal.locked():
                    waiter.signal.release()
            if successor is not None:
                successor.signal.release()

    def _store(self, batch: list[_Waiter]) -> None:
        events = [waiter.event for waiter in batch]
        try:
            answers = self._database.run(lambda conn: inbox.receive_many(conn, events))
        except psycopg.Error as exc:
            if len(batch) > 1:
                self._store_each(batch)  # a data error: find the event it belongs to
                return
            batch[0].error = exc
            return
        except BaseException as exc:  # an outage (DatabaseUnavailable): the same for all
            for waiter in batch:
                waiter.error = exc
            return
        for waiter, stored in zip(batch, answers, strict=True):
            waiter.stored = stored

    def _store_each(self, batch: list[_Waiter]) -> None:
        for waiter in batch:
            try:
                waiter.stored = self._database.run(
                    lambda conn, event=waiter.event: inbox.receive(conn, event)
                )
            except BaseException as exc:
                waiter.error = exc
